"""LoRA adapter folders (peft layout) in and out.

A peft LoRA adapter stores, per adapted ``nn.Linear`` of a base model, two factors

    A: [r, in]   (``...<module>.lora_A[.<adapter>].weight``)
    B: [out, r]  (``...<module>.lora_B[.<adapter>].weight``)

and the update it adds to the base weight W [out, in] is (Hu et al., "LoRA", arXiv 2106.09685)

    ΔW = s · B · A,   s = lora_alpha / r   (s = lora_alpha / √r with ``use_rslora``).

``fan_in_fan_out`` (GPT-2 ``Conv1D``, base weight stored [in, out]) keeps A and B as above and adds
ΔWᵀ; ``delta``/``delta_rows`` return ΔW in the base parameter's own layout. Per-module ``rank_pattern`` /
``alpha_pattern`` overrides are honoured (the rank is always read from A's shape and checked against the
config). Tensors that are not LoRA factors (``modules_to_save`` copies, biases saved with
``bias="all"``, trainable-token deltas) are kept, under their base-model names, in ``LoraAdapter.extra``:
reading never drops them silently; consumers that cannot use them must refuse them.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import MergeError

CONFIG_NAME = "adapter_config.json"
SAFETENSORS_NAME = "adapter_model.safetensors"
BIN_NAME = "adapter_model.bin"
PREFIX = "base_model.model."  # peft's prefix in front of every base-model module name
# <module>.lora_A.weight or <module>.lora_A.<adapter name>.weight (older peft / multi-adapter saves)
_FACTOR_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<which>A|B)(?:\.(?P<adapter>[^.]+))?\.weight$")
_UNSUPPORTED_LORA_KEY = re.compile(r"\.lora_(embedding_A|embedding_B|magnitude_vector|A|B)\b")
_UNSUPPORTED_CONFIG = {  # key -> value that means "feature not used"
    "use_dora": False, "target_parameters": None, "layer_replication": None,
}


@dataclass
class LoraAdapter:
    """One LoRA adapter read into memory (float32).

    ``factors[name] = (A [r, in], B [out, r])`` where ``name`` is the BASE MODEL parameter name
    (``model.layers.0.self_attn.q_proj.weight``); ``scalings[name]`` is that module's s (equal to
    ``scaling`` unless ``alpha_pattern``/``rank_pattern`` override it); ``rank``/``alpha``/``scaling``
    are the config-level r, lora_alpha and s; ``extra`` holds non-LoRA tensors by base-model name.
    """

    path: Path
    config: dict[str, Any]
    rank: int
    alpha: float
    scaling: float
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]]
    scalings: dict[str, float] = field(default_factory=dict)
    fan_in_fan_out: bool = False
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    def _factors_of(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if name not in self.factors:
            known = sorted(self.factors)
            raise MergeError(f"LoRA adapter '{self.path}' has no factors for parameter '{name}'; it adapts "
                             f"{len(known)} parameters, e.g. {known[:5]}")
        return self.factors[name]

    def delta_shape(self, name: str) -> tuple[int, int]:
        """Shape of ΔW for ``name`` in the base parameter's layout: (out, in), or (in, out) if fan_in_fan_out."""
        a, b = self._factors_of(name)
        return (a.shape[1], b.shape[0]) if self.fan_in_fan_out else (b.shape[0], a.shape[1])

    def delta(self, name: str) -> torch.Tensor:
        """ΔW = s · B · A [out, in] (its transpose [in, out] when fan_in_fan_out)."""
        return self.delta_rows(name, 0, self.delta_shape(name)[0])

    def delta_rows(self, name: str, row_start: int, row_stop: int) -> torch.Tensor:
        """Rows [row_start, row_stop) of ``delta(name)`` without forming the rest:
        s · B[rows] · A  ([rows, in]), or s · A[:, rows]ᵀ · Bᵀ ([rows, out]) when fan_in_fan_out."""
        a, b = self._factors_of(name)  # [r, in], [out, r]
        n_rows = self.delta_shape(name)[0]
        if not 0 <= row_start <= row_stop <= n_rows:
            raise MergeError(f"LoRA adapter '{self.path}', parameter '{name}': row range [{row_start}, "
                             f"{row_stop}) is outside 0..{n_rows}")
        s = self.scalings.get(name, self.scaling)
        if self.fan_in_fan_out:
            return s * (a[:, row_start:row_stop].T @ b.T)  # [rows, r] @ [r, out] -> [rows, out]
        return s * (b[row_start:row_stop] @ a)  # [rows, r] @ [r, in] -> [rows, in]


