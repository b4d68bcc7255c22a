"""Where the first-order oracles put each target's own checkpoint among a pool's checkpoints, at θ_base: what the
results pages quote about FW soft's selections (merging/methods/frank_wolfe_soft.py, step 2).

    PYTHONPATH=. python scripts/oracle_ranks.py vision configs/vision/efficientnet_lite0_20tasks_v2.yaml \
        --targets "mnist fashion_mnist emoji digits" [--seed 0]

g_t = ∇ of target t's mean loss on its proxy split (eval mode) at θ_base, τ_j = θ_j − θ_base over every task's
checkpoint of fine-tuning seed ``--seed``, with the BatchNorm statistics the merges use (the candidates' mean).
Per oracle, task t's score of checkpoint j (lower = picked first):
  cosine full (FW soft's official)  Σ_l ⟨g_t,l, θ_j,l⟩ / (‖g_t,l‖·‖θ_j,l‖)
  cosine task vectors               Σ_l ⟨g_t,l, τ_j,l⟩ / (‖g_t,l‖·‖τ_j,l‖)
  linear (the textbook LMO)         Σ_l ⟨g_t,l, τ_j,l⟩   (the same order as Σ_l ⟨g_t,l, θ_j,l⟩)
Printed: the own checkpoint's rank (0 = first), the ranks of every target's checkpoint, the top three.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib

import torch

from merging.batchnorm import average_statistics, is_statistic
from merging.benchmark.body import read_body
from merging.benchmark.objective import TaskObjective
from merging.benchmark.store import base_folder, checkpoint_folder
from merging.io.candidates import CheckpointSource, as_source
from merging.methods.frank_wolfe import OneTask, cosine_scores, proxy_objective, stream_inner_products


def oracle_scores(domain: str, pool_path: str, targets: list[str], seed: int
                  ) -> tuple[list[str], dict[str, torch.Tensor]]:
    """(checkpoint labels, {oracle: scores [targets, checkpoints]}) at θ_base."""
    pool = importlib.import_module(f"{domain}.pool").load_pool(pool_path)
    unknown = [task for task in targets if task not in pool.tasks]
    if unknown:
        raise SystemExit(f"--targets: {unknown} are not tasks of {pool_path}; its tasks: {' '.join(pool.tasks)}")
    objective = TaskObjective(pool, seed, [], tasks=targets)
    names = objective.mergeable()
    base = {n: t.to(torch.float32) for n, t in read_body(base_folder(pool), names).items()}
    candidates = [(task, seed) for task in pool.tasks]
    statistics = [n for n in objective.model(targets[0]).state_dict() if is_statistic(n)]
    if statistics:
        objective.use_statistics(average_statistics([read_body(checkpoint_folder(pool, *c), statistics)
                                                     for c in candidates]))
    grads = [proxy_objective(OneTask(objective, task), base, grad=True)[1] for task in targets]
    with contextlib.ExitStack() as opened:
        sources = {f"{task}-seed{s}": opened.enter_context(CheckpointSource(checkpoint_folder(pool, task, s), names))
                   for task, s in candidates}
        ip_full, norm_full, _ = stream_inner_products(names, grads, sources)  # [T, J, L], [J, L]
        ip_tv, norm_tv, _ = stream_inner_products(names, grads, sources, base=as_source(base, "base"))
    g_norm = torch.tensor([[float(g[n].double().norm()) for n in names] for g in grads], dtype=torch.float64)
    return list(sources), {"cosine full (FW soft's official)": cosine_scores(ip_full, norm_full, g_norm).sum(-1),
                           "cosine task vectors": cosine_scores(ip_tv, norm_tv, g_norm).sum(-1),
                           "linear (the textbook LMO)": ip_tv.sum(-1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("domain", choices=["discriminative", "vision"])
    parser.add_argument("pool")
    parser.add_argument("--targets", required=True, help="the target tasks, space-separated")
    parser.add_argument("--seed", type=int, default=0, help="fine-tuning seed of the checkpoints")
    args = parser.parse_args()
    targets = args.targets.split()
    labels, scores = oracle_scores(args.domain, args.pool, targets, args.seed)
    for oracle, score in scores.items():
        print(oracle)
        for t, task in enumerate(targets):
            order = torch.argsort(score[t]).tolist()  # best first
            ranked = [labels[j] for j in order]
            own = ranked.index(f"{task}-seed{args.seed}")
            of_targets = [r for r, label in enumerate(ranked) if label.rsplit("-seed", 1)[0] in targets]
            print(f"  {task:18s} own rank {own:2d}; targets' checkpoints at {of_targets}; top 3 {ranked[:3]}")


if __name__ == "__main__":
    main()
