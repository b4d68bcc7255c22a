"""Progress goes to stderr through ``logging``; stdout carries results only (JSON rows, tables, paths), so
``python -m vision run … > rows.jsonl`` keeps them apart. Library modules log to ``logging.getLogger(__name__)``;
each command line calls ``configure`` once."""
from __future__ import annotations

import logging
import sys

PACKAGES = ("merging", "discriminative", "vision", "generative")


def configure(quiet: bool = False) -> None:
    """This toolkit's log lines as plain messages on stderr: INFO and above, WARNING and above when ``quiet``
    (other libraries' loggers are left as they are)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name in PACKAGES:
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(logging.WARNING if quiet else logging.INFO)
        logger.propagate = False
