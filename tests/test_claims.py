"""The paper-claims table (merging/benchmark/claims.py): each verdict follows its criterion on the rows, a
missing row is 'not run', a cut-down run is named, and the table gives the command for every row."""
from __future__ import annotations

import functools
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from merging.benchmark.claims import Claim, load_claims, write_claims
from merging.benchmark.results import append_row
from merging.errors import MergeError

POOL = SimpleNamespace(name="toy", tasks=["a", "b", "c", "d", "e", "f"], domain=SimpleNamespace(name="discriminative"),
                       finetune=SimpleNamespace(seeds=[0, 1, 2]))
TARGETS = ["a", "b"]  # 4 other tasks: "all" = 4 extra checkpoints


def _claim(kind: str, **criterion) -> Claim:
    protocol, preset, extra = {"flat": ("irrelevance", "irrelevance", [0, 16]),
                               "rise": ("relevance_tasks", "relevance", [0, "all"]),
                               "beats": ("irrelevance", "main", ["all"])}[kind]
    return Claim(name=kind, statement="s", protocol=protocol, preset=preset, extra=extra, settings="x",
                 paper={"extra": [0], "scores": {"frank_wolfe_soft": [1.0]}},
                 criterion={"kind": kind, **criterion})


def _row(outs: Path, protocol: str, method: str, extra: int, score: float, seed: int = 0, targets: str = "a b",
         **overrides) -> None:
    append_row(outs / f"toy_{protocol}" / "results.csv",
               {"method": method, "normalized": score, "overrides": json.dumps(overrides) if overrides else "",
                "extra": extra, "pool_seed": seed, "targets": targets, "seconds": 100.0 + 2 * seed + extra,
                "peak_rss_gb": 2.0})


def _verdicts(outs: Path, claim: Claim) -> dict[str, tuple[str, str]]:
    """(ours, verdict) by inner loss."""
    return {loss: cells[:2] for loss, cells in _cells(outs, claim).items()}


def _cells(outs: Path, claim: Claim) -> dict[str, list[str]]:
    """The table's cells from "ours" on, by inner loss."""
    table = write_claims(POOL, "toy.yaml", TARGETS, outs, [claim])
    lines = [line.split(" | ") for line in table.splitlines() if line.startswith(f"| {claim.name} (")]
    return {line[0].split("(")[1].split(")")[0]: line[3:] for line in lines}


FLAT = {"max_drop": 2, "reference": "task_arithmetic", "min_reference_drop": 10}


def test_flat_holds_when_fw_soft_stays_within_two_points_and_the_reference_collapses(tmp_path):
    for seed, (start, end) in enumerate([(80.0, 79.0), (82.0, 80.5)]):
        _row(tmp_path, "irrelevance", "frank_wolfe_soft", 0, start, seed, preset="irrelevance")
        _row(tmp_path, "irrelevance", "frank_wolfe_soft", 16, end, seed, preset="irrelevance")
        _row(tmp_path, "irrelevance", "task_arithmetic", 0, 75.0, seed)
        _row(tmp_path, "irrelevance", "task_arithmetic", 16, 60.0, seed)
    ours, verdict, _, compared, cost = _cells(tmp_path, _claim("flat", **FLAT))["cross_entropy"][:5]
    assert verdict == "yes"
    assert "81.0 ± 1.4 → 79.8 ± 1.1 (-1.2)" in ours and "n = 2" in ours
    assert cost == "0: 101 s, 2.00 GB; 16: 117 s, 2.00 GB"  # FW soft's rows, mean over seeds 0 and 1
    assert compared == "—"  # the claim compares no other method (the paper's scores list FW soft only)


@pytest.mark.parametrize("fw_end, ta_end", [(77.0, 60.0), (80.0, 70.0)])  # FW soft drops 3; TA drops only 5
def test_flat_fails_when_either_half_of_the_criterion_fails(tmp_path, fw_end, ta_end):
    _row(tmp_path, "irrelevance", "frank_wolfe_soft", 0, 80.0, preset="irrelevance")
    _row(tmp_path, "irrelevance", "frank_wolfe_soft", 16, fw_end, preset="irrelevance")
    _row(tmp_path, "irrelevance", "task_arithmetic", 0, 75.0)
    _row(tmp_path, "irrelevance", "task_arithmetic", 16, ta_end)
    assert _verdicts(tmp_path, _claim("flat", **FLAT))["cross_entropy"][1] == "no"


