"""Is each task of a pool worth merging? Majority rate, a linear probe on the frozen base model and the
fine-tuned checkpoint, all on the validation split (never test), for one fine-tuning seed.

    python scripts/task_learnability.py configs/discriminative/text_candidates.yaml [--seed 0] [--domain discriminative]

The pool's checkpoints of that seed must exist (``python -m <domain> finetune --pool POOL --seeds S``). A task
earns its place when fine-tuning beats the majority rate by >= 10 points and the probe (the bar the text pool's
tasks were chosen by); fine-tuned - probe is what fine-tuning adds over the frozen features, the knowledge a
merge has to keep. Prints a Markdown table (accuracy in %, or the task's metric).
"""
from __future__ import annotations

import argparse
import importlib

from merging.benchmark.evaluate import Evaluator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pool")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--domain", default="discriminative", choices=["discriminative", "vision"])
    args = parser.parse_args()
    pool = importlib.import_module(f"{args.domain}.pool").load_pool(args.pool)
    evaluator = Evaluator(pool, "validation", args.seed)
    majority, probe, finetuned = evaluator.majority(), evaluator.probe(), evaluator.finetuned()
    print(f"Validation split, fine-tuning seed {args.seed}, pool {pool.name}\n")
    print("| task | majority | probe | fine-tuned | fine-tuned − majority | fine-tuned − probe | earns its place |")
    print("|---|---|---|---|---|---|---|")
    for task in pool.tasks:
        m, p, f = (d[task] for d in (majority, probe, finetuned))  # in %
        ok = "yes" if f - m >= 10 and f > p else "no"
        print(f"| {task} | {m:.1f} | {p:.1f} | {f:.1f} | {f - m:+.1f} | {f - p:+.1f} | {ok} |")


if __name__ == "__main__":
    main()
