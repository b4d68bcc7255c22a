"""Merge configs: the native YAML schema (unknown keys are errors) and per-tensor parameter values.

    method: ties                       # a registered method name
    base: path/or/hub-id               # unmerged tensors, config and tokenizer come from here
    models:
      - model: path/or/hub-id          # or a peft LoRA adapter folder (merged as base + ΔW)
        parameters: {weight: 1.0}
    parameters: {density: 0.2}         # method parameters, and defaults for per-model ones
    include: []                        # regexes (re.search) of tensors to merge; empty = all
    exclude: [classifier, bias]        # never merged: copied from the base
    dtype: float32                     # compute dtype
    out_dtype: null                    # default: each tensor's dtype in the base
    seed: 0
    device: cpu
    shard_size: 5GB                    # a positive size: bytes, or 200MB, 5GB, 2GiB
    allow_adapter_base_mismatch: false # merge a LoRA adapter whose adapter_config.json names another base
    chat_template: null                # chatml, auto or a Jinja template for the output's tokenizer
    tokenizer_source: null             # base, union or a model of the inputs' one vocabulary
    slices: null                       # mergekit's slices: the output's layers (merging/slices.py)

Every number in ``parameters`` must be finite (NaN and ±Inf are refused here, before any work).

A parameter value is a number, a list of numbers (a gradient interpolated over layer depth: layer i of L at
i/(L−1), tensors outside the layers at the first value), or a list of ``{filter: substring, value: number |
list}`` where the first matching filter wins (no filter or ``*`` matches every tensor): mergekit's forms and rules.
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator

from .errors import MergeError

M = TypeVar("M", bound=BaseModel)

Scalar = float | int | bool | str
ParamValue = Scalar | list[float] | list[dict[str, Any]]
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
          "float16": torch.float16}
DTypeName = Literal["float32", "float64", "bfloat16", "float16"]
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
LAYER = re.compile(r"\.(\d+)\.")  # the (first) layer index in a tensor name: model.layers.3.mlp…


def _finite(value: Any, where: str) -> None:
    """Raise ValueError if a number inside a parameter value (scalar, gradient, filter rules) is NaN or ±Inf."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"parameter '{where}' is {value}; expected a finite number")
    if isinstance(value, list):
        for item in value:
            _finite(item.get("value") if isinstance(item, dict) else item, where)


def _finite_parameters(parameters: dict[str, ParamValue]) -> dict[str, ParamValue]:
    for key, value in parameters.items():
        _finite(value, key)
    return parameters


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    parameters: dict[str, ParamValue] = {}
    task: str | None = None  # data-driven merges (``data:``): the task this checkpoint was fine-tuned on

    _check_parameters = field_validator("parameters")(_finite_parameters)


class SliceSource(ModelEntry):
    """A model's layers [start, end) in a slice, with its parameters (they win over the slice's and the top's)."""

    layer_range: tuple[int, int]

    @field_validator("layer_range")
    @classmethod
    def _range(cls, layer_range: tuple[int, int]) -> tuple[int, int]:
        if not 0 <= layer_range[0] < layer_range[1]:
            raise ValueError(f"layer_range {list(layer_range)} must be [start, end] with 0 <= start < end")
        return layer_range


class Slice(BaseModel):
    """Consecutive output layers (mergekit's slice): layer i of the slice merges layer start + i of each
    source; ``base_range`` is where the base's layers come from (default: the first source's range)."""

    model_config = ConfigDict(extra="forbid")
    sources: list[SliceSource] = Field(min_length=1)
    base_range: tuple[int, int] | None = None
    parameters: dict[str, ParamValue] = {}

    _check_parameters = field_validator("parameters")(_finite_parameters)

    @property
    def length(self) -> int:
        first = self.sources[0].layer_range
        return first[1] - first[0]