@pytest.mark.parametrize("fw_end, expected, reads", [
    (87.32, "no", "FW soft loses 2.01 (criterion ≤ 2)"),  # just past the bound: fails and reads past it
    (90.83, "yes", "FW soft loses -1.50 (criterion ≤ 2)"),  # a rise keeps its sign
])
def test_the_flat_verdict_reads_the_drop_signed_to_two_decimals(tmp_path, fw_end, expected, reads):
    _row(tmp_path, "irrelevance", "frank_wolfe_soft", 0, 89.33, preset="irrelevance")
    _row(tmp_path, "irrelevance", "frank_wolfe_soft", 16, fw_end, preset="irrelevance")
    _row(tmp_path, "irrelevance", "task_arithmetic", 0, 90.0)
    _row(tmp_path, "irrelevance", "task_arithmetic", 16, 51.0)
    _, verdict, why = _cells(tmp_path, _claim("flat", **FLAT))["cross_entropy"][:3]
    assert verdict == expected and reads in why


def test_a_margin_just_above_zero_reads_above_it(tmp_path):
    _row(tmp_path, "irrelevance", "frank_wolfe_soft", 4, 80.04, preset="main")
    _row(tmp_path, "irrelevance", "adamerging", 4, 70.0)
    _row(tmp_path, "irrelevance", "ties", 4, 80.0)
    claim = _claim("beats", min_ratio=1.05, reference="adamerging", data_free=["ties"])
    _, verdict, why = _cells(tmp_path, claim)["cross_entropy"][:3]
    assert verdict == "yes" and "FW soft − ties = +0.04 (criterion > 0)" in why


def test_a_rise_just_under_the_bound_fails_and_reads_under_it(tmp_path):
    _row(tmp_path, "relevance_tasks", "frank_wolfe_soft", 0, 50.0, preset="relevance")
    _row(tmp_path, "relevance_tasks", "frank_wolfe_soft", 4, 54.98, preset="relevance")  # +9.96 %
    _, verdict, why = _cells(tmp_path, _claim("rise", min_relative=0.1))["cross_entropy"][:3]
    assert verdict == "no" and "relative change +9.96%" in why


def test_each_inner_loss_is_judged_on_its_own_rows_and_a_missing_point_is_not_run(tmp_path):
    _row(tmp_path, "irrelevance", "frank_wolfe_soft", 0, 80.0, preset="irrelevance", inner_loss="entropy")
    _row(tmp_path, "irrelevance", "frank_wolfe_soft", 16, 79.5, preset="irrelevance", inner_loss="entropy")
    _row(tmp_path, "irrelevance", "frank_wolfe_soft", 0, 80.0, preset="irrelevance")  # no k = 16 row
    _row(tmp_path, "irrelevance", "task_arithmetic", 0, 75.0)
    _row(tmp_path, "irrelevance", "task_arithmetic", 16, 50.0)
    verdicts = _verdicts(tmp_path, _claim("flat", **FLAT))
    assert verdicts["entropy"][1] == "yes" and verdicts["cross_entropy"][1] == "not run"


def test_scores_are_compared_on_the_seeds_every_series_has_and_a_rerun_replaces_its_row(tmp_path):
    _row(tmp_path, "irrelevance", "frank_wolfe_soft", 0, 80.0, 0, preset="irrelevance")
    _row(tmp_path, "irrelevance", "frank_wolfe_soft", 16, 60.0, 0, preset="irrelevance")
    _row(tmp_path, "irrelevance", "frank_wolfe_soft", 16, 79.0, 0, preset="irrelevance")  # rerun: latest wins
    _row(tmp_path, "irrelevance", "frank_wolfe_soft", 0, 99.0, 1, preset="irrelevance")  # seed 1 lacks k = 16
    for seed in (0, 1):
        _row(tmp_path, "irrelevance", "task_arithmetic", 0, 75.0, seed)
        _row(tmp_path, "irrelevance", "task_arithmetic", 16, 50.0, seed)
    ours, verdict = _verdicts(tmp_path, _claim("flat", **FLAT))["cross_entropy"]
    assert verdict == "yes" and "80.0 → 79.0" in ours and "n = 1" in ours


