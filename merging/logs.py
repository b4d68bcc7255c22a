"""Progress goes to stderr through ``logging``; stdout carries results only (JSON rows, tables, paths), so
``python -m vision run … > rows.jsonl`` keeps them apart. Library modules log to ``logging.getLogger(__name__)``;
each command line calls ``configure`` once."""
from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator
from typing import Any, TextIO

from tqdm import tqdm

PACKAGES = ("merging", "discriminative", "vision", "generative")


class _Stderr(logging.StreamHandler):
    """A handler that writes to ``sys.stderr`` as it is when a record comes (redirected, or captured by a test),
    not as it was when the handler was made."""

    @property
    def stream(self) -> TextIO:  # logging.StreamHandler's attribute
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


def configure(quiet: bool = False) -> None:
    """This toolkit's log lines as plain messages on stderr: INFO and above, WARNING and above when ``quiet``
    (other libraries' loggers are left as they are)."""
    handler = _Stderr()
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name in PACKAGES:
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(logging.WARNING if quiet else logging.INFO)
        logger.propagate = False


@contextlib.contextmanager
def fresh_head_load() -> Iterator[None]:
    """Load a transformers model whose task head is replaced on purpose (a base encoder given a task's head):
    its load report ("MISMATCH … Reinit", "MISSING") and weight-loading bar say what is intended, so they are
    silenced for the duration; any error still raises."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


class _Lines:
    """tqdm's file off a terminal: each refresh becomes one whole line on stderr (carriage-return updates would
    pile up into one unreadable line of a log, and interleave between parallel workers)."""

    def write(self, text: str) -> None:
        text = text.strip("\r\n")
        if text:
            sys.stderr.write(text + "\n")

    def flush(self) -> None:
        sys.stderr.flush()


def progress_bar(*args: Any, **kwargs: Any) -> tqdm:
    """``tqdm(*args, **kwargs)`` on stderr: a live bar on a terminal; elsewhere (a log file, a pipe) one line at
    most every 30 s, each naming its bar."""
    if sys.stderr.isatty():
        return tqdm(*args, **kwargs)
    return tqdm(*args, file=_Lines(), mininterval=30, **kwargs)


def quiet_model_loads() -> None:
    """No transformers weight-loading bar: a benchmark loads a model per task and grid point, and a bar each
    buries the progress that matters (hub download bars are huggingface_hub's and stay)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


@contextlib.contextmanager
def future_warnings_silenced() -> Iterator[None]:
    """For the duration, no FutureWarning: the deprecation notices transformers and peft give on every model
    load (``is_gradient_checkpointing`` …), repeated at every grid point, that a user cannot act on."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield
