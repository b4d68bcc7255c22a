"""Write a folder or a file so that it appears complete or not at all.

A folder is built as a hidden sibling ``.<name>.tmp-<pid>-<random>`` and renamed onto its target only when
the block that fills it succeeds; on any exception, Ctrl-C or SIGTERM (see ``interrupt_on_sigterm``) the
sibling is removed. Siblings left by a process that was killed outright (kill -9, power loss) are removed by
the next run for the same target. Every OS error (no space left, read-only file system, permission, name too
long, not a directory) becomes a one-line ``MergeError`` that names the path and the reason.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import signal
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

from ..errors import MergeError, os_error

INCOMPLETE = ".merging-incomplete"  # marks a temporary folder (removed just before it is renamed onto its target)


def interrupt_on_sigterm() -> None:
    """Make SIGTERM behave as Ctrl-C (KeyboardInterrupt in the main thread), so that temporary outputs are
    removed by the same ``except``/``finally`` blocks. Call once from a command line's ``main``."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"terminated by signal {signum}")

    if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread only
        signal.signal(signal.SIGTERM, interrupt)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a temporary folder of a live process is never removed)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale(target: Path) -> None:
    """Remove the temporary siblings of ``target`` (``.<name>.tmp-<pid>-<hex>``, ``.<name>.old-<pid>``) left
    by processes that no longer run: only folders that hold this module's ``INCOMPLETE`` marker, so that a
    folder which merely looks like one (a model someone named so) is never touched."""
    ours = re.compile(re.escape(f".{target.name}.") + r"(?:tmp-(?P<tmp>\d+)-[0-9a-f]+|old-(?P<old>\d+))")
    with contextlib.suppress(OSError):
        for sibling in target.parent.iterdir():
            match = ours.fullmatch(sibling.name)
            if (match and not sibling.is_symlink() and (sibling / INCOMPLETE).is_file()
                    and not _alive(int(match["tmp"] or match["old"]))):
                shutil.rmtree(sibling, ignore_errors=True)


def check_target(target: str | os.PathLike, overwrite: bool = False) -> Path:
    """The absolute output folder ``target`` after checking, before any work, that it can be written: it is
    not empty, the current folder or above it, nor a symbolic link; it exists only with ``overwrite`` (and
    then is a folder); its closest existing ancestor is a writable folder where a temporary sibling's name is
    not too long."""
    if not str(target).strip():
        raise MergeError("output path is empty; expected a folder path (an unset shell variable?)")
    target = Path(os.path.abspath(target))  # '..' resolved lexically, as the shell shows it
    here = Path.cwd()
    if target == here or target in here.parents:
        raise MergeError(f"output '{target}' is the current folder or contains it; choose a folder apart from it")
    if target.is_symlink():
        state = "points to a folder" if target.is_dir() else "is dangling or a loop"
        raise MergeError(f"output '{target}' is a symbolic link ({state}); give the real folder path")
    try:
        exists = target.exists()
        if exists and not overwrite:
            raise MergeError(f"output folder '{target}' already exists; pass --overwrite to replace it")
        if exists and not target.is_dir():
            raise MergeError(f"output '{target}' exists and is not a folder; expected a folder path")
        ancestor = target.parent
        while not ancestor.exists() and not ancestor.is_symlink():
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            raise MergeError(f"output '{target}': '{ancestor}' is not a folder (Not a directory)")
        if not os.access(ancestor, os.W_OK | os.X_OK):
            _probe(ancestor, target)
        name_max = os.pathconf(ancestor, "PC_NAME_MAX")
        overhead = len(_temp_name(target, "x" * 8)) - len(target.name)  # the temporary sibling's extra characters
        for part in target.relative_to(ancestor).parts:
            if len(part) + (overhead if part == target.name else 0) > name_max:
                raise MergeError(f"output '{target}': {os.strerror(errno.ENAMETOOLONG)} ('{part[:40]}…' has "
                                 f"{len(part)} characters; at most {name_max - overhead} for the output folder "
                                 f"and {name_max} for a folder above it)")
    except OSError as err:
        raise os_error(err, target) from None
    return target


def _probe(folder: Path, target: Path) -> None:
    """Create and remove a folder in ``folder``: the OS then says why it cannot be written (read-only file
    system, permission, immutable folder) as a MergeError naming it."""
    probe = folder / _temp_name(target, "probe")
    try:
        probe.mkdir()
    except OSError as err:
        raise MergeError(f"{folder}: {err.strerror} (cannot create output '{target}')") from None
    probe.rmdir()


def _temp_name(target: Path, tag: str) -> str:
    return f".{target.name}.tmp-{os.getpid()}-{tag}"


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; rename it to ``target`` only if the block succeeds.

    On any exception (or KeyboardInterrupt) the temporary folder, and any parent folder made for it, is
    removed and ``target`` is left as it was. With ``overwrite`` an existing ``target`` is replaced only after
    the new folder is complete. OS errors are raised as ``MergeError`` naming the path and the reason.
    """
    target = check_target(target, overwrite)
    made: list[Path] = []
    tmp = target.parent / _temp_name(target, uuid.uuid4().hex[:8])
    try:
        for folder in reversed([target.parent, *target.parent.parents]):
            if not folder.exists():
                folder.mkdir()  # honours the umask, unlike tempfile.mkdtemp's 0o700
                made.append(folder)
        remove_stale(target)
        tmp.mkdir()
        (tmp / INCOMPLETE).write_text(f"{os.getpid()}\n")
    except OSError as err:
        _undo(None, made)
        raise os_error(err, tmp) from None
    try:
        yield tmp
        _publish(tmp, target)
    except OSError as err:
        _undo(tmp, made)
        raise os_error(err, tmp) from None
    except BaseException:
        _undo(tmp, made)
        raise


def _publish(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` onto ``target``; an existing ``target`` is set aside first (marked, so that a crash
    before its removal leaves a sibling the next run removes) and restored if the rename fails."""
    (tmp / INCOMPLETE).unlink()
    if not target.exists():
        os.replace(tmp, target)
        return
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    os.replace(target, old)
    (old / INCOMPLETE).write_text(f"{os.getpid()}\n")
    try:
        os.replace(tmp, target)
    except OSError:
        os.replace(old, target)
        (target / INCOMPLETE).unlink()
        raise
    shutil.rmtree(old, ignore_errors=True)


def _undo(tmp: Path | None, made: list[Path]) -> None:
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)
    for folder in reversed(made):
        with contextlib.suppress(OSError):
            folder.rmdir()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path`` (its folder is created), then rename it over
    ``path``. The file gets the ordinary mode (0666 less the umask); on any error the temporary file is
    removed and a ``MergeError`` names the path and the reason."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "x", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise os_error(err, path) from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
