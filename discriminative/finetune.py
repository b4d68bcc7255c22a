"""Fine-tune one full checkpoint per task from the pool's base encoder (seeded, resumable per task) and
save it as an ordinary Hugging Face folder (encoder + its head) in the cache."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import get_linear_schedule_with_warmup

from merging.atomic import atomic_directory
from merging.errors import MergeError
from merging.checkpoint import resolve_model_ref
from merging.pypi import cache_dir

from . import tasks
from .models import encode, load_classifier, load_tokenizer
from .pool import PoolConfig

DONE = "finetune.json"  # written last: a folder without it is incomplete and is rebuilt


def pool_dir(pool: PoolConfig) -> Path:
    return cache_dir() / "discriminative" / "pools" / pool.name


def base_folder(pool: PoolConfig) -> Path:
    """The base encoder as a sequence-classification folder (its head, sized for the first task, is a
    placeholder that is never merged or evaluated), so task checkpoints and the merge base share names."""
    folder = pool_dir(pool) / "base"
    if not (folder / DONE).is_file():
        source = resolve_model_ref(pool.base)
        torch.manual_seed(0)
        model = load_classifier(source, tasks.spec(pool.data, pool.tasks[0]))
        with atomic_directory(folder, overwrite=True) as tmp:
            model.save_pretrained(tmp)
            load_tokenizer(source).save_pretrained(tmp)
            (tmp / DONE).write_text(json.dumps({"source": str(source)}) + "\n")
    return folder


def is_given(pool: PoolConfig, task: str, seed: int | None) -> bool:
    """Whether the pool names this task's checkpoint (it stands for the first seed) instead of fine-tuning it."""
    return task in pool.checkpoints and (seed is None or seed == pool.finetune.seeds[0])


def checkpoint_folder(pool: PoolConfig, task: str, seed: int | None = None) -> Path:
    """Where task ``task``'s checkpoint of fine-tuning seed ``seed`` (default: the pool's first) is: given in
    the pool, or fine-tuned into the cache."""
    if is_given(pool, task, seed):
        return resolve_model_ref(pool.checkpoints[task])
    return pool_dir(pool) / "finetuned" / f"{task}-seed{pool.finetune.seeds[0] if seed is None else seed}"


def finetune(pool: PoolConfig, task: str, seed: int | None = None, progress: bool = True) -> Path:
    """Fine-tune the base on ``task``'s train split with ``seed`` (default: the pool's first); skipped when the
    checkpoint exists."""
    folder = checkpoint_folder(pool, task, seed)
    if is_given(pool, task, seed) or (folder / DONE).is_file():
        return folder
    cfg, spec = pool.finetune, tasks.spec(pool.data, task)
    seed = cfg.seeds[0] if seed is None else seed
    torch.manual_seed(seed)
    base = base_folder(pool)
    model, tokenizer = load_classifier(base, spec), load_tokenizer(base)
    train = tasks.examples(pool.data, task, "train")
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total = math.ceil(cfg.epochs * steps_per_epoch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup * total), total)
    order = torch.Generator().manual_seed(seed)
    started, losses = time.perf_counter(), []
    model.train()
    with tqdm(total=total, desc=f"fine-tune {task} (seed {seed})", disable=not progress) as bar:
        while len(losses) < total:
            permutation = torch.randperm(len(train), generator=order).tolist()
            for start in range(0, len(train), cfg.batch_size):
                if len(losses) >= total:
                    break
                batch = encode(tokenizer, [train[i] for i in permutation[start:start + cfg.batch_size]],
                               pool.max_length)
                if spec.kind == "regression":
                    batch["labels"] = batch["labels"].float()
                loss = model(**batch).loss
                loss.backward()
                optimizer.step()
                schedule.step()
                optimizer.zero_grad()
                losses.append(loss.item())
                bar.update(1)
                bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
    record = {"task": task, "seed": seed, "steps": total, "examples": len(train), "finetune": cfg.model_dump(),
              "max_length": pool.max_length, "seconds": round(time.perf_counter() - started, 1),
              "final_loss": sum(losses[-20:]) / len(losses[-20:])}
    with atomic_directory(folder, overwrite=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / DONE).write_text(json.dumps(record, indent=2) + "\n")
    return folder


def train_tokens(pool: PoolConfig, task: str, tokenizer) -> int:
    """Tokens in ``task``'s train split after truncation to the pool's ``max_length`` (pairs counted jointly)."""
    return int(encode(tokenizer, tasks.examples(pool.data, task, "train"), pool.max_length)["attention_mask"].sum())


def finetune_many(pool_file: str, pool: PoolConfig, work: list[tuple[str, int]], workers: int = 1) -> None:
    """Fine-tune the missing checkpoints of ``work`` ((task, seed) pairs). With ``workers`` > 1 they are dealt
    to that many processes (``python -m discriminative finetune --only``), each with cores / workers threads,
    costliest first to the least-loaded process (cost = train tokens after truncation, which is what a step's
    compute follows: a 2,000-example headline task costs a fifth of a 2,000-review one). On a small CPU
    machine two one-thread processes finish sooner than one two-thread process."""
    missing = [(t, s) for t, s in work
               if not (is_given(pool, t, s) or (checkpoint_folder(pool, t, s) / DONE).is_file())]
    if workers <= 1 or len(missing) <= 1:
        for task, seed in missing:
            finetune(pool, task, seed)
        return
    tokenizer = load_tokenizer(base_folder(pool))
    size = {t: train_tokens(pool, t, tokenizer) for t in dict.fromkeys(t for t, _ in missing)}
    shares: list[list[tuple[str, int]]] = [[] for _ in range(min(workers, len(missing)))]
    for pair in sorted(missing, key=lambda p: -size[p[0]]):
        min(shares, key=lambda share: sum(size[t] for t, _ in share)).append(pair)
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // len(shares)))}
    running = [subprocess.Popen([sys.executable, "-m", "discriminative", "finetune", "--pool", pool_file, "--only",
                                 *(f"{t}:{s}" for t, s in share)], env=env) for share in shares]
    failed = [p.args[-len(share):] for p, share in zip(running, shares) if p.wait() != 0]
    if failed:
        raise MergeError(f"fine-tuning failed in worker(s) for {failed}; rerun to resume (finished checkpoints stay)")
