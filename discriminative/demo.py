"""A tiny text pool to try data-driven merging on your own files in about a minute, offline: a 2-layer BERT over a
17-token vocabulary and two keyword tasks on two topics (``has_good``: does a sentence about films contain "good"?
``has_sport``: does a sentence about sports contain "sport"?), written as JSONL files, a ``data: files`` pool YAML
over them and a merge config for FW-Merging. The topics share only "the" and "a": as real tasks do, each sees
inputs of its own, which RegMean's and Fisher's statistics (and AdaMerging's test inputs) tell apart.

    python -m discriminative.demo demo_data          # writes demo_data/{base, data/*.jsonl, pool.yaml, fw.yaml}
    python -m discriminative finetune --pool demo_data/pool.yaml
    python -m merging merge demo_data/fw.yaml --out demo_data/merged

The tests use the same tasks (tests/test_discriminative.py, tests/test_merge_data.py)."""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import yaml

from .data import Example

KEYWORDS = {"has_good": "good", "has_sport": "sport"}
TOPICS = {"has_good": ["film", "movie", "plot", "bad", "good"], "has_sport": ["match", "team", "ball", "score", "sport"]}
SHARED = ["the", "a"]
WORDS = [*SHARED, *(word for words in TOPICS.values() for word in words)]
SIZES = {"train": 240, "validation": 80, "test": 120, "proxy": 100}
FINETUNE = {"epochs": 10, "lr": 1e-3, "batch_size": 16, "seeds": [0]}


def keyword_examples(task: str, split: str) -> list[Example]:
    """Six random words of the task's topic (or "the", "a") per sentence; in half of them (label 1) one is the
    task's keyword. Seeded by task and split, so every run writes the same files."""
    keyword = KEYWORDS[task]
    vocabulary = [word for word in [*SHARED, *TOPICS[task]] if word != keyword]
    rng = random.Random(f"{task}/{split}")
    examples = []
    for _ in range(SIZES[split]):
        words = [rng.choice(vocabulary) for _ in range(6)]
        label = rng.random() < 0.5
        if label:
            words[rng.randrange(6)] = keyword
        examples.append(Example(" ".join(words), int(label)))
    return examples


def write_base(folder: Path) -> Path:
    """A randomly initialised 2-layer BERT (hidden 32) and its word-level tokenizer."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    BertTokenizerFast(vocab={word: i for i, word in enumerate(vocab)}).save_pretrained(folder)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64)).save_pretrained(folder)
    return folder


def write_demo(root: Path) -> Path:
    """``root``/base, ``root``/data/<task>_<split>.jsonl, ``root``/pool.yaml (``data: files``) and ``root``/fw.yaml
    (FW-Merging of the pool's fine-tuned checkpoints on the proxy files); the merge config's path."""
    from merging.benchmark.store import checkpoint_folder

    from .pool import TextPool

    root = Path(root).resolve()  # the YAMLs work from any folder
    base = write_base(root / "base")
    files = {}
    for task in KEYWORDS:
        files[task] = {"text": "sentence", "label": "label", "num_labels": 2}
        for split in SIZES:
            path = root / "data" / f"{task}_{split}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps({"sentence": e.text, "label": e.label}) + "\n"
                                    for e in keyword_examples(task, split)))
            files[task][split] = str(path)
    pool = {"name": "demo", "base": str(base), "tasks": list(KEYWORDS), "data": "files", "files": files,
            "max_length": 16, "finetune": FINETUNE}
    (root / "pool.yaml").write_text(yaml.safe_dump(pool, sort_keys=False))
    checkpoints = TextPool.model_validate(pool)
    config = {"method": "frank_wolfe", "base": str(base),
              "models": [{"model": str(checkpoint_folder(checkpoints, task, 0)), "task": task} for task in KEYWORDS],
              "parameters": {"iterations": 5, "lambda": 1.0},
              "data": {"kind": "sequence_classification", "head": checkpoints.head, "max_length": 16,
                       "tasks": {task: {"proxy": files[task]["proxy"], "test": files[task]["test"],
                                        "text": "sentence", "label": "label"} for task in KEYWORDS}}}
    (root / "fw.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return root / "fw.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m discriminative.demo", description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="the folder to write (created)")
    print(write_demo(parser.parse_args(argv).root))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
