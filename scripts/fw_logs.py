"""One line per Frank-Wolfe iteration from the method logs of an experiment: what the results pages quote about
FW soft's and FW hard's runs (what the oracle picked, the step or the inner loop's reach, the losses).

    python scripts/fw_logs.py outs/efficientnet_lite0_20tasks_irrelevance [--since 2026-12-04] [--method frank_wolfe]

Per row (fine-tuning seed, extra checkpoints, overrides, normalised score, seconds, peak RSS) and per iteration:
- FW soft (``frank_wolfe_soft``, the default): the objective f (the summed labelled proxy loss at θ_k), the inner
  loss before → after (entropy of test batches, or labelled cross-entropy), how many tasks the oracle gave their
  own checkpoint, how many a target's checkpoint, the range of the layer-wise λ the inner loop ended with, and
  with ``monotone`` the fixed proxy loss before → after the step and the step's scale β;
- FW hard (``frank_wolfe``): f, the duality gap max_v ⟨g, θ_k − v⟩, the step γ (layerwise: its range), and the
  layer choices split into a target task's checkpoint, another task's, the zero vertex, the start ("initial")
  and "keep". Targets: the row's ``targets`` (scaling protocols), else every task (all-task rows).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def task_of(label: str) -> str:
    """The task of a checkpoint label "<task>-seed<s>"."""
    return label.rsplit("-seed", 1)[0]


def picks(record: dict) -> tuple[int, int, int]:
    """(selections of a task's own checkpoint, of a target's checkpoint, all selections) over the iterations."""
    history = record["log"]["history"]
    targets = list(history[0]["selections"])
    own = target = total = 0
    for step in history:
        for task, label in step["selections"].items():
            source = task_of(label)
            own, target, total = own + (source == task), target + (source in targets), total + 1
    return own, target, total


def header(row: dict) -> str:
    return (f"seed {row['pool_seed']} extra {row.get('extra', '')} {row.get('overrides', '')}: "
            f"normalised {float(row['normalized']):.2f}, {row['seconds']} s, {row['peak_rss_gb']} GB")


def summarise(record: dict) -> list[str]:
    row, history = record["row"], record["log"]["history"]
    targets = [name for name in history[0]["selections"]]
    lines = [header(row)]
    for step in history:
        picks = step["selections"]
        own = sum(task_of(label) == task for task, label in picks.items())
        target = sum(task_of(label) in targets for label in picks.values())
        lambdas = [value for values in step.get("lambdas", {}).values() for value in values]
        loss = step.get("inner_loss", "")
        before = step.get(f"{loss}_before", step.get("entropy_before"))
        after = step.get(f"{loss}_after", step.get("entropy_after"))
        span = f"λ {min(lambdas):.2f}–{max(lambdas):.2f}" if lambdas else "λ —"
        inner = f"{loss} {before:.2f} → {after:.2f}" if before is not None and after is not None else loss
        backtrack = (f", proxy {step['proxy_before']:.2f} → {step['proxy_after']:.2f} (β {step['step_scale']:g})"
                     if "step_scale" in step else "")
        lines.append(f"  iteration {step['iteration']}: f {step['objective']:.2f}, {inner}, own {own}/{len(picks)}, "
                     f"a target's {target}/{len(picks)}, {span}{backtrack}")
    return lines


HARD_GROUPS = ("a target's", "another task's", "zero", "initial", "keep")


def hard_groups(counts: dict[str, int], targets: set[str] | None) -> dict[str, int]:
    """Layer choices by kind (HARD_GROUPS); ``targets`` None: every checkpoint is a target's."""
    grouped = dict.fromkeys(HARD_GROUPS, 0)
    for label, count in counts.items():
        if label in ("zero", "initial", "keep"):
            grouped[label] += count
        else:
            own = targets is None or task_of(label) in targets
            grouped["a target's" if own else "another task's"] += count
    return grouped


def summarise_hard(record: dict) -> tuple[list[str], dict[str, int]]:
    """FW hard's lines, and its layer choices by kind summed over the iterations."""
    row, history = record["row"], record["log"]["history"]
    targets = set(row["targets"].split()) if row.get("targets") else None
    lines, total = [header(row)], dict.fromkeys(HARD_GROUPS, 0)
    for step in history:
        if "counts" not in step:  # stopped by the duality gap before a step
            lines.append(f"  iteration {step['iteration']}: f {step['objective']:.4g}, stopped ({step['stopped']})")
            continue
        grouped = hard_groups(step["counts"], targets)
        total = {k: total[k] + grouped[k] for k in HARD_GROUPS}
        low, high = step.get("gamma_range", (step["gamma"], step["gamma"]))
        gamma = f"γ {low:.3g}–{high:.3g}" if high > low else f"γ {step['gamma']:.3g}"
        picks = ", ".join(f"{kind} {n}" for kind, n in grouped.items() if n)
        how = {True: " (the joint LMO's step)", False: " (per task)"}.get(step.get("fallback"), "")
        lines.append(f"  iteration {step['iteration']}: f {step['objective']:.4g}, gap {step['gap_max']:.3g}, "
                     f"{gamma}; layers{how}: {picks}")
    lines.append(f"  final f {record['log']['final_objective']:.4g}")
    return lines, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", type=Path, help="outs/<pool>_<protocol>")
    parser.add_argument("--since", default="", help="only rows of this date or later (YYYY-MM-DD)")
    parser.add_argument("--method", default="frank_wolfe_soft", choices=["frank_wolfe_soft", "frank_wolfe"])
    args = parser.parse_args()
    totals: dict[tuple[str, str], list[int]] = {}
    for path in sorted((args.experiment / "logs").glob(f"{args.method}-*.json")):
        record = json.loads(path.read_text())
        if record["row"]["date"] < args.since:
            continue
        key = (record["row"].get("overrides", ""), str(record["row"].get("extra", "")))
        if args.method == "frank_wolfe":
            lines, grouped = summarise_hard(record)
            counts = [grouped[kind] for kind in HARD_GROUPS]
        else:
            lines, counts = summarise(record), list(picks(record))
        print(f"{path.name}: " + "\n".join(lines))
        totals[key] = [a + b for a, b in zip(totals.get(key, [0] * (len(counts) + 1)), (1, *counts))]
    for (overrides, extra), (rows, *counts) in sorted(totals.items()):
        if args.method == "frank_wolfe":
            kinds = ", ".join(f"{kind} {n}" for kind, n in zip(HARD_GROUPS, counts))
            print(f"total {overrides or 'defaults'} extra {extra}: {rows} rows, layer choices: {kinds}")
        else:
            own, target, total = counts
            print(f"total {overrides} extra {extra}: {rows} rows, own checkpoint {own}/{total}, "
                  f"a target's {target}/{total}")


if __name__ == "__main__":
    main()
