#!/usr/bin/env python3
"""Time and peak memory of a data-free LoRA merge in product space at LLaMA-2-7B shapes, by depth.

    python3 scripts/bench_lora_merge.py [--layers 1 2] [--adapters 16] [--hidden 4096] [--method task_arithmetic]
                                        [--lambda 0.3 …: method parameters as --name value]

For each --layers L a fresh process writes --adapters random peft adapters (r 8, lora_alpha 16 on q_proj and
v_proj of L LLaMA-2-7B layers, --hidden × --hidden each; A, B ~ N(0, 0.02²), seeded by adapter) to a temporary
folder, then reads them, merges them with ``generative.merge.merge_adapters`` (the method on ΔW_i of one
module at a time, the result re-factored to rank 8 by truncated SVD) and writes the merged adapter.

Reported per L: seconds of read + merge + write, seconds per module, and the process's peak RSS
(``ru_maxrss``, which includes the Python, torch and transformers runtime). A peak that stays flat as L grows is
the "one module at a time" claim; LLaMA-2-7B has 64 such modules, so its merge takes about
64 × the seconds per module. Rows are appended to outs/bench/lora_merge.csv.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RANK, ALPHA = 8, 16.0  # the paper's LoRA settings


def write_adapters(root: Path, layers: int, count: int, hidden: int) -> list[Path]:
    import torch

    from merging.io.lora import write_lora_adapter

    template = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "lora_dropout": 0.0, "bias": "none"}
    names = [f"model.layers.{i}.self_attn.{m}_proj.weight" for i in range(layers) for m in ("q", "v")]
    folders = []
    for k in range(count):
        g = torch.Generator().manual_seed(k)
        factors = {n: (0.02 * torch.randn(RANK, hidden, generator=g), 0.02 * torch.randn(hidden, RANK, generator=g))
                   for n in names}
        write_lora_adapter(root / f"adapter{k}", factors, RANK, ALPHA, template, torch.float32)
        folders.append(root / f"adapter{k}")
    return folders


def measure(layers: int, count: int, hidden: int, method: str, params: dict) -> dict:
    """One depth, in this process: write the adapters, then time read + merge + write."""
    import torch

    from generative.merge import merge_adapters
    from merging.io.lora import read_lora_adapter, write_lora_adapter

    with tempfile.TemporaryDirectory() as scratch:
        folders = write_adapters(Path(scratch), layers, count, hidden)
        started = time.perf_counter()
        adapters = [read_lora_adapter(f) for f in folders]
        factors, rank, alpha, log = merge_adapters(method, params, adapters, [f.name for f in folders])
        write_lora_adapter(Path(scratch) / "merged", factors, rank, alpha, adapters[0].config, torch.float32)
        seconds = time.perf_counter() - started
    modules = 2 * layers
    return {"method": method, "parameters": json.dumps(params), "adapters": count, "hidden": hidden, "layers": layers,
            "modules": modules, "seconds": round(seconds, 1), "seconds_per_module": round(seconds / modules, 1),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
            "refactor_error_mean": round(log.get("refactor_error_mean", 0.0), 4),
            "torch_threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--adapters", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=4096, help="module width (LLaMA-2-7B: 4096)")
    parser.add_argument("--method", default="task_arithmetic")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # the child process: measure one depth
    args, settings = parser.parse_known_args()  # the method's parameters: --name value, as every command line
    from merging.benchmark.cli import parse_overrides

    params = parse_overrides(settings)
    if args.one is not None:
        print(json.dumps(measure(args.one, args.adapters, args.hidden, args.method, params)))
        return
    from merging.benchmark.results import append_row, markdown_table
    from merging.run import run_stamp

    rows = []
    for layers in args.layers:
        started = time.perf_counter()
        child = subprocess.run([sys.executable, __file__, "--one", str(layers), "--adapters", str(args.adapters),
                                "--hidden", str(args.hidden),
                                "--method", args.method, *settings],
                               cwd=REPO, capture_output=True, text=True)
        if child.returncode != 0:
            raise SystemExit(f"error: the {layers}-layer run failed:\n{child.stderr[-3000:]}")
        stamp = run_stamp(started)  # this (parent) process's seconds and RSS are not the measurement
        row = {**json.loads(child.stdout.strip().splitlines()[-1]), "git_sha": stamp["git_sha"],
               "date": stamp["date"]}
        append_row(REPO / "outs" / "bench" / "lora_merge.csv", row)
        rows.append(row)
    print(markdown_table([{k: str(v) for k, v in row.items()} for row in rows], list(rows[0])))


if __name__ == "__main__":
    main()
