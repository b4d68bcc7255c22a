"""Rows of a generative pool's experiment, in ``outs/<experiment>/results.csv`` (default: the pool's name) with
the columns every domain's rows have (``merging.benchmark.experiment.write_row``): the references ``pretrained``
(the base) and ``finetuned`` (each task's checkpoint on its own task: the 100 of the normalised score), and merges
of the pool whose hyper-parameters are chosen on the validation split (the first ``limit_validation`` examples
of each task), then scored on the test split through lm-eval.

    normalised = mean_t 100 · score_t(merged) / score_t(checkpoint_t)        (merging/benchmark/metrics.py)

The validation choice maximises the mean score over tasks (column ``validation_average``), not the normalised
score: on a few validation examples a checkpoint can score 0 on its own exact-match task (the ratio is then
undefined) or close to it (the ratio is then noise).

LoRA pools merge through generative/merge.py (adapter + full model out); full fine-tunes through the merge
engine (merging/run.py), as any checkpoints.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from merging import distributed
from merging.benchmark.experiment import best_on_validation, check_method_config, grid_points, method_config, write_row
from merging.benchmark.metrics import normalized_score
from merging.benchmark.parallel import announce_missing
from merging.config import validate_config
from merging.errors import MergeError
from merging.io.atomic import atomic_write_text
from merging.io.checkpoint import resolve_model_ref
from merging.io.lora import read_lora_adapter, write_lora_adapter
from merging.io.pypi import cache_dir
from merging.logs import future_warnings_silenced
from merging.registry import get_method, known_methods
from merging.run import run_merge, run_stamp

from . import data
from .evaluate import evaluate
from .finetune import MARKER, train_many
from .lm_eval_tasks import write_tasks
from .merge import adapter_methods, merge_adapters, parameter_schemas, write_outputs
from .pool import GenerativePool, official_proxy

DOMAIN = "generative"  # configs/generative/methods/<method>.yaml
REFERENCES = ("pretrained", "finetuned")


def slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in label)


def merged_dir(pool: GenerativePool, label: str, seed: int) -> Path:
    return cache_dir() / "generative" / "merged" / pool.name / f"{slug(label)}-seed{seed}"


def scores_of(model_ref: str | Path, split: data.Split, tasks: list[str], limit: int | None,
              out_json: Path | None, adapter: Path | None = None, batch_size: int = 8) -> dict[str, float]:
    """Scores in [0, 1] of the model at ``model_ref`` (with a peft ``adapter`` merged into it) on ``split``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = resolve_model_ref(str(model_ref))
    with future_warnings_silenced():  # peft's deprecation notices, at every grid point
        model = AutoModelForCausalLM.from_pretrained(folder, dtype="float32").eval()
        if adapter is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter).merge_and_unload().eval()
    local = data.local_tasks(split, tasks)
    task_dir = write_tasks(local, cache_dir() / "generative" / "lm_eval" / split)
    return evaluate(model, AutoTokenizer.from_pretrained(folder), task_dir, {t.name: t.kind for t in local},
                    out_json, batch_size=batch_size, limit=limit)


def known_methods_of(pool: GenerativePool) -> list[str]:
    """The registered methods that merge the pool's kind of checkpoints: adapter methods for LoRA pools,
    per-tensor ones for full fine-tunes."""
    return adapter_methods() if pool.kind == "lora" else known_methods("per_tensor")


def scored_row(pool: GenerativePool, method: str, scores: dict[str, float], reference: dict[str, float],
               started: float, pool_seed: int, **columns: Any) -> dict[str, Any]:
    """The row of ``method``'s scores (×100), normalised by ``reference`` when it covers every scored task."""
    normalised = normalized(scores, reference) if set(scores) <= set(reference) else ""
    return {"method": method, "normalized": normalised, "average": 100 * sum(scores.values()) / len(scores),
            **{name: 100 * value for name, value in scores.items()}, **columns, "pool_seed": pool_seed,
            "pool": pool.name, **run_stamp(started)}


