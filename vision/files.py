"""Image tasks from a user's own files (merging/benchmark/files.py has the splits, sources and labels): each task
adds its image column: a path to an image file (relative to the table's folder), or the image itself in a hub
data set's split. Pictures are resized and centre-cropped to the pool's ``image_size`` as the hub tasks are.

    files:
      defects: {proxy: data/defects_proxy.csv, test: data/defects_test.csv, image: path, label: label,
                num_labels: 2}
"""
from __future__ import annotations

import functools
from pathlib import Path

import torch

from merging.benchmark.files import HubSplit, TaskFiles, split_rows
from merging.errors import MergeError
from merging.io.tables import require_columns

from .data import PictureSet
from .hub import picture


class ImageFiles(TaskFiles):
    image: str = "image"


def examples(task: ImageFiles, name: str, split: str, size: int) -> PictureSet:
    """The pictures of ``split`` of task ``name`` at ``size``; read once per process."""
    return _read(task.model_dump_json(), name, split, size)


@functools.cache
def _read(task_json: str, name: str, split: str, size: int) -> PictureSet:
    from PIL import Image, UnidentifiedImageError

    task = ImageFiles.model_validate_json(task_json)
    rows, where = split_rows(task, name, split)
    require_columns(rows, [task.image, task.label], where)
    source = task.source(split)
    folder = Path(source).parent if not isinstance(source, HubSplit) else Path()
    images, labels = [], []
    for index, row in enumerate(rows, 1):
        value, at = row[task.image], f"{where}: row {index}, column {task.image!r}"
        if isinstance(value, str):
            path = folder / value
            try:
                with Image.open(path) as image:
                    images.append(picture(image, size))
            except (OSError, UnidentifiedImageError) as err:
                raise MergeError(f"{at}: cannot read image '{path}' ({type(err).__name__})") from None
        elif hasattr(value, "convert"):  # a PIL image (hub data sets)
            images.append(picture(value, size))
        else:
            raise MergeError(f"{at}: expected an image file path, got {value!r}")
        labels.append(task.label_of(row[task.label], f"{where}: row {index}, column {task.label!r}"))
    return PictureSet(torch.stack(images), torch.tensor(labels))
