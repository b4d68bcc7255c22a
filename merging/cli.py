"""Command line: ``python -m merging merge CONFIG.yaml --out DIR`` (native or mergekit YAML)."""
from __future__ import annotations

import argparse
import json
import re
import sys

from .config import load_config, shard_bytes, validate_config
from .errors import MergeError, report
from .io.atomic import interrupt_on_sigterm
from .logs import configure as configure_logging


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def out_shard_size(text: str) -> int:
    """Bytes per output shard: mergekit's notation (a number with K, M or B: thousand, million, billion bytes,
    so its default 5B is 5·10⁹) or a size in bytes units (200MB, 5GB, 2GiB)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMB])\s*", text)
    try:
        size = int(float(match[1]) * {"K": 10**3, "M": 10**6, "B": 10**9}[match[2]]) if match else shard_bytes(text)
    except ValueError:
        size = 0
    if size < 1:
        raise argparse.ArgumentTypeError(f"expected a size such as 5B (mergekit's billion bytes), 500M or 2GB, "
                                         f"got {text!r}")
    return size


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m merging", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    merge = commands.add_parser("merge", help="merge the checkpoints described by a YAML config")
    merge.add_argument("config", help="native or mergekit YAML file")
    merge.add_argument("--out", required=True, help="output folder (created only when the merge succeeds)")
    merge.add_argument("--device", help="run the per-tensor math here (cpu, cuda, cuda:1); overrides the config")
    merge.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    merge.add_argument("--trust-remote-code", action="store_true",
                       help="copy a base's custom modelling code (auto_map) into the output")
    merge.add_argument("--workers", type=positive_int, default=2, help="tensors merged concurrently (default 2)")
    merge.add_argument("--quiet", action="store_true", help="no progress bar")
    merge.add_argument("--out-shard-size", type=out_shard_size, metavar="SIZE",
                       help="bytes per output shard, as mergekit's flag (5B = 5·10⁹ bytes, 500M) or 2GB; "
                            "overrides the config's shard_size")
    commands.add_parser("methods", help="list every registered merge method: kind, LoRA support, paper, data read")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command; a bad input, an OS error, Ctrl-C or SIGTERM ends with one ``error:`` line on stderr,
    a non-zero exit (2, or 130 when interrupted) and no output folder."""
    args = build_parser().parse_args(argv)
    interrupt_on_sigterm()
    configure_logging(quiet=getattr(args, "quiet", False))
    try:
        if args.command == "methods":
            from .registry import methods

            print(f"{'method':17s} {'kind':11s} {'LoRA':4s} {'paper':44s} data read")
            for spec in methods():
                print(f"{spec.name:17s} {spec.kind:11s} {'yes' if spec.lora else 'no':4s} {spec.paper:44s} {spec.data}")
            from .data_merge import KINDS

            print(f"\ndata-driven methods merge with a 'data:' section of kind {', '.join(KINDS)} "
                  "(docs/data-driven.md)")
            return 0
        from .run import run_merge

        cfg = load_config(args.config)
        if args.device:
            cfg = validate_config({**cfg.model_dump(), "device": args.device}, "--device")
        if args.out_shard_size:
            cfg = validate_config({**cfg.model_dump(), "shard_size": args.out_shard_size}, "--out-shard-size")
        info = run_merge(cfg, args.out, overwrite=args.overwrite, trust_remote_code=args.trust_remote_code,
                         progress=not args.quiet, workers=args.workers, source_yaml=args.config)
    except (MergeError, OSError, KeyboardInterrupt) as err:
        message, status = report(err)
        print(message, file=sys.stderr)
        return status
    print(json.dumps(info))
    return 0
