"""The FW-Merging paper's claims judged on our rows (configs/claims.yaml, issue 16).

Each claim names a scaling protocol (merging/benchmark/scaling.py), FW soft's preset for it, the points
(numbers of extra checkpoints) it compares, the paper's numbers and a criterion fixed before the runs:

  flat    FW soft loses ≤ ``max_drop`` normalised points from the first point to the last while ``reference``
          (its configured variant) loses ≥ ``min_reference_drop``        (irrelevance)
  rise    FW soft's mean at the last point ≥ (1 + ``min_relative``) × its mean at the first   (relevance)
  beats   FW soft ≥ ``min_ratio`` × the best variant of ``reference`` and > the best variant of every
          ``data_free`` method, at the one point                        (main)

FW soft's rows are those of ``method frank_wolfe_soft`` whose overrides carry the claim's preset, judged once
per inner loss (cross_entropy, the preset's; entropy). Other overrides are deviations from the paper's
setting (a run cut to fit 2 cores): rows without any are preferred, a deviation is printed beside the numbers.
A claim's ``protocol_flags`` for the pool's domain belong to the protocol (``--statistics targets`` on the
BatchNorm vision pool): only rows run with them are judged, they are no deviation, and every command carries them.
Means are over the fine-tuning seeds every compared series has (latest row per seed, among the rows scored
against the fine-tunes of the seed's newest FW soft row with the claim's preset: ``results.current_finetunes``,
so that a partial re-make of another method does not hide a complete claim); the table prints the
command that makes each missing or present row. Beside the verdict, the claim's ``compared`` methods (default:
the paper's) are shown as their best variant (``--preset vision_fork`` for FW hard, say) at the first and last
point, and drawn in the claim's plot."""
from __future__ import annotations

import functools
import json
import math
import shlex
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from merging.benchmark.results import current_finetunes, markdown_table, read_rows
from merging.config import read_validated
from merging.io.atomic import atomic_write_text

from .experiment import CONFIGS, preset_parameters
from .pool import PoolConfig
from .scaling import extra_count, save_figure

CLAIMS_FILE = CONFIGS / "claims.yaml"
FW_SOFT = "frank_wolfe_soft"
INNER_LOSSES = ("cross_entropy", "entropy")  # the presets' own first
# Overrides that change what a run costs or the order it reads data in, not FW soft's update: a row of the claim's
# preset with no others is the paper's method (issue 19's variants share the preset and change the rule)
COST_KEYS = frozenset({"ada_steps", "statistics", "ada_entropy_batches"})
RUNNERS = {"irrelevance": "run_irrelevance", "relevance": "run_relevance", "relevance_tasks": "run_relevance_tasks"}
Scores = dict[str, float]  # pool seed -> normalised score (or another column)
Row = dict[str, str]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Criterion(_Strict):
    kind: Literal["flat", "rise", "beats"]
    max_drop: float | None = None
    reference: str | None = None
    min_reference_drop: float | None = None
    min_relative: float | None = None
    min_ratio: float | None = None
    data_free: list[str] = []


class PaperNumbers(_Strict):
    extra: list[int]
    scores: dict[str, list[float | None]]  # None: not in the paper's outputs


class Claim(_Strict):
    name: str
    statement: str
    protocol: Literal["irrelevance", "relevance", "relevance_tasks"]
    preset: str
    extra: list[int | Literal["all"]] = Field(min_length=1)
    paper: PaperNumbers
    settings: str
    criterion: Criterion
    compared: list[str] = []  # other methods shown beside FW soft (default: the paper's, less FW soft)
    protocol_flags: dict[str, dict[str, Any]] = {}  # domain -> flags every judged row of its pools carries

    def flags_for(self, domain: str) -> dict[str, Any]:
        return self.protocol_flags.get(domain, {})

    def shown(self) -> list[str]:
        return self.compared or [m for m in self.paper.scores if m != FW_SOFT]


class ClaimsFile(_Strict):
    claims: list[Claim] = Field(min_length=1)


def load_claims(path: Path = CLAIMS_FILE) -> list[Claim]:
    return read_validated(path, ClaimsFile, "claims file").claims


