#!/usr/bin/env python3
"""Helpers of scripts/bench_merge.sh: compare two merged checkpoints, read /usr/bin/time -v, print the table.

    python3 scripts/bench_compare.py diff A B [--json OUT]
        Max |a - b| over all tensors of two Hugging Face folders (sharded or single safetensors), loaded
        tensor by tensor with safe_open and compared in float32. For the bf16 rounding scale it also gives
        the difference in bf16 ulps of each tensor's largest |w| (bf16 keeps 8 significant bits:
        ulp(x) = 2^(floor(log2|x|) - 7)); about 1 or less = the tools differ by rounding only.
    python3 scripts/bench_compare.py timing FILE
        "SECONDS PEAK_RSS_GB" from the output of `/usr/bin/time -v -o FILE`.
    python3 scripts/bench_compare.py report --dir DIR --methods M [M ...] [--csv PATH] [--note TEXT]
        Reads DIR/<method>.<tool>.time and .rc (tool: mergekit, ours) and DIR/<method>.diff.json, prints
        the Markdown table and appends its rows to PATH (CSV, header written when the file is new).

GB here is 10^9 bytes. speed-up = mergekit s / ours s; RSS ratio = mergekit peak RSS / ours peak RSS.
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import math
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

TARGETS = {"task_arithmetic": 5.5, "ties": 28.0, "dare_ties": 15.0}  # ours, seconds
TARGET_RSS_GB = 1.0
TOOLS = ("mergekit", "ours")


# ---------------------------------------------------------------- diff
def tensor_files(folder: Path) -> dict[str, Path]:
    """tensor name -> safetensors file of a HF folder (index.json if present, else every *.safetensors)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: folder / fname for name, fname in weight_map.items()}
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise SystemExit(f"bench_compare: no safetensors files in {folder}")
    out: dict[str, Path] = {}
    for path in files:
        with safe_open(path, framework="pt") as f:
            out.update({name: path for name in f.keys()})
    return out


def bf16_ulp(x: float) -> float:
    """Spacing of bfloat16 numbers at magnitude x (8 significant bits): 2^(floor(log2|x|) - 7)."""
    return 2.0 ** (math.floor(math.log2(abs(x))) - 7) if x else 2.0 ** -133


def diff(a: Path, b: Path) -> dict:
    """Max |a - b| over all tensors, and in bf16 ulps at each tensor's scale (its largest |w|): a value
    <= ~1 means the two differ by rounding only."""
    import torch
    from safetensors import safe_open

    fa, fb = tensor_files(a), tensor_files(b)
    if set(fa) != set(fb):
        only_a, only_b = sorted(set(fa) - set(fb)), sorted(set(fb) - set(fa))
        raise SystemExit(f"bench_compare: tensor names differ: only in {a}: {only_a[:5]}, "
                         f"only in {b}: {only_b[:5]}")
    result = {"tensors": len(fa), "elements": 0, "differing_elements": 0,
              "max_abs_diff": 0.0, "max_abs_diff_tensor": None, "max_abs_diff_values": None,
              "max_abs_diff_tensor_scale": None, "max_ulps": 0.0, "max_ulps_tensor": None, "dtypes": set()}
    for name in sorted(fa):
        with safe_open(fa[name], framework="pt") as f:
            ta = f.get_tensor(name)
        with safe_open(fb[name], framework="pt") as f:
            tb = f.get_tensor(name)
        if ta.shape != tb.shape:
            raise SystemExit(f"bench_compare: {name}: shape {tuple(ta.shape)} vs {tuple(tb.shape)}")
        result["dtypes"].add(f"{ta.dtype}/{tb.dtype}".replace("torch.", ""))
        if ta.numel() == 0:
            continue
        ta, tb = ta.to(torch.float32).flatten(), tb.to(torch.float32).flatten()
        delta = (ta - tb).abs_()
        at = int(delta.argmax())
        d = float(delta[at])
        scale = max(float(ta.abs().max()), float(tb.abs().max()))  # the tensor's largest |w|
        ulps = d / bf16_ulp(scale)
        result["elements"] += delta.numel()
        result["differing_elements"] += int((delta > 0).sum())
        if result["max_abs_diff_tensor"] is None or d > result["max_abs_diff"]:
            result.update(max_abs_diff=d, max_abs_diff_tensor=name,
                          max_abs_diff_values=[float(ta[at]), float(tb[at])], max_abs_diff_tensor_scale=scale)
        if result["max_ulps_tensor"] is None or ulps > result["max_ulps"]:
            result.update(max_ulps=ulps, max_ulps_tensor=name)
        del ta, tb, delta
    scale = result["max_abs_diff_tensor_scale"] or 0.0
    result["bf16_ulp_at_max_abs_diff_tensor_scale"] = bf16_ulp(scale)
    result["dtypes"] = sorted(result["dtypes"])
    return result


