"""Evaluate a causal LM on local lm-eval tasks (generative/lm_eval_tasks.py) with lm-eval's Python API:
``HFLM`` wraps the in-memory model and tokenizer, ``TaskManager(include_path=…)`` finds only our YAMLs, and
``simple_evaluate`` scores them with no hub access (``HF_HUB_OFFLINE=1``, ``HF_DATASETS_OFFLINE=1``).
lm-eval's own results JSON is written beside our scores."""
from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

from merging.errors import MergeError
from merging.io.atomic import atomic_write_text
from merging.logs import future_warnings_silenced

from .lm_eval_tasks import METRIC, Kind

EXPECTED = ("model kwarg is not of type `str`",       # we pass the in-memory model on purpose, every time
            "Passed an already-initialized model",    # the same notice, lm-eval 0.4.13's wording
            "Overwriting default num_fewshot")         # we ask for zero-shot on purpose


class _ExpectedNotices(logging.Filter):
    """Drops lm-eval's notices about what we do on purpose (``EXPECTED``), repeated at every task and grid point."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(notice in record.getMessage() for notice in EXPECTED)


@contextlib.contextmanager
def expected_notices_silenced() -> Iterator[None]:
    """For the duration: lm-eval's expected notices, the FutureWarnings of the libraries it drives (transformers,
    peft), the datasets library's per-split "Generating" bars, and lm-eval's ``git describe`` of the current
    folder (its "fatal: not a git repository" outside a checkout; the toolkit's own commit is recorded instead)."""
    import datasets
    import lm_eval.evaluator

    from merging.run import git_sha

    loggers = [logging.getLogger(name) for name in ("lm_eval.models.huggingface", "lm_eval.evaluator")]
    notice, bars = _ExpectedNotices(), datasets.is_progress_bar_enabled()
    for logger in loggers:
        logger.addFilter(notice)
    datasets.disable_progress_bars()
    try:
        with future_warnings_silenced(), mock.patch.object(lm_eval.evaluator, "get_git_commit_hash", git_sha):
            yield
    finally:
        for logger in loggers:
            logger.removeFilter(notice)
        if bars:
            datasets.enable_progress_bars()


def evaluate(model: Any, tokenizer: Any, task_dir: Path, tasks: dict[str, Kind], out_json: Path | None = None,
             batch_size: int = 8, limit: int | None = None) -> dict[str, float]:
    """{task: score in [0, 1]} for ``tasks`` ({name: kind}) of ``task_dir``; lm-eval's results to ``out_json``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise MergeError("evaluation needs lm-eval: pip install lm-eval==0.4.13") from None
    manager = TaskManager(include_path=str(task_dir), include_defaults=False)
    unknown = sorted(set(tasks) - set(manager.all_tasks))
    if unknown:
        raise MergeError(f"task(s) {unknown} have no YAML in {task_dir} (found {sorted(manager.all_tasks)})")
    with expected_notices_silenced():
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        results = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager, num_fewshot=0,
                                          limit=limit, log_samples=False, bootstrap_iters=0)
    scores = {name: float(results["results"][name][METRIC[kind]]) for name, kind in tasks.items()}
    if out_json is not None:
        atomic_write_text(out_json, json.dumps(results, indent=1, default=str))
    return scores
