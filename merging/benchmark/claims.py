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
Means are over the fine-tuning seeds every compared series has (latest row per seed); the table prints the
command that makes each missing or present row."""
from __future__ import annotations

import functools
import json
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from merging.atomic import atomic_write_text
from merging.config import describe_errors, read_mapping
from merging.errors import MergeError
from merging.results import markdown_table, read_rows

from .experiment import CONFIGS
from .pool import PoolConfig

CLAIMS_FILE = CONFIGS / "claims.yaml"
FW_SOFT = "frank_wolfe_soft"
INNER_LOSSES = ("cross_entropy", "entropy")  # the presets' own first
RUNNERS = {"irrelevance": "run_irrelevance", "relevance": "run_relevance", "relevance_tasks": "run_relevance_tasks"}
Scores = dict[str, float]  # pool seed -> normalised score


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


class ClaimsFile(_Strict):
    claims: list[Claim]


def load_claims(path: Path = CLAIMS_FILE) -> list[Claim]:
    try:
        return ClaimsFile.model_validate(read_mapping(path, "claims file")).claims
    except ValidationError as err:
        raise MergeError(f"{path}: {describe_errors(err, 'key')}") from None


@dataclass
class Judgement:
    claim: Claim
    inner_loss: str
    ours: str       # the numbers, mean ± std over n seeds
    verdict: str    # "yes", "no" or "not run"
    why: str
    commands: list[str]
    cost: str       # FW soft's seconds and peak RSS per point (mean over its seeds)


def _overrides(row: dict[str, str]) -> dict[str, object]:
    return json.loads(row["overrides"]) if row.get("overrides") else {}


def series(rows: list[dict[str, str]], keep: Callable[[dict[str, str]], bool], extra: int,
           column: str = "normalized") -> Scores:
    """``column`` (the normalised score) by pool seed of the latest kept row at ``extra`` extra checkpoints."""
    out: Scores = {}
    for row in rows:
        if keep(row) and row.get("extra", "") != "" and int(row["extra"]) == extra:
            out[row["pool_seed"]] = float(row[column]) if row.get(column, "") != "" else math.nan
    return out


def _mean(scores: Scores, seeds: list[str]) -> float:
    return statistics.fmean(scores[s] for s in seeds)


def _shown(scores: Scores, seeds: list[str]) -> str:
    values = [scores[s] for s in seeds]
    mean = statistics.fmean(values)
    return f"{mean:.1f}" if len(values) < 2 else f"{mean:.1f} ± {statistics.stdev(values):.1f}"


def _deviation(row: dict[str, str], claim: Claim, loss: str) -> str | None:
    """None unless ``row`` is FW soft with the claim's preset and inner loss; else its other overrides ('' for
    none), as command-line flags."""
    over = _overrides(row)
    if (row["method"] != FW_SOFT or over.get("preset") != claim.preset
            or over.get("inner_loss", INNER_LOSSES[0]) != loss):
        return None
    return " ".join(f"--{k.replace('_', '-')} {v}" for k, v in sorted(over.items())
                    if k not in ("preset", "inner_loss"))


def _best(rows: list[dict[str, str]], method: str, points: list[int]) -> tuple[str, list[Scores]]:
    """The variant (overrides) of ``method`` with the highest mean at the points, and its series."""
    variants = dict.fromkeys(r.get("overrides", "") for r in rows if r["method"] == method)
    best: tuple[float, str, list[Scores]] | None = None
    for over in variants:
        keep = functools.partial(_is_variant, method=method, overrides=over)
        found = [series(rows, keep, k) for k in points]
        seeds = set.intersection(*(set(s) for s in found))
        if seeds and (best is None or statistics.fmean(found[-1][s] for s in seeds) > best[0]):
            best = (statistics.fmean(found[-1][s] for s in seeds), over, found)
    return (best[1], best[2]) if best else ("", [{} for _ in points])


class _Context:
    """What judging one claim needs: its rows, points and the commands that make them."""

    def __init__(self, claim: Claim, pool: PoolConfig, pool_path: str, targets: list[str], outs: Path) -> None:
        others = len(pool.tasks) - len(targets)
        self.claim = claim
        self.points = [others if k == "all" else int(k) for k in claim.extra]
        self.csv = outs / f"{pool.name}_{claim.protocol}" / "results.csv"
        self.rows = read_rows(self.csv)

    def command(self, methods: list[str], flags: str = "") -> str:
        """The runner call that makes the rows at the claim's points (after ``setup``)."""
        return (f"SIZES=\"{' '.join(map(str, self.points))}\" METHODS=\"{' '.join(methods)}\" "
                f"{RUNNERS[self.claim.protocol]}{' ' + flags if flags else ''}")

    def fw_soft(self, loss: str) -> tuple[str, list[Scores]]:
        """(deviation flags, series per point) of FW soft: the first complete deviation group, '' preferred."""
        groups = dict.fromkeys(sorted({d for r in self.rows if (d := _deviation(r, self.claim, loss)) is not None}))
        first: tuple[str, list[Scores]] | None = None
        for flags in ["", *groups]:
            keep = functools.partial(_deviation_is, claim=self.claim, loss=loss, flags=flags)
            found = [series(self.rows, keep, k) for k in self.points]
            if set.intersection(*(set(s) for s in found)):
                return flags, found
            first = first or (flags, found)
        return first


