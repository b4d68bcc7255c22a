"""Merge the suite's LoRA adapters with one method and write both outputs: a peft adapter and the merged full
model (peft ``merge_and_unload``), each loadable on its own by transformers / peft.

Methods: those of merging/registry.py marked ``lora``, by kind (merging/lora_merge.py has the two spaces):
- per-tensor (``task_arithmetic``, ``ties``, ``dare_ties``, …): on ΔW_i in product space, the merged ΔW
  re-factored to ``rank`` by truncated SVD;
- adapter (``from_lora``: FroM-LoRA's alternating least squares at ``rank``, merging/methods/from_lora.py);
- data-driven (``frank_wolfe``: FW-Merging hard, merging/methods/frank_wolfe.py) on the proxy split
  (generative/objective.py), in ``space: factors`` (the official code: A and B merged as separate tensors,
  same rank and lora_alpha as the adapters) or ``space: product`` (ΔW, re-factored to ``rank``).

``rank`` defaults to the adapters' largest r (the merged adapter is as small as one of them).
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, Field

from merging.errors import MergeError
from merging.io.atomic import atomic_directory
from merging.io.lora import LoraAdapter, write_lora_adapter
from merging.logs import future_warnings_silenced
from merging.lora_merge import Factors, merge_deltas, sources, to_factors
from merging.methods.base import DataDrivenInputs, Params
from merging.methods.from_lora import default_rank
from merging.registry import get_method, methods

from .lm_eval_tasks import LocalTask
from .objective import CausalLMObjective


class AdapterOptions(Params):
    """The options every LoRA merge takes beside its method's parameters: the merged adapter's rank (default:
    the adapters' largest r), FW's space and proxy batches (``proxy_examples`` per task; default all)."""

    rank: int | None = Field(None, gt=0)
    space: Literal["product", "factors"] = "product"
    proxy_examples: int | None = Field(None, gt=0)
    proxy_batch_size: int = Field(8, gt=0)


def adapter_methods() -> list[str]:
    """The registered methods that merge LoRA adapters (``lora``): every per-tensor method, the adapter methods
    (from_lora) and frank_wolfe."""
    return [spec.name for spec in methods() if spec.lora]


def parameter_schemas(method: str) -> tuple[type[BaseModel], ...]:
    """The schemas ``merge_adapters`` checks ``method``'s parameters with: ``AdapterOptions``, then the
    method's own (a per-tensor method's method-level ``Params``: LoRA merges take no per-model parameters)."""
    return AdapterOptions, get_method(method).Params


def merge_adapters(method: str, params: dict[str, Any], adapters: Sequence[LoraAdapter], labels: Sequence[str],
                   base_folder: Path | None = None, proxy: Sequence[LocalTask] = (), seed: int = 0,
                   progress: bool = False, dtype: str = "float32"
                   ) -> tuple[dict[str, Factors], int, float, dict[str, Any]]:
    """(factors by base parameter name, rank, lora_alpha, log) of ``method`` with ``params`` on ``adapters``.
    ``frank_wolfe`` also needs the base model folder (loaded in ``dtype``) and the proxy tasks."""
    params = dict(params)
    options = AdapterOptions(**{k: params.pop(k) for k in list(params) if k in AdapterOptions.model_fields})
    rank, space = options.rank or default_rank(adapters), options.space
    per_task, batch_size = options.proxy_examples, options.proxy_batch_size
    log: dict[str, Any] = {"rank": rank}
    spec = get_method(method)
    if not spec.lora:
        raise MergeError(f"method '{method}' cannot merge LoRA adapters; methods that can: "
                         f"{', '.join(adapter_methods())}")
    if spec.kind == "data_driven":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if base_folder is None or not proxy:
            raise MergeError(f"{method} on LoRA adapters needs the base model and the proxy tasks")
        base, candidates = sources(adapters, space, labels)
        first = adapters[0]
        scaling = next(iter(first.scalings.values()))
        if space == "factors" and set(first.scalings.values()) != {scaling}:
            raise MergeError(f"factor-space merge: adapter '{first.path}' has per-module scalings "
                             f"{sorted(set(first.scalings.values()))} (alpha_pattern / rank_pattern); expected one")
        model = AutoModelForCausalLM.from_pretrained(base_folder, dtype=dtype)
        objective = CausalLMObjective(model, AutoTokenizer.from_pretrained(base_folder), proxy, space, scaling,
                                      batch_size=batch_size, per_task=per_task)
        seeded = {"seed": seed, **params} if "seed" in spec.Params.model_fields else params
        theta, method_log = spec.implementation(DataDrivenInputs(objective, base, candidates, spec.Params(**seeded),
                                                                 progress=progress))
        factors, errors = to_factors(theta, space, rank)
        if space == "factors":
            rank, alpha = first.rank, first.alpha
        else:
            alpha = float(rank)
        log.update(space=space, proxy_examples=per_task, **method_log)
    elif spec.kind == "adapter":
        merged = spec.implementation(adapters, spec.Params(**{**params, "rank": rank}), seed=seed, progress=progress)
        factors, rank, alpha, errors = merged.factors, merged.rank, merged.alpha, {}
    else:
        cls = spec.method_class
        instance = cls(cls.Params(**params), [cls.ModelParams() for _ in adapters])
        factors, errors = merge_deltas(adapters, instance, rank, seed)
        alpha = float(rank)
    if errors:
        log["refactor_error_mean"] = sum(errors.values()) / len(errors)
        log["refactor_error_max"] = max(errors.values())
    return factors, rank, alpha, log


def write_outputs(out: Path, base_folder: Path, factors: dict[str, Factors], rank: int, alpha: float,
                  template: dict[str, Any], info: dict[str, Any], overwrite: bool = True,
                  files: dict[str, str] | None = None, info_name: str = "merge.json") -> Path:
    """``out/adapter`` (peft LoRA folder), ``out/model`` (base + the adapter's ΔW, with the tokenizer),
    ``out/<info_name>`` (``info`` as JSON) and the text ``files`` by name, written atomically."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with atomic_directory(out, overwrite=overwrite) as tmp:
        write_lora_adapter(tmp / "adapter", factors, rank, alpha, {**template, "base_model_name_or_path":
                                                                    str(base_folder)}, torch.float32)
        base = AutoModelForCausalLM.from_pretrained(base_folder, dtype="float32")
        with future_warnings_silenced():  # peft's deprecation notices on every load
            PeftModel.from_pretrained(base, tmp / "adapter").merge_and_unload().save_pretrained(tmp / "model")
        AutoTokenizer.from_pretrained(base_folder).save_pretrained(tmp / "model")
        (tmp / info_name).write_text(json.dumps(info, indent=1, default=str) + "\n")
        for name, text in (files or {}).items():
            (tmp / name).write_text(text)
    return Path(out)
