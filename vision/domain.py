"""The image domain's plug-in for merging/benchmark: task models of the pool's family (vision/models.py:
EfficientNet-Lite with a linear head per task, or CLIP with zero-shot heads), batches of normalised pictures,
pooled features for the probe, and the BatchNorm running statistics of a merge (merging/batchnorm.py)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from merging.batchnorm import MODES, STATISTICS, average_statistics, reestimate_statistics
from merging.benchmark.body import read_body, with_merged_body
from merging.benchmark.domain import Domain, TaskSpec
from merging.errors import MergeError

from . import data, models


class VisionDomain(Domain):
    name = "vision"
    statistics = STATISTICS

    def spec(self, pool, task: str) -> TaskSpec:
        if pool.data == "offline":
            return data.task_spec(task)
        if pool.data == "hub":
            from .hub import hub_spec, repo

            return hub_spec(task, repo(pool, task))
        raise MergeError(f"pool '{pool.name}': unknown data '{pool.data}' for the vision domain; expected "
                         f"offline or hub")

    def examples(self, pool, task: str, split: str) -> data.PictureSet:
        if pool.data == "hub":
            from .hub import hub_splits, repo

            return hub_splits(task, repo(pool, task), pool.image_size)[split]
        return data.load_split(task, split)

    def load_model(self, pool, folder: Path, task: str, fresh_head: bool = False) -> torch.nn.Module:
        if pool.model == "clip":  # the zero-shot head is the task's whatever the folder: nothing to refresh
            return models.ZeroShotClassifier(models.load_clip_vision(folder), **self.zero_shot_head(pool, task))
        return models.load_efficientnet(folder, self.spec(pool, task).num_labels if fresh_head else None)

    def zero_shot_head(self, pool, task: str) -> dict[str, torch.Tensor]:
        """The task's stored head (``heads/<task>.safetensors`` of the pool), else computed from the base CLIP's
        text encoder and the task's class names, and kept in the pool's cache folder."""
        from merging.benchmark.store import pool_dir

        if pool.heads:
            return models.read_head(Path(pool.heads) / f"{task}.safetensors")
        path = pool_dir(pool) / "heads" / f"{task}.safetensors"
        if not path.is_file():
            models.write_head(path, models.zero_shot_head(pool.base, self.spec(pool, task).label_names,
                                                          tuple(pool.templates)))
        return models.read_head(path)

    def save_model(self, model: torch.nn.Module, processor: Any, folder: Path) -> None:
        if isinstance(model, models.ZeroShotClassifier):
            models.save_clip(model, folder)
        else:
            models.save_efficientnet(model, folder)

    def processor(self, pool, folder: Path) -> None:
        return None  # pictures need no saved preprocessing: the family's pixels() at the pool's image_size

    def collate(self, pool, processor, examples: Sequence[data.Picture], train: bool = False
                ) -> dict[str, torch.Tensor]:
        if isinstance(examples, data.PictureSet):
            images, labels = examples.images, examples.labels
        else:
            images, labels = torch.stack([e.pixels for e in examples]), torch.tensor([e.label for e in examples])
        pixels = models.clip_pixels if pool.model == "clip" else models.efficientnet_pixels
        return {**pixels(images, pool.image_size), "labels": labels}

    @torch.no_grad()
    def features(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        if isinstance(model, models.ZeroShotClassifier):
            return model.embed(inputs["pixel_values"])  # [b, p]
        return model.extract_features(inputs["inputs"]).mean((2, 3))  # global average pool, [b, 1280]

    def prepare(self, pool) -> None:
        if pool.data == "offline":
            data.prepare(pool.tasks)
        else:
            for task in pool.tasks:
                self.examples(pool, task, "train")

    def finish(self, pool, body: dict[str, torch.Tensor], candidates: list[Path], statistic_names: list[str],
               mode: str = "average") -> dict[str, torch.Tensor]:
        """BatchNorm statistics of the merge: the candidates' mean (``average``), or re-estimated on the proxy
        pictures of the pool's tasks, labels unused (``reestimate``)."""
        if mode not in MODES:
            raise MergeError(f"statistics '{mode}' unknown; expected one of {', '.join(MODES)}")
        body = {**body, **average_statistics([read_body(folder, statistic_names) for folder in candidates])}
        if mode == "reestimate":
            model = with_merged_body(self.load_model(pool, candidates[0], pool.tasks[0]), body, pool.head)
            batches = [{k: v for k, v in self.collate(pool, None, proxy[i:i + 64]).items() if k != "labels"}
                       for proxy in (self.examples(pool, task, "proxy") for task in pool.tasks)
                       for i in range(0, len(proxy), 64)]
            body = {**body, **reestimate_statistics(model, batches)}
        return body


VISION = VisionDomain()
