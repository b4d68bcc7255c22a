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

``dtype`` is the compute dtype and, unless ``out_dtype`` is given, the output dtype (config.json says which).
``linear`` averages a ``base_model`` that is not among the models in too, as mergekit does, with the top-level
weight; mergekit has no default weight, so a model without one is an error. Gradients follow mergekit's rule
(``merging.config.layer_position``: tensors outside the layers take the first value).
``int8_mask`` only changes mergekit's memory use and is accepted and ignored; ``name`` labels a config.
One slice is read as mergekit reads it: its sources are the models, its ``parameters`` override the top-level
ones (a source's own override both), and its ``layer_range`` must cover every layer of the base (checked
when the base is opened). Unknown keys are errors at every level (top, ``models[]``, ``slices[]``,
``sources[]``, ``tokenizer``), and what is not implemented here (other methods, several slices, partial
layer ranges, other tokenizer sources, ``chat_template``) is refused: never a silently different model.
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
MODEL_KEYS = {"model", "parameters"}
SLICE_KEYS = {"sources", "parameters"}
SOURCE_KEYS = {"model", "layer_range", "parameters"}
IGNORED_PARAMS = {"int8_mask"}


def _check_keys(entry: Any, allowed: set[str], where: str) -> dict[str, Any]:
    """``entry`` as a mapping with only ``allowed`` keys (a mergekit typo such as ``paramters`` is an error)."""
    if not isinstance(entry, dict):
        raise MergeError(f"{where}: expected a mapping with keys {sorted(allowed)}, got {entry!r}")
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise MergeError(f"{where}: unknown key(s) {unknown}; expected only {sorted(allowed)}")
    return entry


def _map(value: Any, f: Callable[[float], float]) -> Any:
    """Apply ``f`` to every number inside a mergekit parameter value (scalar, gradient or filter rules)."""
    if isinstance(value, list):
        return [{**v, "value": _map(v.get("value"), f)} if isinstance(v, dict) else f(v) for v in value]
    return f(value)


def _drop_rate(density: float, where: str) -> float:
    if isinstance(density, bool) or not isinstance(density, (int, float)) or not 0 < density <= 1:
        raise MergeError(f"{where}: density {density!r} must be a number in (0, 1]")
    return 1.0 - density


def _params_mapping(params: Any, where: str) -> dict[str, Any]:
    if not isinstance(params, dict):
        raise MergeError(f"{where}: 'parameters' must be a mapping, got {params!r}")
    return params


def _translate_params(params: dict[str, Any], method: str, where: str) -> dict[str, Any]:
    _params_mapping(params, where)
    out = {}
    for key, value in params.items():
        if key in IGNORED_PARAMS:
            if not isinstance(value, bool):
                raise MergeError(f"{where}: {key} {value!r} must be true or false")
            continue
        if key == "density" and method in ("dare_ties", "dare_linear"):
            out["drop_rate"] = _map(value, lambda d: _drop_rate(d, where))
        elif key == "rescale" and method in ("dare_ties", "dare_linear"):
            if not isinstance(value, bool):
                raise MergeError(f"{where}: rescale {value!r} must be true or false")
            out["rescale"] = "l1" if value else "none"
        else:
            out[key] = value
    return out


def _read_slice(slices: Any, path: Path) -> tuple[list[dict[str, Any]], dict[str, Any], list[int] | None]:
    """The sources, slice-level parameters and layer range of a config's one slice."""
    if not isinstance(slices, list) or len(slices) != 1:
        count = len(slices) if isinstance(slices, list) else "a non-list"
        raise MergeError(f"{path}: 'slices' with {count} slices (layer stacking / passthrough) is not supported; "
                         "only one slice whose sources all cover the same layer range")
    piece = _check_keys(slices[0], SLICE_KEYS, f"{path}: slices[0]")
    sources = piece.get("sources")
    if not isinstance(sources, list) or not sources:
        raise MergeError(f"{path}: slices[0].sources must be a non-empty list of models, got {sources!r}")
    ranges = []
    for index, source in enumerate(sources):
        where = f"{path}: slices[0].sources[{index}]"
        layer_range = _check_keys(source, SOURCE_KEYS, where).get("layer_range")
        if layer_range is not None and not (isinstance(layer_range, list) and len(layer_range) == 2 and all(
                isinstance(i, int) and not isinstance(i, bool) for i in layer_range) and 0 <= layer_range[0]
                < layer_range[1]):
            raise MergeError(f"{where}: layer_range {layer_range!r} must be [start, end] with 0 <= start < end")
        ranges.append(layer_range)
    if any(r != ranges[0] for r in ranges):
        raise MergeError(f"{path}: slice sources with different layer_range {ranges} are not supported")
    models = [{k: v for k, v in s.items() if k != "layer_range"} for s in sources]
    return models, piece.get("parameters") or {}, ranges[0]


