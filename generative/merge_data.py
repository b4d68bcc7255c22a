"""``data.kind: causal_lm`` for the merge command line (merging/data_merge.py): peft LoRA adapters of one causal
LM merged by FW-Merging hard on the user's prompt/answer files, through the same objective (the answer tokens'
cross-entropy, generative/objective.py) and adapter merge (generative/merge.py) as ``python -m generative run``:

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

Output: ``DIR/adapter`` (the merged peft adapter), ``DIR/model`` (the base with it merged in, and the tokenizer),
``merge_config.yaml``, ``merge_info.json`` (FW's objective, gap and selections per iteration) and a model card
``README.md``. Full fine-tunes of a causal LM are not wired for data-driven merges yet."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from merging.benchmark.files import Source, rows_of
from merging.config import MergeConfig, check_parameters, describe_errors
from merging.errors import MergeError
from merging.io.atomic import check_target
from merging.io.checkpoint import resolve_model_ref
from merging.io.lora import read_lora_adapter
from merging.io.tables import require_columns
from merging.logs import quiet_model_loads
from merging.model_card import model_card
from merging.registry import get_method
from merging.run import git_sha

from .lm_eval_tasks import LocalTask
from .merge import adapter_methods, merge_adapters, parameter_schemas, write_outputs

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
    """Merge ``cfg``'s LoRA adapters with FW on the tasks' prompt/answer files into ``out`` (module docstring)."""
    where = str(source_yaml or "config")
    out = check_target(out, overwrite)
    try:
        data = CausalLMData.model_validate(cfg.data)
    except ValidationError as err:
        raise MergeError(f"{where}: data: {describe_errors(err, 'key')}") from None
    if cfg.method not in adapter_methods():
        raise MergeError(f"{where}: {cfg.method} does not merge LoRA adapters; the data-driven methods that do: "
                         f"{', '.join(m for m in adapter_methods() if get_method(m).kind == 'data_driven')}")
    tasks = [entry.task for entry in cfg.models]
    if sorted(tasks) != sorted(data.tasks) or len(set(tasks)) != len(tasks):
        raise MergeError(f"{where}: the models' tasks {tasks} must name each of data.tasks {sorted(data.tasks)} once")
    check_parameters(cfg.method, dict(cfg.parameters), parameter_schemas(cfg.method))
    proxy = proxy_tasks(data)
    adapters = [read_lora_adapter(resolve_model_ref(entry.model)) for entry in cfg.models]
    base = resolve_model_ref(cfg.base)
    logger.info("%s on %d LoRA adapter(s) (%s): data checked", cfg.method, len(adapters), ", ".join(tasks))
    quiet_model_loads()
    started = time.perf_counter()
    factors, rank, alpha, log = merge_adapters(cfg.method, dict(cfg.parameters), adapters, tasks, base, proxy,
                                               cfg.seed, progress, data.dtype)
    info = {"method": cfg.method, "paper": get_method(cfg.method).paper, "parameters": cfg.parameters,
            "seed": cfg.seed, "tasks": {e.task: e.model for e in cfg.models}, "git_sha": git_sha(),
            "torch": torch.__version__, "seconds": round(time.perf_counter() - started, 3), "log": log}
    config_yaml = yaml.safe_dump(cfg.model_dump(exclude_none=True), sort_keys=False)
    write_outputs(out, base, factors, rank, alpha, adapters[0].config, info, overwrite,
                  {"merge_config.yaml": config_yaml, "README.md": lora_card(cfg, config_yaml)}, "merge_info.json")
    return {k: v for k, v in info.items() if k != "log"}


def lora_card(cfg: MergeConfig, config_yaml: str) -> str:
    summary = (f"{len(cfg.models)} LoRA adapters of `{cfg.base}` merged with **{cfg.method}** on the tasks' "
               "prompt/answer data: `adapter/` is the merged peft adapter, `model/` the base with it merged in.")
    return model_card({"library_name": "peft", "base_model": cfg.base, "tags": ["merge", "lora", cfg.method],
                       "pipeline_tag": "text-generation"}, f"Merged LoRA adapters ({cfg.method})", summary,
                      [["task", "adapter"], *([e.task, f"`{e.model}`"] for e in cfg.models)],
                      ["from transformers import AutoModelForCausalLM",
                       "model = AutoModelForCausalLM.from_pretrained('model')"], config_yaml)
