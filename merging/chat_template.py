"""The output's chat template (mergekit's ``chat_template`` key): a built-in name, ``auto``, or the template.

    chatml        <|im_start|>{role}\\n{content}<|im_end|>\\n per message; the generation prompt
                  <|im_start|>assistant\\n  (written here, not copied: it renders as mergekit's chatml)
    auto          the template most input models carry (tokenizer_config.json's ``chat_template`` or a
                  chat_template.jinja), ties to the first in config order; none carrying one: the base's stays
    other text    the template itself; as in mergekit it must hold a '{' and be at least 20 characters

The template is written to ``chat_template.jinja``, which transformers reads in preference to the copied
tokenizer_config.json, whose own ``chat_template`` entry is dropped. mergekit's other built-in names (alpaca,
exaone, llama3, mistral) are refused with that advice: give their template text instead.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from .errors import MergeError

CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
          "{% endif %}")
BUILT_IN = {"chatml": CHATML}
NOT_BUILT_IN = ("alpaca", "exaone", "llama3", "mistral")  # mergekit's other names


def template_of(folder: Path) -> str | None:
    """The chat template a model folder carries: chat_template.jinja, else tokenizer_config.json's entry."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    config = folder / "tokenizer_config.json"
    template = json.loads(config.read_text()).get("chat_template") if config.is_file() else None
    if isinstance(template, list):  # named templates: the default one
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    return template if isinstance(template, str) else None


def check_chat_template(value: str) -> None:
    """Refuse, before any work, a value that is neither a built-in name, ``auto``, nor a template."""
    if value in BUILT_IN or value == "auto":
        return
    if value in NOT_BUILT_IN:
        raise MergeError(f"chat_template '{value}': mergekit's built-in template of that name is not shipped here "
                         f"(built in: {', '.join([*BUILT_IN, 'auto'])}); put the template text in the config")
    if len(value) < 20 or "{" not in value:
        raise MergeError(f"chat_template {value!r} is neither a built-in name ({', '.join([*BUILT_IN, 'auto'])}) "
                         "nor a Jinja template (at least 20 characters with a '{')")


def resolve_chat_template(value: str, inputs: list[Path]) -> str | None:
    """The template text for ``value`` (module docstring); None when ``auto`` finds none among ``inputs``."""
    check_chat_template(value)
    if value != "auto":
        return BUILT_IN.get(value, value)
    found = [t.strip() for folder in inputs if (t := template_of(folder))]
    return Counter(found).most_common(1)[0][0] if found else None


def write_chat_template(folder: Path, template: str) -> None:
    """``template`` as the output's chat_template.jinja; the copied tokenizer_config.json loses its own entry."""
    (folder / "chat_template.jinja").write_text(template)
    config = folder / "tokenizer_config.json"
    if config.is_file():
        fields = json.loads(config.read_text())
        if fields.pop("chat_template", None) is not None:
            config.write_text(json.dumps(fields, indent=2, ensure_ascii=False) + "\n")
