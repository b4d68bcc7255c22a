"""BIG-bench's task files, read straight out of its PyPI sdist (bigbench 1.0.0, 358 MB; never installed):
``bigbench/benchmark_tasks/<task>[/<subtask>]/task.json``. Text, image (cifar10_classification: CIFAR-10
test PNGs as base64) and generative tasks of every domain came from here. PyPI stopped serving the sdist
(found 2026-12-05; ``BIGBENCH.withdrawn``): these tasks build only where a copy of it is in the download cache."""
from __future__ import annotations

import json
import tarfile
from collections.abc import Iterable
from pathlib import Path

from ..errors import MergeError
from ..io.archives import checked_member
from ..io.pypi import Package

BIGBENCH = Package("bigbench", "1.0.0", "bigbench-1.0.0.tar.gz", 358_249_635,
                   "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2", sdist=True,
                   withdrawn="gone by 2026-12-05: PyPI lists bigbench 0.0.1 only")


def bigbench_tasks(sdist: Path, tasks: Iterable[str]) -> dict[str, dict]:
    """Parsed ``benchmark_tasks/<task>/task.json`` of each task ('goal_step_wikihow/step_ordering' for a
    subtask), in one streaming pass over the sdist (nothing is decompressed to disk); a member with a
    wanted name must be a regular file inside the archive (merging/io/archives.py)."""
    wanted = {f"benchmark_tasks/{t}/task.json": t for t in tasks}
    found: dict[str, dict] = {}
    with tarfile.open(sdist, "r|gz") as tar:
        for member in tar:
            key = next((k for k in wanted if member.name.endswith("/" + k)), None)
            if key:
                checked_member(sdist, member)
                found[wanted[key]] = json.loads(tar.extractfile(member).read())  # type: ignore[union-attr]
                if len(found) == len(wanted):
                    break
    missing = sorted(set(wanted.values()) - set(found))
    if missing:
        raise MergeError(f"{sdist}: no benchmark_tasks/<task>/task.json for {', '.join(missing)}")
    return found