def is_lora_adapter(path: str | Path) -> bool:
    """True for a folder holding ``adapter_config.json`` (a peft adapter folder)."""
    path = Path(path)
    return path.is_dir() and (path / CONFIG_NAME).is_file()


def _read_config(path: Path) -> dict[str, Any]:
    config_path = path / CONFIG_NAME
    if not config_path.is_file():
        raise MergeError(f"'{path}' is not a LoRA adapter folder: '{CONFIG_NAME}' is missing")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise MergeError(f"'{config_path}' is not valid UTF-8 JSON ({err}); expected a peft LoRA config") from None
    if not isinstance(config, dict):
        raise MergeError(f"'{config_path}' holds a JSON {type(config).__name__}; expected an object "
                         "(a peft LoRA config)")
    if config.get("peft_type") != "LORA":
        raise MergeError(f"'{config_path}': peft_type is {config.get('peft_type')!r}, expected 'LORA'")
    _check_number(config_path, "r", config.get("r"), integer=True)
    _check_number(config_path, "lora_alpha", config.get("lora_alpha"), integer=False)
    for key, integer in (("rank_pattern", True), ("alpha_pattern", False)):
        patterns = config.get(key) or {}
        if not isinstance(patterns, dict):
            raise MergeError(f"'{config_path}': '{key}' is {patterns!r}; expected an object {{module pattern: "
                             "value}")
        for pattern, value in patterns.items():
            _check_number(config_path, f"{key}[{pattern!r}]", value, integer)
    for key, unused in _UNSUPPORTED_CONFIG.items():
        if config.get(key, unused) not in (unused, [], {}):
            raise MergeError(f"'{config_path}': '{key}' = {config[key]!r} is not supported "
                             f"(only plain LoRA on Linear layers; expected {unused!r})")
    return config


def _check_number(config_path: Path, key: str, value: Any, integer: bool) -> None:
    """Refuse a config value that is not a positive integer (``integer``) or a positive finite number."""
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not 0 < value < math.inf:
        raise MergeError(f"'{config_path}': '{key}' is {value!r}, expected a positive "
                         f"{'integer' if integer else 'finite number'}")


def _load_reason(err: Exception) -> str:
    """The reason inside a torch.load error: its weights-only message wraps it between a first paragraph
    (advice to retry with weights_only=False, wrong for an untrusted file) and a last one (a docs link)."""
    paragraphs = [p.strip() for p in str(err).split("\n\n") if p.strip()]
    return f"{type(err).__name__}: {' '.join(paragraphs[1:-1] or paragraphs)}"[:300]


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if (path / SAFETENSORS_NAME).is_file():
        try:
            return load_file(str(path / SAFETENSORS_NAME))
        except SafetensorError as err:
            raise MergeError(f"'{path / SAFETENSORS_NAME}' is not a readable safetensors file ({err}); expected "
                             "an 8-byte header length, a JSON header and the tensor data it describes") from None
    if (path / BIN_NAME).is_file():
        try:
            state = torch.load(path / BIN_NAME, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 (a damaged file raises anything from EOFError to struct.error)
            raise MergeError(f"'{path / BIN_NAME}' cannot be loaded ({_load_reason(err)}); expected a torch.save "
                             "file of tensors (read with weights_only=True: pickled code is refused)") from None
        if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                  for k, v in state.items()):
            raise MergeError(f"'{path / BIN_NAME}' is not a state dict of tensors; expected "
                             "{parameter name: tensor}")
        return state
    raise MergeError(f"LoRA adapter '{path}' has no weights: expected '{SAFETENSORS_NAME}' or '{BIN_NAME}'")


def _pattern_value(patterns: dict[str, Any], module: str, what: str, path: Path) -> Any | None:
    """The ``rank_pattern``/``alpha_pattern`` value for ``module``: a key matches when the module name
    ends with it at a dot boundary (keys may be regular expressions). Conflicting matches are an error."""
    try:
        values = {key: value for key, value in patterns.items()
                  if re.fullmatch(rf"(?:.*\.)?(?:{key})", module)}
    except re.error as err:
        raise MergeError(f"'{path / CONFIG_NAME}': a {what} key is not a valid pattern: {err}") from err
    if len(set(values.values())) > 1:
        raise MergeError(f"'{path / CONFIG_NAME}': {what} keys {sorted(values)} all match module "
                         f"'{module}' with different values {values}; expected at most one value per module")
    return next(iter(values.values()), None)


