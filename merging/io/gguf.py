"""GGUF checkpoints (llama.cpp's single-file format) as plain transformers folders.

transformers reads a GGUF file (``from_pretrained(folder, gguf_file=NAME)``, with the ``gguf`` package) by
de-quantising every tensor to float32, but the model it returns keeps a ``quantization_config`` and
``save_pretrained`` refuses it. ``plain_folder`` converts once: it builds a fresh model from the GGUF's
config without that entry, loads the de-quantised tensors (every one, strictly), and saves it with the
tokenizer the GGUF carries, as safetensors that reload anywhere — fine-tuning, merging and lm-eval then see an
ordinary checkpoint. The weights keep the file's quantisation error (e.g. Q4_1 for the offline SmolLM2 base):
fine as a base to fine-tune and merge, not a stand-in for the original float weights.

The folder is cached under ``$MERGING_CACHE/models/<file stem>-<sha256[:12]>``, so a changed file converts again.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from ..errors import MergeError
from .atomic import atomic_directory
from .pypi import cache_dir, sha256

MARKER = "gguf_source.json"  # written last: its presence means the folder is complete


def plain_folder(gguf_file: Path, cache: Path | None = None) -> Path:
    """The plain transformers folder (config, model.safetensors, tokenizer) of ``gguf_file``, converted once."""
    gguf_file = Path(gguf_file)
    if not gguf_file.is_file():
        raise MergeError(f"GGUF file '{gguf_file}' does not exist")
    digest = sha256(gguf_file)
    target = (cache or cache_dir() / "models") / f"{gguf_file.stem}-{digest[:12]}"
    if (target / MARKER).is_file():
        return target
    if importlib.util.find_spec("gguf") is None:  # transformers needs it; say so here, not deep inside
        raise MergeError(f"reading '{gguf_file}' needs the `gguf` package: pip install gguf")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = gguf_file.parent, gguf_file.name
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype="float32")
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    tied = set(getattr(plain, "_tied_weights_keys", None) or {})
    if unexpected or set(missing) - tied:
        raise MergeError(f"'{gguf_file}': the de-quantised tensors do not fit {type(plain).__name__}; missing "
                         f"{sorted(set(missing) - tied)}, unexpected {sorted(unexpected)}")
    with atomic_directory(target, overwrite=True) as tmp:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / MARKER).write_text(json.dumps({"gguf": str(gguf_file.resolve()), "sha256": digest}, indent=1))
    return target