def test_rise_is_relative_from_the_first_point_to_every_other_task(tmp_path):
    _row(tmp_path, "relevance_tasks", "frank_wolfe_soft", 0, 50.0, preset="relevance")
    _row(tmp_path, "relevance_tasks", "frank_wolfe_soft", 4, 54.0, preset="relevance")  # +8 %
    _row(tmp_path, "relevance_tasks", "frank_wolfe_soft", 0, 50.0, preset="relevance", inner_loss="entropy")
    _row(tmp_path, "relevance_tasks", "frank_wolfe_soft", 4, 55.0, preset="relevance", inner_loss="entropy")
    verdicts = _verdicts(tmp_path, _claim("rise", min_relative=0.10))
    assert verdicts["cross_entropy"][1] == "no" and "+8.0%" in verdicts["cross_entropy"][0]
    assert verdicts["entropy"][1] == "yes"


@pytest.mark.parametrize("fw, verdict", [(73.0, "no"),   # 73 / 70 = 1.043 < 1.05
                                         (74.0, "yes"),
                                         (74.5, "no")])  # ≥ 1.05 × AdaMerging but below the TIES variant at 75
def test_beats_needs_the_ratio_over_the_best_adamerging_and_the_best_data_free_merge(tmp_path, fw, verdict):
    _row(tmp_path, "irrelevance", "frank_wolfe_soft", 4, fw, preset="main")
    _row(tmp_path, "irrelevance", "adamerging", 4, 65.0)
    _row(tmp_path, "irrelevance", "adamerging", 4, 70.0, granularity="layer")  # the best AdaMerging counts
    _row(tmp_path, "irrelevance", "task_arithmetic", 4, 60.0)
    _row(tmp_path, "irrelevance", "ties", 4, 73.5)
    if verdict == "no" and fw > 74:
        _row(tmp_path, "irrelevance", "ties", 4, 75.0, density=0.5)
    claim = _claim("beats", min_ratio=1.05, reference="adamerging", data_free=["task_arithmetic", "ties"])
    assert _verdicts(tmp_path, claim)["cross_entropy"][1] == verdict


def test_a_cut_down_run_is_named_and_a_full_run_is_preferred(tmp_path):
    _row(tmp_path, "irrelevance", "frank_wolfe_soft", 4, 70.0, preset="main", ada_steps=100)
    _row(tmp_path, "irrelevance", "adamerging", 4, 60.0)
    _row(tmp_path, "irrelevance", "ties", 4, 50.0)
    claim = _claim("beats", min_ratio=1.05, reference="adamerging", data_free=["ties"])
    ours, verdict = _verdicts(tmp_path, claim)["cross_entropy"]
    assert verdict == "yes" and "deviates from the preset: --ada-steps 100" in ours
    _row(tmp_path, "irrelevance", "frank_wolfe_soft", 4, 61.0, preset="main", granularity="model")  # the preset's
    ours, verdict = _verdicts(tmp_path, claim)["cross_entropy"]
    assert verdict == "no" and "61.0" in ours and "deviates" not in ours


def test_rows_of_other_presets_and_other_targets_are_not_counted(tmp_path):
    _row(tmp_path, "irrelevance", "frank_wolfe_soft", 0, 80.0, preset="irrelevance")
    _row(tmp_path, "irrelevance", "frank_wolfe_soft", 16, 50.0, preset="main")  # another claim's preset
    _row(tmp_path, "irrelevance", "frank_wolfe_soft", 16, 79.0, preset="irrelevance", targets="c d")
    _row(tmp_path, "irrelevance", "task_arithmetic", 0, 75.0)
    _row(tmp_path, "irrelevance", "task_arithmetic", 16, 50.0)
    ours, verdict, why = _cells(tmp_path, _claim("flat", **FLAT))["cross_entropy"][:3]
    assert verdict == "not run" and "FW soft at 16" in why
    _row(tmp_path, "irrelevance", "frank_wolfe_soft", 16, 79.5, preset="irrelevance")
    ours, verdict = _verdicts(tmp_path, _claim("flat", **FLAT))["cross_entropy"]
    assert verdict == "yes" and "80.0 → 79.5" in ours


