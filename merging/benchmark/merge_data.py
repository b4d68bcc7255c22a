"""Data-driven merges of classifiers from the merge command line (merging/data_merge.py), for every classification
domain: the config's checkpoints and the user's task files become an in-memory ``data: files`` pool of the domain,
merged by the same ``merge_data_driven`` as ``python -m <domain> run`` (so the same parameters and files give the
same weights). A domain supplies a ``ClassifierKind``; its data section:

    data:
      kind: sequence_classification          # the kind's name (merging/data_merge.py KINDS)
      head: ['^classifier\\.']               # per-task tensors, never merged (default: the kind's)
      max_length: 128                        # the kind's own pool keys (defaults: ClassifierKind.pool_keys)
      tasks: {TASK: {proxy: FILE, …}}        # the domain's TaskFiles keys (merging/benchmark/files.py)

``num_labels`` defaults to the task checkpoint's ``config.json`` (its ``id2label`` size) and ``label_names`` to
its ``id2label`` when those are names rather than LABEL_i. Output: ``DIR/<task>/`` for every task, a loadable
classifier (the merged body with the task's own head, and its preprocessing), ``merge_config.yaml``,
``merge_info.json`` (the method's log: FW's objective, gap and selections per iteration) and a model card."""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from merging.config import MergeConfig, check_parameters, describe_errors
from merging.data_merge import merge_summary
from merging.errors import MergeError
from merging.io.atomic import atomic_directory, check_target
from merging.io.checkpoint import resolve_model_ref
from merging.logs import quiet_model_loads
from merging.model_card import model_card
from merging.registry import get_method

from .body import with_merged_body
from .data_driven import merge_data_driven
from .evaluate import Evaluator
from .files import TaskFiles
from .pool import PoolConfig

logger = logging.getLogger(__name__)

NEEDS_VALIDATION = ("greedy_soup",)  # methods that score candidates on held-out data
PROXY_STANDS_IN = ("test", "train")  # splits a merge reads the proxy for when a task gives none (AdaMerging's
                                     # unlabelled inputs, FW soft's fresh draws): no scores are made here


@dataclass(frozen=True)
class ClassifierKind:
    """What a domain's ``data.kind`` needs: its pool class (``files`` holds ``files`` entries), the default head,
    its own pool keys with their defaults (overridable in the data section), and the model card's loader."""

    pool: type[PoolConfig]
    files: type[TaskFiles]
    head: tuple[str, ...]
    pool_keys: dict[str, Any]
    pipeline_tag: str
    loader: str  # the transformers class that loads DIR/<task>


def checkpoint_labels(folder: Path) -> dict[str, Any]:
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


def _section(kind: ClassifierKind, data: dict[str, Any], where: str) -> tuple[list[str], dict[str, Any], dict]:
    """(head, the kind's pool keys, tasks) of a data section; an unknown key or a missing tasks entry names it."""
    allowed = {"kind", "head", "tasks", *kind.pool_keys}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise MergeError(f"{where}: data: unknown key(s) {unknown}; expected {sorted(allowed)}")
    tasks, head = data.get("tasks"), data.get("head", list(kind.head))
    if not isinstance(tasks, dict) or not tasks or not all(isinstance(v, dict) for v in tasks.values()):
        raise MergeError(f"{where}: data.tasks: expected a mapping task -> its files")
    if not isinstance(head, list) or not head or not all(isinstance(h, str) for h in head):
        raise MergeError(f"{where}: data.head: expected a non-empty list of regexes, got {head!r}")
    return head, {k: data.get(k, v) for k, v in kind.pool_keys.items()}, tasks


def build_pool(kind: ClassifierKind, cfg: MergeConfig, where: str = "config") -> PoolConfig:
    """The in-memory pool of ``cfg``: its base, each task's checkpoint and files; every split the method may read
    is read and checked here (files, columns, labels against the checkpoint's head), before any weight is."""
    head, pool_keys, entries = _section(kind, cfg.data or {}, where)
    folders = {entry.task: resolve_model_ref(entry.model) for entry in cfg.models}  # paired: check_data_request
    files = {}
    for task, entry in entries.items():
        proxy = {split: entry["proxy"] for split in PROXY_STANDS_IN if "proxy" in entry}
        try:
            files[task] = kind.files.model_validate({**checkpoint_labels(folders[task]), **proxy, **entry})
        except ValidationError as err:
            raise MergeError(f"{where}: data.tasks.{task}: {describe_errors(err, 'key')}") from None
    try:
        pool = kind.pool.model_validate({
            "name": "merge", "base": str(resolve_model_ref(cfg.base)), "tasks": list(entries), "head": head,
            "checkpoints": {task: str(folder) for task, folder in folders.items()}, "data": "files",
            "files": files, "finetune": {"seeds": [0]}, **pool_keys})
    except ValidationError as err:
        raise MergeError(f"{where}: data: {describe_errors(err, 'key')}") from None
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


def merge_classifiers(kind: ClassifierKind, cfg: MergeConfig, out: Path, *, overwrite: bool = False,
                      progress: bool = True, source_yaml: Path | None = None) -> dict[str, Any]:
    """Merge ``cfg``'s classifiers with its data-driven method into ``out`` (module docstring); the summary."""
    out = check_target(out, overwrite)
    quiet_model_loads()  # a model load per task: no weight-loading bar each
    pool = build_pool(kind, cfg, str(source_yaml or "config"))
    started = time.perf_counter()
    has_validation = all(f.validation is not None for f in pool.files.values())
    validation = Evaluator(pool, "validation" if has_validation else "proxy", 0)
    body, log = merge_data_driven(pool, cfg.method, dict(cfg.parameters), [], validation, seed=cfg.seed)
    info = merge_summary(cfg, {task: pool.checkpoints[task] for task in pool.tasks}, started, log)
    with atomic_directory(out, overwrite=overwrite) as folder:
        for task in pool.tasks:
            checkpoint = validation.checkpoint(task)
            model = with_merged_body(validation.model(checkpoint, task), body, pool.head)
            pool.domain.save_model(model, pool.domain.processor(pool, checkpoint), folder / task)
        config_yaml = yaml.safe_dump(cfg.model_dump(exclude_none=True), sort_keys=False)
        (folder / "merge_config.yaml").write_text(config_yaml)
        (folder / "merge_info.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
        (folder / "README.md").write_text(_card(kind, cfg, pool, info["paper"], config_yaml))
    return {k: v for k, v in info.items() if k != "log"}


def _card(kind: ClassifierKind, cfg: MergeConfig, pool: PoolConfig, paper: str, config_yaml: str) -> str:
    summary = (f"The body of {len(pool.tasks)} fine-tuned checkpoints of `{cfg.base}` merged with **{cfg.method}** "
               f"({paper}) on the tasks' data; each task keeps its own head (`{'`, `'.join(pool.head)}`).")
    return model_card({"library_name": "transformers", "base_model": cfg.base, "tags": ["merge", cfg.method],
                       "pipeline_tag": kind.pipeline_tag}, f"Merged classifiers ({cfg.method})", summary,
                      [["task", "checkpoint", "folder"], *([e.task, f"`{e.model}`", f"`{e.task}/`"] for e in cfg.models)],
                      [f"from transformers import {kind.loader}",
                       f"model = {kind.loader}.from_pretrained('{pool.tasks[0]}')"], config_yaml)
