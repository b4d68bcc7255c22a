"""Where a pool's models live (``cache_dir()/<domain>/pools/<pool>/{base, finetuned/<task>-seed<s>}``) and
how a missing task checkpoint is made: fine-tune the base on the task's train split (seeded, AdamW, linear
warm-up and decay), saved whole (body + head) in the domain's own format; resumable per task."""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import time
from collections.abc import Iterable
from pathlib import Path

import torch
from transformers import get_linear_schedule_with_warmup

from merging.batchnorm import reestimate_statistics
from merging.benchmark import parallel
from merging.benchmark.parallel import run_jobs
from merging.errors import MergeError
from merging.io.atomic import atomic_directory
from merging.io.checkpoint import resolve_model_ref
from merging.io.pypi import cache_dir
from merging.logs import progress_bar

from .pool import PoolConfig

logger = logging.getLogger(__name__)

DONE = "finetune.json"  # written last: a folder without it is incomplete and is rebuilt


def pool_dir(pool: PoolConfig) -> Path:
    return cache_dir() / pool.domain.name / "pools" / pool.name


def base_folder(pool: PoolConfig) -> Path:
    """The base model saved as a task model (its head, sized for the first task, is a placeholder that is never
    merged or evaluated), so task checkpoints and the merge base share names."""
    folder = pool_dir(pool) / "base"
    if (folder / DONE).is_file():
        check_source(pool, folder / DONE, "base", pool.base)
    else:
        domain, source = pool.domain, resolve_model_ref(pool.base)
        torch.manual_seed(0)
        model = domain.load_model(pool, source, pool.tasks[0], fresh_head=True)
        with atomic_directory(folder, overwrite=True) as tmp:
            domain.save_model(model, domain.processor(pool, source), tmp)
            (tmp / DONE).write_text(json.dumps({"source": str(source), "base": pool.base}) + "\n")
    return folder


def check_source(pool: PoolConfig, record: Path, key: str, wanted: str) -> None:
    """A MergeError if the cached folder of ``record`` was made from another ``key`` (the pool's base, a given
    checkpoint) than ``wanted``, what the pool names now; a record that predates ``key`` is not compared."""
    stored = json.loads(record.read_text()).get(key)
    if stored is not None and stored != wanted:
        raise MergeError(f"{record.parent}: cached from {key} {stored!r}, but pool '{pool.name}' now says "
                         f"{wanted!r}; delete {pool_dir(pool)} (the pool's base and checkpoints) to rebuild it, or "
                         f"give the pool another name")


def is_given(pool: PoolConfig, task: str, seed: int | None) -> bool:
    """Whether the pool names this task's checkpoint (it stands for the first seed) instead of fine-tuning it."""
    return task in pool.checkpoints and (seed is None or seed == pool.finetune.seeds[0])


def checkpoint_folder(pool: PoolConfig, task: str, seed: int | None = None) -> Path:
    """Where task ``task``'s checkpoint of fine-tuning seed ``seed`` (default: the pool's first) is: given in
    the pool, or fine-tuned into the cache."""
    if is_given(pool, task, seed):
        return pool.domain.given_folder(pool, task, resolve_model_ref(pool.checkpoints[task]))
    return pool_dir(pool) / "finetuned" / f"{task}-seed{pool.finetune.seeds[0] if seed is None else seed}"


WEIGHT_FILES = (".safetensors", ".bin", ".pt", ".gguf")


def finetuned_digest(pool: PoolConfig, seed: int, candidates: Iterable[tuple[str, int]] = ()) -> str:
    """The checkpoints a row depends on, as ``key=hash`` words (the first 8 hex digits of the sha256 of each
    checkpoint's weight files): the scored tasks' own at fine-tuning seed ``seed`` (key: the task), then each
    other merged checkpoint of ``candidates`` ((task, seed) pairs; key: the task at ``seed``, ``task@s`` at
    another seed), so that two scaling rows with different extra checkpoints never pass for one run. Rows that
    agree on the checkpoints they share were made against the same fine-tunes; a pool re-made on another CPU
    rounds differently, so a table never compares the two (``results.current_finetunes``)."""
    own = [(task, seed) for task in pool.tasks]
    words = []
    for task, task_seed in dict.fromkeys([*own, *candidates]):
        folder, digest = checkpoint_folder(pool, task, task_seed), hashlib.sha256()
        for path in sorted(p for p in folder.rglob("*") if p.suffix in WEIGHT_FILES and p.is_file()):
            with path.open("rb") as weights:
                digest.update(f"{path.relative_to(folder)}:".encode())
                digest.update(hashlib.file_digest(weights, "sha256").digest())
        key = task if task_seed == seed else f"{task}@{task_seed}"
        words.append(f"{key}={digest.hexdigest()[:8]}")
    return " ".join(words)


