"""The data of OpenAI's evals registry, read straight out of its PyPI sdist (evals 3.0.1.post1, 44 MB; never
installed): ``evals/registry/data/<eval>/<file>.jsonl``, one chat-style row per line, ``{"input": [{"role",
"content"}, …], "ideal": answer | [accepted answers]}``. The text and generative suites both read it."""
from __future__ import annotations

import json
import re
import tarfile
from pathlib import Path
from typing import Any

from ..errors import MergeError
from ..io.archives import only_member
from ..io.pypi import Package

EVALS = Package("evals", "3.0.1.post1", "evals-3.0.1.post1.tar.gz", 44_186_145,
                "0ffd9bed75c273a4a9f0b10ccf11a5e1e1c63c89926f12958375551429a4dc21", sdist=True)


def evals_samples(sdist: Path, file: str) -> list[tuple[list[dict[str, str]], Any]]:
    """(chat messages, ``ideal``) of every row of ``evals/registry/data/<file>`` in the evals sdist."""
    with tarfile.open(sdist, "r:gz") as tar:
        name = only_member(tar, f"evals/registry/data/{file}", sdist)
        raw = tar.extractfile(name).read().decode("utf-8")  # type: ignore[union-attr]
    out = []
    for i, line in enumerate(raw.splitlines(), 1):
        if line.strip():
            row = json.loads(line)
            if not isinstance(row.get("input"), list) or "ideal" not in row:
                raise MergeError(f"{sdist}:{name} line {i}: expected a chat 'input' list and an 'ideal'")
            out.append((row["input"], row["ideal"]))
    return out


def evals_inputs(sdist: Path, file: str, skip: int = 1, pattern: str | None = None, task: str = ""
                 ) -> list[tuple[dict[str, str], str]]:
    """(input, answer) of every row of an eval: the messages after the first ``skip`` (the eval's instructions)
    joined by newlines, as the named groups of ``pattern`` matched against them whole (re.fullmatch, DOTALL) or,
    without a pattern, as ``{"input": joined}``; the answer is ``ideal`` (a list of accepted spellings counts as
    its first). ``task`` names the task in the error when an input does not match."""
    regex = re.compile(pattern, re.DOTALL) if pattern else None
    out = []
    for i, (messages, ideal) in enumerate(evals_samples(sdist, file), 1):
        content = "\n".join(m["content"].strip() for m in messages[skip:])
        match = regex.fullmatch(content) if regex else None
        if regex and not match:
            raise MergeError(f"{task}: {sdist} {file} row {i}: input {content[:120]!r} does not match {pattern!r}")
        if isinstance(ideal, list):
            if not ideal:
                raise MergeError(f"{task}: {sdist} {file} row {i}: 'ideal' is an empty list")
            ideal = ideal[0]
        out.append((match.groupdict() if match else {"input": content}, str(ideal)))
    return out
