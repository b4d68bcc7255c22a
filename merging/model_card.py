"""The model card (``README.md``) of a merge's output folder, as the Hugging Face hub reads it: a YAML metadata
header, what was merged with what, how to load the result, and the configuration that made it."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def model_card(metadata: dict[str, Any], title: str, summary: str, table: list[list[str]], usage: list[str],
               config_yaml: str) -> str:
    """``table``'s first row is its header; ``usage`` is Python code, one line per item."""
    header = yaml.safe_dump(metadata, sort_keys=False)
    rows = ["| " + " | ".join(row) + " |" for row in table]
    return "\n".join([f"---\n{header}---", f"# {title}", "", summary, "", rows[0],
                      "|" + "---|" * len(table[0]), *rows[1:], "", "```python", *usage, "```", "",
                      "`merge_info.json` holds the method's log; the configuration:", "", "```yaml",
                      config_yaml.rstrip(), "```", ""])


def hub_ids(refs: list[str]) -> list[str]:
    """The references that name hub models (not local paths, not ``base+lora`` pairs' local parts): the card's
    ``base_model`` metadata, as mergekit's card lists them."""
    return [ref for ref in dict.fromkeys(refs) if not Path(ref).expanduser().exists() and ref[:1] not in "/~."]


def merge_card(method: str, paper: str, base: str, models: list[tuple[str, dict[str, Any]]], loader: str,
               config_yaml: str, mergekit: bool) -> str:
    """The card of a per-tensor merge: hub ids of its inputs and the ``merge`` tags in the header (plus
    ``mergekit`` when the config is mergekit's), the method and its paper, each model with its parameters, how
    to load the output, and the config that made it."""
    metadata = {"base_model": hub_ids([base, *(m for m, _ in models)]) or None, "library_name": "transformers",
                "tags": ["merge", *(["mergekit"] if mergekit else []), method]}
    summary = (f"A merge of {len(models)} model(s) into `{base}` with **{method}** ({paper}), made with this "
               "repository's merge CLI (`python -m merging merge`).")
    table = [["model", "parameters"], *([f"`{m}`", yaml.safe_dump(p, default_flow_style=True).strip() if p else "—"]
                                        for m, p in models)]
    usage = [f"from transformers import {loader}", f"model = {loader}.from_pretrained('.')"]
    return model_card({k: v for k, v in metadata.items() if v is not None}, f"Merge ({method})", summary, table,
                      usage, config_yaml)