def test_beats_is_not_judged_until_every_data_free_method_has_run(tmp_path):
    _row(tmp_path, "irrelevance", "frank_wolfe_soft", 4, 90.0, preset="main")
    _row(tmp_path, "irrelevance", "adamerging", 4, 60.0)
    _row(tmp_path, "irrelevance", "ties", 4, 50.0)
    claim = _claim("beats", min_ratio=1.05, reference="adamerging", data_free=["ties", "task_arithmetic"])
    _, verdict, why = _cells(tmp_path, claim)["cross_entropy"][:3]
    assert verdict == "not run" and "task_arithmetic at 4" in why and "ties" not in why
    assert _cells(tmp_path, claim)["entropy"][2].startswith("no rows of FW soft at 4 (")  # only what is missing


def test_the_table_prints_the_command_of_every_row_and_a_plot_per_claim(tmp_path):
    table = write_claims(POOL, "toy.yaml", TARGETS, tmp_path / "outs", [_claim("rise", min_relative=0.1),
                                                                         _claim("beats", min_ratio=1.05,
                                                                                reference="adamerging",
                                                                                data_free=["ties", "average"])])
    assert 'SIZES="0 4" METHODS="frank_wolfe_soft" run_relevance_tasks --preset relevance --inner-loss entropy' in table
    assert 'SIZES="4" METHODS="adamerging ties average" run_irrelevance' in table
    assert 'export POOL=toy.yaml TARGETS="a b" POOL_SEEDS="0 1 2"' in table
    outs = tmp_path / "outs"  # made when missing
    assert (outs / "toy_claims_rise.png").is_file() and (outs / "toy_claims.md").read_text().endswith(table)


def test_the_shipped_claims_file_is_valid_and_a_bad_one_names_the_key(tmp_path):
    assert [c.name for c in load_claims()] == ["irrelevance", "relevance", "main"]
    bad = tmp_path / "claims.yaml"
    bad.write_text("claims:\n  - name: x\n    statment: typo\n")
    with pytest.raises(MergeError, match="statment"):
        load_claims(bad)
    bad.write_text("claims: []\n")
    with pytest.raises(MergeError, match="claims"):
        load_claims(bad)


def test_compared_methods_show_their_best_variant_and_its_command(tmp_path):
    for seed in (0, 1):
        _row(tmp_path, "irrelevance", "frank_wolfe", 0, 70.0 + seed, seed)
        _row(tmp_path, "irrelevance", "frank_wolfe", 16, 40.0, seed)
        _row(tmp_path, "irrelevance", "frank_wolfe", 0, 72.0, seed, preset="vision_fork")
        _row(tmp_path, "irrelevance", "frank_wolfe", 16, 50.0 + seed, seed, preset="vision_fork")
    claim = _claim("flat", **FLAT).model_copy(update={"compared": ["frank_wolfe", "regmean"]})
    table = write_claims(POOL, "toy.yaml", TARGETS, tmp_path, [claim])
    assert "frank_wolfe --preset vision_fork 72.0 ± 0.0 → 50.5 ± 0.7 (n = 2)" in table  # higher at the last point
    assert "regmean" not in table.split("|")[-3]  # no rows: not in the cell
    assert 'SIZES="0 16" METHODS="frank_wolfe" run_irrelevance --preset vision_fork' in table
    assert 'METHODS="regmean" run_irrelevance' in table  # the command that makes the missing rows


def test_a_plotted_curve_averages_the_seeds_complete_at_the_claims_points(tmp_path):
    from merging.benchmark.claims import _Context, _curve, _is_variant

    _row(tmp_path, "irrelevance", "ties", 0, 80.0, 0)
    _row(tmp_path, "irrelevance", "ties", 16, 60.0, 0)
    _row(tmp_path, "irrelevance", "ties", 0, 90.0, 1)  # seed 1 has no k = 16 row (yet): left out of the curve
    context = _Context(_claim("flat", **FLAT), POOL, TARGETS, tmp_path)
    keep = functools.partial(_is_variant, method="ties", overrides="")
    assert _curve(context, [0, 16], keep) == {0: 80.0, 16: 60.0}
    _row(tmp_path, "irrelevance", "ties", 16, 70.0, 1)
    context = _Context(_claim("flat", **FLAT), POOL, TARGETS, tmp_path)
    assert _curve(context, [0, 16], keep) == {0: 85.0, 16: 65.0}


