"""Check and tabulate the demo merges: each merged folder loads with transformers and runs a forward pass.

    python3 scripts/demo_report.py outs/demo      (after scripts/merge_demo.sh has merged)

Per merge: wall seconds (from merge_info.json), the relative distance of the weights from the base,
‖θ − θ_base‖ / ‖θ_ft1 − θ_base‖, and the mean absolute change of the next-token log-probabilities from the
base on a fixed random prompt. Rows go to results.csv; results.md is rebuilt from them.
"""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM


def load_weights(folder: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(file, "pt") as f:
            tensors.update({k: f.get_tensor(k).float() for k in f.keys()})
    return tensors


def distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return sum(float((a[k] - b[k]).pow(2).sum()) for k in a) ** 0.5


def log_probs(folder: Path, prompt: torch.Tensor) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(prompt).logits.log_softmax(-1)


def main(root: Path) -> None:
    pool, merged = root / "pool", root / "merged"
    base, reference = load_weights(pool / "base"), load_weights(pool / "ft1")
    scale = distance(reference, base)
    prompt = torch.randint(0, 4096, (1, 32), generator=torch.Generator().manual_seed(0))
    base_lp = log_probs(pool / "base", prompt)
    rows = []
    for folder in sorted(p for p in merged.iterdir() if p.is_dir()):
        info = json.loads((folder / "merge_info.json").read_text())
        change = (log_probs(folder, prompt) - base_lp).abs().mean().item()
        rows.append({"config": folder.name, "method": info["method"], "seconds": info["seconds"],
                     "distance_from_base": round(distance(load_weights(folder), base) / scale, 4),
                     "logprob_change": round(change, 5), "git_sha": info["git_sha"]})
    with open(root / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    header = "| config | method | seconds | ‖θ−θ_base‖ / ‖θ_ft1−θ_base‖ | mean abs Δ log p vs base |\n|---|---|---|---|---|\n"
    lines = "".join(f"| {r['config']} | {r['method']} | {r['seconds']} | {r['distance_from_base']} | "
                    f"{r['logprob_change']} |\n" for r in rows)
    (root / "results.md").write_text("# Demo merges (scripts/merge_demo.sh)\n\n" + header + lines)
    print(header + lines, end="")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "outs/demo"))
