"""The offline generative suite (``configs/generative/tasks.yaml``): BIG-bench subtasks (``bigbench:``, from the
sdist PyPI no longer serves), arithmetic questions generated in BIG-bench's form (``arithmetic:``,
generative/arithmetic.py) and evals of OpenAI's registry (``evals:``, merging/benchmark/evals.py), prepared
once into ``cache_dir()/generative/<task>/{train,validation,test,proxy}.jsonl`` + ``meta.json``, and handed to
lm-eval as local tasks (``local_tasks``).

Examples: ``{"input", "target"}`` for exact match (the first target); ``{"input", "choices", "label"}`` for
multiple choice, the choices being the example's ``target_scores`` (label = the highest-scoring one; ties are
skipped) or, for tasks that only give targets, the task's sorted set of targets.

Splits (seed 0), from the examples with a unique input (an input whose copies disagree is dropped):
shuffled with random.Random(seed), then validation = min(100, n/5), test = min(200, (n − validation)/2),
train = min(1000, the rest), proxy = the first 100 train examples. Idempotent: a task whose meta.json carries
the current recipe hash is left alone.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path
from typing import Any, Literal

from merging.benchmark.bigbench import BIGBENCH, bigbench_tasks
from merging.benchmark.evals import EVALS, evals_inputs
from merging.benchmark.task_list import task_entries
from merging.errors import MergeError
from merging.io.atomic import atomic_directory
from merging.io.pypi import cache_dir, fetch
from merging.resources import CONFIGS

from .arithmetic import VERSION as ARITHMETIC_VERSION
from .arithmetic import arithmetic_task, check_arithmetic
from .lm_eval_tasks import LocalTask

TASKS_YAML = CONFIGS / "generative" / "tasks.yaml"
SEED = 0
CAPS = {"test": 200, "validation": 100, "train": 1000, "proxy": 100}
SPLITS = ("train", "validation", "test", "proxy")
DEFAULT_PROMPT = "Q: {{input}}\nA:"
RECIPE_VERSION = 1
GENERATED = sum(CAPS[s] for s in ("train", "validation", "test"))  # questions generated per arithmetic task
SOURCES = {"bigbench": "bigbench: <task path>", "arithmetic": "arithmetic: {operation, digits}",
           "evals": "evals: {file, skip, pattern, labels}"}
EVALS_KEYS = {"file", "skip", "pattern", "labels"}
Split = Literal["train", "validation", "test", "proxy"]


def entries() -> dict[str, dict[str, Any]]:
    """tasks.yaml, checked: {name: entry}."""
    out = {}
    required = {"name", "kind"}
    for where, entry in task_entries(TASKS_YAML, required, required | set(SOURCES) | {"prompt"}):
        if entry["kind"] not in ("exact_match", "multiple_choice"):
            raise MergeError(f"{where}: kind '{entry['kind']}', expected exact_match or multiple_choice")
        given = [k for k in SOURCES if k in entry]
        if len(given) != 1:
            raise MergeError(f"{where}: expected one source, one of {'; '.join(SOURCES.values())}")
        (source,) = given
        keys = entry[source] if isinstance(entry[source], dict) else None
        if source == "arithmetic" and (keys is None or set(keys) != {"operation", "digits"}):
            raise MergeError(f"{where}: arithmetic {entry['arithmetic']!r}, expected {{operation, digits}}")
        if source == "evals" and (keys is None or "file" not in keys or set(keys) - EVALS_KEYS):
            raise MergeError(f"{where}: evals {entry['evals']!r}, expected file and optionally "
                             f"{', '.join(sorted(EVALS_KEYS - {'file'}))}")
        if source == "evals" and "pattern" in keys:
            try:
                groups = re.compile(keys["pattern"], re.DOTALL).groupindex
            except re.error as error:
                raise MergeError(f"{where}: evals pattern {keys['pattern']!r} is not a regular expression ({error})"
                                 ) from None
            if "input" not in groups:
                raise MergeError(f"{where}: evals pattern {keys['pattern']!r} has no group (?P<input>…)")
        if source == "arithmetic":
            check_arithmetic(keys["operation"], keys["digits"], where)
        out[entry["name"]] = entry
    return out


def _first(target: Any) -> str:
    return str(target[0] if isinstance(target, list) else target).strip()


def examples_of(entry: dict[str, Any], task: dict[str, Any]) -> list[dict[str, Any]]:
    """The examples of a parsed BIG-bench task.json as ``entry['kind']`` wants them."""
    raw = task.get("examples") or []
    if entry["kind"] == "exact_match":
        return [{"input": e["input"], "target": _first(e["target"])} for e in raw if "target" in e]
    out = []
    labels = sorted({_first(e["target"]) for e in raw if "target" in e and "target_scores" not in e})
    for e in raw:
        if "target_scores" in e:
            choices = list(e["target_scores"])
            best = max(e["target_scores"].values())
            winners = [i for i, c in enumerate(choices) if e["target_scores"][c] == best]
            if len(winners) == 1:
                out.append({"input": e["input"], "choices": choices, "label": winners[0]})
        elif "target" in e:
            out.append({"input": e["input"], "choices": labels, "label": labels.index(_first(e["target"]))})
    return out


def evals_task(sdist: Path, file: str, skip: int = 1, pattern: str | None = None,
                labels: dict[str, str] | None = None, task: str = "") -> dict[str, Any]:
    """An eval of the evals registry as a BIG-bench-style task of ``{"input", "target"}`` examples
    (merging/benchmark/evals.py ``evals_inputs``): the input is the messages after the first ``skip`` (the
    eval's instructions), or the group ``input`` of ``pattern``; the target is ``ideal``, renamed by ``labels``."""
    return {"examples": [{"input": groups["input"].strip(), "target": (labels or {}).get(ideal, ideal)}
                         for groups, ideal in evals_inputs(sdist, file, skip, pattern, task)]}


def unique_inputs(examples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The first example of each input; an input whose copies disagree (target or label) is dropped."""
    first: dict[str, dict[str, Any]] = {}
    conflicting = set()
    for e in examples:
        if e["input"] in first and first[e["input"]] != e:
            conflicting.add(e["input"])
        first.setdefault(e["input"], e)
    return [e for key, e in first.items() if key not in conflicting]


def make_splits(examples: list[dict[str, Any]], seed: int = SEED) -> dict[str, list[dict[str, Any]]]:
    """Disjoint seeded test / validation / train (+ proxy = train[:100]) of examples with unique inputs."""
    n = len(examples)
    validation = min(CAPS["validation"], n // 5)
    test = min(CAPS["test"], (n - validation) // 2)
    train = min(CAPS["train"], n - validation - test)
    if min(validation, test, train) < 1:
        raise MergeError(f"{n} examples are too few for test, validation and train splits")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    picked = [examples[i] for i in order]
    out = {"test": picked[:test], "validation": picked[test:test + validation],
           "train": picked[test + validation:test + validation + train]}
    out["proxy"] = out["train"][:CAPS["proxy"]]
    return out


def task_dir(name: str) -> Path:
    return cache_dir() / "generative" / name


def _recipe(entry: dict[str, Any]) -> str:
    source = ({"sha256": BIGBENCH.sha256} if "bigbench" in entry else {"sha256": EVALS.sha256} if "evals" in entry
              else {"generated": GENERATED, "generator": ARITHMETIC_VERSION})
    blob = {"version": RECIPE_VERSION, "seed": SEED, "caps": CAPS, "entry": entry, **source}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def _is_prepared(name: str, entry: dict[str, Any]) -> bool:
    meta = task_dir(name) / "meta.json"
    return meta.is_file() and json.loads(meta.read_text()).get("recipe") == _recipe(entry)


def prepare(names: list[str] | None = None, progress: bool = True) -> None:
    """Build the splits of ``names`` (default: every task) that are not prepared yet: one pass over the sdist
    for the BIG-bench ones (only when one is to be built)."""
    all_entries = entries()
    names = list(all_entries) if names is None else names
    unknown = [n for n in names if n not in all_entries]
    if unknown:
        raise MergeError(f"unknown generative task(s) {unknown}; known: {', '.join(all_entries)}")
    todo = [n for n in names if not _is_prepared(n, all_entries[n])]
    if not todo:
        return
    archives = {source: fetch(pkg, cache_dir() / "downloads", progress, needed_by=f" (read by {', '.join(users)})")
                for source, pkg in (("bigbench", BIGBENCH), ("evals", EVALS))
                if (users := [n for n in todo if source in all_entries[n]])}
    wanted = {all_entries[n]["bigbench"] for n in todo if "bigbench" in all_entries[n]}
    parsed = bigbench_tasks(archives["bigbench"], wanted) if wanted else {}
    for name in todo:
        entry = all_entries[name]
        if "bigbench" in entry:
            task = parsed[entry["bigbench"]]
        elif "evals" in entry:
            task = evals_task(archives["evals"], **entry["evals"], task=f"generative task '{name}'")
        else:
            task = arithmetic_task(**entry["arithmetic"], examples=GENERATED, seed=f"{SEED}/{name}")
        examples = unique_inputs(examples_of(entry, task))
        splits = make_splits(examples)
        with atomic_directory(task_dir(name), overwrite=True) as tmp:
            for split, rows in splits.items():
                (tmp / f"{split}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            meta = {"recipe": _recipe(entry), "entry": entry, "unique": len(examples),
                    "sizes": {s: len(r) for s, r in splits.items()}}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))


def load_split(name: str, split: Split) -> list[dict[str, Any]]:
    """The examples of one split of a task (prepared first if needed)."""
    prepare([name], progress=False)
    return _read(name, split)


def _read(name: str, split: Split) -> list[dict[str, Any]]:
    if split not in SPLITS:
        raise MergeError(f"unknown split '{split}'; expected one of {', '.join(SPLITS)}")
    with open(task_dir(name) / f"{split}.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def local_tasks(split: Split, names: list[str] | None = None) -> list[LocalTask]:
    """The suite's tasks on ``split`` as lm-eval local tasks (generative/lm_eval_tasks.py)."""
    all_entries = entries()
    names = names or list(all_entries)
    prepare(names, progress=False)
    return [LocalTask(name, all_entries[name]["kind"], _read(name, split),
                      prompt=all_entries[name].get("prompt", DEFAULT_PROMPT), max_gen_toks=12) for name in names]