def _scaling(alpha: float, rank: int, rslora: bool) -> float:
    return alpha / math.sqrt(rank) if rslora else alpha / rank


def read_lora_adapter(path: str | Path) -> LoraAdapter:
    """Read ``adapter_config.json`` and ``adapter_model.safetensors`` (else ``adapter_model.bin``, loaded
    with ``weights_only=True``) from a peft LoRA folder; factors become float32, keyed by base-model
    parameter name. Raises MergeError naming the folder and key for anything it cannot represent."""
    path = Path(path)
    config = _read_config(path)
    tensors = _read_tensors(path)
    rank, alpha, rslora = int(config["r"]), float(config["lora_alpha"]), bool(config.get("use_rslora"))
    rank_pattern, alpha_pattern = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
    halves: dict[str, dict[str, torch.Tensor]] = {}
    adapter_names: dict[str, str | None] = {}
    extra: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        if not key.startswith(PREFIX):
            raise MergeError(f"LoRA adapter '{path}': key '{key}' does not start with '{PREFIX}' "
                             "(expected peft's save_pretrained layout)")
        if not torch.isfinite(tensor).all():
            raise MergeError(f"LoRA adapter '{path}': tensor '{key}' holds NaN or Inf values")
        match = _FACTOR_KEY.match(key)
        if match is None:
            if _UNSUPPORTED_LORA_KEY.search(key):
                raise MergeError(f"LoRA adapter '{path}': tensor '{key}' is not supported (only 2-D lora_A/"
                                 "lora_B weights of Linear layers; no embedding LoRA, DoRA or lora_bias)")
            extra[key[len(PREFIX):].replace(".base_layer.", ".")] = tensor.float()  # peft's wrapper prefix
            continue
        module = match["module"][len(PREFIX):]
        if adapter_names.setdefault(module, match["adapter"]) != match["adapter"]:
            raise MergeError(f"LoRA adapter '{path}': module '{module}' has factors under several adapter "
                             f"names ({adapter_names[module]!r}, {match['adapter']!r}); expected one adapter")
        if tensor.dim() != 2:
            raise MergeError(f"LoRA adapter '{path}': '{key}' has shape {tuple(tensor.shape)}; expected a "
                             "2-D Linear LoRA factor (convolution LoRA is not supported)")
        halves.setdefault(module, {})[match["which"]] = tensor.float()

    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    scalings: dict[str, float] = {}
    for module, pair in sorted(halves.items()):
        if set(pair) != {"A", "B"}:
            missing = ({"A", "B"} - set(pair)).pop()
            raise MergeError(f"LoRA adapter '{path}': module '{module}' has lora_{set(pair).pop()} but no "
                             f"lora_{missing}; expected both factors")
        a, b = pair["A"], pair["B"]  # [r, in], [out, r]
        r = a.shape[0]
        if b.shape[1] != r:
            raise MergeError(f"LoRA adapter '{path}': module '{module}' has lora_A {tuple(a.shape)} and "
                             f"lora_B {tuple(b.shape)}; expected A [r, in] and B [out, r] with the same r")
        expected_r = _pattern_value(rank_pattern, module, "rank_pattern", path) or rank
        if r != expected_r:
            raise MergeError(f"LoRA adapter '{path}': module '{module}' has rank {r} but the config says "
                             f"{expected_r} (r / rank_pattern)")
        module_alpha = _pattern_value(alpha_pattern, module, "alpha_pattern", path) or alpha
        name = f"{module}.weight"
        factors[name] = (a, b)
        scalings[name] = _scaling(float(module_alpha), r, rslora)
    if not factors:
        raise MergeError(f"LoRA adapter '{path}' holds no lora_A/lora_B factors")
    return LoraAdapter(path=path, config=config, rank=rank, alpha=alpha, scaling=_scaling(alpha, rank, rslora),
                       factors=factors, scalings=scalings, fan_in_fan_out=bool(config.get("fan_in_fan_out")),
                       extra=extra)