def missing_checkpoints(pool: PoolConfig, work: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """The (task, seed) pairs of ``work`` without a complete checkpoint (given ones are never missing). A cached
    checkpoint fine-tuned under settings the pool no longer has (an edited recipe under the same pool name) is a
    MergeError, so that it is never merged as if it were the pool's."""
    missing, now = [], recipe(pool)
    for task, seed in dict.fromkeys(work):
        if is_given(pool, task, seed):
            continue
        record = checkpoint_folder(pool, task, seed) / DONE
        if record.is_file():
            check_recipe(pool, record, now)
        else:
            missing.append((task, seed))
    return missing


def recipe(pool: PoolConfig) -> dict:
    """What a fine-tuned checkpoint's ``finetune.json`` records of the pool: the fine-tuning settings and the
    domain's fields (max_length, image_size …)."""
    return {"finetune": pool.finetune.model_dump(),
            **pool.model_dump(mode="json", exclude={"name", "base", "tasks", "checkpoints", "head", "finetune",
                                                    "data"})}


def check_recipe(pool: PoolConfig, record: Path, now: dict) -> None:
    """A MergeError naming the setting if the checkpoint recorded in ``record`` was fine-tuned otherwise than
    ``pool`` says now (``now``: its ``recipe``). Compared: every fine-tuning setting but the list of seeds, and the pool's scalar fields;
    a setting the record predates is not compared, nor are per-task sections (files, data sets) that grow with
    the pool's tasks."""
    stored = json.loads(record.read_text())
    pairs = [(f"finetune.{key}", stored.get("finetune", {}).get(key, value), value)
             for key, value in now["finetune"].items() if key != "seeds"]
    pairs += [(key, stored.get(key, value), value) for key, value in now.items()
              if key != "finetune" and (value is None or isinstance(value, (bool, int, float, str)))]
    for key, cached, wanted in pairs:
        if cached != wanted:
            raise MergeError(f"{record.parent}: this cached checkpoint was fine-tuned with {key} = {cached!r}, "
                             f"but pool '{pool.name}' now says {wanted!r}; delete the folder to fine-tune it again "
                             f"(or give the pool another name to keep both)")


def announce_missing(pool: PoolConfig, missing: list[tuple[str, int]]) -> None:
    """``parallel.announce_missing`` for the pool's checkpoints, timed by their ``finetune.json`` records."""
    parallel.announce_missing(missing, pool_dir(pool), pool_dir(pool).glob(f"finetuned/*/{DONE}"))


def finetune(pool: PoolConfig, task: str, seed: int | None = None, progress: bool = True) -> Path:
    """Fine-tune the base on ``task``'s train split with ``seed`` (default: the pool's first), every parameter,
    cross-entropy (MSE for regression); skipped when the checkpoint exists. Running statistics (BatchNorm) are
    then recomputed on the train split with the final weights (an exponential average with momentum 0.01 would
    still be 28% the base's after 125 steps)."""
    folder = checkpoint_folder(pool, task, seed)
    if is_given(pool, task, seed) or (folder / DONE).is_file():
        return folder
    domain, cfg = pool.domain, pool.finetune
    spec = domain.spec(pool, task)
    seed = cfg.seeds[0] if seed is None else seed
    torch.manual_seed(seed)
    base = base_folder(pool)
    model, processor = domain.load_model(pool, base, task, fresh_head=True), domain.processor(pool, base)
    train = domain.examples(pool, task, "train")
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total = math.ceil(cfg.epochs * steps_per_epoch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup * total), total)
    order = torch.Generator().manual_seed(seed)
    started, losses = time.perf_counter(), []
    model.train()
    with progress_bar(total=total, desc=f"fine-tune {task} (seed {seed})", disable=not progress) as bar:
        while len(losses) < total:
            permutation = torch.randperm(len(train), generator=order).tolist()
            for start in range(0, len(train), cfg.batch_size):
                if len(losses) >= total:
                    break
                batch = domain.collate(pool, processor, [train[i] for i in permutation[start:start + cfg.batch_size]],
                                       train=True)
                labels = batch.pop("labels")
                logits = model(**batch)
                logits = getattr(logits, "logits", logits)  # [b, num_labels]
                loss = spec.loss(logits, labels)
                loss.backward()
                optimizer.step()
                schedule.step()
                optimizer.zero_grad()
                losses.append(loss.item())
                bar.update(1)
                bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}", refresh=False)  # bar's pace
    if domain.statistics:  # BatchNorm: running averages lag the weights after a short fine-tune; recompute them
        reestimate_statistics(model, [{k: v for k, v in domain.collate(pool, processor, train[i:i + 64]).items()
                                       if k != "labels"} for i in range(0, len(train), 64)])
    model.eval()
    record = {"task": task, "seed": seed, "steps": total, "examples": len(train), **recipe(pool),
              "seconds": round(time.perf_counter() - started, 1),
              "final_loss": sum(losses[-20:]) / len(losses[-20:])}
    with atomic_directory(folder, overwrite=True) as tmp:
        domain.save_model(model, processor, tmp)
        (tmp / DONE).write_text(json.dumps(record, indent=2) + "\n")
    return folder


def finetune_many(pool_file: str, pool: PoolConfig, work: list[tuple[str, int]], workers: int = 1) -> None:
    """Fine-tune the missing checkpoints of ``work`` ((task, seed) pairs). With ``workers`` > 1 they are dealt
    to that many processes (``python -m <domain> finetune --only``), each with cores / workers threads,
    costliest first to the least-loaded process (cost: ``Domain.cost``). On a small CPU machine two one-thread
    processes finish sooner than one two-thread process."""
    missing = missing_checkpoints(pool, work)
    processor = functools.cache(lambda: pool.domain.processor(pool, base_folder(pool)))  # only to deal
    run_jobs(missing, lambda task, seed: finetune(pool, task, seed), workers,
             ["-m", pool.domain.name, "finetune", "--pool", pool_file, "--only"],
             lambda task: pool.domain.cost(pool, task, processor()))