def test_a_protocol_flag_selects_the_rows_run_with_it_and_joins_every_command(tmp_path):
    for seed in (0, 1):  # the candidates' mean statistics: FW soft drops 5; with the targets' own it stays flat
        for statistics, fw_end in (("", 75.0), ("targets", 79.5)):
            flags = {"statistics": statistics} if statistics else {}
            _row(tmp_path, "irrelevance", "frank_wolfe_soft", 0, 80.0, seed, preset="irrelevance", **flags)
            _row(tmp_path, "irrelevance", "frank_wolfe_soft", 16, fw_end, seed, preset="irrelevance", **flags)
            _row(tmp_path, "irrelevance", "task_arithmetic", 0, 75.0, seed, **flags)
            _row(tmp_path, "irrelevance", "task_arithmetic", 16, 60.0, seed, **flags)
    plain = _claim("flat", **FLAT)
    assert _verdicts(tmp_path, plain)["cross_entropy"][1] == "no"
    protocol = plain.model_copy(update={"protocol_flags": {"discriminative": {"statistics": "targets"},
                                                           "vision": {"statistics": "average"}}})
    ours, verdict, _, _, _, commands = _cells(tmp_path, protocol)["cross_entropy"][:6]
    assert verdict == "yes" and "80.0 ± 0.0 → 79.5 ± 0.0" in ours and "every row with --statistics targets" in ours
    assert "deviates" not in ours  # the protocol's flag is no deviation from the preset
    assert 'run_irrelevance --preset irrelevance --statistics targets' in commands
    assert 'METHODS="task_arithmetic" run_irrelevance --statistics targets' in commands


def test_a_newer_variant_of_the_preset_on_other_fine_tunes_does_not_hide_the_claims_rows(tmp_path):
    """The claim's cell compares the fine-tunes of its own FW soft's newest row: a variant that shares the preset
    but changes FW soft's rule (issue 19's, here the linear oracle) is not that row, a cost cut (--ada-steps) is."""
    for extra, fw, ta in ((0, 80.0, 75.0), (16, 79.0, 60.0)):  # before the column
        _row(tmp_path, "irrelevance", "frank_wolfe_soft", extra, fw, preset="irrelevance")
        _row(tmp_path, "irrelevance", "task_arithmetic", extra, ta)
    expected = ["FW soft 80.0 → 79.0 (-1.0); task_arithmetic 75.0 → 60.0 (-15.0); n = 1", "yes"]
    for extra in (0, 16):
        append_row(tmp_path / "toy_irrelevance" / "results.csv",
                   {"method": "frank_wolfe_soft", "normalized": 90.0, "extra": extra, "pool_seed": 0,
                    "targets": "a b", "overrides": json.dumps({"preset": "irrelevance", "oracle": "linear"}),
                    "finetuned_digest": "a=0000000b b=0000000b"})
    assert _verdicts(tmp_path, _claim("flat", **FLAT))["cross_entropy"] == expected
    append_row(tmp_path / "toy_irrelevance" / "results.csv",
               {"method": "frank_wolfe_soft", "normalized": 81.0, "extra": 0, "pool_seed": 0, "targets": "a b",
                "overrides": json.dumps({"preset": "irrelevance", "ada_steps": 10}),
                "finetuned_digest": "a=0000000b b=0000000b"})
    assert _verdicts(tmp_path, _claim("flat", **FLAT))["cross_entropy"][1] == "not run"  # the re-made fine-tunes'


def test_a_deviation_prints_its_flags_as_the_runner_reads_them(tmp_path):
    for extra in (0, 16):
        _row(tmp_path, "irrelevance", "frank_wolfe_soft", extra, 80.0, preset="irrelevance", monotone=True)
        _row(tmp_path, "irrelevance", "task_arithmetic", extra, 75.0)
    ours, _, _, _, _, commands = _cells(tmp_path, _claim("flat", **FLAT))["cross_entropy"][:6]
    assert "deviates from the preset: --monotone true;" in ours
    assert "run_irrelevance --preset irrelevance --monotone true`" in commands