@dataclass
class Judgement:
    claim: Claim
    inner_loss: str
    ours: str       # the numbers, mean ± std over n seeds
    verdict: str    # "yes", "no" or "not run"
    why: str
    commands: list[str]
    cost: str       # FW soft's seconds and peak RSS per point (mean over its seeds)
    compared: str   # the other methods' best variants, first → last point
    flags: str      # FW soft's deviation from the preset in the judged rows ('' for none)


def overrides_of(row: Row) -> dict[str, object]:
    return json.loads(row["overrides"]) if row.get("overrides") else {}


def as_flags(overrides: str | dict[str, object]) -> str:
    """Overrides (a row's JSON, or the mapping) as the runner's command-line flags (booleans as YAML writes them:
    ``--monotone true``; a mapping or list as quoted JSON, which the runner reads as YAML:
    ``--init-merge-search '{"lambda": [0.5, 1.0]}'``)."""
    found = json.loads(overrides) if isinstance(overrides, str) and overrides else overrides or {}
    return " ".join(f"--{k.replace('_', '-')} {_flag_value(v)}" for k, v in found.items())


def _flag_value(value: object) -> str:
    if isinstance(value, bool):
        return json.dumps(value)
    return shlex.quote(json.dumps(value)) if isinstance(value, (dict, list)) else str(value)


def under_protocol(rows: list[Row], flags: dict[str, Any]) -> list[Row]:
    """The rows run with every one of ``flags`` (settings of the protocol, not of a method: ``--statistics
    targets`` on a BatchNorm pool, say), those flags taken out of their overrides so that a method's variants
    compare as without them; ``rows`` as they are when ``flags`` is empty."""
    if not flags:
        return rows
    kept = []
    for row in rows:
        found = overrides_of(row)
        if all(found.get(key) == value for key, value in flags.items()):
            rest = {key: value for key, value in found.items() if key not in flags}
            kept.append({**row, "overrides": json.dumps(rest) if rest else ""})
    return kept


def series(rows: list[Row], keep: Callable[[Row], bool], extra: int | None, column: str = "normalized") -> Scores:
    """``column`` by pool seed of the latest kept row at ``extra`` extra checkpoints (None: any row, as in a table
    without that column; rows without a value in ``column`` are left out)."""
    out: Scores = {}
    for row in rows:
        at = extra is None or (row.get("extra", "") != "" and int(row["extra"]) == extra)
        if keep(row) and at and row.get(column, "") != "":
            out[row["pool_seed"]] = float(row[column])
    return out


def complete_seeds(found: list[Scores]) -> set[str]:
    """Seeds with a value at every point."""
    return set.intersection(*(set(s) for s in found))


def mean_over(scores: Scores, seeds: list[str]) -> float:
    return statistics.fmean(scores[s] for s in seeds)


def judged(difference: float, signed: bool = True) -> str:
    """A difference judged against a criterion's bound, at the rows' precision (two decimals), so a value just
    past the bound never prints as the bound itself (a drop of 2.007 reads 2.01, not 2.0). ``signed`` adds "+"
    to a positive value; a negative one keeps its "-" either way."""
    return f"{difference:+.2f}" if signed else f"{difference:.2f}"


def mean_std(scores: Scores, seeds: list[str]) -> str:
    values = [scores[s] for s in seeds]
    mean = statistics.fmean(values)
    return f"{mean:.1f}" if len(values) < 2 else f"{mean:.1f} ± {statistics.stdev(values):.1f}"


def _is_variant(row: Row, method: str, overrides: str) -> bool:
    return row["method"] == method and row.get("overrides", "") == overrides


def _is_configured(row: Row, method: str) -> bool:
    """A row of ``method`` as its config runs it (no command-line overrides)."""
    return _is_variant(row, method, "")