def _seeds(*found: Scores) -> list[str]:
    return sorted(set.intersection(*(set(s) for s in found)), key=int)


def _missing(context: _Context, what: str) -> tuple[str, str, str]:
    points = ", ".join(map(str, context.points))
    return "", "not run", f"no {what} rows at {points} extra checkpoints (same seeds) in {context.csv}"


Verdict = tuple[str, str, str]  # (ours, verdict, why)


def _flat(context: _Context, fw: list[Scores], cut: str) -> Verdict:
    c = context.claim.criterion
    configured = functools.partial(_is_configured, method=c.reference)
    reference = [series(context.rows, configured, k) for k in (context.points[0], context.points[-1])]
    seeds = _seeds(*fw, *reference)
    if not seeds:
        return _missing(context, f"FW soft and {c.reference}")
    drop = _mean(fw[0], seeds) - _mean(fw[-1], seeds)
    ref_drop = _mean(reference[0], seeds) - _mean(reference[-1], seeds)
    ours = (f"FW soft {_shown(fw[0], seeds)} → {_shown(fw[-1], seeds)} ({-drop:+.1f}); {c.reference} "
            f"{_shown(reference[0], seeds)} → {_shown(reference[-1], seeds)} ({-ref_drop:+.1f}); "
            f"n = {len(seeds)}{cut}")
    verdict = "yes" if drop <= c.max_drop and ref_drop >= c.min_reference_drop else "no"
    return ours, verdict, (f"FW soft loses {drop:.1f} (criterion ≤ {c.max_drop:g}) while {c.reference} loses "
                           f"{ref_drop:.1f} (criterion ≥ {c.min_reference_drop:g})")


def _rise(context: _Context, fw: list[Scores], cut: str) -> Verdict:
    c = context.claim.criterion
    seeds = _seeds(*fw)
    if not seeds:
        return _missing(context, "FW soft")
    relative = _mean(fw[-1], seeds) / _mean(fw[0], seeds) - 1
    ours = f"FW soft {_shown(fw[0], seeds)} → {_shown(fw[-1], seeds)} ({relative:+.1%}); n = {len(seeds)}{cut}"
    return ours, "yes" if relative >= c.min_relative else "no", (f"relative change {relative:+.1%} "
                                                                  f"(criterion ≥ {c.min_relative:+.0%})")


def _beats(context: _Context, fw: list[Scores], cut: str) -> Verdict:
    c = context.claim.criterion
    ada_variant, ada = _best(context.rows, c.reference, context.points)
    free = {m: scores for m in c.data_free if (scores := _best(context.rows, m, context.points)[1])[0]}
    seeds = _seeds(*fw, *ada, *(s[0] for s in free.values()))
    if not seeds or not free:
        return _missing(context, f"FW soft, {c.reference} and data-free")
    score, reference = _mean(fw[0], seeds), _mean(ada[0], seeds)
    best_free = max(free, key=lambda m: _mean(free[m][0], seeds))
    margin = score - _mean(free[best_free][0], seeds)
    ours = (f"FW soft {_shown(fw[0], seeds)}; {c.reference}{' ' + ada_variant if ada_variant else ''} "
            f"{_shown(ada[0], seeds)} (×{score / reference:.3f}); best data-free {best_free} "
            f"{_shown(free[best_free][0], seeds)}; n = {len(seeds)}{cut}")
    verdict = "yes" if score >= c.min_ratio * reference and margin > 0 else "no"
    return ours, verdict, (f"FW soft / {c.reference} = {score / reference:.3f} (criterion ≥ {c.min_ratio:g}); "
                           f"FW soft − {best_free} = {margin:+.1f} (criterion > 0)")


