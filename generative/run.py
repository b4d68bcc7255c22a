"""Rows of a generative pool's experiment (``outs/<pool name>/results.csv``): a model scored on the suite
through lm-eval, the ``finetuned`` reference (each task's checkpoint on its own task: the 100 of the normalised
score) and merges of the pool whose hyper-parameters are chosen on the validation split (the first
``limit_validation`` examples of each task), then scored on the test split.

    normalised = mean_t 100 · score_t(merged) / score_t(checkpoint_t)        (merging/benchmark/metrics.py)

The validation choice maximises the mean score over tasks, not the normalised score: on a few validation
examples a checkpoint can score 0 on its own exact-match task (the ratio is then undefined) or close to it
(the ratio is then noise).

LoRA pools merge through generative/merge.py (adapter + full model out); full fine-tunes through the merge
engine (merging/run.py), as any checkpoints.
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from merging import distributed
from merging.benchmark.experiment import best_on_validation, check_method_config, grid_points, method_config
from merging.benchmark.metrics import normalized_score
from merging.benchmark.results import append_row, rebuild_markdown
from merging.config import validate_config
from merging.errors import MergeError
from merging.io.atomic import atomic_write_text
from merging.io.checkpoint import resolve_model_ref
from merging.io.lora import read_lora_adapter, write_lora_adapter
from merging.io.pypi import cache_dir
from merging.registry import get_method, known_methods
from merging.run import run_merge, run_stamp

from . import data
from .evaluate import evaluate
from .finetune import MARKER, train_many
from .lm_eval_tasks import write_tasks
from .merge import adapter_methods, merge_adapters, parameter_schemas, write_outputs
from .pool import GenerativePool, official_proxy

logger = logging.getLogger(__name__)

DOMAIN = "generative"  # configs/generative/methods/<method>.yaml


def slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in label)


def merged_dir(pool: GenerativePool, label: str, seed: int) -> Path:
    return cache_dir() / "generative" / "merged" / pool.name / f"{slug(label)}-seed{seed}"


def scores_of(model_ref: str | Path, split: data.Split, tasks: list[str], limit: int | None,
              out_json: Path | None, adapter: Path | None = None, batch_size: int = 8) -> dict[str, float]:
    """Scores in [0, 1] of the model at ``model_ref`` (with a peft ``adapter`` merged into it) on ``split``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = resolve_model_ref(str(model_ref))
    model = AutoModelForCausalLM.from_pretrained(folder, dtype="float32").eval()
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).merge_and_unload().eval()
    local = data.local_tasks(split, tasks)
    task_dir = write_tasks(local, cache_dir() / "generative" / "lm_eval" / split)
    return evaluate(model, AutoTokenizer.from_pretrained(folder), task_dir, {t.name: t.kind for t in local},
                    out_json, batch_size=batch_size, limit=limit)


def record(outs: Path, pool: GenerativePool, label: str, scores: dict[str, float], started: float,
           **extra: Any) -> dict[str, Any]:
    """Append the row of ``label`` (scores ×100) to results.csv and rebuild results.md."""
    row = {"model": label, "average": 100 * sum(scores.values()) / len(scores),
           **{name: 100 * value for name, value in scores.items()}, **extra, **run_stamp(started)}
    out = outs / pool.name
    append_row(out / "results.csv", row)
    rebuild_markdown(out / "results.csv", out / "results.md", f"{pool.name}: lm-eval scores (%)",
                     ["model", "normalized", "average", *scores])
    return row


def evaluate_model(pool: GenerativePool, model_ref: str, label: str, split: data.Split, tasks: list[str],
                   outs: Path, limit: int | None, batch_size: int = 8, adapter: Path | None = None,
                   seed: int = 0) -> dict[str, float]:
    """Score a model (+ adapter) and write its row (normalised when the pool's reference is known);
    lm-eval's JSON goes to ``lm_eval/<label>-<split>.json``."""
    started = time.perf_counter()
    scores = scores_of(model_ref, split, tasks, limit, outs / pool.name / "lm_eval" / f"{slug(label)}-{split}.json",
                       adapter, batch_size)
    reference = _reference_file(pool, outs, split, limit, seed)
    known = json.loads(reference.read_text()) if reference.is_file() else {}
    extra = {"normalized": normalized(scores, known)} if set(scores) <= set(known) else {}
    record(outs, pool, label, scores, started, **extra, split=split, limit=limit or "", model_ref=model_ref,
           adapter=str(adapter or ""))
    return scores