class _Context:
    """One claim's rows (those of the requested targets), its points, FW soft's preset and the commands."""

    def __init__(self, claim: Claim, pool: PoolConfig, targets: list[str], outs: Path,
                 experiment: str | None = None) -> None:
        self.claim = claim
        self.points = [extra_count(pool, targets, claim.protocol, str(k)) for k in claim.extra]
        self.csv = outs / f"{experiment or pool.name}_{claim.protocol}" / "results.csv"
        wanted = " ".join(targets)  # rows written before the column existed count as the runner's targets
        self.flags = claim.flags_for(pool.domain.name)
        rows = under_protocol([r for r in read_rows(self.csv) if r.get("targets", "") in ("", wanted)], self.flags)
        self.rows = current_finetunes(rows, anchor=self.is_claims_fw_soft)
        self.preset = preset_parameters(pool.domain.name, FW_SOFT, claim.preset)

    def is_claims_fw_soft(self, row: Row) -> bool:
        """FW soft with the claim's preset, changed in nothing but ``COST_KEYS`` and the inner loss: a seed's cell
        compares rows of the fine-tunes its newest such row used, which a newer variant of the preset (issue 19's)
        made on other fine-tunes does not move."""
        over = overrides_of(row)
        return (row["method"] == FW_SOFT and over.get("preset") == self.claim.preset
                and set(over) - {"preset", "inner_loss"} <= COST_KEYS)

    def command(self, methods: list[str], flags: str = "") -> str:
        """The runner call that makes the rows at the claim's points (after ``setup``), with the protocol's flags."""
        flags = " ".join(f for f in (flags, as_flags(self.flags)) if f)
        return (f"SIZES=\"{' '.join(map(str, self.points))}\" METHODS=\"{' '.join(methods)}\" "
                f"{RUNNERS[self.claim.protocol]}{' ' + flags if flags else ''}")

    def deviation(self, row: Row, loss: str) -> str | None:
        """None unless ``row`` is FW soft with the claim's preset and inner loss ``loss``; else the overrides
        that change the preset's setting, as command-line flags ('' for none)."""
        over = overrides_of(row)
        if (row["method"] != FW_SOFT or over.get("preset") != self.claim.preset
                or over.get("inner_loss", self.preset.get("inner_loss")) != loss):
            return None
        return as_flags({k: v for k, v in sorted(over.items())
                         if k not in ("preset", "inner_loss") and self.preset.get(k, object()) != v})

    def is_fw_soft(self, row: Row, loss: str, flags: str) -> bool:
        return self.deviation(row, loss) == flags

    def fw_soft(self, loss: str) -> tuple[str, list[Scores]]:
        """(deviation flags, series per point) of FW soft: the preset as it is when it has a seed at every point,
        else the deviating group with the most such seeds."""
        groups = sorted({d for r in self.rows if (d := self.deviation(r, loss)) is not None} - {""})
        found = {flags: [series(self.rows, functools.partial(self.is_fw_soft, loss=loss, flags=flags), k)
                         for k in self.points] for flags in ["", *groups]}
        complete = [flags for flags in found if complete_seeds(found[flags])]
        flags = "" if not complete or "" in complete else max(complete, key=lambda f: len(complete_seeds(found[f])))
        return flags, found[flags]

    def best(self, method: str, seeds: set[str]) -> tuple[str, list[Scores]]:
        """The variant (overrides) of ``method`` complete on the most of ``seeds``, then with the highest mean
        there, and its series ('' and empty series when none shares a seed)."""
        best: tuple[tuple[int, float], str, list[Scores]] = ((0, 0.0), "", [{} for _ in self.points])
        for over in dict.fromkeys(r.get("overrides", "") for r in self.rows if r["method"] == method):
            found = [series(self.rows, functools.partial(_is_variant, method=method, overrides=over), k)
                     for k in self.points]
            shared = sorted(complete_seeds(found) & seeds)
            rank = (len(shared), mean_over(found[-1], shared) if shared else 0.0)
            if shared and rank > best[0]:
                best = (rank, over, found)
        return best[1], best[2]


def common_seeds(*found: Scores) -> list[str]:
    return sorted(complete_seeds(list(found)), key=int)


def _missing(context: _Context, named: dict[str, list[Scores]]) -> tuple[str, str, str]:
    """'not run', naming each series without a row at some point, else the lack of a common seed."""
    gaps = [f"{name} at {', '.join(str(k) for k, s in zip(context.points, found) if not s)}"
            for name, found in named.items() if not all(found)]
    what = f"no rows of {'; '.join(gaps)}" if gaps else f"no seed common to {', '.join(named)} at every point"
    return "", "not run", f"{what} (extra checkpoints) in {context.csv}"


Verdict = tuple[str, str, str]  # (ours, verdict, why)


def _flat(context: _Context, fw: list[Scores], note: str) -> Verdict:
    c = context.claim.criterion
    configured = functools.partial(_is_configured, method=c.reference)
    reference = [series(context.rows, configured, k) for k in (context.points[0], context.points[-1])]
    seeds = common_seeds(*fw, *reference)
    if not seeds:
        return _missing(context, {"FW soft": fw, c.reference: reference})
    drop = mean_over(fw[0], seeds) - mean_over(fw[-1], seeds)
    ref_drop = mean_over(reference[0], seeds) - mean_over(reference[-1], seeds)
    ours = (f"FW soft {mean_std(fw[0], seeds)} → {mean_std(fw[-1], seeds)} ({-drop:+.1f}); {c.reference} "
            f"{mean_std(reference[0], seeds)} → {mean_std(reference[-1], seeds)} ({-ref_drop:+.1f}); "
            f"n = {len(seeds)}{note}")
    verdict = "yes" if drop <= c.max_drop and ref_drop >= c.min_reference_drop else "no"
    return ours, verdict, (f"FW soft loses {judged(drop, signed=False)} (criterion ≤ {c.max_drop:g}) while "
                           f"{c.reference} loses {judged(ref_drop, signed=False)} "
                           f"(criterion ≥ {c.min_reference_drop:g})")


def _rise(context: _Context, fw: list[Scores], note: str) -> Verdict:
    c = context.claim.criterion
    seeds = common_seeds(*fw)
    if not seeds:
        return _missing(context, {"FW soft": fw})
    first, last = mean_over(fw[0], seeds), mean_over(fw[-1], seeds)
    if first <= 0:
        return "", "no", f"FW soft's first mean is {first:.1f}: no relative change to judge"
    relative = last / first - 1
    ours = f"FW soft {mean_std(fw[0], seeds)} → {mean_std(fw[-1], seeds)} ({relative:+.1%}); n = {len(seeds)}{note}"
    return ours, "yes" if relative >= c.min_relative else "no", (f"relative change {relative:+.2%} "
                                                                  f"(criterion ≥ {c.min_relative:+.0%})")


def _beats(context: _Context, fw: list[Scores], note: str) -> Verdict:
    c = context.claim.criterion
    fw_seeds = complete_seeds(fw)
    if not fw_seeds:  # the comparators are chosen on FW soft's seeds
        return _missing(context, {"FW soft": fw})
    variant, ada = context.best(c.reference, fw_seeds)
    free = {m: context.best(m, fw_seeds)[1] for m in c.data_free}
    seeds = common_seeds(*fw, *ada, *(s[0] for s in free.values()))
    if not seeds:
        return _missing(context, {"FW soft": fw, c.reference: ada, **free})
    score, reference = mean_over(fw[0], seeds), mean_over(ada[0], seeds)
    best_free = max(free, key=lambda m: mean_over(free[m][0], seeds))
    margin = score - mean_over(free[best_free][0], seeds)
    ratio = score / reference if reference > 0 else math.inf
    ours = (f"FW soft {mean_std(fw[0], seeds)}; {c.reference}{' ' + variant if variant else ''} "
            f"{mean_std(ada[0], seeds)} (×{ratio:.3f}); best data-free {best_free} "
            f"{mean_std(free[best_free][0], seeds)}; n = {len(seeds)}{note}")
    verdict = "yes" if ratio >= c.min_ratio and margin > 0 else "no"
    return ours, verdict, (f"FW soft / {c.reference} = {ratio:.3f} (criterion ≥ {c.min_ratio:g}); "
                           f"FW soft − {best_free} = {judged(margin)} (criterion > 0)")


