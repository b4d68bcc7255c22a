"""``data.kind: sequence_classification`` for the merge command line (merging/data_merge.py): any
``AutoModelForSequenceClassification`` folders, each with its own head, merged by a data-driven method on the
user's text files (discriminative/files.py) through merging/benchmark/merge_data.py. Its own data keys:
``max_length`` (tokens per example, pairs jointly; default 128); its default head: ``HEAD``."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from merging.benchmark.merge_data import ClassifierKind, merge_classifiers
from merging.config import MergeConfig

from .files import FileTask
from .pool import TextPool

HEAD = (r"^classifier\.", r"^pre_classifier\.", r"^score\.", r"\.pooler\.")  # BERT/RoBERTa/DistilBERT/Llama heads
KIND = ClassifierKind(TextPool, FileTask, HEAD, {"max_length": 128}, "text-classification",
                      "AutoModelForSequenceClassification")


def merge(cfg: MergeConfig, out: Path, **options: Any) -> dict[str, Any]:
    return merge_classifiers(KIND, cfg, out, **options)