def describe(d: dict) -> str:
    return (f"max |a-b| = {d['max_abs_diff']:.3g} in {d['max_abs_diff_tensor']} (values "
            f"{d['max_abs_diff_values'][0]:.6g} vs {d['max_abs_diff_values'][1]:.6g}; bf16 ulp at that "
            f"tensor's max |w| {d['max_abs_diff_tensor_scale']:.3g} is {d['bf16_ulp_at_max_abs_diff_tensor_scale']:.3g}); "
            f"worst in ulps of its tensor's max |w|: {d['max_ulps']:.3g} in {d['max_ulps_tensor']}; "
            f"{d['differing_elements']}/{d['elements']} elements differ; dtypes {d['dtypes']}")


# ---------------------------------------------------------------- timing
def parse_time(path: Path) -> tuple[float, float] | None:
    """(wall seconds, peak RSS GB) from `/usr/bin/time -v` output, or None if absent/unparsable."""
    try:
        text = path.read_text()
    except OSError:
        return None
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\):\s*(\S+)", text)
    rss = re.search(r"Maximum resident set size \(kbytes\):\s*(\d+)", text)
    if not wall or not rss:
        return None
    seconds = 0.0
    for part in wall.group(1).split(":"):
        seconds = seconds * 60 + float(part)
    return seconds, int(rss.group(1)) * 1024 / 1e9


# ---------------------------------------------------------------- report
def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}"


def git_sha() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "none"
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                           text=True).stdout.strip()
    return sha + ("-dirty" if dirty else "")