def compared(context: _Context) -> tuple[str, list[str]]:
    """The claim's other methods, each as its best variant (complete on the most seeds, then the highest mean
    at the last point; ``_Context.best``) from the first point to the last; and the commands of those variants."""
    seeds = {r["pool_seed"] for r in context.rows}
    cells, plain, commands = [], [], []
    for method in context.claim.shown():
        variant, found = context.best(method, seeds)
        shared = common_seeds(*found)
        if not shared:
            plain.append(method)
            continue
        name = f"{method} {as_flags(variant)}".strip()
        cells.append(f"{name} {' → '.join(mean_std(s, shared) for s in found)} (n = {len(shared)})")
        if variant:
            commands.append(context.command([method], as_flags(variant)))
        else:
            plain.append(method)
    if plain:
        commands.insert(0, context.command(plain))
    return "; ".join(cells), commands


def judge(context: _Context, loss: str) -> Judgement:
    """The claim's verdict for FW soft with inner loss ``loss``, and the commands that make its rows."""
    claim, c = context.claim, context.claim.criterion
    flags, fw = context.fw_soft(loss)
    loss_flag = "" if loss == context.preset.get("inner_loss") else f"--inner-loss {loss}"
    commands = [context.command([FW_SOFT], " ".join(f for f in (f"--preset {claim.preset}", loss_flag, flags) if f))]
    if c.reference:  # the methods it is compared with
        commands.append(context.command([c.reference, *c.data_free]))
    others, others_commands = compared(context)
    commands += [command for command in others_commands if command not in commands]
    note = f" (deviates from the preset: {flags}; the paper's setting is the command without them)" if flags else ""
    if context.flags:
        note += f"; every row with {as_flags(context.flags)} (the protocol on this pool)"
    ours, verdict, why = {"flat": _flat, "rise": _rise, "beats": _beats}[c.kind](context, fw, note)
    keep = functools.partial(context.is_fw_soft, loss=loss, flags=flags)
    cost = "; ".join(f"{k}: {statistics.fmean(seconds.values()):.0f} s, {statistics.fmean(rss.values()):.2f} GB"
                     for k in context.points if (seconds := series(context.rows, keep, k, "seconds"))
                     and (rss := series(context.rows, keep, k, "peak_rss_gb")))
    return Judgement(claim, loss, ours, verdict, why, commands, cost, others, flags)


def _paper(claim: Claim) -> str:
    """Each method's first and last paper number (at the first and last of ``paper.extra``)."""
    ends = [0, len(claim.paper.extra) - 1] if len(claim.paper.extra) > 1 else [0]
    def numbers(values: list[float | None]) -> str:
        return " → ".join("—" if values[i] is None else f"{values[i]:g}" for i in ends)
    at = " → ".join(str(claim.paper.extra[i]) for i in ends)
    return f"{'; '.join(f'{m} {numbers(v)}' for m, v in claim.paper.scores.items())} (extra {at})"


def claims_markdown(judgements: list[Judgement]) -> str:
    """The claims table: claim | paper | paper's settings | ours | reproduced? | why | cost | commands."""
    lines = [{"claim": f"{j.claim.name} ({j.inner_loss}): {j.claim.statement}", "paper (accuracy %)": _paper(j.claim),
              "paper's method and settings": " ".join(j.claim.settings.split()),
              "ours (normalised %, mean ± std)": j.ours or "—", "reproduced?": j.verdict, "criterion": j.why,
              "other methods, ours (best variant, first → last point)": j.compared or "—",
              "FW soft cost (extra: time, peak RSS)": j.cost or "—",
              "commands": "<br>".join(f"`{c}`" for c in j.commands)} for j in judgements]
    return markdown_table(lines, list(lines[0]))


def _curve(context: _Context, extras: list[int], keep: Callable[[Row], bool]) -> dict[int, float]:
    """Mean of the kept rows' scores at each number of extra checkpoints, over the seeds the claim's points all
    have (those the table compares; every seed when none is complete), where those seeds have a row."""
    found = {k: series(context.rows, keep, k) for k in extras}
    seeds = complete_seeds([found.get(k) or series(context.rows, keep, k) for k in context.points]) or {
        seed for scores in found.values() for seed in scores}
    return {k: statistics.fmean(scores[s] for s in seeds) for k, scores in found.items()
            if seeds and seeds <= set(scores)}


