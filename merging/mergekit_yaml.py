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
| passthrough    | passthrough      | one source per slice; ``scale``                                     |
| model_stock    | model_stock      | ``filter_wise``                                                     |
| breadcrumbs(_ties) | breadcrumbs(_ties) | ``density`` (default 1), ``gamma`` (0.01), ``weight``, ``lambda``; normalize default false |
| della(_linear) | della(_linear)   | ``density``, ``epsilon`` (0.15); ``rescale: true`` -> L1; normalize default true (della) / false |
| nuslerp        | nuslerp          | ``weight``; nuslerp_flatten -> flatten, nuslerp_row_wise -> row_wise; base optional (use_base) |
| multislerp     | multislerp       | ``weight``; normalize_weights -> normalize, ``eps``; base optional (use_base) |
| karcher        | karcher          | ``max_iter``, ``tol``; a base_model not among the models is one of the means' points |
| sce            | sce              | ``select_topk`` (default 1)                                         |
| nearswap       | nearswap         | ``t``; one model besides the base                                   |
| arcee_fusion   | arcee_fusion     | one model besides the base                                          |

``slices`` become native slices (merging/slices.py): each source's layer range and parameters, the slice's
parameters, and the base's range (the base's own source; a method that reads the base refuses a slice
without it, as mergekit does). ``dtype`` is the compute dtype and, unless ``out_dtype`` is given, the output
dtype (config.json says which). ``linear`` averages a ``base_model`` that is not among the models in too, as
mergekit does, with the top-level weight; mergekit has no default weight, so a model without one is an error.
Gradients follow mergekit's rule (``merging.config.layer_position``: tensors outside the layers take the first
value). ``chat_template`` is passed on (merging/chat_template.py); ``model: MODEL+LORA`` is read by
``open_checkpoint``. ``int8_mask`` only changes mergekit's memory use and is accepted and ignored; ``name``
labels a config. Unknown keys are errors at every level (top, ``models[]``, ``slices[]``, ``sources[]``,
``tokenizer``), and what is not implemented here (other methods, a tokenizer source whose vocabulary differs,
slice-level ``base_model`` or ``residual_weight``) is refused: never a silently different model.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import MergeError

METHOD = {"linear": "average", "task_arithmetic": "task_arithmetic", "ties": "ties",
          "dare_ties": "dare_ties", "dare_linear": "dare_ta", "slerp": "slerp", "passthrough": "passthrough",
          "model_stock": "model_stock", "breadcrumbs": "breadcrumbs", "breadcrumbs_ties": "breadcrumbs_ties",
          "della": "della", "della_linear": "della_linear", "nuslerp": "nuslerp", "multislerp": "multislerp",
          "karcher": "karcher", "sce": "sce", "nearswap": "nearswap", "arcee_fusion": "arcee_fusion"}
NORMALIZE_DEFAULT = {"linear": True, "task_arithmetic": False, "ties": True, "dare_ties": False,
                     "dare_linear": False, "breadcrumbs": False, "breadcrumbs_ties": False, "della": True,
                     "della_linear": False}
WEIGHTED = {"linear", "task_arithmetic", "ties", "dare_ties", "dare_linear", "breadcrumbs", "breadcrumbs_ties",
            "della", "della_linear", "nuslerp", "multislerp"}  # mergekit: weight is required (no default)
DENSITY_DEFAULT = {"ties", "breadcrumbs", "breadcrumbs_ties", "della", "della_linear"}  # mergekit: 1
RESCALED = {"dare_ties", "dare_linear", "della", "della_linear"}  # rescale: true (default) -> the L1 rescale
RENAMED = {"nuslerp_flatten": "flatten", "nuslerp_row_wise": "row_wise", "normalize_weights": "normalize"}
BASE_OPTIONAL = {"linear", "passthrough", "nuslerp", "multislerp", "karcher"}  # mergekit runs them without one
WITH_BASE = {"linear", "karcher"}  # a base_model not among the models is merged as one of them
TOP_KEYS = {"merge_method", "base_model", "models", "slices", "parameters", "dtype", "out_dtype",
            "tokenizer_source", "tokenizer", "chat_template", "name"}
