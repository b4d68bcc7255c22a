"""``data.kind: causal_lm`` for the merge command line (merging/data_merge.py): peft LoRA adapters of one causal
LM merged by FW-Merging hard on the user's prompt/answer files, through the same objective (the answer tokens'
cross-entropy, generative/objective.py) and adapter merge (generative/merge.py) as ``python -m generative run``;
or full fine-tunes of it merged by FW hard, RegMean or Fisher (every parameter, the same objective in
``weights`` space):

    method: frank_wolfe
    base: models/llama                               # the adapters' base model
    models:
      - {model: adapters/code, task: code}           # peft LoRA folders
      - {model: adapters/math, task: math}
    parameters: {iterations: 10, space: factors}     # FW's and the LoRA merge's (rank, space, proxy_examples …)
    data:
      kind: causal_lm
      dtype: float32                                 # the base as the objective loads it
      tasks:
        code: {proxy: data/code.jsonl, prompt: prompt, answer: answer}   # columns (these are the defaults)

Output: for adapters ``DIR/adapter`` (the merged peft adapter) and ``DIR/model`` (the base with it merged in, and
the tokenizer); for full fine-tunes ``DIR`` itself is the merged model; beside them ``merge_config.yaml``,
``merge_info.json`` (FW's objective, gap and selections per iteration) and a model card ``README.md``."""
from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from merging.benchmark.files import Source, rows_of
from merging.config import MergeConfig, check_parameters, describe_errors
from merging.data_merge import merge_summary
from merging.errors import MergeError
from merging.io.atomic import atomic_directory, check_target
from merging.io.candidates import CheckpointSource
from merging.io.checkpoint import resolve_model_ref
from merging.io.lora import read_lora_adapter
from merging.io.tables import require_columns
from merging.logs import quiet_model_loads
from merging.methods.base import DataDrivenInputs
from merging.model_card import model_card
from merging.registry import get_method

from .lm_eval_tasks import LocalTask
from .merge import adapter_methods, merge_adapters, parameter_schemas, write_outputs
from .objective import CausalLMObjective

FULL_METHODS = ("frank_wolfe", "regmean", "fisher")  # the data-driven methods that read only labelled proxy data

logger = logging.getLogger(__name__)


class PromptAnswerFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    proxy: Source  # a table file, or a hub data set's split (merging/benchmark/files.py)
    prompt: str = "prompt"
    answer: str = "answer"


