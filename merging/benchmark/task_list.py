"""The benchmark's YAML files (pools, method configs, task lists) read with one clean error for an unreadable
file, non-UTF-8 bytes, invalid YAML or a top level that is not a mapping (``read_mapping``); and a domain's
task list (``configs/<domain>/tasks.yaml``): a mapping with a ``tasks`` list of entries, each a mapping with a
unique ``name``; the domain checks the rest of each entry."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from merging.config import read_yaml
from merging.errors import MergeError


def read_mapping(path: Path, what: str = "file") -> dict[str, Any]:
    """The mapping at the top of YAML file ``path``; a missing file (``what`` names it), non-UTF-8 bytes,
    invalid YAML or another top level (a list, a scalar, nothing) is a MergeError that names the file."""
    raw = read_yaml(Path(path), what)
    if not isinstance(raw, dict):
        raise MergeError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    return raw


def task_entries(path: Path, required: set[str], allowed: set[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, entry) for each entry of ``path``, in order, after checking its keys (``required`` all present,
    none outside ``allowed``) and that no name repeats; ``where`` names the entry in error messages."""
    raw = read_mapping(path)
    if not isinstance(raw.get("tasks"), list):
        raise MergeError(f"{path}: expected a mapping with a 'tasks' list")
    seen: set[str] = set()
    for i, entry in enumerate(raw["tasks"]):
        where = f"{path}: tasks[{i}]"
        if not isinstance(entry, dict) or set(entry) - allowed or not required <= set(entry):
            keys = sorted(entry) if isinstance(entry, dict) else entry
            raise MergeError(f"{where}: keys {keys}; required {', '.join(sorted(required))}; allowed also "
                             f"{', '.join(sorted(allowed - required))}")
        if entry["name"] in seen:
            raise MergeError(f"{where}: task '{entry['name']}' listed twice")
        seen.add(entry["name"])
        yield where, entry