MODEL_KEYS = {"model", "parameters"}
SLICE_KEYS = {"sources", "parameters", "base_model", "residual_weight"}
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
        elif key in RENAMED and method in ("nuslerp", "multislerp"):
            out[RENAMED[key]] = value
        elif key == "rescale" and method in RESCALED:
            if not isinstance(value, bool):
                raise MergeError(f"{where}: rescale {value!r} must be true or false")
            out["rescale"] = "l1" if value else "none"
        else:
            out[key] = value
    return out


def _read_slices(slices: Any, path: Path) -> list[dict[str, Any]]:
    """The slices as written: each one's sources (model, layer_range, parameters) and parameters, checked."""
    if not isinstance(slices, list) or not slices:
        raise MergeError(f"{path}: 'slices' must be a non-empty list of {{sources: [...]}}, got {slices!r}")
    read = []
    for index, piece in enumerate(slices):
        where = f"{path}: slices[{index}]"
        _check_keys(piece, SLICE_KEYS, where)
        for key in ("base_model", "residual_weight"):
            if piece.get(key) is not None:
                raise MergeError(f"{where}: a slice-level {key} is not supported; give base_model at the top level")
        sources = piece.get("sources")
        if not isinstance(sources, list) or not sources:
            raise MergeError(f"{where}.sources must be a non-empty list of models, got {sources!r}")
        for number, source in enumerate(sources):
            at = f"{where}.sources[{number}]"
            _check_keys(source, SOURCE_KEYS, at)
            layer_range = source.get("layer_range")
            if not (isinstance(layer_range, list) and len(layer_range) == 2 and all(
                    isinstance(i, int) and not isinstance(i, bool) for i in layer_range) and 0 <= layer_range[0]
                    < layer_range[1]):
                raise MergeError(f"{at}: layer_range {layer_range!r} must be [start, end] with 0 <= start < end")
            if not isinstance(source.get("model"), str):
                raise MergeError(f"{at} must have a 'model' path, got {source!r}")
        read.append({"sources": sources, "parameters": _params_mapping(piece.get("parameters") or {}, where)})
    return read


def _merged_entries(method: str, base: str | None, entries: list[dict[str, Any]], where: str
                    ) -> list[dict[str, Any]]:
    """The entries a method merges (mergekit's base_model has no task vector): linear and passthrough merge
    every entry; slerp the base then the other one; the rest every entry but the base."""
    if method in ("linear", "passthrough", "karcher") or (base is None and method in BASE_OPTIONAL):
        return entries
    others = [e for e in entries if e.get("model") != base]
    if any(e.get("parameters") for e in entries if e.get("model") == base):
        raise MergeError(f"{where}: the entry of base_model '{base}' has parameters, which mergekit's {method} "
                         "does not use (the base has no task vector); remove them")
    if base is not None and not others:
        raise MergeError(f"{where}: no models to merge besides base_model '{base}'")
    if method == "slerp":
        if len(others) != 1:
            raise MergeError(f"{where}: slerp needs base_model plus exactly one other model, got {len(others)}")
        if others[0].get("parameters"):
            raise MergeError(f"{where}: slerp takes 't' at the top level; the per-model parameters of "
                             f"'{others[0]['model']}' would not be used")
        return [next(e for e in entries if e.get("model") == base), others[0]]
    return others


