"""``data.kind: image_classification`` for the merge command line (merging/data_merge.py): any transformers
``AutoModelForImageClassification`` folders (ViT, …), each with its own head, merged by a data-driven method on
the user's image tables (vision/files.py) through merging/benchmark/merge_data.py. Its own data key:
``image_size`` (pixels the pictures are resized and centre-cropped to; default 224); its default head: ``HEAD``.
Pixels are scaled to [-1, 1] (``vision.models.hf_pixels``), the ViT convention."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from merging.benchmark.merge_data import ClassifierKind, merge_classifiers
from merging.config import MergeConfig

from .files import ImageFiles
from .pool import VisionPool

HEAD = (r"^classifier\.",)
KIND = ClassifierKind(VisionPool, ImageFiles, HEAD, {"model": "hf", "image_size": 224}, "image-classification",
                      "AutoModelForImageClassification")


def merge(cfg: MergeConfig, out: Path, **options: Any) -> dict[str, Any]:
    return merge_classifiers(KIND, cfg, out, **options)