def evaluate_model(pool: GenerativePool, model_ref: str, label: str, split: data.Split, tasks: list[str],
                   outs: Path, limit: int | None, batch_size: int = 8, adapter: Path | None = None,
                   seed: int = 0) -> dict[str, float]:
    """Score any model (+ adapter) and write its row, named ``label``, to outs/<pool name> (normalised when the
    reference of the split is known); lm-eval's JSON goes to ``lm_eval/<label>-<split>.json``."""
    started = time.perf_counter()
    scores = scores_of(model_ref, split, tasks, limit, outs / pool.name / "lm_eval" / f"{slug(label)}-{split}.json",
                       adapter, batch_size)
    reference = _reference_file(pool, outs, split, limit, seed)
    known = json.loads(reference.read_text()) if reference.is_file() else {}
    write_row(outs / pool.name, DOMAIN, pool.name, tasks,
              scored_row(pool, label, scores, known, started, seed, split=split, limit=limit or "",
                         model_ref=model_ref, adapter=str(adapter or "")))
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
    """Train the pool's checkpoints of ``seed`` that are not in the cache yet, announced first as the other
    domains announce theirs (one process; ``run_finetune`` spreads them over the cores)."""
    if pool.checkpoints:  # given checkpoints are never trained here
        return
    missing = [task for task in pool.tasks if not (pool.folder(task, seed) / MARKER).is_file()]
    if not missing:
        return
    into = pool.folder(missing[0], seed).parent
    announce_missing([(task, seed) for task in missing], into, into.glob(f"*/{MARKER}"))
    train_many(resolve_model_ref(pool.base), data.local_tasks("train", missing), [(t, seed) for t in missing],
               pool.folder, pool.training_config())


def check_method(pool: GenerativePool, method: str, overrides: dict[str, Any]) -> None:
    """Refuse, before any checkpoint is read, downloaded or scored: a method that cannot merge the pool's kind
    of checkpoints (the known ones are listed), parameters given to a reference, a parameter (command line,
    method YAML, each grid point) that the method's schema rejects, a missing proxy file, and a grid left open
    or a reference asked of a pool without tasks to score on."""
    lora = pool.kind == "lora"
    known = known_methods_of(pool)
    if method in REFERENCES:
        if overrides:
            raise MergeError(f"'{method}' is a reference and takes no parameters, got "
                             f"{', '.join('--' + k.replace('_', '-') for k in overrides)}")
        if not pool.tasks:
            raise MergeError(f"pool '{pool.name}' has no tasks to score the reference '{method}' on")
        return
    if method not in known:
        if method in adapter_methods():
            raise MergeError(f"method '{method}' merges LoRA pools (kind: lora) only; methods for full "
                             f"fine-tunes: {', '.join(known)}")
        if method in known_methods("routed"):
            raise MergeError(f"method '{method}' is a routed merge (a body per input); lm-eval scores one model per "
                             f"task here, so it runs on the discriminative and vision pools only; methods here: "
                             f"{', '.join(known)}")
        raise MergeError(f"unknown method '{method}'; known: {', '.join([*REFERENCES, *known])}")
    check_method_config(DOMAIN, method, overrides,
                        parameter_schemas(method) if lora else get_method(method).schemas(), per_tensor=not lora)
    if pool.proxy and not Path(pool.proxy).is_file():
        raise MergeError(f"pool '{pool.name}' ({pool.path}): proxy file '{pool.proxy}' does not exist")
    _, grid, _ = method_config(DOMAIN, method, overrides)
    if not pool.tasks and any(len(values) > 1 for values in grid.values()):
        raise MergeError(f"pool '{pool.name}' has no tasks to choose {sorted(grid)} on; fix them with --name value")


