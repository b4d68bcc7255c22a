"""The one exception type of the toolkit: every bad input raises it with a message that names the
offending file / key / value and says what was expected; and how a command line reports a failure."""
from __future__ import annotations

import os


class MergeError(ValueError):
    """A merge cannot run as configured; the message says where and why."""


def os_error(err: OSError, path: str | os.PathLike | None = None) -> MergeError:
    """``err`` as one line: the path it concerns and the reason (``No space left on device``, …)."""
    where = err.filename if err.filename is not None else path
    reason = err.strerror or str(err)
    return MergeError(f"{where}: {reason}" if where is not None else reason)


INTERRUPTED = 130  # the shell's status for a command ended by Ctrl-C (SIGTERM is turned into the same)


def report(err: MergeError | OSError | KeyboardInterrupt) -> tuple[str, int]:
    """The one ``error:`` line and the exit status a command line gives for ``err``: 2 for a bad input or an
    OS error, 130 when interrupted (Ctrl-C, SIGTERM); never a traceback."""
    if isinstance(err, KeyboardInterrupt):
        return "error: interrupted; no output was written", INTERRUPTED
    return f"error: {os_error(err) if isinstance(err, OSError) else err}", 2