def write_lora_adapter(out_dir: Path, factors: dict[str, tuple[torch.Tensor, torch.Tensor]], rank: int,
                       alpha: float, template_config: dict[str, Any], dtype: torch.dtype) -> None:
    """Write a peft LoRA folder: ``adapter_config.json`` and ``adapter_model.safetensors``.

    ``factors[name] = (A [rank, in], B [out, rank])`` by base-model parameter name (``....weight``); the
    loaded update is ΔW = (alpha / rank) · B · A. The config is ``template_config`` with r, lora_alpha and
    target_modules replaced (target_modules lists the exact module names, so peft adapts exactly these
    modules) and the per-module / layer selectors (rank_pattern, alpha_pattern, layers_to_transform,
    layers_pattern, exclude_modules), use_rslora, use_dora and modules_to_save cleared. Writes into
    ``out_dir`` directly: pass the temporary folder of ``atomic_directory``.
    """
    out_dir = Path(out_dir)
    if int(rank) != rank or rank < 1 or not alpha > 0:
        raise MergeError(f"write_lora_adapter('{out_dir}'): rank={rank!r}, alpha={alpha!r}; expected a "
                         "positive integer rank and a positive alpha")
    if not factors:
        raise MergeError(f"write_lora_adapter('{out_dir}'): no factors to write")
    state: dict[str, torch.Tensor] = {}
    modules = []
    for name, (a, b) in sorted(factors.items()):
        if not name.endswith(".weight"):
            raise MergeError(f"write_lora_adapter('{out_dir}'): parameter name '{name}' must end with '.weight'")
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != rank or b.shape[1] != rank:
            raise MergeError(f"write_lora_adapter('{out_dir}'): '{name}' has A {tuple(a.shape)}, B "
                             f"{tuple(b.shape)}; expected A [{rank}, in] and B [out, {rank}]")
        a, b = a.detach().to(dtype).contiguous(), b.detach().to(dtype).contiguous()  # [rank, in], [out, rank]
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            raise MergeError(f"write_lora_adapter('{out_dir}'): factors of '{name}' hold NaN or Inf values "
                             f"(as {dtype})")
        module = name[: -len(".weight")]
        modules.append(module)
        state[f"{PREFIX}{module}.lora_A.weight"] = a
        state[f"{PREFIX}{module}.lora_B.weight"] = b
    config = dict(template_config)
    lora_alpha = int(alpha) if float(alpha).is_integer() else float(alpha)
    config.update(peft_type="LORA", r=int(rank), lora_alpha=lora_alpha, target_modules=modules,
                  rank_pattern={}, alpha_pattern={}, layers_to_transform=None, layers_pattern=None,
                  exclude_modules=None, use_rslora=False, use_dora=False, modules_to_save=None,
                  inference_mode=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_file(state, str(out_dir / SAFETENSORS_NAME), metadata={"format": "pt"})


def check_adapters(adapters: Sequence[LoraAdapter], what: str) -> list[str]:
    """The sorted parameter names the adapters adapt; ``what`` (the method) names the error when they do not
    all adapt the same modules with the same (in, out) shapes and layout, or hold non-LoRA tensors."""
    if not adapters:
        raise MergeError(f"{what}: no LoRA adapters given; expected at least one")
    first = adapters[0]
    for adapter in adapters:
        if adapter.extra:
            raise MergeError(f"{what}: adapter '{adapter.path}' holds non-LoRA tensors "
                             f"{sorted(adapter.extra)[:5]} (modules_to_save / bias); merges only "
                             "lora_A/lora_B factors")
        if adapter.fan_in_fan_out != first.fan_in_fan_out:
            raise MergeError(f"{what}: adapter '{adapter.path}' has fan_in_fan_out={adapter.fan_in_fan_out} "
                             f"but '{first.path}' has {first.fan_in_fan_out}; expected the same layout")
        missing, surplus = set(first.factors) - set(adapter.factors), set(adapter.factors) - set(first.factors)
        if missing or surplus:
            module, verb = (min(missing), "does not adapt") if missing else (min(surplus), "alone adapts")
            raise MergeError(f"{what}: adapter '{adapter.path}' {verb} module '{module}' (compared with "
                             f"'{first.path}'); expected every adapter to target the same modules")
        for name, (a, b) in adapter.factors.items():
            a0, b0 = first.factors[name]
            if (a.shape[1], b.shape[0]) != (a0.shape[1], b0.shape[0]):
                raise MergeError(f"{what}: adapter '{adapter.path}', module '{name}': ΔW is "
                                 f"[{b.shape[0]}, {a.shape[1]}] but '{first.path}' has [{b0.shape[0]}, "
                                 f"{a0.shape[1]}]; expected the same shape")
    return sorted(first.factors)
