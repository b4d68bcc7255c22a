"""The data of OpenAI's evals registry, read straight out of its PyPI sdist (evals 3.0.1.post1, 44 MB; never
installed): ``evals/registry/data/<eval>/<file>.jsonl``, one chat-style row per line, ``{"input": [{"role",
"content"}, …], "ideal": answer | [accepted answers]}``. The text and generative suites both read it."""
from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any

from ..errors import MergeError
from ..io.archives import checked_member
from ..io.pypi import Package

EVALS = Package("evals", "3.0.1.post1", "evals-3.0.1.post1.tar.gz", 44_186_145,
                "0ffd9bed75c273a4a9f0b10ccf11a5e1e1c63c89926f12958375551429a4dc21", sdist=True)


def evals_samples(sdist: Path, file: str) -> list[tuple[list[dict[str, str]], Any]]:
    """(chat messages, ``ideal``) of every row of ``evals/registry/data/<file>`` in the evals sdist."""
    suffix = f"evals/registry/data/{file}"
    with tarfile.open(sdist, "r:gz") as tar:
        found = [n for n in tar.getnames() if n == suffix or n.endswith("/" + suffix)]
        if len(found) != 1:
            raise MergeError(f"{sdist}: expected one member ending in '{suffix}', found {len(found)}")
        name = checked_member(sdist, tar.getmember(found[0]))
        raw = tar.extractfile(name).read().decode("utf-8")  # type: ignore[union-attr]
    out = []
    for i, line in enumerate(raw.splitlines(), 1):
        if line.strip():
            row = json.loads(line)
            if not isinstance(row.get("input"), list) or "ideal" not in row:
                raise MergeError(f"{sdist}:{name} line {i}: expected a chat 'input' list and an 'ideal'")
            out.append((row["input"], row["ideal"]))
    return out
