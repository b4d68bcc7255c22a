"""The data-parallel quantities of the data-driven methods on the toy objectives, for tests/test_distributed.py.

    accelerate launch … tests/distributed_gradient_script.py OUT     # several processes: rank 0 writes OUT
    python tests/distributed_gradient_script.py OUT                   # one process

``compute()`` is also imported by the test and run in-process (one process) for the reference. The toys have
40 examples in batches of 15, 15, 10: three batches, so two processes get unequal shares (2 and 1 batches, 25
and 15 rows) and the AdaMerging batches split 7/8 and 5/5 rows. The generative objective (a tiny Llama with LoRA
merges in product and factor space, generative/objective.py) has 5 proxy examples per task in batches of 2,
2, 1: again shares of 2 and 1 batches (3 and 2 rows).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

TESTS = Path(__file__).resolve().parent
for path in (str(TESTS.parent), str(TESTS)):
    if path not in sys.path:
        sys.path.insert(0, path)

from toy_objective import ToyObjective  # noqa: E402

from merging import distributed  # noqa: E402
from merging.methods.adamerging import AdaMergingParams, adamerging  # noqa: E402
from merging.methods.frank_wolfe import frank_wolfe_merge, proxy_objective  # noqa: E402
from merging.methods.frank_wolfe_soft import frank_wolfe_soft_merge  # noqa: E402
from merging.statistics import diagonal_fisher, input_grams  # noqa: E402

TOY = dict(n_tasks=3, d=4, n=40, batch_size=15, seed=1)


class ClassifierToy(ToyObjective):
    """The toy with a 3-class head per task; labels are the argmax of the task's own model (cross-entropy)."""

    def __init__(self, classes: int = 3, **kwargs) -> None:
        super().__init__(**kwargs)
        g = torch.Generator().manual_seed(11)
        d = self.base["body.weight"].shape[0]
        for t in self.tasks:
            model = self._models[t]
            model.head = torch.nn.Linear(d, classes, bias=False)
            with torch.no_grad():
                model.head.weight.copy_(torch.randn(classes, d, generator=g))
                x, _ = self._data[t]
                self._data[t] = (x, model(x).argmax(-1))  # [n] class labels
            model.eval()

    def loss(self, task, logits, batch) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(logits, batch["labels"])


def _flat(prefix: str, tensors) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{name}": t.detach().clone() for name, t in tensors.items()}


def generative() -> dict[str, object]:
    """FW's objective and a 2-iteration FW run on a tiny Llama, for LoRA merges in both spaces (r = 2 on the
    q/v projections of its one layer; two random adapters)."""
    from tiny_lm import tiny_byte_llama

    from generative.lm_eval_tasks import LocalTask
    from generative.objective import CausalLMObjective

    model, tokenizer = tiny_byte_llama()
    tasks = [LocalTask("plus", "exact_match", [{"input": f"{i} plus 1 is", "target": str(i + 1)} for i in range(5)]),
             LocalTask("pick", "multiple_choice", [{"input": f"q{i}", "choices": ["yes", "no"], "label": i % 2}
                                                   for i in range(5)])]
    weights = dict(model.named_parameters())
    modules = [f"model.layers.0.self_attn.{m}_proj" for m in ("q", "v")]
    g = torch.Generator().manual_seed(5)
    adapters = {f"a{i}": {**{f"{m}.lora_A": 0.3 * torch.randn(2, weights[f"{m}.weight"].shape[1], generator=g)
                             for m in modules},
                          **{f"{m}.lora_B": 0.3 * torch.randn(weights[f"{m}.weight"].shape[0], 2, generator=g)
                             for m in modules}} for i in range(2)}
    out: dict[str, object] = {}
    for space in ("factors", "product"):
        if space == "factors":
            candidates = adapters
        else:  # ΔW_i = s·B_i·A_i with s = 2
            candidates = {k: {f"{m}.weight": 2.0 * a[f"{m}.lora_B"] @ a[f"{m}.lora_A"] for m in modules}
                          for k, a in adapters.items()}
        base = {n: torch.zeros_like(t) for n, t in candidates["a0"].items()}
        objective = CausalLMObjective(model, tokenizer, tasks, space, scaling=2.0, batch_size=2)
        theta = {n: 0.5 * (candidates["a0"][n] + candidates["a1"][n]) for n in base}
        value, grad = proxy_objective(objective, theta, grad=True)
        out[f"gen_{space}.value"] = value
        out.update(_flat(f"gen_{space}.grad", grad))
        run = frank_wolfe_merge(objective, base, candidates, {"iterations": 2, "lambda": 0.3, "init_as_vertex": False})
        out.update(_flat(f"gen_{space}_run.theta", run.theta))
        out[f"gen_{space}_run.objective"] = torch.tensor([h["objective"] for h in run.history], dtype=torch.float64)
        out[f"gen_{space}_run.choices"] = repr([h["choices"] for h in run.history])
    return out


