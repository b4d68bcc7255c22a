"""The image domain's plug-in for merging/benchmark: task models of the pool's family (vision/models.py:
EfficientNet-Lite with a linear head per task, CLIP with zero-shot heads, or a transformers classifier),
batches of normalised pictures, pooled features for the probe, and the BatchNorm running statistics of a
merge (merging/batchnorm.py)."""
from __future__ import annotations

import functools
import json
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
        if pool.data == "files":
            return pool.files[task].spec(task)
        if pool.data == "offline":
            return data.task_spec(task)
        if pool.data == "hub":
            from .hub import hub_spec, repo

            return hub_spec(task, repo(pool, task))
        raise MergeError(f"pool '{pool.name}': unknown data '{pool.data}' for the vision domain; expected "
                         f"offline, hub or files")

    def examples(self, pool, task: str, split: str) -> data.PictureSet:
        if pool.data == "files":
            from .files import examples

            return examples(pool.files[task], task, split, pool.image_size)
        if pool.data == "hub":
            from .hub import hub_splits, repo

            return hub_splits(task, repo(pool, task), pool.image_size)[split]
        return data.load_split(task, split)

    def load_model(self, pool, folder: Path, task: str, fresh_head: bool = False) -> torch.nn.Module:
        if pool.model == "clip":  # the zero-shot head is the task's whatever the folder: nothing to refresh
            return models.ZeroShotClassifier(models.load_clip_vision(folder), **self.zero_shot_head(pool, task))
        num_labels = self.spec(pool, task).num_labels if fresh_head else None
        if pool.model == "hf":
            return models.load_hf(folder, num_labels)
        return models.load_efficientnet(folder, num_labels)

    def given_folder(self, pool, task: str, source: Path) -> Path:
        """hf pools: a given checkpoint whose files do not hold the model's in-memory tensor names is rewritten
        with them once, into the pool's cache (vision/models.py)."""
        if pool.model != "hf":
            return source
        from merging.benchmark.store import DONE, check_source, pool_dir
        from merging.io.atomic import atomic_directory

        target = pool_dir(pool) / "given" / task
        if (target / DONE).is_file():
            check_source(pool, target / DONE, "source", str(source))
            return target
        if _holds_memory_names(str(source)):
            return source  # read it where it is
        with atomic_directory(target, overwrite=True) as tmp:
            models.save_hf(models.load_hf(source), tmp)
            (tmp / DONE).write_text(json.dumps({"source": str(source)}) + "\n")
        return target

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
        elif hasattr(model, "config"):
            models.save_hf(model, folder)
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
        pixels = {"clip": models.clip_pixels, "hf": models.hf_pixels}.get(pool.model, models.efficientnet_pixels)
        return {**pixels(images, pool.image_size), "labels": labels}

    @torch.no_grad()
    def features(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        if isinstance(model, models.ZeroShotClassifier):
            return model.embed(inputs["pixel_values"])  # [b, p]
        if "pixel_values" in inputs:  # hf: the backbone's pooled output, else its first token
            out = model.base_model(pixel_values=inputs["pixel_values"])
            pooled = getattr(out, "pooler_output", None)
            return pooled.flatten(1) if pooled is not None else out.last_hidden_state[:, 0]
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


@functools.cache
def _holds_memory_names(folder: str) -> bool:
    """Whether the checkpoint files in ``folder`` hold every tensor of its model under its in-memory name."""
    from merging.io.candidates import CheckpointSource

    try:
        with CheckpointSource(folder, list(models.load_hf(Path(folder)).state_dict())):
            return True
    except MergeError:
        return False


VISION = VisionDomain()
