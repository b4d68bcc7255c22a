"""``data.kind: sequence_classification`` for the merge command line (merging/data_merge.py): sequence
classifiers (any ``AutoModelForSequenceClassification`` folder, each with its own head) merged by a data-driven
method on the user's files, through the same pool, objective and merge code as ``python -m discriminative run``
on a ``data: files`` pool (merging/benchmark/data_driven.py). The data section:

    data:
      kind: sequence_classification
      head: ['^classifier\\.', '^bert\\.pooler\\.']   # per-task tensors, never merged (default: HEAD)
      max_length: 128                                 # tokens per example, pairs jointly
      tasks:                                          # one entry per task (discriminative/files.py keys)
        sentiment: {proxy: data/sentiment.jsonl, text: sentence, label: label}

``num_labels`` defaults to the task checkpoint's ``config.num_labels`` and ``label_names`` to its ``id2label``
when those are names rather than LABEL_i. Output: ``DIR/<task>/`` for every task, a loadable classifier (the
merged body with the task's own head, and the tokenizer), ``merge_config.yaml``, ``merge_info.json`` (the
method's log: FW's objective, gap and selections per iteration) and a model card ``README.md``."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from merging.benchmark.body import with_merged_body
from merging.benchmark.data_driven import merge_data_driven
from merging.benchmark.evaluate import Evaluator
from merging.config import MergeConfig, check_parameters, describe_errors
from merging.errors import MergeError
from merging.io.atomic import atomic_directory, check_target
from merging.io.checkpoint import resolve_model_ref
from merging.logs import quiet_model_loads
from merging.model_card import model_card
from merging.registry import get_method
from merging.run import git_sha

from .files import FileTask
from .pool import TextPool

logger = logging.getLogger(__name__)

HEAD = [r"^classifier\.", r"^pre_classifier\.", r"^score\.", r"\.pooler\."]  # BERT/RoBERTa/DistilBERT/Llama heads
NEEDS_VALIDATION = ("greedy_soup",)  # methods that score candidates on held-out data


class SequenceClassificationData(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: str
    head: list[str] = Field(HEAD, min_length=1)
    max_length: int = Field(128, gt=0)
    tasks: dict[str, dict[str, Any]] = Field(min_length=1)


def _checkpoint_labels(folder: Path) -> dict[str, Any]:
    """``num_labels`` and, when the checkpoint names its classes, ``label_names`` from its config.json."""
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise MergeError(f"{path}: not a readable model config ({err})") from None
    id2label = config.get("id2label") or {}
    labels = {"num_labels": len(id2label) or int(config.get("num_labels", 2))}
    names = [str(id2label[k]) for k in sorted(id2label, key=int)] if id2label else []
    if names and names != [f"LABEL_{i}" for i in range(len(names))]:
        labels["label_names"] = names
    return labels


def build_pool(cfg: MergeConfig, where: str = "config") -> TextPool:
    """The in-memory pool of ``cfg``: its base, each task's checkpoint and files; every split a method reads is
    read and checked here (files, columns, labels against the checkpoint's head), before any weight is."""
    try:
        data = SequenceClassificationData.model_validate(cfg.data)
    except ValidationError as err:
        raise MergeError(f"{where}: data: {describe_errors(err, 'key')}") from None
    by_task: dict[str, str] = {}
    for entry in cfg.models:
        if entry.task in by_task:
            raise MergeError(f"{where}: task '{entry.task}' has two models ({by_task[entry.task]}, {entry.model})")
        by_task[entry.task] = entry.model
    if set(by_task) != set(data.tasks):
        raise MergeError(f"{where}: the models' tasks {sorted(by_task)} and data.tasks {sorted(data.tasks)} differ")
    folders = {task: resolve_model_ref(model) for task, model in by_task.items()}
    files = {}
    for task, entry in data.tasks.items():
        try:
            files[task] = FileTask.model_validate({**_checkpoint_labels(folders[task]), **entry})
        except ValidationError as err:
            raise MergeError(f"{where}: data.tasks.{task}: {describe_errors(err, 'key')}") from None
    pool = TextPool(name="merge", base=str(resolve_model_ref(cfg.base)), tasks=list(data.tasks),
                    checkpoints={task: str(folder) for task, folder in folders.items()}, head=data.head,
                    max_length=data.max_length, data="files", files=files, finetune={"seeds": [0]})
    spec = get_method(cfg.method, "data_driven")
    check_parameters(cfg.method, dict(cfg.parameters), spec.schemas())
    missing = [t for t, f in files.items() if f.validation is None]
    if cfg.method in NEEDS_VALIDATION and missing:
        raise MergeError(f"{where}: {cfg.method} chooses on held-out data: give data.tasks.<task>.validation for "
                         f"{missing}")
    for task in pool.tasks:  # every split the method may read, now
        for split in ("proxy", "test", "train", "validation" if not missing else "proxy"):
            pool.domain.examples(pool, task, split)
    logger.info("%s on %d task(s) (%s): data checked", spec.name, len(pool.tasks), ", ".join(pool.tasks))
    return pool


def merge(cfg: MergeConfig, out: Path, *, overwrite: bool = False, progress: bool = True,
          source_yaml: Path | None = None) -> dict[str, Any]:
    """Merge ``cfg``'s checkpoints with its data-driven method into ``out`` (module docstring); the summary."""
    out = check_target(out, overwrite)
    quiet_model_loads()  # a model load per task: no weight-loading bar each
    pool = build_pool(cfg, str(source_yaml or "config"))
    started = time.perf_counter()
    has_validation = all(f.validation is not None for f in pool.files.values())
    validation = Evaluator(pool, "validation" if has_validation else "proxy", 0)
    body, log = merge_data_driven(pool, cfg.method, dict(cfg.parameters), [], validation, seed=cfg.seed)
    spec = get_method(cfg.method)
    info = {"method": cfg.method, "paper": spec.paper, "parameters": cfg.parameters, "seed": cfg.seed,
            "tasks": {task: pool.checkpoints[task] for task in pool.tasks}, "git_sha": git_sha(),
            "torch": torch.__version__, "seconds": round(time.perf_counter() - started, 3), "log": log}
    with atomic_directory(out, overwrite=overwrite) as folder:
        for task in pool.tasks:
            checkpoint = validation.checkpoint(task)
            model = with_merged_body(validation.model(checkpoint, task), body, pool.head)
            pool.domain.save_model(model, pool.domain.processor(pool, checkpoint), folder / task)
        config_yaml = yaml.safe_dump(cfg.model_dump(exclude_none=True), sort_keys=False)
        (folder / "merge_config.yaml").write_text(config_yaml)
        (folder / "merge_info.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
        (folder / "README.md").write_text(classifier_card(cfg, pool, info, config_yaml))
    return {k: v for k, v in info.items() if k != "log"}


def classifier_card(cfg: MergeConfig, pool: TextPool, info: dict[str, Any], config_yaml: str) -> str:
    summary = (f"The body of {len(pool.tasks)} fine-tuned checkpoints of `{cfg.base}` merged with **{cfg.method}** "
               f"({info['paper']}) on the tasks' data; each task keeps its own head (`{'`, `'.join(pool.head)}`).")
    return model_card({"library_name": "transformers", "base_model": cfg.base, "tags": ["merge", cfg.method],
                       "pipeline_tag": "text-classification"}, f"Merged sequence classifiers ({cfg.method})", summary,
                      [["task", "checkpoint", "folder"], *([e.task, f"`{e.model}`", f"`{e.task}/`"] for e in cfg.models)],
                      ["from transformers import AutoModelForSequenceClassification, AutoTokenizer",
                       f"model = AutoModelForSequenceClassification.from_pretrained('{pool.tasks[0]}')",
                       f"tokenizer = AutoTokenizer.from_pretrained('{pool.tasks[0]}')"], config_yaml)