def _reference_file(pool: GenerativePool, outs: Path, split: str, limit: int | None, seed: int) -> Path:
    return outs / pool.name / f"finetuned-{split}-{limit or 'all'}-seed{seed}.json"


def finetuned_scores(pool: GenerativePool, split: data.Split, seed: int, limit: int | None, outs: Path
                     ) -> dict[str, float]:
    """Each task's checkpoint on its own task, cached in ``outs/<pool>/finetuned-<split>-<limit>-seed<k>.json``
    so every merge's normalised score reuses it."""
    cache = _reference_file(pool, outs, split, limit, seed)
    known = json.loads(cache.read_text()) if cache.is_file() else {}
    folders = pool.candidates(seed)
    for task in pool.tasks:
        if task not in known:
            json_path = outs / pool.name / "lm_eval" / f"finetuned-{task}-{split}.json"
            if pool.kind == "lora":
                known.update(scores_of(pool.base, split, [task], limit, json_path, folders[task]))
            else:
                known.update(scores_of(folders[task], split, [task], limit, json_path))
            atomic_write_text(cache, json.dumps(known, indent=1))
    return {task: known[task] for task in pool.tasks}


def normalized(scores: dict[str, float], reference: dict[str, float]) -> float:
    return normalized_score(scores, reference, list(scores))


def train_missing(pool: GenerativePool, seed: int) -> None:
    """Train the pool's checkpoints of ``seed`` that are not in the cache yet, announced first, as the other
    domains fine-tune theirs before a merge (one process; ``run_finetune`` spreads them over the cores)."""
    if pool.checkpoints:  # given checkpoints are never trained here
        return
    missing = [task for task in pool.tasks if not (pool.folder(task, seed) / MARKER).is_file()]
    if not missing:
        return
    logger.info("%d checkpoint(s) missing (%s, seed %d): training them first into %s; `run_finetune` runs them in "
                "parallel", len(missing), ", ".join(missing), seed, pool.folder(missing[0], seed).parent)
    train_many(resolve_model_ref(pool.base), data.local_tasks("train", missing), [(t, seed) for t in missing],
               pool.folder, pool.training_config())


def check_merge(pool: GenerativePool, method: str, overrides: dict[str, Any]) -> None:
    """Refuse, before any checkpoint is read, downloaded or scored: a method that cannot merge the pool's kind
    of checkpoints (the known ones are listed), a parameter (command line, method YAML, each grid point) that the
    method's schema rejects, a missing proxy file, and a grid left open on a pool without tasks to choose on."""
    lora = pool.kind == "lora"
    known = adapter_methods() if lora else known_methods("per_tensor")
    if method not in known:
        if method in adapter_methods():
            raise MergeError(f"method '{method}' merges LoRA pools (kind: lora) only; methods for full "
                             f"fine-tunes: {', '.join(known)}")
        raise MergeError(f"unknown method '{method}'; known: {', '.join(known)}")
    check_method_config(DOMAIN, method, overrides,
                        parameter_schemas(method) if lora else get_method(method).schemas(), per_tensor=not lora)
    if pool.proxy and not Path(pool.proxy).is_file():
        raise MergeError(f"pool '{pool.name}' ({pool.path}): proxy file '{pool.proxy}' does not exist")
    _, grid, _ = method_config(DOMAIN, method, overrides)
    if not pool.tasks and any(len(values) > 1 for values in grid.values()):
        raise MergeError(f"pool '{pool.name}' has no tasks to choose {sorted(grid)} on; fix them with --name value")


def _merge_full(pool: GenerativePool, method: str, point: dict[str, Any], folders: dict[str, Path], out: Path,
                seed: int) -> None:
    cfg = validate_config({"method": method, "base": str(resolve_model_ref(pool.base)),
                           "models": [{"model": str(f)} for f in folders.values()], "parameters": point,
                           "seed": seed})
    run_merge(cfg, out, overwrite=True, progress=False)


