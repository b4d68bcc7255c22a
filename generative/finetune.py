"""Fine-tuning of a causal LM on one task of the suite (generative/data.py): LoRA as the FW-Merging paper trains
its LLaMA-2 adapters (q_proj and v_proj, r 8, α 16, dropout 0.05), or all weights (the FroM paper's full
fine-tunes); AdamW, next-token cross-entropy on the answer tokens only. An example is lm-eval's prompt (the
task's Jinja template) + " " + the answer (the target, or the correct choice), so training and evaluation see
the same text.

The adapter (peft ``save_pretrained``) or model (transformers ``save_pretrained`` + tokenizer) is written to a
temporary folder and renamed into place with ``finetune.json`` (hyper-parameters, seconds, losses): an existing
one is kept (resumable), a half-trained one never appears. ``train_many`` trains a pool's missing checkpoints,
in parallel one-thread worker processes when asked (on 2 CPU cores, two workers take about half the time).
"""
from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from merging.benchmark.parallel import run_jobs
from merging.io.atomic import atomic_directory
from merging.logs import progress_bar

from .lm_eval_tasks import LocalTask

MARKER = "finetune.json"


class LoraTraining(BaseModel):
    model_config = ConfigDict(extra="forbid")
    r: int = Field(8, ge=1)
    alpha: float = 16.0
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] = ["q_proj", "v_proj"]
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(8, ge=1)
    epochs: float = Field(1.0, gt=0)  # passes over the train split (a fraction stops early)


class FullTraining(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lr: float = Field(5e-5, gt=0)
    batch_size: int = Field(8, ge=1)
    epochs: float = Field(0.5, gt=0)


def render(prompt: str, example: dict[str, Any]) -> str:
    """The prompt of one example, as lm-eval renders ``doc_to_text`` (Jinja)."""
    import jinja2

    return jinja2.Template(prompt, keep_trailing_newline=True).render(**example)


def answer(task: LocalTask, example: dict[str, Any]) -> str:
    return example["target"] if task.kind == "exact_match" else example["choices"][example["label"]]


def batch_of(tokenizer: Any, task: LocalTask, examples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """input_ids / attention_mask / labels (right-padded); labels are -100 except on the " answer" tokens
    (and the end-of-text token that follows them)."""
    rows, labels = [], []
    for example in examples:
        text = render(task.prompt, example)
        prompt = tokenizer(text).input_ids
        whole = tokenizer(text + " " + answer(task, example)).input_ids + [tokenizer.eos_token_id]
        rows.append(whole)
        labels.append([-100] * len(prompt) + whole[len(prompt):])
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return {"input_ids": torch.tensor([r + [pad] * (width - len(r)) for r in rows]),
            "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows]),
            "labels": torch.tensor([lab + [-100] * (width - len(lab)) for lab in labels])}


def _train(model: torch.nn.Module, tokenizer: Any, task: LocalTask, training: LoraTraining | FullTraining,
           seed: int, progress: bool, what: str) -> dict[str, Any]:
    """AdamW on the trainable parameters over ``epochs`` passes of the shuffled train split; the log."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=training.lr)
    order = list(task.examples)
    random.Random(seed).shuffle(order)
    steps = max(1, round(training.epochs * len(order) / training.batch_size))
    losses, started = [], time.perf_counter()
    model.train()
    for step in progress_bar(range(steps), desc=f"{what} {task.name} (seed {seed})", disable=not progress):
        first = step * training.batch_size
        batch = batch_of(tokenizer, task, [order[(first + j) % len(order)] for j in range(training.batch_size)])
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(round(loss.item(), 4))
    model.eval()
    return {"task": task.name, "seed": seed, "steps": steps, "training": training.model_dump(), "losses": losses,
            "seconds": round(time.perf_counter() - started, 1)}


def train(base: Path, task: LocalTask, out: Path, training: LoraTraining | FullTraining, seed: int = 0,
          progress: bool = True) -> Path:
    """Fine-tune the model in ``base`` on ``task.examples`` (its train split) into ``out``: a LoRA adapter
    (``LoraTraining``) or the whole model with its tokenizer (``FullTraining``); a finished one in ``out`` is
    returned untouched."""
    if (Path(out) / MARKER).is_file():
        return Path(out)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(base)
    lora = isinstance(training, LoraTraining)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=training.r, lora_alpha=training.alpha,
                                                 lora_dropout=training.dropout,
                                                 target_modules=training.target_modules, task_type="CAUSAL_LM"))
    log = _train(model, tokenizer, task, training, seed, progress, "LoRA" if lora else "full")
    with atomic_directory(out, overwrite=True) as tmp:
        model.save_pretrained(tmp)
        if not lora:
            tokenizer.save_pretrained(tmp)
        (tmp / MARKER).write_text(json.dumps({**log, "base": str(base)}, indent=1))
    return Path(out)


def cost(task: LocalTask) -> float:
    """Relative compute of fine-tuning on ``task`` (to deal tasks to parallel workers): the characters of its
    training texts, about proportional to the tokens every epoch passes through the model."""
    return float(sum(len(render(task.prompt, e)) + 1 + len(answer(task, e)) for e in task.examples))


def train_many(base: Path, tasks: Sequence[LocalTask], jobs: Sequence[tuple[str, int]],
               folder: Callable[[str, int], Path], training: LoraTraining | FullTraining, workers: int = 1,
               worker_command: Sequence[str] = ()) -> list[Path]:
    """Train every (task name, seed) of ``jobs`` whose ``folder(task, seed)`` has no finished checkpoint; the
    folders of all. With ``workers`` > 1 the missing ones are dealt, costliest first (``cost``), to that many
    processes ``python worker_command… TASK:SEED…`` (merging/benchmark/parallel.py), each with cores / workers threads."""
    by_name = {task.name: task for task in tasks}
    missing = [(name, seed) for name, seed in jobs if not (folder(name, seed) / MARKER).is_file()]
    run_jobs(missing, lambda name, seed: train(base, by_name[name], folder(name, seed), training, seed=seed),
             workers, worker_command, lambda name: cost(by_name[name]))
    return [folder(name, seed) for name, seed in jobs]
