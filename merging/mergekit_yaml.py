"""Read mergekit's YAML (mergekit 0.1.x) for the methods both tools share, keeping mergekit's parameter
meanings and defaults:

| mergekit       | here             | notes                                                               |
|----------------|------------------|---------------------------------------------------------------------|
| linear         | average          | ``weight``; normalize default true                                  |
| task_arithmetic| task_arithmetic  | ``weight``, ``lambda``; normalize default false                     |
| ties           | ties             | ``density`` (default 1), ``weight``, ``lambda``; normalize default true; per-tensor trim |
| dare_ties      | dare_ties        | density d -> drop_rate 1−d; ``rescale: true`` -> L1-norm rescale; normalize default false |
| dare_linear    | dare_ta          | as dare_ties without sign election                                  |
| slerp          | slerp            | ``t``; base_model is the t = 0 end                                  |

``int8_mask`` only changes mergekit's memory use and is accepted and ignored. Anything else
(other methods, layer-stacking ``slices``, other tokenizer sources) is an error, not a silent change.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import MergeError

METHOD = {"linear": "average", "task_arithmetic": "task_arithmetic", "ties": "ties",
          "dare_ties": "dare_ties", "dare_linear": "dare_ta", "slerp": "slerp"}
NORMALIZE_DEFAULT = {"linear": True, "task_arithmetic": False, "ties": True, "dare_ties": False,
                     "dare_linear": False}
TOP_KEYS = {"merge_method", "base_model", "models", "slices", "parameters", "dtype", "out_dtype",
            "tokenizer_source", "tokenizer", "chat_template", "name"}
IGNORED_PARAMS = {"int8_mask"}


def _map(value: Any, f: Callable[[float], float]) -> Any:
    """Apply ``f`` to every number inside a mergekit parameter value (scalar, gradient or filter rules)."""
    if isinstance(value, list):
        return [{**v, "value": _map(v["value"], f)} if isinstance(v, dict) else f(v) for v in value]
    return f(value)


def _drop_rate(density: float, where: str) -> float:
    if not isinstance(density, (int, float)) or not 0 < density <= 1:
        raise MergeError(f"{where}: density {density!r} must be a number in (0, 1]")
    return 1.0 - density


def _translate_params(params: dict[str, Any], method: str, where: str) -> dict[str, Any]:
    if not isinstance(params, dict):
        raise MergeError(f"{where}: 'parameters' must be a mapping, got {params!r}")
    out = {}
    for key, value in params.items():
        if key in IGNORED_PARAMS:
            continue
        if key == "density" and method in ("dare_ties", "dare_linear"):
            out["drop_rate"] = _map(value, lambda d: _drop_rate(d, where))
        elif key == "rescale" and method in ("dare_ties", "dare_linear"):
            out["rescale"] = "l1" if value else "none"
        else:
            out[key] = value
    return out


def _models_from_slices(slices: list[dict[str, Any]], path: Path) -> list[dict[str, Any]]:
    if len(slices) != 1 or "sources" not in slices[0]:
        raise MergeError(f"{path}: 'slices' with {len(slices)} slices (layer stacking / passthrough) is not "
                         "supported; only one slice whose sources all cover the same layer range")
    sources = slices[0]["sources"]
    ranges = {tuple(s.get("layer_range", ())) for s in sources}
    if len(ranges) != 1:
        raise MergeError(f"{path}: slice sources with different layer_range {sorted(ranges)} are not supported")
    return [{k: v for k, v in s.items() if k != "layer_range"} for s in sources]


def from_mergekit(raw: dict[str, Any], path: Path) -> dict[str, Any]:
    """Translate a mergekit config mapping into a native one (see the module table)."""
    unknown = set(raw) - TOP_KEYS
    if unknown:
        raise MergeError(f"{path}: unknown mergekit key(s) {sorted(unknown)}; supported: {sorted(TOP_KEYS)}")
    method = raw["merge_method"]
    if method not in METHOD:
        raise MergeError(f"{path}: mergekit merge_method '{method}' is not supported here; "
                         f"supported: {sorted(METHOD)}")
    if raw.get("tokenizer_source") not in (None, "base") or raw.get("tokenizer"):
        raise MergeError(f"{path}: only the base model's tokenizer is supported (tokenizer_source: base)")
    entries = raw.get("models") or (_models_from_slices(raw["slices"], path) if raw.get("slices") else [])
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("model"), str):
            raise MergeError(f"{path}: models[{index}] must be a mapping with a 'model' path, got {entry!r}")
    base = raw.get("base_model")
    others = [e for e in entries if e.get("model") != base]
    if base is not None and not others:
        raise MergeError(f"{path}: no models to merge besides base_model '{base}'")
    if base is None:
        if method not in ("linear",):
            raise MergeError(f"{path}: merge_method '{method}' needs base_model")
        base = entries[0]["model"] if entries else None  # linear: the template for config/tokenizer only
    models = [{"model": e["model"],
               "parameters": _translate_params(e.get("parameters") or {}, method, f"{path}: model {e['model']}")}
              for e in (entries if method == "linear" else others)]
    parameters = _translate_params(raw.get("parameters") or {}, method, str(path))
    if method in NORMALIZE_DEFAULT:
        parameters.setdefault("normalize", NORMALIZE_DEFAULT[method])
    if method in ("ties",):
        parameters.setdefault("density", 1.0)
    if method in ("dare_ties", "dare_linear"):
        parameters.setdefault("drop_rate", 0.0)
        parameters.setdefault("rescale", "l1")
    if method == "slerp":
        if len(others) != 1:
            raise MergeError(f"{path}: slerp needs base_model plus exactly one other model, got {len(others)}")
        models = [{"model": base}, {"model": others[0]["model"]}]
    # mergekit's per-model parameters may also sit at the top level as defaults; ours do the same.
    native: dict[str, Any] = {"method": METHOD[method], "base": base, "models": models,
                              "parameters": parameters, "origin": "mergekit"}
    if raw.get("dtype"):
        native["dtype"] = raw["dtype"]
    if raw.get("out_dtype"):
        native["out_dtype"] = raw["out_dtype"]
    return native