class MergeConfig(BaseModel):
    """A validated merge run."""

    model_config = ConfigDict(extra="forbid")
    method: str
    base: str
    models: list[ModelEntry] = Field(min_length=1)
    parameters: dict[str, ParamValue] = {}
    include: list[str] = []
    exclude: list[str] = []
    dtype: DTypeName = "float32"
    out_dtype: DTypeName | None = None
    seed: StrictInt = 0
    device: str = "cpu"
    shard_size: StrictInt | str = "5GB"
    # elements per chunk: 1 << 17 amortises the per-read overhead (task_arithmetic 3.2 s vs 5.3 s at 1 << 15 on
    # scripts/bench_merge.sh; peak RSS +0–15 %); results never depend on it (random draws are per block)
    chunk_size: StrictInt = Field(1 << 17, gt=0)
    allow_adapter_base_mismatch: bool = False
    chat_template: str | None = None  # the output's: chatml, auto or a template (merging/chat_template.py)
    tokenizer_source: str | None = None  # base, union or a model (merging/tokenizer_source.py)
    slices: list[Slice] | None = None  # the output's layers slice by slice (merging/slices.py); models: every source
    origin: Literal["native", "mergekit"] = "native"
    data: dict[str, Any] | None = None  # data-driven merges: the tasks' data (merging/data_merge.py checks it)

    _check_parameters = field_validator("parameters")(_finite_parameters)

    @field_validator("device")
    @classmethod
    def _device(cls, device: str) -> str:
        try:
            kind = torch.device(device).type
        except (RuntimeError, ValueError):
            kind = None
        if kind not in ("cpu", "cuda"):
            raise ValueError(f"device {device!r} is not supported; expected cpu, cuda or cuda:N")
        return device

    @field_validator("shard_size")
    @classmethod
    def _positive_size(cls, size: int | str) -> int | str:
        if shard_bytes(size) < 1:
            raise ValueError(f"shard_size {size!r} must be a positive size such as 200MB or 5GB")
        return size

    @field_validator("include", "exclude")
    @classmethod
    def _compile(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(f"invalid regex {pattern!r}: {err}") from None
        return patterns

    @field_validator("slices")
    @classmethod
    def _slices(cls, slices: list[Slice] | None) -> list[Slice] | None:
        for index, piece in enumerate(slices or []):
            ranges = [list(s.layer_range) for s in piece.sources] + [list(piece.base_range or piece.sources[0]
                                                                          .layer_range)]
            if len({r[1] - r[0] for r in ranges}) > 1:
                raise ValueError(f"slices[{index}]: every source (and base_range) must span the same number of "
                                 f"layers, got {ranges}")
        return slices

    @property
    def shard_bytes(self) -> int:
        return shard_bytes(self.shard_size)

    def merges(self, name: str) -> bool:
        """Whether tensor ``name`` is merged (else copied from the base)."""
        if self.include and not any(re.search(p, name) for p in self.include):
            return False
        return not any(re.search(p, name) for p in self.exclude)


def shard_bytes(size: int | str) -> int:
    """Bytes of a shard size: an int, or a string such as ``200MB``, ``5GB``, ``2GiB``."""
    if isinstance(size, int):
        return size
    match = _SIZE.match(size)
    if not match:
        raise ValueError(f"shard_size {size!r} is not a size such as 200MB or 5GB")
    return int(float(match.group(1)) * _UNITS[(match.group(2) or "").lower()])


MAX_YAML_VALUES = 100_000  # far above any config; a few lines of nested YAML aliases expand to billions


def _expanded_size(value: Any, budget: int) -> int:
    """How many values ``value`` holds once YAML aliases are expanded, counting no further than ``budget``."""
    count, stack = 0, [value]
    while stack and count <= budget:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return count


def read_yaml(path: Path, what: str = "config file") -> Any:
    """The YAML document in ``path``; a missing file, non-UTF-8 bytes, a syntax error or a document that
    expands (through aliases) to more than ``MAX_YAML_VALUES`` values is a MergeError."""
    if not path.is_file():
        raise MergeError(f"{what} '{path}' does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        if _expanded_size(raw, MAX_YAML_VALUES) > MAX_YAML_VALUES:
            raise MergeError(f"{path}: expands to more than {MAX_YAML_VALUES} values (nested YAML aliases?); "
                             "expected a config")
        return raw
    except UnicodeDecodeError as err:
        raise MergeError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason})") from None
    except yaml.YAMLError as err:
        raise MergeError(f"{path}: invalid YAML ({' '.join(str(err).split())})") from None
    except RecursionError:
        raise MergeError(f"{path}: nested too deeply to be a config") from None
    except OSError as err:
        raise MergeError(f"{path}: {err.strerror}") from None


def read_mapping(path: Path, what: str = "file") -> dict[str, Any]:
    """The mapping at the top of YAML file ``path``; a missing file (``what`` names it), non-UTF-8 bytes,
    invalid YAML or another top level (a list, a scalar, nothing) is a MergeError that names the file."""
    raw = read_yaml(Path(path), what)
    if not isinstance(raw, dict):
        raise MergeError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    return raw


def read_validated(path: Path, schema: type[M], what: str = "file", extra: dict[str, Any] | None = None) -> M:
    """The mapping of YAML file ``path`` (``read_mapping``, with the ``extra`` keys added) validated by the
    pydantic model ``schema``; a validation error is a MergeError naming the file and each bad key."""
    try:
        return schema.model_validate({**read_mapping(path, what), **(extra or {})})
    except ValidationError as err:
        raise MergeError(f"{path}: {describe_errors(err, 'key')}") from None


