"""A domain's task list YAML (``configs/<domain>/tasks.yaml``): a mapping with a ``tasks`` list of entries,
each a mapping with a unique ``name``; the domain checks the rest of each entry."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from merging.config import read_mapping
from merging.errors import MergeError


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