def run_method(pool: GenerativePool, method: str, overrides: dict[str, Any], seed: int, outs: Path,
               limit: int | None, limit_validation: int | None, progress: bool = True) -> dict[str, Any] | Path:
    """Merge the pool's checkpoints (fine-tuning seed ``seed``) with ``method``: every point of its grid
    (configs/generative/methods/<method>.yaml) is scored on validation, the best is written to
    ``merged_dir`` (LoRA pools: adapter/ and model/) and scored on test; returns the row. A pool without
    tasks (given checkpoints, e.g. the paper's) takes one point (fix the grid with overrides), is written and
    not scored; returns the output folder."""
    check_merge(pool, method, overrides)
    started = time.perf_counter()
    params, grid, _ = method_config(DOMAIN, method, overrides)
    points = grid_points(params, grid)
    train_missing(pool, seed)
    folders = pool.candidates(seed)
    base_folder = resolve_model_ref(pool.base)
    label = " ".join([method, *(f"{k}={v}" for k, v in sorted(overrides.items()))])
    out = merged_dir(pool, label, seed)
    if pool.kind == "lora":
        adapters = [read_lora_adapter(f) for f in folders.values()]
        proxy = []
        if get_method(method).kind == "data_driven":
            proxy = official_proxy(pool.proxy) if pool.proxy else data.local_tasks("proxy", pool.tasks)

        def merge(point: dict[str, Any]) -> tuple[Any, ...]:
            return merge_adapters(method, point, adapters, list(folders), base_folder, proxy, seed, progress,
                                  pool.dtype)
    if not pool.tasks:  # one point (check_merge)
        if pool.kind == "lora":
            factors, rank, alpha, log = merge(points[0])
            if not distributed.is_main():  # under accelerate launch, process 0 writes
                return out
            write_outputs(out, base_folder, factors, rank, alpha, adapters[0].config,
                          {"method": method, "parameters": points[0], "checkpoints": pool.checkpoints, **log})
        else:
            _merge_full(pool, method, points[0], folders, out, seed)
        return out

    def score(point: dict[str, Any]) -> tuple[float, Any]:
        with tempfile.TemporaryDirectory(dir=cache_dir()) as scratch:
            if pool.kind == "lora":
                merged = merge(point)
                factors, rank, alpha, _ = merged
                write_lora_adapter(Path(scratch), factors, rank, alpha, adapters[0].config, torch.float32)
                scores = scores_of(pool.base, "validation", pool.tasks, limit_validation, None, Path(scratch))
            else:
                merged = None
                _merge_full(pool, method, point, folders, Path(scratch) / "model", seed)
                scores = scores_of(Path(scratch) / "model", "validation", pool.tasks, limit_validation, None)
        return 100 * sum(scores.values()) / len(scores), merged

    point, value, merged = best_on_validation(points, score, method, "validation mean score", progress)
    info = {"method": method, "parameters": point, "checkpoints": {k: str(v) for k, v in folders.items()},
            "validation_average": value}
    if pool.kind == "lora":
        factors, rank, alpha, log = merged
        info.update(log)
        write_outputs(out, base_folder, factors, rank, alpha, adapters[0].config, info)
        model = out / "model"
    else:
        shutil.rmtree(out, ignore_errors=True)
        _merge_full(pool, method, point, folders, out, seed)
        atomic_write_text(out / "merge.json", json.dumps(info, indent=1))
        model = out
    scores = scores_of(model, "test", pool.tasks, limit, outs / pool.name / "lm_eval" / f"{slug(label)}-seed{seed}-test.json")
    test_reference = finetuned_scores(pool, "test", seed, limit, outs)
    return record(outs, pool, label, scores, started, normalized=normalized(scores, test_reference),
                  split="test", limit=limit or "", seed=seed, method=method, parameters=json.dumps(point),
                  validation_average=value, refactor_error=info.get("refactor_error_mean", ""),
                  model_ref=str(model))
