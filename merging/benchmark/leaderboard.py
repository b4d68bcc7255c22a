"""A benchmark's headline: every merge of a pool's all-task rows ranked by its mean normalised score over the
fine-tuning seeds, and which one is best.

Rows: ``results.current_finetunes`` (per seed, the rows of its latest fine-tunes; the latest row of a seed per
method and overrides), the references (majority, probe, pretrained, finetuned) left out. A method run with the
flags of a Frank-Wolfe variant of configs/fw_variants.yaml is named after it (``frank_wolfe_soft
(soft_hull_scaled)``), other overrides are printed as the runner's flags.

The verdict names the best single-model merge (a routed model, e.g. Twin-Merging, is ranked but is a body per
input, not one set of weights) among the methods run on the most seeds, so a lucky seed cannot outrank a mean over
three; it gives the runner-up and says whether the gap exceeds the larger of the two standard deviations (the
seeds tell them apart) or not (with one seed there is no spread to judge it by).
"""
from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

from merging.registry import get_method

from .claims import Row, as_flags, overrides_of
from .experiment import REFERENCES
from .results import current_finetunes, markdown_table, mean_std
from .variants import VariantsFile


@dataclass(frozen=True)
class Entry:
    """One method (and its overrides) of the ranking: its values per fine-tuning seed."""

    label: str
    kind: str  # "data-free", "reads data" or "routed"
    scores: tuple[float, ...]
    seconds: tuple[float, ...]
    peak_rss_gb: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.scores)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.scores)

    @property
    def std(self) -> float:
        return statistics.stdev(self.scores) if self.n > 1 else 0.0

    def summary(self) -> str:
        return f"{self.label}, {mean_std(list(self.scores))} (n = {self.n})"


def _kind(method: str) -> str:
    spec = get_method(method)
    if spec.kind == "routed":
        return "routed"
    return "data-free" if spec.data == "none" else "reads data"


def labeller(variants: VariantsFile | None) -> Callable[[Row], str]:
    """A row's name in the ranking: its method, then its FW variant's name or its overrides as flags."""

    def label(row: Row) -> str:
        overrides = overrides_of(row)
        if not overrides:
            return row["method"]
        for variant in variants.variants if variants else []:
            if variant.method == row["method"] and variant.flags == overrides:
                return f"{row['method']} ({variant.name})"
        return f"{row['method']} {as_flags(overrides)}"

    return label


def entries(rows: list[Row], label: Callable[[Row], str], column: str = "normalized") -> list[Entry]:
    """The ranked methods, best mean first: per label, the latest row of each seed of its latest fine-tunes."""
    latest: dict[str, dict[str, Row]] = {}
    for row in current_finetunes(rows):
        if row["method"] not in REFERENCES and row.get("extra", "") == "" and row.get(column, "") != "":
            latest.setdefault(label(row), {})[row.get("pool_seed", "")] = row

    def values(by_seed: dict[str, Row], name: str) -> tuple[float, ...]:
        return tuple(float(r[name]) for r in by_seed.values() if r.get(name, "") != "")

    ranked = [Entry(name, _kind(next(iter(by_seed.values()))["method"]), values(by_seed, column),
                    values(by_seed, "seconds"), values(by_seed, "peak_rss_gb")) for name, by_seed in latest.items()]
    return sorted(ranked, key=lambda e: -e.mean)


def verdict(ranked: list[Entry]) -> str:
    """Which single-model merge is best among those run on the most seeds, and by how much."""
    models = [e for e in ranked if e.kind != "routed"]
    if not models:
        return "No merge rows yet."
    most = max(e.n for e in models)
    best, *rest = [e for e in models if e.n == most]
    text = f"**Best merge: {best.summary()}**"
    if rest:
        gap = best.mean - rest[0].mean
        text += f"; next {rest[0].summary()}, {gap:+.2f}"
        if most < 2:
            text += ": one seed, no spread to judge the gap by"
        else:
            apart = gap > max(best.std, rest[0].std)
            text += (f": {'more' if apart else 'no more'} than one standard deviation, so the seeds "
                     f"{'tell' if apart else 'do not tell'} them apart")
    if best.kind != "data-free":
        free = next((e for e in models if e.n == most and e.kind == "data-free"), None)
        text += f"; best data-free: {free.summary()}" if free else "; no data-free merge on as many seeds"
    fewer = sorted({e.n for e in models if e.n < most})
    if fewer:
        text += f". Methods run on fewer seeds ({', '.join(map(str, fewer))}) are ranked but not judged"
    return text + "."


def leaderboard(rows: list[Row], label: Callable[[Row], str], top: int | None = None) -> str | None:
    """Markdown: the ranking (its ``top`` lines when given, with how many were left out) and the verdict."""
    ranked = entries(rows, label)
    if not ranked:
        return None
    shown = ranked[:top] if top else ranked
    lines = [{"#": str(i), "method": e.label, "data": e.kind, "n": str(e.n),
              "normalised": mean_std(list(e.scores)),
              "seconds": mean_std(list(e.seconds)) if e.seconds else "",
              "peak RSS GB": mean_std(list(e.peak_rss_gb)) if e.peak_rss_gb else ""}
             for i, e in enumerate(shown, 1)]
    table = markdown_table(lines, ["#", "method", "data", "n", "normalised", "seconds", "peak RSS GB"])
    more = f"\n… and {len(ranked) - len(shown)} more, ranked on the results page.\n" if len(shown) < len(ranked) else ""
    return f"{table}{more}\n{verdict(ranked)}\n"
