"""Checks that the command lines run before any download, data preparation, fine-tuning or scoring, so that a bad
method parameter or model folder is named at once rather than after an hour of work. Each command line has one
``validate_request`` built from these and ``merging.config.check_parameters``: ``python -m discriminative |
vision`` (merging/benchmark/cli.py) and ``python -m generative`` (generative/__main__.py)."""
from __future__ import annotations

from pathlib import Path

from merging.errors import MergeError
from merging.io.checkpoint import HUB_ID


def check_local(ref: str, what: str) -> None:
    """A model reference that names a local path must exist; ``package:`` references and hub ids
    (``owner/name``) are fetched later, by ``merging.io.checkpoint.resolve_model_ref``."""
    if ref.startswith("package:") or Path(ref).expanduser().exists():
        return
    if ref.startswith((".", "/", "~")) or not HUB_ID.match(ref):
        raise MergeError(f"{what} '{ref}' does not exist (and is not a Hugging Face hub id of the form "
                         "'owner/name')")