def _read_rc(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def tool_result(dir_: Path, method: str, tool: str) -> dict:
    """{'status': 'ok' | 'failed (rc N)' | 'not run', 'seconds', 'rss_gb'} of one timed run."""
    rc = _read_rc(dir_ / f"{method}.{tool}.rc")
    if rc is None:
        reason = _read_rc(dir_ / f"{method}.{tool}.skipped")
        return {"status": f"not run ({reason})" if reason else "not run", "seconds": None, "rss_gb": None}
    timing = parse_time(dir_ / f"{method}.{tool}.time")
    if rc != "0" or timing is None:
        return {"status": f"failed (rc {rc})", "seconds": None, "rss_gb": None}
    return {"status": "ok", "seconds": timing[0], "rss_gb": timing[1]}


def _fmt(x: float | None, digits: int = 2) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def _cell(res: dict, key: str, digits: int = 2) -> str:
    return _fmt(res[key], digits) if res["status"] == "ok" else res["status"]


def _check(value: float | None, target: float) -> str:
    if value is None:
        return f"≤ {target:g}"
    return f"≤ {target:g} {'✓' if value <= target else '✗'}"


def report(dir_: Path, methods: list[str], csv_path: Path | None, note: str, markdown: Path | None = None) -> None:
    header = ["method", "mergekit s", "mergekit peak RSS GB", "ours s", "target s", "ours peak RSS GB",
              "target RSS GB", "speed-up", "RSS ratio", "max abs diff (vs mergekit)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows = []
    for method in methods:
        mk, us = tool_result(dir_, method, "mergekit"), tool_result(dir_, method, "ours")
        speed = rss_ratio = None
        if mk["status"] == us["status"] == "ok":
            speed = mk["seconds"] / us["seconds"] if us["seconds"] else None
            rss_ratio = mk["rss_gb"] / us["rss_gb"] if us["rss_gb"] else None
        diff_path = dir_ / f"{method}.diff.json"
        d = json.loads(diff_path.read_text()) if diff_path.is_file() else None
        diff_cell = (f"{d['max_abs_diff']:.3g} (bf16 ulp there {d['bf16_ulp_at_max_abs_diff_tensor_scale']:.3g}; "
                     f"worst {d['max_ulps']:.3g} ulp)") if d else "—"
        target = TARGETS.get(method)
        lines.append("| " + " | ".join([
            method, _cell(mk, "seconds"), _cell(mk, "rss_gb"), _cell(us, "seconds"),
            _check(us["seconds"], target) if target else "—", _cell(us, "rss_gb"),
            _check(us["rss_gb"], TARGET_RSS_GB), _fmt(speed) + ("×" if speed else ""),
            _fmt(rss_ratio) + ("×" if rss_ratio else ""), diff_cell]) + " |")
        rows.append({"method": method, "mergekit_status": mk["status"], "mergekit_s": _fmt(mk["seconds"]),
                     "mergekit_peak_rss_gb": _fmt(mk["rss_gb"], 3), "ours_status": us["status"],
                     "ours_s": _fmt(us["seconds"]), "ours_peak_rss_gb": _fmt(us["rss_gb"], 3),
                     "target_s": target if target else "", "target_rss_gb": TARGET_RSS_GB,
                     "speedup": _fmt(speed), "rss_ratio": _fmt(rss_ratio),
                     "max_abs_diff": f"{d['max_abs_diff']:.6g}" if d else "",
                     "max_diff_bf16_ulps": f"{d['max_ulps']:.4g}" if d else ""})
    print("\n".join(lines))
    meta = {"date": dt.datetime.now().astimezone().isoformat(timespec="seconds"), "git_sha": git_sha(),
            "machine": machine()}
    if markdown is not None:  # the latest run as a page (docs/mergekit.md includes it), written atomically
        markdown.parent.mkdir(parents=True, exist_ok=True)
        tmp = markdown.with_name(f".{markdown.name}.tmp")
        tmp.write_text(f"# bench_merge: the latest run\n\n`bash scripts/bench_merge.sh` on {meta['date']}, commit "
                       f"{meta['git_sha']}, {meta['machine']}{f' ({note})' if note else ''}:\n\n"
                       + "\n".join(lines) + "\n")
        os.replace(tmp, markdown)
    if csv_path is None:
        return
    fields = list(meta) + list(rows[0]) + ["note"] if rows else []
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    new = not csv_path.is_file() or csv_path.stat().st_size == 0
    with csv_path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        if new:
            writer.writeheader()
        for row in rows:
            writer.writerow({**meta, **row, "note": note})
    print(f"\n(appended {len(rows)} row(s) to {csv_path})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("diff", help="max abs difference between two merged folders")
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    p.add_argument("--json", type=Path, help="also write the result here")
    p = sub.add_parser("timing", help="seconds and peak RSS GB from /usr/bin/time -v output")
    p.add_argument("file", type=Path)
    p = sub.add_parser("report", help="print the Markdown table and append the CSV rows")
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--methods", nargs="+", required=True)
    p.add_argument("--csv", type=Path)
    p.add_argument("--note", default="")
    p.add_argument("--markdown", type=Path, help="also write the table, dated, to this Markdown file")
    args = parser.parse_args(argv)

    if args.cmd == "diff":
        result = diff(args.a, args.b)
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(describe(result))
    elif args.cmd == "timing":
        timing = parse_time(args.file)
        if timing is None:
            print(f"bench_compare: no timing in {args.file}", file=sys.stderr)
            return 1
        print(f"{timing[0]:.2f} {timing[1]:.3f}")
    else:
        report(args.dir, args.methods, args.csv, args.note, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
