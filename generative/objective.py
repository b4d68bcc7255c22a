"""The generative suite as an ``Objective`` (merging/objective.py) for the data-driven merges (FW-Merging):
the mergeable tensors are a LoRA merge in product or factor space (merging/lora_merge.py), or the model's own
weights (``space: weights``, full fine-tunes), put into a frozen causal LM, and the loss of a task is the next-token cross-entropy on the answer tokens of its proxy examples
(the prompt is masked, as in the official FW-Merging LLaMA code and in fine-tuning, generative/finetune.py):

    ℓ_t(θ; x) = −(1/|answer(x)|) Σ_{j ∈ answer(x)} log p_θ(x_j | x_<j)      (mean over a batch's answer tokens)

The model runs on ``merging.distributed.device()`` (a GPU when there is one; under ``accelerate launch`` each
process takes its share of the proxy batches and the gradients are all-reduced, merging/distributed.py); the
merged tensors θ stay where the caller keeps them (the CPU) and are moved per forward, so only the base model,
one batch's activations and ∇θ live on the device.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F

from merging import distributed
from merging.errors import MergeError
from merging.lora_merge import Space, merged_weights
from merging.objective import Batch, functional_logits

from .finetune import batch_of
from .lm_eval_tasks import LocalTask


class CausalLMObjective:
    """f(θ) for FW-Merging over the proxy examples of ``tasks`` (the first ``per_task`` of each), with the
    merge θ in ``space`` (``scaling``: the adapters' lora_alpha / r, used by factor space; ``weights``: θ are the
    model's own parameters by name)."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, tasks: Sequence[LocalTask],
                 space: Space | Literal["weights"],
                 scaling: float = 1.0, batch_size: int = 8, per_task: int | None = None) -> None:
        self.device = distributed.device()
        self._model = model.eval().requires_grad_(False).to(self.device)
        self._weights = {name: p.detach() for name, p in model.named_parameters()}
        self._tasks = {t.name: t for t in tasks}
        self.tasks = list(self._tasks)
        self.tokenizer, self.space, self.scaling = tokenizer, space, scaling
        self.batch_size, self.per_task = batch_size, per_task

    def model(self, task: str) -> torch.nn.Module:
        return self._model

    def batches(self, task: str, split: str) -> Iterator[Batch]:
        if split != "proxy":
            raise MergeError(f"the generative objective has only the proxy split (asked for '{split}')")
        examples = self._tasks[task].examples[:self.per_task]
        for start in range(0, len(examples), self.batch_size):
            yield batch_of(self.tokenizer, self._tasks[task], examples[start:start + self.batch_size])

    def logits(self, task: str, params: Mapping[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        params = {name: t.to(self.device) for name, t in params.items()}  # differentiable: ∇ returns to θ
        weights = params if self.space == "weights" else merged_weights(self.space, self._weights, params,
                                                                        self.scaling)
        inputs = {key: batch[key].to(self.device) for key in ("input_ids", "attention_mask")}
        return functional_logits(self._model, weights, inputs)  # [b, T, vocab]

    def loss(self, task: str, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        labels = batch["labels"][:, 1:].to(logits.device)  # [b, T-1] token j+1 is predicted from position j
        return F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                               ignore_index=-100)
