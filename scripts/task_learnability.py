"""Is each task of a pool worth merging? Majority rate, what the base model does without fine-tuning (a linear
probe on its frozen features; for generative pools the base model itself) and the fine-tuned checkpoint, all on
the validation split (never test), for one fine-tuning seed.

    python scripts/task_learnability.py configs/discriminative/text_candidates.yaml [--seed 0] [--domain discriminative]

The pool's checkpoints of that seed must exist (``python -m <domain> finetune --pool POOL --seeds S``). A task
earns its place when fine-tuning beats the majority rate by >= 10 points and the probe (the bar the text and
image pools' tasks were chosen by); for generative pools, the majority and the base model by >= 10 points each
(the majority is of the answers: for multiple choice whose choices are shuffled per example, as the arithmetic
ones, the most frequent answer position, about chance, so the base model is the bar there). Generative
references are cached in outs/<pool>/ as the runs' are.
Fine-tuned − probe (base) is what fine-tuning adds, the knowledge a merge has to keep. Prints a Markdown table
(accuracy in %, or the task's metric).
"""
from __future__ import annotations

import argparse
import collections
import importlib
from pathlib import Path


def generative_scores(pool_path: str, seed: int) -> tuple[str, dict[str, dict[str, float]]]:
    """(pool name, {"majority" | "base" | "fine-tuned": {task: % on validation}}) of a generative pool."""
    from generative import data
    from generative.pool import load_pool
    from generative.run import finetuned_scores, scores_of

    pool = load_pool(pool_path)
    majority = {}
    for task in pool.tasks:
        rows = data.load_split(task, "validation")
        answers = collections.Counter(str(r.get("target", r.get("label"))) for r in rows)
        majority[task] = 100 * max(answers.values()) / len(rows)
    base = scores_of(pool.base, "validation", pool.tasks, None, None)
    tuned = finetuned_scores(pool, "validation", seed, None, Path("outs"))
    return pool.name, {"majority": majority, "base": {t: 100 * base[t] for t in pool.tasks},
                       "fine-tuned": {t: 100 * tuned[t] for t in pool.tasks}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pool")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--domain", default="discriminative", choices=["discriminative", "vision", "generative"])
    args = parser.parse_args()
    if args.domain == "generative":
        name, scores = generative_scores(args.pool, args.seed)
        majority, probe, finetuned = scores["majority"], scores["base"], scores["fine-tuned"]
        reference, margin = "base", 10.0
    else:
        from merging.benchmark.evaluate import Evaluator

        pool = importlib.import_module(f"{args.domain}.pool").load_pool(args.pool)
        evaluator = Evaluator(pool, "validation", args.seed)
        name, majority, probe, finetuned = pool.name, evaluator.majority(), evaluator.probe(), evaluator.finetuned()
        reference, margin = "probe", 0.0
    print(f"Validation split, fine-tuning seed {args.seed}, pool {name}\n")
    print(f"| task | majority | {reference} | fine-tuned | fine-tuned − majority | fine-tuned − {reference} | "
          "earns its place |")
    print("|---|---|---|---|---|---|---|")
    for task in finetuned:
        m, p, f = (d[task] for d in (majority, probe, finetuned))  # in %
        ok = "yes" if f - m >= 10 and (f - p >= margin if margin else f > p) else "no"
        print(f"| {task} | {m:.1f} | {p:.1f} | {f:.1f} | {f - m:+.1f} | {f - p:+.1f} | {ok} |")


if __name__ == "__main__":
    main()
