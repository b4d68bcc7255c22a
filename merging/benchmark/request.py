"""Checks that the command lines run before any download, data preparation, fine-tuning or scoring, so that a bad
method parameter or model folder is named at once rather than after an hour of work. Each command line has one
``validate_request`` built from these: ``python -m discriminative | vision`` (merging/benchmark/cli.py) and
``python -m generative`` (generative/__main__.py)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from merging.checkpoint import HUB_ID
from merging.config import describe_errors
from merging.errors import MergeError
from merging.registry import METHODS, known_methods


def check_local(ref: str, what: str) -> None:
    """A model reference that names a local path must exist; ``package:`` references and hub ids
    (``owner/name``) are fetched later, by ``merging.checkpoint.resolve_model_ref``."""
    if ref.startswith("package:") or Path(ref).expanduser().exists():
        return
    if ref.startswith((".", "/", "~")) or not HUB_ID.match(ref):
        raise MergeError(f"{what} '{ref}' does not exist (and is not a Hugging Face hub id of the form "
                         "'owner/name')")


def engine_methods() -> list[str]:
    """The methods the merge engine runs on full checkpoints (not the LoRA-adapter methods such as from_lora)."""
    return [name for name in known_methods() if name in METHODS]


def engine_schemas(method: str) -> tuple[type[BaseModel], ...]:
    """A merge-engine method's parameter schemas: its own, then the per-model ones (a per-model key given with
    the method's parameters is every model's default, as in merging/run.py ``build_method``)."""
    return METHODS[method].Params, METHODS[method].ModelParams


def _representative(value: Any) -> Any:
    """One value a merge-engine parameter takes: a gradient's first point, the first filter rule's value."""
    while isinstance(value, list) and value:
        value = value[0].get("value") if isinstance(value[0], dict) else value[0]
    return value


def check_parameters(method: str, point: dict[str, Any], schemas: Sequence[type[BaseModel]],
                     per_tensor: bool = False) -> None:
    """Check the parameters ``point`` of ``method`` against its pydantic ``schemas``: a key belongs to the
    first schema that has it (by alias, e.g. ``lambda``); an unknown key, a wrong type or a value out of range
    is a MergeError naming the key, the value and what was expected. ``per_tensor``: the values may be
    gradients or filter rules (merge-engine methods), checked by their first value."""
    keys = [{field.alias or name for name, field in schema.model_fields.items()} for schema in schemas]
    known = sorted(set().union(*keys))
    unknown = sorted(set(point) - set(known))
    if unknown:
        raise MergeError(f"method '{method}' has no parameter(s) {unknown}; "
                         + (f"its parameters: {', '.join(known)}" if known else "it takes no parameters"))
    taken: set[str] = set()
    for schema, names in zip(schemas, keys):
        values = {k: _representative(v) if per_tensor else v for k, v in point.items()
                  if k in names and k not in taken}
        taken |= names
        try:
            schema.model_validate(values)
        except ValidationError as err:
            raise MergeError(f"method '{method}': {describe_errors(err)}") from None