def parse_value(text: str, where: str) -> Any:
    """A command-line value read as YAML (``0.2``, ``true``, ``[1, 2]``, ``abc``); a syntax error or a tag
    (``!!python/object``: safe_load never builds objects) is a MergeError naming ``where``."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise MergeError(f"{where} {text!r}: not a YAML value ({' '.join(str(err).split())[:160]})") from None


def load_config(path: str | Path) -> MergeConfig:
    """Read a native or mergekit YAML file (mergekit's has ``merge_method``) into a MergeConfig."""
    path = Path(path)
    raw = read_mapping(path, "config file")
    if "merge_method" in raw:
        from .mergekit_yaml import from_mergekit

        raw = from_mergekit(raw, path)
    return validate_config(raw, path)


def shown(value: Any, limit: int = 200) -> str:
    """``repr(value)`` cut to ``limit`` characters, for error messages about values of any size."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def _problem(error: dict[str, Any]) -> str:
    loc = error["loc"]
    where = f"key '{'.'.join(str(p) for p in loc) or '(top)'}'"
    if error["type"] == "extra_forbidden":  # say which keys are allowed there
        schema = ModelEntry if len(loc) == 3 and loc[0] == "models" else MergeConfig
        allowed = sorted(set(schema.model_fields) - {"origin"})
        return f"{where}: unknown key (got {shown(error['input'])}); expected one of {allowed}"
    return f"{where}: {error['msg']}{' (got ' + shown(error['input']) + ')' if error['type'] != 'missing' else ''}"


def describe_errors(err: ValidationError, noun: str = "parameter") -> str:
    """A pydantic validation error as one line: which {noun}, what is wrong, what was given."""
    return "; ".join(f"{noun} '{'.'.join(map(str, e['loc']))}': {e['msg']} (got {shown(e.get('input'))})"
                     for e in err.errors())


def validate_config(raw: dict[str, Any], source: str | Path = "<config>") -> MergeConfig:
    try:
        return MergeConfig.model_validate(raw)
    except RecursionError:
        raise MergeError(f"{source}: nested too deeply to be a config") from None
    except ValidationError as err:
        raise MergeError(f"{source}: {'; '.join(_problem(e) for e in err.errors())}") from None


def _leaves(value: Any) -> list[Any]:
    """Every value a per-tensor parameter takes: itself, each point of a gradient, each filter rule's value."""
    if isinstance(value, list) and value:
        return [leaf for item in value for leaf in _leaves(item.get("value") if isinstance(item, dict) else item)]
    return [value]


def check_parameters(method: str, point: dict[str, Any], schemas: Sequence[type[BaseModel]],
                     per_tensor: bool = False) -> None:
    """Check the parameters ``point`` of ``method`` against its pydantic ``schemas``: a key belongs to the
    first schema that has it (by alias, e.g. ``lambda``); an unknown key, a wrong type or a value out of range
    is a MergeError naming the key, the value and what was expected. ``per_tensor``: the values may be
    gradients or filter rules (merge-engine methods), and every value they hold is checked."""
    keys = [{field.alias or name for name, field in schema.model_fields.items()} for schema in schemas]
    known = sorted(set().union(*keys))
    unknown = sorted(set(point) - set(known))
    if unknown:
        raise MergeError(f"method '{method}' has no parameter(s) {unknown}; "
                         + (f"its parameters: {known}" if known else "it takes no parameters"))
    leaves = {k: _leaves(v) if per_tensor else [v] for k, v in point.items()}
    taken: set[str] = set()
    for schema, names in zip(schemas, keys):
        mine = {k: values for k, values in leaves.items() if k in names and k not in taken}
        taken |= names
        for index in range(max(map(len, mine.values()), default=1)):  # each value of each key at least once
            try:
                schema.model_validate({k: values[min(index, len(values) - 1)] for k, values in mine.items()})
            except ValidationError as err:
                raise MergeError(f"method '{method}': {describe_errors(err)}") from None


def layer_position(name: str, num_layers: int) -> float:
    """Depth t of tensor ``name`` in [0, 1] for gradient parameters, mergekit's rule (plan.py): layer i of L
    is i/(L−1), the one layer of a one-layer model is at 1, and every tensor outside the numbered layers
    (embeddings, final norm, output head) is at 0, the gradient's first value."""
    match = LAYER.search(name)
    if not match:
        return 0.0
    return min(int(match.group(1)) / (num_layers - 1), 1.0) if num_layers > 1 else 1.0


def count_layers(names: list[str]) -> int:
    indices = [int(m.group(1)) for n in names if (m := LAYER.search(n))]
    return max(indices) + 1 if indices else 1


def resolve_value(value: ParamValue, name: str, position: float, key: str) -> Any:
    """The value of parameter ``key`` for tensor ``name`` at depth ``position``."""
    if isinstance(value, list) and value and isinstance(value[0], dict):
        for rule in value:
            unknown = set(rule) - {"filter", "value"}
            if unknown or "value" not in rule:
                raise MergeError(f"parameter '{key}': each rule needs 'value' and optionally 'filter', "
                                 f"got keys {sorted(rule)}")
            if rule.get("filter") in (None, "", "*") or rule["filter"] in name:  # "*": mergekit's match-all
                return resolve_value(rule["value"], name, position, key)
        raise MergeError(f"parameter '{key}': no rule matches tensor '{name}' (add a rule without 'filter')")
    if isinstance(value, list):
        if not value or not all(isinstance(v, (int, float)) for v in value):
            raise MergeError(f"parameter '{key}': a gradient must be a non-empty list of numbers, got {value}")
        if len(value) == 1:
            return value[0]
        scaled = position * (len(value) - 1)  # mergekit's interpolation (config.evaluate_setting), term by term
        lo = int(scaled)
        hi = min(len(value) - 1, lo + 1)
        return (1 - (scaled - lo)) * value[lo] + (scaled - lo) * value[hi]
    return value