def run_reference(pool: GenerativePool, method: str, pool_seed: int, outs: Path, experiment: str,
                  limit: int | None) -> dict[str, Any]:
    """The row of a reference on the test split: ``finetuned`` (each task's checkpoint of ``pool_seed`` on its
    own task; normalised 100) or ``pretrained`` (the base)."""
    started = time.perf_counter()
    train_missing(pool, pool_seed)
    reference = finetuned_scores(pool, "test", pool_seed, limit, outs)
    if method == "finetuned":
        scores, model_ref = reference, ""
    else:
        json_path = outs / pool.name / "lm_eval" / f"pretrained-seed{pool_seed}-test.json"
        scores, model_ref = scores_of(pool.base, "test", pool.tasks, limit, json_path), pool.base
    row = scored_row(pool, method, scores, reference, started, pool_seed, params="", overrides="",
                     split="test", limit=limit or "", model_ref=model_ref)
    write_row(outs / experiment, DOMAIN, pool.name, pool.tasks, row)
    return row


def _merge_full(pool: GenerativePool, method: str, point: dict[str, Any], folders: dict[str, Path], out: Path,
                seed: int) -> None:
    cfg = validate_config({"method": method, "base": str(resolve_model_ref(pool.base)),
                           "models": [{"model": str(f)} for f in folders.values()], "parameters": point,
                           "seed": seed})
    run_merge(cfg, out, overwrite=True, progress=False)


def run_method(pool: GenerativePool, method: str, overrides: dict[str, Any], pool_seed: int, outs: Path,
               experiment: str, limit: int | None, limit_validation: int | None, seed: int = 0,
               progress: bool = True) -> dict[str, Any] | Path:
    """Merge the pool's checkpoints (fine-tuning seed ``pool_seed``) with ``method`` (merge seed ``seed``: DARE
    masks): every point of its grid (configs/generative/methods/<method>.yaml) is scored on validation, the best
    is written to ``merged_dir`` (LoRA pools: adapter/ and model/) and scored on test; its row goes to
    outs/<experiment> and is returned. A reference runs ``run_reference``. A pool without tasks (given
    checkpoints, e.g. the paper's) takes one point (fix the grid with overrides), is written and not scored;
    returns the output folder."""
    check_method(pool, method, overrides)
    if method in REFERENCES:
        return run_reference(pool, method, pool_seed, outs, experiment, limit)
    started = time.perf_counter()
    params, grid, _ = method_config(DOMAIN, method, overrides)
    points = grid_points(params, grid)
    train_missing(pool, pool_seed)
    folders = pool.candidates(pool_seed)
    base_folder = resolve_model_ref(pool.base)
    label = " ".join([method, *(f"{k}={v}" for k, v in sorted(overrides.items()))])
    out = merged_dir(pool, label, pool_seed)
    if pool.kind == "lora":
        adapters = [read_lora_adapter(f) for f in folders.values()]
        proxy = []
        if get_method(method).kind == "data_driven":
            proxy = official_proxy(pool.proxy) if pool.proxy else data.local_tasks("proxy", pool.tasks)

        def merge(point: dict[str, Any]) -> tuple[Any, ...]:
            return merge_adapters(method, point, adapters, list(folders), base_folder, proxy, seed, progress,
                                  pool.dtype)
    if not pool.tasks:  # one point (check_method)
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
    log: dict[str, Any] = {}
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
    scores = scores_of(model, "test", pool.tasks, limit,
                       outs / pool.name / "lm_eval" / f"{slug(label)}-seed{pool_seed}-test.json")
    row = scored_row(pool, method, scores, finetuned_scores(pool, "test", pool_seed, limit, outs), started,
                     pool_seed, params=json.dumps(point, sort_keys=True),
                     overrides=json.dumps(overrides, sort_keys=True) if overrides else "",
                     validation_average=value, seed=seed, split="test", limit=limit or "",
                     refactor_error=info.get("refactor_error_mean", ""), model_ref=str(model))
    write_row(outs / experiment, DOMAIN, pool.name, pool.tasks, row,
              log if get_method(method).kind == "data_driven" else None)  # FW's objective, gap and selections
    return row
