"""The model card (``README.md``) of a merge's output folder, as the Hugging Face hub reads it: a YAML metadata
header, what was merged with what, how to load the result, and the configuration that made it."""
from __future__ import annotations

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