def test_rows_of_older_fine_tunes_of_a_seed_are_not_compared_with_the_latest(tmp_path):
    def rows(fw: tuple[float, float], ta: tuple[float, float], digest: str = "") -> None:
        for extra, fw_score, ta_score in zip((0, 16), fw, ta):
            stamp = {"finetuned_digest": digest} if digest else {}
            append_row(tmp_path / "toy_irrelevance" / "results.csv",
                       {"method": "frank_wolfe_soft", "normalized": fw_score, "extra": extra, "pool_seed": 0,
                        "targets": "a b", "overrides": json.dumps({"preset": "irrelevance"}), **stamp})
            append_row(tmp_path / "toy_irrelevance" / "results.csv",
                       {"method": "task_arithmetic", "normalized": ta_score, "extra": extra, "pool_seed": 0,
                        "targets": "a b", "overrides": "", **stamp})
    rows((80.0, 79.0), (75.0, 60.0))  # before the column: the only fine-tunes there are
    assert _verdicts(tmp_path, _claim("flat", **FLAT))["cross_entropy"] == [
        "FW soft 80.0 → 79.0 (-1.0); task_arithmetic 75.0 → 60.0 (-15.0); n = 1", "yes"]
    append_row(tmp_path / "toy_irrelevance" / "results.csv",  # seed 0 re-made elsewhere: only TA at 0 so far
               {"method": "task_arithmetic", "normalized": 70.0, "extra": 0, "pool_seed": 0, "targets": "a b",
                "overrides": "", "finetuned_digest": "a=0000000b b=0000000b"})
    # FW soft's newest rows are still the older fine-tunes', so the claim compares those (TA's new row aside)
    assert _verdicts(tmp_path, _claim("flat", **FLAT))["cross_entropy"] == [
        "FW soft 80.0 → 79.0 (-1.0); task_arithmetic 75.0 → 60.0 (-15.0); n = 1", "yes"]
    append_row(tmp_path / "toy_irrelevance" / "results.csv",  # FW soft re-made at 0: TA lacks its row at 16
               {"method": "frank_wolfe_soft", "normalized": 81.0, "extra": 0, "pool_seed": 0, "targets": "a b",
                "overrides": json.dumps({"preset": "irrelevance"}), "finetuned_digest": "a=0000000b b=0000000b"})
    assert _verdicts(tmp_path, _claim("flat", **FLAT))["cross_entropy"][1] == "not run"
    rows((81.0, 70.0), (70.0, 50.0), "a=0000000b b=0000000b")
    assert _verdicts(tmp_path, _claim("flat", **FLAT))["cross_entropy"] == [
        "FW soft 81.0 → 70.0 (-11.0); task_arithmetic 70.0 → 50.0 (-20.0); n = 1", "no"]


def test_rows_that_agree_on_the_checkpoints_they_share_are_compared():
    from merging.benchmark.results import current_finetunes

    def row(seed: str, digest: str) -> dict[str, str]:
        return {"pool_seed": seed, "finetuned_digest": digest}

    rows = [row("0", "a=1 b=1"), row("0", "a=1 b=1 c=1"),   # relevance by tasks: 2 -> 3 scored tasks, one pool
            row("1", "a=1 b=1"), row("1", "a=2 b=2 c=2"),   # seed 1 re-made: its older row goes
            row("2", ""), row("0", "")]                     # before the column: kept where no seed has one
    assert current_finetunes(rows) == [rows[0], rows[1], rows[3], rows[4]]


def test_a_scaling_row_that_names_only_its_targets_goes_once_a_row_names_its_extra_checkpoints():
    """Rows digested before extra candidates were: their extra checkpoints are unknown, so they count only until
    a row of their seed names every checkpoint of a merge with extra ones."""
    from merging.benchmark.results import current_finetunes

    def row(seed: str, extra: int, digest: str) -> dict[str, str]:
        return {"pool_seed": seed, "extra": str(extra), "candidates": str(1 + extra), "finetuned_digest": digest}

    older = [row("0", 0, "a=1"), row("0", 2, "a=1"), row("1", 2, "a=1")]
    assert current_finetunes(older) == older                      # no seed has a row that names them yet
    rows = [*older, row("0", 2, "a=1 b=1 b@1=1")]                 # seed 0's extra checkpoints named
    assert current_finetunes(rows) == [rows[0], rows[2], rows[3]]  # k = 0 names all it merged: kept