def compute() -> dict[str, object]:
    """Every data-parallel quantity, by name: tensors, floats and (for FW's choices) strings."""
    torch.manual_seed(0)
    out: dict[str, object] = {}
    toy = ToyObjective(**TOY)
    theta = {n: toy.base[n] + 0.3 * sum(toy.optimum[t][n] - toy.base[n] for t in toy.tasks) for n in toy.base}
    value, grad = proxy_objective(toy, theta, grad=True)  # FW: f(θ) and ∇f(θ)
    out["fw.value"] = value
    out.update(_flat("fw.grad", grad))
    grams = input_grams(toy, toy.optimum["t0"], "t0")  # RegMean
    out.update(_flat("regmean.gram", grams.gram))
    out["regmean.rows"] = grams.rows["body.weight"]
    out.update(_flat("fisher.empirical", diagonal_fisher(toy, toy.optimum["t1"], "t1")))

    cls = ClassifierToy(**TOY)
    value, grad = proxy_objective(cls, theta, grad=True)
    out["fw_cls.value"] = value
    out.update(_flat("fw_cls.grad", grad))
    out.update(_flat("fisher.expected", diagonal_fisher(cls, cls.optimum["t2"], "t2", kind="expected")))
    merged, history = adamerging(cls, cls.base, [cls.optimum[t] for t in cls.tasks],
                                 AdaMergingParams(granularity="layer", steps=3))
    out.update(_flat("adamerging.theta", merged))
    out["adamerging.lambdas"] = history.lambdas
    out["adamerging.entropy"] = torch.tensor(history.entropy, dtype=torch.float64)

    hard = frank_wolfe_merge(toy, toy.base, toy.optimum, {"iterations": 3, "line_search": "golden",
                                                          "line_search_points": 6})
    out.update(_flat("fw_run.theta", hard.theta))
    out["fw_run.objective"] = torch.tensor([h["objective"] for h in hard.history], dtype=torch.float64)
    out["fw_run.choices"] = repr([h["choices"] for h in hard.history])
    soft = frank_wolfe_soft_merge(cls, cls.base, cls.optimum, {"iterations": 2, "ada_steps": 2})
    out.update(_flat("fw_soft_run.theta", soft.theta))
    out["fw_soft_run.selections"] = repr([h["selections"] for h in soft.history])
    out.update(generative())
    return out


def same(a: dict[str, object], b: dict[str, object]) -> bool:
    """Bitwise equality of two ``compute()`` results."""
    if a.keys() != b.keys():
        return False
    return all(torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a)


def main() -> None:
    out = Path(sys.argv[1])
    results = compute()
    every = distributed.gather_objects(results)
    shares = distributed.gather_objects(len(list(distributed.shard(range(3)))))  # proxy batches per process
    if distributed.is_main():
        tmp = out.with_name(out.name + ".tmp")
        torch.save({"results": results, "world_size": distributed.world_size(), "shares": list(shares),
                    "ranks_agree": all(same(results, other) for other in every),
                    "omp_threads": os.environ.get("OMP_NUM_THREADS")}, tmp)
        tmp.replace(out)
    distributed.finish()


if __name__ == "__main__":
    main()
