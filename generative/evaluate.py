"""Evaluate a causal LM on local lm-eval tasks (generative/lm_eval_tasks.py) with lm-eval's Python API:
``HFLM`` wraps the in-memory model and tokenizer, ``TaskManager(include_path=…)`` finds only our YAMLs, and
``simple_evaluate`` scores them with no hub access (``HF_HUB_OFFLINE=1``, ``HF_DATASETS_OFFLINE=1``).
lm-eval's own results JSON is written beside our scores."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from merging.errors import MergeError
from merging.io.atomic import atomic_write_text

from .lm_eval_tasks import METRIC, Kind


class _ModelObjectNotice(logging.Filter):
    """Drops lm-eval's notice that HFLM was given a model object rather than a name: we pass the in-memory model
    on purpose, at every task and grid point."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "model kwarg is not of type `str`" not in record.getMessage()


@contextlib.contextmanager
def _expected_notices_silenced() -> Iterator[None]:
    """lm-eval's model-object notice and the FutureWarnings of the libraries it drives, for the duration."""
    logger, notice = logging.getLogger("lm_eval.models.huggingface"), _ModelObjectNotice()
    logger.addFilter(notice)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        logger.removeFilter(notice)


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
    with _expected_notices_silenced():
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        results = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager, num_fewshot=0,
                                          limit=limit, log_samples=False, bootstrap_iters=0)
    scores = {name: float(results["results"][name][METRIC[kind]]) for name, kind in tasks.items()}
    if out_json is not None:
        atomic_write_text(out_json, json.dumps(results, indent=1, default=str))
    return scores
