"""Data-driven merges from the merge command line: ``python -m merging merge CONFIG --out DIR`` where CONFIG has a
``data:`` section and names a data-driven method (FW-Merging hard and soft, RegMean, Fisher, AdaMerging, greedy
soup). Each model entry names its ``task``; ``data.kind`` says what the checkpoints are and which domain builds
the tasks' ``Objective`` from the user's files, the same objective the benchmarks use:

    method: frank_wolfe
    base: models/encoder
    models:
      - {model: models/sentiment, task: sentiment}
      - {model: models/topic, task: topic}
    parameters: {iterations: 5}
    data:
      kind: sequence_classification     # the kinds in KINDS
      tasks:
        sentiment: {proxy: data/sentiment.jsonl, text: sentence, label: label}
        topic: {proxy: data/topic.jsonl, text: text, label: label}

The kind's module validates the section (files, columns, labels against each checkpoint's head) before any
weight is read, runs the method, and writes the output folder (see its ``merge``)."""
from __future__ import annotations

import importlib
import time
from pathlib import Path
from typing import Any

from .config import MergeConfig
from .errors import MergeError
from .registry import get_method, known_methods

KINDS = {"sequence_classification": "discriminative.merge_data",  # data.kind -> the module whose merge() runs it
         "image_classification": "vision.merge_data",
         "causal_lm": "generative.merge_data"}


def check_data_request(cfg: MergeConfig, where: str = "config") -> str:
    """The module of ``cfg``'s data kind, after the checks every kind shares: a data-driven method, a known
    kind, and every model entry naming a task, one model per task of ``data.tasks``."""
    if cfg.method in known_methods("routed"):
        get_method(cfg.method, "data_driven")  # refused, saying where a routed method runs
    if cfg.method not in known_methods("data_driven"):
        raise MergeError(f"'data:' is for the data-driven methods ({', '.join(known_methods('data_driven'))}); "
                         f"'{cfg.method}' reads no data: remove the data section")
    kind = (cfg.data or {}).get("kind")
    if kind not in KINDS:
        raise MergeError(f"data.kind {kind!r}: expected one of {', '.join(KINDS)}")
    unnamed = [entry.model for entry in cfg.models if entry.task is None]
    if unnamed:
        raise MergeError(f"models {unnamed}: each model entry of a data-driven merge names its 'task' "
                         f"(a key of data.tasks)")
    by_task: dict[str, str] = {}
    for entry in cfg.models:
        if entry.task in by_task:
            raise MergeError(f"{where}: task '{entry.task}' has two models ({by_task[entry.task]}, {entry.model})")
        by_task[entry.task] = entry.model
    tasks = cfg.data.get("tasks")
    if isinstance(tasks, dict) and set(by_task) != set(tasks):  # another shape: the kind's schema names it
        raise MergeError(f"{where}: the models' tasks {sorted(by_task)} and data.tasks {sorted(tasks)} differ")
    return KINDS[kind]


def merge_summary(cfg: MergeConfig, checkpoints: dict[str, str], started: float, log: dict[str, Any]
                  ) -> dict[str, Any]:
    """What ``merge_info.json`` holds for a data-driven merge: method, paper, parameters, seed, each task's
    checkpoint, the code, seconds since ``started`` and the method's log."""
    import torch

    from .run import git_sha

    return {"method": cfg.method, "paper": get_method(cfg.method).paper, "parameters": cfg.parameters,
            "seed": cfg.seed, "tasks": checkpoints, "git_sha": git_sha(), "torch": torch.__version__,
            "seconds": round(time.perf_counter() - started, 3), "log": log}


def run_data_merge(cfg: MergeConfig, out: str | Path, *, overwrite: bool = False, progress: bool = True,
                   source_yaml: Path | None = None) -> dict[str, Any]:
    """Merge per ``cfg`` (a data-driven method and its ``data:`` section) into ``out``; the run summary, also
    written to ``merge_info.json``."""
    module = importlib.import_module(check_data_request(cfg, str(source_yaml or "config")))
    return module.merge(cfg, Path(out), overwrite=overwrite, progress=progress, source_yaml=source_yaml)
