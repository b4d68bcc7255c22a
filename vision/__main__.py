"""python -m vision {prepare, finetune, run, scale, plot} — the entry point behind scripts/vision.sh
(merging/benchmark/cli.py)."""
from __future__ import annotations

import sys

from merging.benchmark.cli import main as cli_main
from merging.resources import CONFIGS

from .pool import load_pool

DEFAULT_POOL = str(CONFIGS / "vision" / "efficientnet_lite0_20tasks_v2.yaml")


def main(argv: list[str] | None = None) -> int:
    return cli_main("vision", load_pool, DEFAULT_POOL, argv)


if __name__ == "__main__":
    sys.exit(main())