def from_mergekit(raw: dict[str, Any], path: Path) -> dict[str, Any]:
    """Translate a mergekit config mapping into a native one (see the module table)."""
    _check_keys(raw, TOP_KEYS, str(path))
    method = raw["merge_method"]
    if not isinstance(method, str) or method not in METHOD:
        raise MergeError(f"{path}: mergekit merge_method {method!r} is not supported here; "
                         f"supported: {sorted(METHOD)}")
    tokenizer = raw.get("tokenizer")
    if tokenizer is not None and _check_keys(tokenizer, {"source"}, f"{path}: tokenizer").get("source") != "base":
        raise MergeError(f"{path}: tokenizer {tokenizer!r}: only the base model's tokenizer is supported "
                         "(tokenizer: {source: base})")
    if raw.get("tokenizer_source") not in (None, "base"):
        raise MergeError(f"{path}: tokenizer_source {raw['tokenizer_source']!r}: only the base model's tokenizer "
                         "is supported (tokenizer_source: base)")
    if raw.get("chat_template") is not None:
        raise MergeError(f"{path}: chat_template is not supported yet (the base's chat template, if any, is "
                         "copied); remove the key")
    if raw.get("models") is not None and raw.get("slices") is not None:
        raise MergeError(f"{path}: give either 'models' or 'slices', not both")
    top_params = raw.get("parameters") or {}
    layer_range = None
    if raw.get("slices") is not None:
        entries, slice_params, layer_range = _read_slice(raw["slices"], path)
        top_params = {**_params_mapping(top_params, str(path)),  # the slice's parameters win
                      **_params_mapping(slice_params, f"{path}: slices[0]")}
        listed = "slices[0].sources"
    else:
        entries, listed = raw.get("models") or [], "models"
        if not isinstance(entries, list):
            raise MergeError(f"{path}: 'models' must be a list of {{model: ..., parameters: ...}}, got {entries!r}")
    for index, entry in enumerate(entries):
        where = f"{path}: {listed}[{index}]"
        if not isinstance(_check_keys(entry, MODEL_KEYS, where).get("model"), str):
            raise MergeError(f"{where} must have a 'model' path, got {entry!r}")
    base = raw.get("base_model")
    if method == "linear" and base is not None and all(e.get("model") != base for e in entries):
        entries = [*entries, {"model": base}]  # mergekit averages a base_model it is not given among the models
    others = [e for e in entries if e.get("model") != base]
    if method != "linear" and any(e.get("parameters") for e in entries if e.get("model") == base):
        raise MergeError(f"{path}: the entry of base_model '{base}' has parameters, which mergekit's {method} "
                         "does not use (the base has no task vector); remove them")
    if base is not None and not others:
        raise MergeError(f"{path}: no models to merge besides base_model '{base}'")
    if base is None:
        if method not in ("linear",):
            raise MergeError(f"{path}: merge_method '{method}' needs base_model")
        base = entries[0]["model"] if entries else None  # linear: the template for config/tokenizer only
    models = [{"model": e["model"],
               "parameters": _translate_params(e.get("parameters") or {}, method, f"{path}: model {e['model']}")}
              for e in (entries if method == "linear" else others)]
    parameters = _translate_params(top_params, method, str(path))
    if method == "linear" and "weight" not in parameters:
        unweighted = [e["model"] for e in entries if "weight" not in (e.get("parameters") or {})]
        if unweighted:  # mergekit: "Missing required parameter weight"
            raise MergeError(f"{path}: linear needs a weight for every model (mergekit has no default); none "
                             f"for {unweighted}: give each its parameters.weight, or a top-level weight")
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
        if others[0].get("parameters"):
            raise MergeError(f"{path}: slerp takes 't' at the top level; the per-model parameters of "
                             f"'{others[0]['model']}' would not be used")
        models = [{"model": base}, {"model": others[0]["model"]}]
    # mergekit's per-model parameters may also sit at the top level as defaults; ours do the same.
    native: dict[str, Any] = {"method": METHOD[method], "base": base, "models": models,
                              "parameters": parameters, "origin": "mergekit"}
    if layer_range is not None:
        native["layer_range"] = layer_range
    for key in ("dtype", "out_dtype"):  # validated as native keys
        if raw.get(key) is not None:
            native[key] = raw[key]
    if raw.get("dtype") is not None and raw.get("out_dtype") is None:
        native["out_dtype"] = raw["dtype"]  # mergekit writes its compute dtype unless out_dtype says otherwise
    return native