def from_mergekit(raw: dict[str, Any], path: Path) -> dict[str, Any]:
    """Translate a mergekit config mapping into a native one (see the module table)."""
    _check_keys(raw, TOP_KEYS, str(path))
    method = raw["merge_method"]
    if not isinstance(method, str) or method not in METHOD:
        raise MergeError(f"{path}: mergekit merge_method {method!r} is not supported here; "
                         f"supported: {sorted(METHOD)}")
    tokenizer = raw.get("tokenizer")
    source = raw.get("tokenizer_source")
    if tokenizer is not None:
        if source is not None:
            raise MergeError(f"{path}: give either tokenizer_source or tokenizer, not both")
        source = _check_keys(tokenizer, {"source"}, f"{path}: tokenizer").get("source")
    if source is not None and not isinstance(source, str):
        raise MergeError(f"{path}: tokenizer source {source!r} must be base, union or a model")
    if raw.get("models") is not None and raw.get("slices") is not None:
        raise MergeError(f"{path}: give either 'models' or 'slices', not both")
    base = raw.get("base_model")
    if base is None and method not in BASE_OPTIONAL:
        raise MergeError(f"{path}: merge_method '{method}' needs base_model")
    parameters = _translate_params(_params_mapping(raw.get("parameters") or {}, str(path)), method, str(path))
    if method in NORMALIZE_DEFAULT:
        parameters.setdefault("normalize", NORMALIZE_DEFAULT[method])
    if method in DENSITY_DEFAULT:
        parameters.setdefault("density", 1.0)
    if method in ("dare_ties", "dare_linear"):
        parameters.setdefault("drop_rate", 0.0)
    if method in RESCALED:
        parameters.setdefault("rescale", "l1")
    if method in ("nuslerp", "multislerp"):
        parameters["use_base"] = base is not None  # without a base_model the models themselves are interpolated
    native: dict[str, Any] = {"method": METHOD[method], "parameters": parameters, "origin": "mergekit"}
    if raw.get("slices") is not None:
        native["slices"] = []
        for index, piece in enumerate(_read_slices(raw["slices"], path)):
            where = f"{path}: slices[{index}]"
            sources = piece["sources"]
            merged = _merged_entries(method, base, sources, where)
            base_source = next((s for s in sources if s["model"] == base), None)
            if method == "passthrough" and len(merged) != 1:
                raise MergeError(f"{where}: passthrough takes one source per slice, got {len(merged)}")
            _check_weights(method, parameters, piece["parameters"], merged, where)
            native["slices"].append({
                "sources": [{"model": e["model"], "layer_range": e["layer_range"],
                             "parameters": _translate_params(e.get("parameters") or {}, method,
                                                             f"{where}: source {e['model']}")} for e in merged],
                "base_range": base_source["layer_range"] if base_source else None,
                "parameters": _translate_params(piece["parameters"], method, where)})
        first = raw["slices"][0]["sources"][0]["model"]
        references = [s["model"] for piece in native["slices"] for s in piece["sources"]]
        native["base"] = base or first  # without base_model: the first source is the config's template
        native["models"] = [{"model": ref} for ref in dict.fromkeys(references)]
    else:
        entries = raw.get("models") or []
        if not isinstance(entries, list):
            raise MergeError(f"{path}: 'models' must be a list of {{model: ..., parameters: ...}}, got {entries!r}")
        for index, entry in enumerate(entries):
            where = f"{path}: models[{index}]"
            if not isinstance(_check_keys(entry, MODEL_KEYS, where).get("model"), str):
                raise MergeError(f"{where} must have a 'model' path, got {entry!r}")
        if method in WITH_BASE and base is not None and all(e.get("model") != base for e in entries):
            entries = [*entries, {"model": base}]  # mergekit merges a base_model not among the models too
        merged = _merged_entries(method, base, entries, str(path))
        _check_weights(method, parameters, {}, merged, str(path))
        native["base"] = base or (entries[0]["model"] if entries else None)  # linear: config/tokenizer template
        native["models"] = [{"model": e["model"], "parameters": _translate_params(
            e.get("parameters") or {}, method, f"{path}: model {e['model']}")} for e in merged]
    for key in ("dtype", "out_dtype", "chat_template"):  # validated as native keys
        if raw.get(key) is not None:
            native[key] = raw[key]
    if source not in (None, "base"):
        native["tokenizer_source"] = source  # checked against the inputs' vocabularies (merging/tokenizer_source.py)
    if raw.get("dtype") is not None and raw.get("out_dtype") is None:
        native["out_dtype"] = raw["dtype"]  # mergekit writes its compute dtype unless out_dtype says otherwise
    return native


def _check_weights(method: str, top: dict[str, Any], slice_params: dict[str, Any], merged: list[dict[str, Any]],
                   where: str) -> None:
    """mergekit's weighted methods have no default weight ("Missing required parameter weight"): every merged
    model needs one, from its own parameters, its slice's or the top level's."""
    if method not in WEIGHTED or "weight" in top or "weight" in slice_params:
        return
    unweighted = [e["model"] for e in merged if "weight" not in (e.get("parameters") or {})]
    if unweighted:
        raise MergeError(f"{where}: {method} needs a weight for every model (mergekit has no default); none "
                         f"for {unweighted}: give each its parameters.weight, or a top-level weight")