def judge(context: _Context, loss: str) -> Judgement:
    """The claim's verdict for FW soft with inner loss ``loss``, and the commands that make its rows."""
    claim, c = context.claim, context.claim.criterion
    flags, fw = context.fw_soft(loss)
    loss_flag = "" if loss == INNER_LOSSES[0] else f"--inner-loss {loss}"
    commands = [context.command([FW_SOFT], " ".join(f for f in (f"--preset {claim.preset}", loss_flag, flags) if f))]
    if c.reference:  # the methods it is compared with
        commands.append(context.command([c.reference, *c.data_free]))
    cut = f" (cut to fit 2 cores: {flags}; the paper's setting is the command without them)" if flags else ""
    ours, verdict, why = {"flat": _flat, "rise": _rise, "beats": _beats}[c.kind](context, fw, cut)
    keep = functools.partial(_deviation_is, claim=claim, loss=loss, flags=flags)
    cost = "; ".join(f"{k}: {statistics.fmean(seconds.values()):.0f} s, "
                     f"{statistics.fmean(series(context.rows, keep, k, 'peak_rss_gb').values()):.2f} GB"
                     for k in context.points if (seconds := series(context.rows, keep, k, "seconds")))
    return Judgement(claim, loss, ours, verdict, why, commands, cost)


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
              "FW soft cost (extra: time, peak RSS)": j.cost or "—",
              "commands": "<br>".join(f"`{c}`" for c in j.commands)} for j in judgements]
    return markdown_table(lines, list(lines[0]))


def _deviation_is(row: dict[str, str], claim: Claim, loss: str, flags: str) -> bool:
    return _deviation(row, claim, loss) == flags


def _is_fw_soft(row: dict[str, str], claim: Claim, loss: str) -> bool:
    return _deviation(row, claim, loss) is not None


def _is_variant(row: dict[str, str], method: str, overrides: str) -> bool:
    return row["method"] == method and row.get("overrides", "") == overrides


def _is_configured(row: dict[str, str], method: str) -> bool:
    """A row of ``method`` as its config runs it (no command-line overrides)."""
    return row["method"] == method and not row.get("overrides")


def _curve(rows: list[dict[str, str]], extras: list[int], keep: Callable[[dict[str, str]], bool]) -> dict[int, float]:
    """Mean over seeds of the kept rows' scores at each number of extra checkpoints that has any."""
    return {k: statistics.fmean(found.values()) for k in extras if (found := series(rows, keep, k))}


def plot_claim(context: _Context, out: Path) -> Path:
    """Ours (normalised, mean over seeds, at every number of extra checkpoints from the claim's first point to
    its last) beside the paper's numbers (accuracy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    claim, rows = context.claim, context.rows
    figure, (ours, paper) = plt.subplots(1, 2, figsize=(10, 4))
    extras = sorted({int(r["extra"]) for r in rows if r.get("extra", "") != ""
                     and context.points[0] <= int(r["extra"]) <= context.points[-1]})
    colour = {m: f"C{i}" for i, m in enumerate(dict.fromkeys([FW_SOFT, *claim.paper.scores]))}
    for loss, style in zip(INNER_LOSSES, ("-", ":")):
        curve = _curve(rows, extras, functools.partial(_is_fw_soft, claim=claim, loss=loss))
        if curve:
            ours.plot(list(curve), list(curve.values()), marker="o", linestyle=style, color=colour[FW_SOFT],
                      label=f"{FW_SOFT} ({loss})")
    for method in [m for m in claim.paper.scores if m != FW_SOFT]:
        curve = _curve(rows, extras, functools.partial(_is_configured, method=method))
        if curve:
            ours.plot(list(curve), list(curve.values()), marker="s", color=colour[method], label=method)
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
    figure.tight_layout()
    tmp = out.with_name(f".{out.name}.tmp.png")
    figure.savefig(tmp, dpi=120)
    plt.close(figure)
    tmp.replace(out)
    return out


def setup(pool: PoolConfig, pool_path: str, targets: list[str]) -> str:
    """The shell line every command of the table follows: the domain's runners, the pool, targets and seeds."""
    return (f"source scripts/{pool.domain.name}.sh; export POOL={pool_path} TARGETS=\"{' '.join(targets)}\" "
            f"POOL_SEEDS=\"{' '.join(map(str, pool.finetune.seeds))}\"")


def write_claims(pool: PoolConfig, pool_path: str, targets: list[str], outs: Path = Path("outs"),
                 claims: list[Claim] | None = None) -> str:
    """Judge every claim (default: configs/claims.yaml) once per inner loss on the rows under ``outs``; write
    outs/<pool>_claims.md and one plot per claim beside it (outs/<pool>_claims_<claim>.png); the table."""
    judgements = []
    for claim in claims or load_claims():
        context = _Context(claim, pool, pool_path, targets, outs)
        judgements += [judge(context, loss) for loss in INNER_LOSSES]
        plot_claim(context, outs / f"{pool.name}_claims_{claim.name}.png")
    table = claims_markdown(judgements)
    text = (f"Rebuilt by `run_claims` (configs/claims.yaml) from the rows under {outs}/. Every command runs after "
            f"`{setup(pool, pool_path, targets)}`.\n\n{table}")
    atomic_write_text(outs / f"{pool.name}_claims.md", f"# The FW-Merging paper's claims on pool {pool.name}\n\n{text}")
    return text
