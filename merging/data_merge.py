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
from pathlib import Path
from typing import Any

from .config import MergeConfig
from .errors import MergeError
from .registry import known_methods

KINDS = {"sequence_classification": "discriminative.merge_data",  # data.kind -> the module whose merge() runs it
         "image_classification": "vision.merge_data",
         "causal_lm": "generative.merge_data"}


def check_data_request(cfg: MergeConfig) -> str:
    """The module of ``cfg``'s data kind, after the checks every kind shares: a data-driven method, a known
    kind, and one task named by every model entry."""
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
    return KINDS[kind]


def run_data_merge(cfg: MergeConfig, out: str | Path, *, overwrite: bool = False, progress: bool = True,
                   source_yaml: Path | None = None) -> dict[str, Any]:
    """Merge per ``cfg`` (a data-driven method and its ``data:`` section) into ``out``; the run summary, also
    written to ``merge_info.json``."""
    module = importlib.import_module(check_data_request(cfg))
    return module.merge(cfg, Path(out), overwrite=overwrite, progress=progress, source_yaml=source_yaml)
