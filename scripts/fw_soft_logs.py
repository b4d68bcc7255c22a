"""One line per FW soft iteration from the method logs of a scaling experiment: what the results pages quote about
FW soft's runs (the oracle's picks, how far the inner AdaMerging moved λ, the losses).

    python scripts/fw_soft_logs.py outs/efficientnet_lite0_20tasks_irrelevance [--since 2026-12-04]

Per row (fine-tuning seed, extra checkpoints, overrides, normalised score, seconds, peak RSS) and per iteration:
the objective f (the summed labelled proxy loss at θ_k), the inner loss before → after (entropy of test batches,
or labelled cross-entropy), how many tasks the oracle gave their own checkpoint, how many a target's checkpoint,
and the range of the layer-wise λ the inner loop ended with.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def picks(record: dict) -> tuple[int, int, int]:
    """(selections of a task's own checkpoint, of a target's checkpoint, all selections) over the iterations."""
    history = record["log"]["history"]
    targets = list(history[0]["selections"])
    own = target = total = 0
    for step in history:
        for task, label in step["selections"].items():
            source = label.rsplit("-seed", 1)[0]
            own, target, total = own + (source == task), target + (source in targets), total + 1
    return own, target, total


def summarise(record: dict) -> list[str]:
    row, history = record["row"], record["log"]["history"]
    targets = [name for name in history[0]["selections"]]
    head = (f"seed {row['pool_seed']} extra {row.get('extra', '')} {row.get('overrides', '')}: "
            f"normalised {float(row['normalized']):.2f}, {row['seconds']} s, {row['peak_rss_gb']} GB")
    lines = [head]
    for step in history:
        picks = step["selections"]
        own = sum(label.rsplit("-seed", 1)[0] == task for task, label in picks.items())
        target = sum(label.rsplit("-seed", 1)[0] in targets for label in picks.values())
        lambdas = [value for values in step.get("lambdas", {}).values() for value in values]
        loss = step.get("inner_loss", "")
        before = step.get(f"{loss}_before", step.get("entropy_before"))
        after = step.get(f"{loss}_after", step.get("entropy_after"))
        span = f"λ {min(lambdas):.2f}–{max(lambdas):.2f}" if lambdas else "λ —"
        inner = f"{loss} {before:.2f} → {after:.2f}" if before is not None and after is not None else loss
        lines.append(f"  iteration {step['iteration']}: f {step['objective']:.2f}, {inner}, own {own}/{len(picks)}, "
                     f"a target's {target}/{len(picks)}, {span}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", type=Path, help="outs/<pool>_<protocol>")
    parser.add_argument("--since", default="", help="only rows of this date or later (YYYY-MM-DD)")
    args = parser.parse_args()
    totals: dict[tuple[str, str], list[int]] = {}
    for path in sorted((args.experiment / "logs").glob("frank_wolfe_soft-*.json")):
        record = json.loads(path.read_text())
        if record["row"]["date"] >= args.since:
            print(f"{path.name}: " + "\n".join(summarise(record)))
            key = (record["row"].get("overrides", ""), str(record["row"].get("extra", "")))
            totals[key] = [a + b for a, b in zip(totals.get(key, [0, 0, 0, 0]), (1, *picks(record)))]
    for (overrides, extra), (rows, own, target, total) in sorted(totals.items()):
        print(f"total {overrides} extra {extra}: {rows} rows, own checkpoint {own}/{total}, a target's {target}/{total}")


if __name__ == "__main__":
    main()
