"""mergekit's ``tokenizer_source`` (or ``tokenizer: {source: …}``): which tokenizer the output gets.

    base (the default)   the base model's tokenizer files are copied
    union                mergekit builds the union of the inputs' vocabularies and re-maps every embedding row
                         to it; when every input has one vocabulary (fine-tunes of one base) that union is that
                         vocabulary and the model is the plain merge with the base's tokenizer: accepted then
    a model reference    that model's tokenizer; accepted when its vocabulary is the inputs' one, and its
                         tokenizer files are copied instead of the base's

Vocabularies that differ, or a config.json ``vocab_size`` other than the vocabulary's size (mergekit would resize
the embeddings to it), are refused before any work: re-mapping embedding rows is not implemented here.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from .errors import MergeError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                   "vocab.json", "merges.txt", "tokenizer.model", "spiece.model", "added_tokens.json",
                   "sentencepiece.bpe.model")


def vocabulary(folder: Path) -> dict[str, int]:
    """The token -> id map of the tokenizer in ``folder`` (transformers' AutoTokenizer, files only)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True).get_vocab()
    except (OSError, ValueError) as err:
        raise MergeError(f"{folder}: no tokenizer could be read for tokenizer_source ({err})") from None


def check_tokenizer_source(source: str, base: Path, models: list[Path], donor: Path | None,
                           config: dict | None) -> None:
    """Refuse a ``tokenizer_source`` whose result would need embedding rows re-mapped (module docstring)."""
    folders = [base, *models, *([donor] if donor else [])]
    vocabularies = {str(folder): vocabulary(folder) for folder in dict.fromkeys(folders)}
    first = vocabularies[str(base)]
    differing = [folder for folder, vocab in vocabularies.items() if vocab != first]
    if differing:
        raise MergeError(f"tokenizer_source {source!r}: the vocabularies of {differing} differ from the base's "
                         f"({base}); mergekit would re-map the embedding rows to a new vocabulary, which is not "
                         "implemented here; use tokenizer_source: base or models of one vocabulary")
    size = (config or {}).get("vocab_size")
    if size is not None and size != len(first):
        raise MergeError(f"tokenizer_source {source!r}: config.json's vocab_size {size} is not the tokenizer's "
                         f"{len(first)} tokens; mergekit would resize the embeddings to it, which is not "
                         "implemented here; use tokenizer_source: base")


def copy_tokenizer(donor: Path, folder: Path) -> None:
    """The donor's tokenizer files replace the copied base's."""
    for name in TOKENIZER_FILES:
        if (folder / name).exists():
            (folder / name).unlink()
        if (donor / name).is_file():
            shutil.copy2(donor / name, folder / name)
