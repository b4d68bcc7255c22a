"""Data sets from the Hugging Face Hub (``datasets``), for users who have it: the paper settings' GLUE and
image tasks. Offline, or without the package, loading fails with one message that says what to fetch."""
from __future__ import annotations

from typing import Any

from ..errors import MergeError


def load_hub_dataset(repo: str, name: str | None = None, split: str | None = None) -> Any:
    """``datasets.load_dataset(repo, name, split=split)``, any failure turned into a MergeError naming it."""
    what = f"{repo}" + (f" ({name})" if name else "") + (f", split {split}" if split else "")
    try:
        import datasets
    except ImportError:
        raise MergeError(f"{what} needs the `datasets` package: pip install datasets") from None
    try:
        return datasets.load_dataset(repo, name, split=split)
    except Exception as err:  # offline, missing cache, auth: one clear message
        args = ", ".join(repr(a) for a in (repo, name) if a)
        raise MergeError(f"{what} could not be loaded ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}). On a machine with access run "
                         f"`python -c \"import datasets; datasets.load_dataset({args})\"` and copy the Hugging "
                         f"Face cache (HF_HOME) here.") from None