class CausalLMData(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: str
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    tasks: dict[str, PromptAnswerFile] = Field(min_length=1)


def proxy_tasks(data: CausalLMData) -> list[LocalTask]:
    """One exact-match task per entry: each row's prompt, with the loss on its answer; every row checked."""
    tasks = []
    for name, entry in data.tasks.items():
        rows = rows_of(entry.proxy)
        require_columns(rows, [entry.prompt, entry.answer], entry.proxy)
        for index, row in enumerate(rows, 1):
            for column in (entry.prompt, entry.answer):
                if not isinstance(row[column], str) or not row[column].strip():
                    raise MergeError(f"{entry.proxy}: row {index}, column {column!r}: expected non-empty text, "
                                     f"got {row[column]!r}")
        tasks.append(LocalTask(name, "exact_match", [{"input": r[entry.prompt], "target": r[entry.answer]}
                                                     for r in rows]))
    return tasks


def merge(cfg: MergeConfig, out: Path, *, overwrite: bool = False, progress: bool = True,
          source_yaml: Path | None = None) -> dict[str, Any]:
    """Merge ``cfg``'s LoRA adapters, or full fine-tunes, on the tasks' prompt/answer files into ``out``
    (module docstring); the summary, also in ``merge_info.json``."""
    where = str(source_yaml or "config")
    out = check_target(out, overwrite)
    try:
        data = CausalLMData.model_validate(cfg.data)
    except ValidationError as err:
        raise MergeError(f"{where}: data: {describe_errors(err, 'key')}") from None
    tasks = [entry.task for entry in cfg.models]  # one model per task of data.tasks: check_data_request
    folders = [resolve_model_ref(entry.model) for entry in cfg.models]
    lora = [(folder / "adapter_config.json").is_file() for folder in folders]
    if any(lora) and not all(lora):
        raise MergeError(f"{where}: models {[e.model for e, a in zip(cfg.models, lora) if not a]} are full models "
                         f"and the others LoRA adapters; merge one kind at a time")
    methods = adapter_methods() if all(lora) else FULL_METHODS
    if cfg.method not in methods:
        what = "LoRA adapters" if all(lora) else "full causal-LM fine-tunes"
        raise MergeError(f"{where}: {cfg.method} does not merge {what}; the data-driven methods that do: "
                         f"{', '.join(m for m in methods if get_method(m).kind == 'data_driven')}")
    spec = get_method(cfg.method)
    check_parameters(cfg.method, dict(cfg.parameters), parameter_schemas(cfg.method) if all(lora) else spec.schemas())
    proxy = proxy_tasks(data)
    base = resolve_model_ref(cfg.base)
    logger.info("%s on %d %s (%s): data checked", cfg.method, len(folders),
                "LoRA adapter(s)" if all(lora) else "full model(s)", ", ".join(tasks))
    quiet_model_loads()
    started = time.perf_counter()
    config_yaml = yaml.safe_dump(cfg.model_dump(exclude_none=True), sort_keys=False)
    if all(lora):
        adapters = [read_lora_adapter(folder) for folder in folders]
        factors, rank, alpha, log = merge_adapters(cfg.method, dict(cfg.parameters), adapters, tasks, base, proxy,
                                                   cfg.seed, progress, data.dtype)
        info = merge_summary(cfg, {e.task: e.model for e in cfg.models}, started, log)
        write_outputs(out, base, factors, rank, alpha, adapters[0].config, info, overwrite,
                      {"merge_config.yaml": config_yaml, "README.md": card(cfg, config_yaml, lora=True)},
                      "merge_info.json")
    else:
        model, tokenizer, log = merge_full(cfg, data, proxy, base, folders, progress)
        info = merge_summary(cfg, {e.task: e.model for e in cfg.models}, started, log)
        with atomic_directory(out, overwrite=overwrite) as folder:
            model.save_pretrained(folder)
            tokenizer.save_pretrained(folder)
            (folder / "merge_config.yaml").write_text(config_yaml)
            (folder / "merge_info.json").write_text(json.dumps(info, indent=1, default=str) + "\n")
            (folder / "README.md").write_text(card(cfg, config_yaml, lora=False))
    return {k: v for k, v in info.items() if k != "log"}


def merge_full(cfg: MergeConfig, data: CausalLMData, proxy: list[LocalTask], base: Path, folders: list[Path],
               progress: bool) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
    """The base model with the merged weights of the full fine-tunes in ``folders`` (every parameter merged, on
    the answer-token loss of ``proxy``: ``CausalLMObjective`` in ``weights`` space), its tokenizer, the log."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = get_method(cfg.method, "data_driven")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=data.dtype)
    tokenizer = AutoTokenizer.from_pretrained(base)
    names = [name for name, _ in model.named_parameters()]
    objective = CausalLMObjective(model, tokenizer, proxy, "weights")
    params = {"seed": cfg.seed, **cfg.parameters} if "seed" in spec.Params.model_fields else dict(cfg.parameters)
    with contextlib.ExitStack() as opened:  # every source is closed, also when a later one fails to open
        candidates = {e.task: opened.enter_context(CheckpointSource(folder, names))
                      for e, folder in zip(cfg.models, folders)}
        base_source = opened.enter_context(CheckpointSource(base, names))
        merged, log = spec.implementation(DataDrivenInputs(
            objective, base_source, candidates, spec.Params(**params), candidate_tasks=[e.task for e in cfg.models],
            progress=progress))
    model.load_state_dict({name: tensor.to(model.dtype) for name, tensor in merged.items()}, strict=False)
    return model.cpu(), tokenizer, log


def card(cfg: MergeConfig, config_yaml: str, lora: bool) -> str:
    what = "LoRA adapters" if lora else "full fine-tunes"
    summary = (f"{len(cfg.models)} {what} of `{cfg.base}` merged with **{cfg.method}** on the tasks' prompt/answer "
               "data" + (": `adapter/` is the merged peft adapter, `model/` the base with it merged in." if lora
                         else "."))
    return model_card({"library_name": "peft" if lora else "transformers", "base_model": cfg.base,
                       "tags": ["merge", *(["lora"] if lora else []), cfg.method], "pipeline_tag": "text-generation"},
                      f"Merged {what} ({cfg.method})", summary,
                      [["task", "checkpoint"], *([e.task, f"`{e.model}`"] for e in cfg.models)],
                      ["from transformers import AutoModelForCausalLM",
                       f"model = AutoModelForCausalLM.from_pretrained('{'model' if lora else '.'}')"], config_yaml)
