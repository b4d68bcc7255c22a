"""Evaluation shared by every method and domain: per-task scores of "some body + each task's own head" on a
split, and the majority-class and linear-probe references."""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from merging.benchmark.metrics import score
from merging.io.atomic import atomic_write_text
from merging.methods.base import RoutedModel
from merging.objective import functional_logits

from .body import is_head, read_body, with_merged_body
from .pool import PoolConfig
from .store import DONE, base_folder, checkpoint_folder, pool_dir

logger = logging.getLogger(__name__)


class Evaluator:
    """Scores on one split for every task of a pool (its checkpoints of fine-tuning seed ``seed``, default the
    pool's first); inputs are batched once (tokenised, or images transformed)."""

    def __init__(self, pool: PoolConfig, split: str, seed: int | None = None, batch_size: int = 64) -> None:
        self.pool, self.split = pool, split
        self.seed = pool.finetune.seeds[0] if seed is None else seed
        self.domain, self.batch_size = pool.domain, batch_size
        self._state_names: list[str] | None = None
        self.processor = self.domain.processor(pool, base_folder(pool))
        self.examples = {task: self._ordered(self.domain.examples(pool, task, split)) for task in pool.tasks}
        self.batches = {task: self._batched(examples) for task, examples in self.examples.items()}

    def _ordered(self, examples):
        key = self.domain.sort_key
        return examples if key is None else sorted(examples, key=key)

    def _batched(self, examples) -> list[dict[str, torch.Tensor]]:
        return [self.domain.collate(self.pool, self.processor, examples[i:i + self.batch_size])
                for i in range(0, len(examples), self.batch_size)]

    def spec(self, task: str):
        return self.domain.spec(self.pool, task)

    def model(self, folder: Path, task: str) -> torch.nn.Module:
        return self.domain.load_model(self.pool, folder, task)

    def task_score(self, model: torch.nn.Module, task: str) -> float:
        model.eval()
        return self._score(task, lambda inputs: model(**inputs))

    @torch.no_grad()
    def _score(self, task: str, logits_of: Callable[[dict[str, torch.Tensor]], Any]) -> float:
        """The task's metric of the predictions ``logits_of(inputs)`` makes on each batch."""
        spec = self.spec(task)
        predictions, labels = [], []
        for batch in self.batches[task]:
            logits = logits_of({k: v for k, v in batch.items() if k != "labels"})
            logits = getattr(logits, "logits", logits)  # [b, num_labels]
            predictions.append(logits.squeeze(-1) if spec.kind == "regression" else logits.argmax(-1))
            labels.append(batch["labels"])
        return score(spec.metric, torch.cat(predictions), torch.cat(labels))

    def scores(self, model_for: Callable[[str], torch.nn.Module]) -> dict[str, float]:
        return {task: self.task_score(model_for(task), task) for task in self.pool.tasks}

    def finetuned(self) -> dict[str, float]:
        """Each task's own checkpoint: the reference (100) of the normalised score. Cached per split and seed
        in the pool's folder, one entry per task keyed by its checkpoint folder and completion record (so pools
        over other task subsets share it)."""
        cache = pool_dir(self.pool) / f"finetuned-{self.split}-seed{self.seed}.json"
        stored = _read_cache(cache)
        scores = {}
        for task in self.pool.tasks:
            key = _fingerprint(self.checkpoint(task))
            if stored.get(task, {}).get("key") != key:
                stored[task] = {"key": key, "score": self.task_score(self.model(self.checkpoint(task), task), task)}
            scores[task] = stored[task]["score"]
        atomic_write_text(cache, json.dumps(stored, indent=2) + "\n")
        return scores

    def with_body(self, folder: Path, own: list[str] = ()) -> dict[str, float]:
        """The body in ``folder`` (a merge, or the pre-trained base) with each task's fine-tuned head; tensors
        matching ``own`` (regexes, e.g. unmerged biases) also stay each task's own. The folder is read once."""
        return self.with_tensors(read_body(folder, self.body_names(own)), own)

    def with_tensors(self, body: dict[str, torch.Tensor], own: list[str] = ()) -> dict[str, float]:
        """As ``with_body`` for a merged body already in memory (``body``: every name of ``body_names``)."""
        keep = [*self.pool.head, *own]
        return self.scores(lambda task: with_merged_body(self.model(self.checkpoint(task), task), body, keep))

    def with_routed(self, routed: RoutedModel, own: list[str] = ()) -> tuple[dict[str, float], dict[str, Any]]:
        """Scores of a routed model (merging/methods/base.py) with each task's own head: every input is routed on
        its own — its features under the shared body give its weights w(x), and it runs alone (a batch of one)
        through θ(x) — and, per task with an expert, how the router treated its inputs: the share whose largest
        weight is the task's expert and the mean weight on it."""
        keep = [*self.pool.head, *own]
        scores, routing = {}, {}
        for task in self.pool.tasks:
            scores[task], weights = self._routed_score(task, routed, keep)
            if task in routed.tasks:
                expert = routed.tasks.index(task)
                routing[task] = {"own_expert_top": (weights.argmax(-1) == expert).float().mean().item(),
                                 "own_expert_weight": weights[:, expert].mean().item()}
            logger.info("routed %s: %.2f %s", task, scores[task], routing.get(task, ""))
        return scores, routing

    def _routed_score(self, task: str, routed: RoutedModel, keep: list[str]) -> tuple[float, torch.Tensor]:
        """The task's score of ``routed`` (``with_routed``) and the weights w(x) of its inputs [N, T]."""
        model = with_merged_body(self.model(self.checkpoint(task), task), routed.shared, keep).eval()
        weights: list[torch.Tensor] = []

        def logits_of(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
            w = routed.weights(self.domain.features(model, inputs))  # [b, T]
            weights.append(w)
            return torch.cat([functional_logits(model, body, {k: v[i:i + 1] for k, v in inputs.items()})
                              for i, body in enumerate(routed.bodies(w))])

        return self._score(task, logits_of), torch.cat(weights)

    def body_names(self, own: list[str] = ()) -> list[str]:
        """The tensors a merge replaces: every tensor of a task checkpoint outside the head and ``own``."""
        if self._state_names is None:  # read once: every grid point of a search asks again
            first = self.pool.tasks[0]
            self._state_names = list(self.model(self.checkpoint(first), first).state_dict())
        keep = [*self.pool.head, *own]
        return [n for n in self._state_names if not is_head(n, keep)]

    def statistic_names(self) -> list[str]:
        """The body's running statistics (``Domain.statistics``, e.g. BatchNorm means and variances)."""
        return [n for n in self.body_names() if is_head(n, list(self.domain.statistics))]

    def checkpoint(self, task: str) -> Path:
        return checkpoint_folder(self.pool, task, self.seed)

    def majority(self) -> dict[str, float]:
        """Predict the most frequent train label (regression: the train mean, whose correlation is 0)."""
        result = {}
        for task in self.pool.tasks:
            spec, labels = self.spec(task), torch.tensor([e.label for e in self.examples[task]])
            if spec.kind == "regression":
                result[task] = 0.0
                continue
            train = torch.tensor([int(e.label) for e in self.domain.examples(self.pool, task, "train")])
            guess = torch.full_like(labels, int(train.bincount().argmax()))
            result[task] = score(spec.metric, guess, labels)
        return result

    def probe(self, steps: int = 300) -> dict[str, float]:
        """A linear model on frozen pooled base-model features (``Domain.features``), fit on the train split
        (softmax regression or least squares, L2 1e-4, full-batch L-BFGS)."""
        base = self.model(base_folder(self.pool), self.pool.tasks[0])  # features are the body's: any head does
        result = {}
        for index, task in enumerate(self.pool.tasks, 1):
            started = time.perf_counter()
            spec = self.spec(task)
            train_x, train_y = self._features(base, self._batched(self.domain.examples(self.pool, task, "train")))
            test_x, test_y = self._features(base, self.batches[task])
            mean, std = train_x.mean(0), train_x.std(0) + 1e-6
            train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
            out = 1 if spec.kind == "regression" else spec.num_labels
            linear = torch.nn.Linear(train_x.shape[1], out)
            optimizer = torch.optim.LBFGS(linear.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

            def closure() -> torch.Tensor:
                optimizer.zero_grad()
                logits = linear(train_x)
                loss = spec.loss(logits, train_y) + 1e-4 * linear.weight.pow(2).sum()
                loss.backward()
                return loss

            optimizer.step(closure)
            with torch.no_grad():
                logits = linear(test_x)
            predictions = logits.squeeze(-1) if spec.kind == "regression" else logits.argmax(-1)
            result[task] = score(spec.metric, predictions, test_y)
            logger.info("probe %d/%d %s: %d train features, test %.2f (%.0f s)", index, len(self.pool.tasks), task,
                        len(train_y), result[task], time.perf_counter() - started)
        return result

    @torch.no_grad()
    def _features(self, model: torch.nn.Module, batches: list[dict[str, torch.Tensor]]
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        features = [self.domain.features(model, {k: v for k, v in b.items() if k != "labels"}) for b in batches]
        return torch.cat(features), torch.cat([b["labels"] for b in batches])


def _read_cache(path: Path) -> dict[str, dict]:
    """{task: {"key", "score"}}; the earlier layout {"key": {task: key}, "scores": {task: score}} is read too."""
    if not path.is_file():
        return {}
    stored = json.loads(path.read_text())
    if "scores" in stored:
        return {task: {"key": stored["key"].get(task), "score": s} for task, s in stored["scores"].items()}
    return stored


def _fingerprint(folder: Path) -> str:
    record = folder / DONE
    return f"{folder}:{record.stat().st_mtime_ns}" if record.is_file() else str(folder)