def plot_claim(context: _Context, judgements: list[Judgement], out: Path) -> Path:
    """Ours (normalised, mean over seeds, at every number of extra checkpoints from the claim's first point to
    its last: FW soft's judged rows and each compared method's best variant) beside the paper's numbers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    claim, rows = context.claim, context.rows
    figure, (ours, paper) = plt.subplots(1, 2, figsize=(10, 4))
    extras = sorted({int(r["extra"]) for r in rows if r.get("extra", "") != ""
                     and context.points[0] <= int(r["extra"]) <= context.points[-1]})
    colour = {m: f"C{i}" for i, m in enumerate(dict.fromkeys([FW_SOFT, *claim.paper.scores, *claim.shown()]))}
    for judgement, style in zip(judgements, ("-", ":")):
        keep = functools.partial(context.is_fw_soft, loss=judgement.inner_loss, flags=judgement.flags)
        curve = _curve(context, extras, keep)
        if curve:
            ours.plot(list(curve), list(curve.values()), marker="o", linestyle=style, color=colour[FW_SOFT],
                      label=f"{FW_SOFT} ({judgement.inner_loss}{', ' + judgement.flags if judgement.flags else ''})")
    seeds = {r["pool_seed"] for r in rows}
    for method in claim.shown():
        variant, _ = context.best(method, seeds)
        curve = _curve(context, extras, functools.partial(_is_variant, method=method, overrides=variant))
        if curve:
            ours.plot(list(curve), list(curve.values()), marker="s", color=colour[method],
                      label=f"{method} {as_flags(variant)}".strip())
    for method, values in claim.paper.scores.items():
        known = [(k, v) for k, v in zip(claim.paper.extra, values) if v is not None]
        paper.plot(*zip(*known), marker="o" if method == FW_SOFT else "s", color=colour[method], label=method)
    for axis, title, y in ((ours, "ours", "normalised score (%)"), (paper, "paper (CLIP ViT-B/32)", "accuracy (%)")):
        axis.set_title(f"{claim.name}: {title}")
        axis.set_xlabel(f"extra checkpoints ({claim.protocol})")
        axis.set_ylabel(y)
        axis.grid(alpha=0.3)
        if axis.lines:
            axis.legend(fontsize="small")
    return save_figure(figure, out)


def setup(pool: PoolConfig, pool_path: str, targets: list[str], experiment: str | None = None) -> str:
    """The shell line every command of the table follows: the domain's runners, the pool, targets and seeds (and
    the experiment, where its rows are not under the pool's name)."""
    named = f" EXPERIMENT={experiment}" if experiment not in (None, pool.name) else ""
    return (f"source scripts/{pool.domain.name}.sh; export POOL={pool_path} TARGETS=\"{' '.join(targets)}\" "
            f"POOL_SEEDS=\"{' '.join(map(str, pool.finetune.seeds))}\"{named}")


def pool_title(pool: PoolConfig, experiment: str) -> str:
    """A table's name for its rows: the pool's, and the experiment's where its rows are under another name."""
    return pool.name if experiment == pool.name else f"{pool.name} (experiment {experiment})"


def write_claims(pool: PoolConfig, pool_path: str, targets: list[str], outs: Path = Path("outs"),
                 claims: list[Claim] | None = None, experiment: str | None = None) -> str:
    """Judge every claim (default: configs/claims.yaml) once per inner loss on the scaling rows of ``experiment``
    (default: the pool's name) under ``outs``; write outs/<experiment>_claims.md and one plot per claim beside it
    (outs/<experiment>_claims_<claim>.png); the table."""
    judgements, experiment = [], experiment or pool.name
    for claim in load_claims() if claims is None else claims:
        context = _Context(claim, pool, targets, outs, experiment)
        mine = [judge(context, loss) for loss in INNER_LOSSES]
        plot_claim(context, mine, outs / f"{experiment}_claims_{claim.name}.png")
        judgements += mine
    table = claims_markdown(judgements)
    text = (f"Rebuilt by `run_claims` (configs/claims.yaml) from the rows under {outs}/. Every command runs after "
            f"`{setup(pool, pool_path, targets, experiment)}`.\n\n{table}")
    atomic_write_text(outs / f"{experiment}_claims.md",
                      f"# The FW-Merging paper's claims on pool {pool_title(pool, experiment)}\n\n{text}")
    return text
