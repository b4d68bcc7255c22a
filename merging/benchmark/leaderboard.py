"""A benchmark's headline: every merge of a pool's all-task rows ranked by its mean normalised score over the
fine-tuning seeds, and which one is best.

Rows: ``results.current_finetunes`` (per seed, the rows of its latest fine-tunes), test-split rows only (generative
pools also write validation rows), the latest row of a seed per method and overrides. Left out: the references
(majority, probe, pretrained, finetuned), scaling rows (``extra`` set) and rows of a name the method registry does
not hold (a generative ``evaluate --label`` row). A method run with the flags of a Frank-Wolfe variant of
configs/fw_variants.yaml is named after it (``frank_wolfe_soft (soft_hull_scaled)``), other overrides are printed
as the runner's flags, and a row scored on the first ``limit`` test examples (generative) says so.

The verdict names the best single-model merge — a routed model (Twin-Merging) is ranked but is a body per input,
not one set of weights — among the merges run on the same, largest set of seeds, so a lucky seed cannot outrank a
mean over three; merges ranked above it on other seeds are listed as not judged. It gives the runner-up and
whether the gap exceeds both merges' standard deviations over seeds; with one seed there is no spread to judge the
gap by. A routed model that scores above the best merge is named last, as what it is.
"""
from __future__ import annotations

import logging
import statistics
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from merging.errors import MergeError
from merging.registry import get_method

from .claims import Row, as_flags, overrides_of
from .experiment import REFERENCES
from .results import current_finetunes, latest_per, markdown_table, mean_std
from .variants import VariantsFile, variant_name

logger = logging.getLogger(__name__)
Kind = Literal["data-free", "reads data", "routed"]


@dataclass(frozen=True)
class Standing:
    """One merge (a method and its overrides) of the ranking: its values per fine-tuning seed."""

    name: str
    kind: Kind
    seeds: frozenset[str]
    scores: tuple[float, ...]
    seconds: tuple[float, ...]
    peak_rss_gb: tuple[float, ...]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.scores)

    @property
    def std(self) -> float:
        return statistics.stdev(self.scores) if len(self.scores) > 1 else 0.0

    def summary(self, with_seeds: bool = False) -> str:
        seeds = f", seeds {', '.join(sorted(self.seeds))}" if with_seeds else ""
        return f"{self.name}, {mean_std(list(self.scores))} (n = {len(self.scores)}{seeds})"


def _kind(method: str) -> Kind | None:
    """What a merge reads; None for a name the registry does not hold."""
    try:
        spec = get_method(method)
    except MergeError:
        return None
    if spec.kind == "routed":
        return "routed"
    return "data-free" if spec.data == "none" else "reads data"


def row_namer(variants: VariantsFile | None) -> Callable[[Row], str]:
    """A row's name in the ranking: its method, then its FW variant's name or its overrides as flags, then its
    test-example limit if any."""

    def name(row: Row) -> str:
        text, overrides = row["method"], overrides_of(row)
        if overrides:
            found = variant_name(row, variants) if variants else None
            text += f" ({found})" if found else f" {as_flags(overrides)}"
        return f"{text} [first {row['limit']} test examples]" if row.get("limit", "") else text

    return name


def ranking(rows: list[Row], name: Callable[[Row], str], column: str = "normalized") -> list[Standing]:
    """The merges of ``rows`` (as the module says), best mean first."""
    scored = [row for row in current_finetunes(rows) if row["method"] not in REFERENCES and row.get("extra", "") == ""
              and row.get("split", "") in ("", "test") and row.get(column, "") != ""]
    kinds = {method: _kind(method) for method in {row["method"] for row in scored}}
    kept = [row for row in scored if kinds[row["method"]] is not None]
    unknown = {method for method, kind in kinds.items() if kind is None}
    if unknown:
        logger.info("left out of the ranking, not registered merge methods: %s", ", ".join(sorted(unknown)))

    def values(by_seed: dict[str, Row], key: str) -> tuple[float, ...]:
        return tuple(float(r[key]) for r in by_seed.values() if r.get(key, "") != "")

    standings = [Standing(label, kinds[next(iter(by_seed.values()))["method"]], frozenset(by_seed),
                          values(by_seed, column), values(by_seed, "seconds"), values(by_seed, "peak_rss_gb"))
                 for label, by_seed in latest_per(kept, name, "pool_seed").items()]
    return sorted(standings, key=lambda s: -s.mean)


def verdict(standings: list[Standing]) -> str:
    """Which single-model merge is best among those run on the same, largest set of seeds, and by how much; a
    routed model that scores above it is named after it."""
    models = [s for s in standings if s.kind != "routed"]
    if not models:
        return "No single-model merge yet (a routed model is ranked, never named best)."
    sets = Counter(s.seeds for s in models)
    seeds = max(sets, key=lambda found: (len(found), sets[found]))
    best, *rest = judged = [s for s in models if s.seeds == seeds]
    text = f"**Best merge: {best.summary()}**"
    if rest:
        gap = best.mean - rest[0].mean
        text += f"; next {rest[0].summary()}, {gap:+.2f}"
        if round(gap, 2) == 0:
            text += ": tied"
        elif len(seeds) < 2:
            text += ": one seed, no spread to judge the gap by"
        elif gap > max(best.std, rest[0].std):
            text += ": more than either one's standard deviation over seeds"
        else:
            text += ": within the standard deviation over seeds, so these seeds do not tell them apart"
    free = next((s for s in judged if s.kind == "data-free"), None)
    if best.kind != "data-free" and (not rest or free is not rest[0]):
        text += f"; best data-free: {free.summary()}" if free else "; no data-free merge on these seeds"
    above = [s for s in models[:models.index(best)] if s.seeds != seeds]
    if above:
        text += (f". Ranked above it on other seeds, not judged (seeds {', '.join(sorted(seeds))} are): "
                 + "; ".join(s.summary(with_seeds=True) for s in above))
    routed = [s for s in standings if s.kind == "routed" and s.mean > best.mean]
    if routed:
        text += (". Above it, a routed model (a body per input, not one set of weights): "
                 + "; ".join(s.summary(with_seeds=s.seeds != seeds) for s in routed))
    return text + "."


def _cell(values: tuple[float, ...], n: int) -> str:
    """Mean ± std of a cost column; the count when some seeds' rows lack it."""
    if not values:
        return ""
    return mean_std(list(values)) + (f" (n = {len(values)})" if len(values) < n else "")


def leaderboard(rows: list[Row], name: Callable[[Row], str], top: int | None = None) -> str | None:
    """Markdown: the ranking (its ``top`` lines when given, with how many were left out) and the verdict; None
    when no merge has rows."""
    standings = ranking(rows, name)
    if not standings:
        return None
    shown = standings[:top] if top else standings
    lines = [{"#": str(i), "method": s.name, "kind": s.kind, "n": str(len(s.scores)),
              "normalised": mean_std(list(s.scores)), "seconds": _cell(s.seconds, len(s.scores)),
              "peak RSS GB": _cell(s.peak_rss_gb, len(s.scores))} for i, s in enumerate(shown, 1)]
    table = markdown_table(lines, ["#", "method", "kind", "n", "normalised", "seconds", "peak RSS GB"])
    more = f"\n… and {len(standings) - len(shown)} more in the full ranking (the domain's results page).\n" \
        if len(shown) < len(standings) else ""
    return f"{table}{more}\n{verdict(standings)}\n"
