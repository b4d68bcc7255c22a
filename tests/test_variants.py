"""The Frank-Wolfe variants table (merging/benchmark/variants.py): each of issue 19's four criteria follows its
rows (all-task score over the best data-free merge, flat under irrelevant checkpoints, not falling with relevant
ones, flat memory), a variant is its method and flags exactly, and a missing row is 'not run'."""
from __future__ import annotations

import json
import shlex
from pathlib import Path
from types import SimpleNamespace

from merging.benchmark.results import append_row
from merging.benchmark.variants import VariantsFile, load_variants, write_variants

POOL = SimpleNamespace(name="toy", tasks=["a", "b", "c", "d", "e", "f"], domain=SimpleNamespace(name="discriminative"),
                       finetune=SimpleNamespace(seeds=[0, 1]))
TARGETS = ["a", "b"]  # 4 other tasks: relevance "all" = 4 extra checkpoints
SPEC = VariantsFile.model_validate({
    "criteria": {"margin": 2.0, "max_drop": 2.0, "max_rss_ratio": 1.2}, "irrelevance": [0, 16],
    "relevance": [0, "all"], "data_free": ["task_arithmetic", "ties"],
    "variants": [{"name": "plain", "method": "frank_wolfe", "hypothesis": "h"},
                 {"name": "scaled", "method": "frank_wolfe", "flags": {"preset": "scaled_vertices"},
                  "hypothesis": "h2"}]})


def _row(outs: Path, folder: str, method: str, score: float, seed: int, extra: int | None = None,
         rss: float = 2.0, **overrides) -> None:
    row = {"method": method, "normalized": score, "overrides": json.dumps(overrides) if overrides else "",
           "pool_seed": seed, "peak_rss_gb": rss}
    if extra is not None:
        row.update(extra=extra, targets="a b")
    append_row(outs / folder / "results.csv", row)


def _table(outs: Path) -> dict[str, list[str]]:
    """The cells after the variant's name, by variant name."""
    text = write_variants(POOL, "toy.yaml", TARGETS, outs, SPEC)
    lines = [line.split(" | ") for line in text.splitlines() if line.startswith("| **")]
    return {line[0][4:].split("**")[0]: line[1:] for line in lines}


def _complete_rows(outs: Path, all_task: float, irrelevant: tuple[float, float], relevant: tuple[float, float],
                   rss: tuple[float, float], **flags) -> None:
    for seed in (0, 1):
        _row(outs, "toy", "frank_wolfe", all_task + seed, seed, **flags)
        _row(outs, "toy_irrelevance", "frank_wolfe", irrelevant[0] + seed, seed, 0, rss[0], **flags)
        _row(outs, "toy_irrelevance", "frank_wolfe", irrelevant[1] + seed, seed, 16, rss[1], **flags)
        _row(outs, "toy_relevance_tasks", "frank_wolfe", relevant[0] + seed, seed, 0, **flags)
        _row(outs, "toy_relevance_tasks", "frank_wolfe", relevant[1] + seed, seed, 4, **flags)


def test_a_variant_meeting_all_four_criteria_is_judged_yes_and_each_failure_is_named(tmp_path):
    for seed in (0, 1):
        _row(tmp_path, "toy", "task_arithmetic", 80.0 + seed, seed)
        _row(tmp_path, "toy", "ties", 84.0 + seed, seed)                       # the best data-free merge
        _row(tmp_path, "toy", "ties", 99.0, seed, density=0.9)                 # a variant of TIES: not compared
    _complete_rows(tmp_path, 86.5, (80.0, 78.5), (70.0, 75.0), (2.0, 2.3))
    _complete_rows(tmp_path, 85.0, (80.0, 70.0), (70.0, 69.0), (2.0, 3.0), preset="scaled_vertices")
    table = _table(tmp_path)
    above, flat, relevance, memory, verdicts, all_four = table["plain"][:6]
    assert above == "87.0 ± 0.7 (+2.50 over ties; n = 2)" and flat == "80.5 ± 0.7 → 79.0 ± 0.7 (-1.50)"
    assert relevance == "70.5 ± 0.7 → 75.5 ± 0.7 (+5.00)" and memory == "2.00 → 2.30 GB (×1.15)"
    assert verdicts == "yes / yes / yes / yes" and all_four == "yes"
    assert table["scaled"][4:6] == ["no / no / no / no", "no"]  # +1.0 over ties, −10, −1, ×1.5
    assert "`run_frank_wolfe --preset scaled_vertices`" in table["scaled"][6]
    assert '`SIZES="0 4" METHODS=frank_wolfe run_relevance_tasks --preset scaled_vertices`' in table["scaled"][6]
    assert (tmp_path / "toy_fw_variants.md").read_text().startswith("# Frank-Wolfe variants on pool toy")


def test_an_experiments_rows_are_judged_apart_from_the_pools(tmp_path):
    """Rows written with EXPERIMENT=<name> (a pool re-made on another machine, say) are judged on their own: the
    table reads outs/<name>/ and outs/<name>_<protocol>/, names the experiment and goes to
    outs/<name>_fw_variants.md."""
    _row(tmp_path, "toy", "ties", 90.0, 0)
    _row(tmp_path, "toy", "frank_wolfe", 95.0, 0)
    _row(tmp_path, "remade", "ties", 84.0, 0)
    _row(tmp_path, "remade", "frank_wolfe", 85.0, 0)
    text = write_variants(POOL, "toy.yaml", TARGETS, tmp_path, SPEC, experiment="remade")
    assert "85.0 (+1.00 over ties; n = 1)" in text and "EXPERIMENT=remade" in text
    written = (tmp_path / "remade_fw_variants.md").read_text()
    assert written.startswith("# Frank-Wolfe variants on pool toy (experiment remade)")
    assert not (tmp_path / "toy_fw_variants.md").exists()
    assert "95.0 (+5.00 over ties; n = 1)" in _table(tmp_path)["plain"][0]


def test_a_variant_without_rows_is_not_run(tmp_path):
    _complete_rows(tmp_path, 90.0, (80.0, 79.0), (70.0, 71.0), (2.0, 2.0))
    assert _table(tmp_path)["plain"][4] == "not run / yes / yes / yes"  # no data-free row to compare with
    _row(tmp_path, "toy", "ties", 84.0, 0)
    table = _table(tmp_path)
    assert table["plain"][4] == "yes / yes / yes / yes"  # compared on the one seed both have
    assert table["plain"][0] == "90.0 (+6.00 over ties; n = 1 of 2, the seeds every data-free merge of the list has)"
    assert table["scaled"][:4] == ["—", "—", "—", "—"]
    assert table["scaled"][4:6] == ["not run / not run / not run / not run", "not run"]


def test_a_drop_just_past_the_bound_is_not_flat_and_reads_past_it(tmp_path):
    _complete_rows(tmp_path, 90.0, (89.33, 87.32), (70.0, 71.0), (2.0, 2.0))  # loses 2.01
    flat, _, _, verdicts = _table(tmp_path)["plain"][1:5]
    assert flat.endswith("(-2.01)") and verdicts.split(" / ")[1] == "no"


def test_the_shipped_variants_fix_issue_19s_acceptance():
    spec = load_variants()
    assert spec.criteria.model_dump() == {"margin": 2.0, "max_drop": 2.0, "max_rss_ratio": 1.2}
    assert spec.irrelevance == [0, 16] and {"ties", "task_arithmetic", "iso_c", "tsv_m"} <= set(spec.data_free)
    assert {"official", "textbook", "scaled_vertices", "pairwise", "layerwise"} <= {v.name for v in spec.variants}


def test_a_variants_flags_print_as_the_runner_reads_them():
    from merging.benchmark.claims import as_flags
    from merging.benchmark.cli import parse_overrides

    flags = {"preset": "irrelevance", "ada_init": 0.0, "monotone": True, "vertex_scale": "tasks"}
    assert as_flags(flags) == "--preset irrelevance --ada-init 0.0 --monotone true --vertex-scale tasks"
    assert parse_overrides(as_flags(flags).split()) == flags  # the printed command gives back the same overrides
    assert as_flags(json.dumps(flags)) == as_flags(flags)
    nested = {"init_merge": "iso_c", "init_merge_search": {"lambda": [0.5, 1.0]}}
    assert as_flags(nested) == """--init-merge iso_c --init-merge-search '{"lambda": [0.5, 1.0]}'"""
    assert parse_overrides(shlex.split(as_flags(nested))) == nested  # as the shell hands it to the runner


def test_irrelevance_flags_select_the_irrelevance_rows_run_with_them(tmp_path):
    for seed in (0, 1):
        _row(tmp_path, "toy", "ties", 80.0, seed)
    _complete_rows(tmp_path, 86.5, (80.0, 75.0), (70.0, 75.0), (2.0, 2.0))  # the candidates' statistics: drops 5
    for seed in (0, 1):  # the same variant's irrelevance points with the targets' statistics: flat
        for extra, score in ((0, 80.0), (16, 79.5)):
            _row(tmp_path, "toy_irrelevance", "frank_wolfe", score, seed, extra, statistics="targets")
    assert _table(tmp_path)["plain"][1] == "80.5 ± 0.7 → 75.5 ± 0.7 (-5.00)"
    spec = SPEC.model_copy(update={"irrelevance_flags": {"discriminative": {"statistics": "targets"}}})
    text = write_variants(POOL, "toy.yaml", TARGETS, tmp_path, spec)
    plain = next(line.split(" | ") for line in text.splitlines() if line.startswith("| **plain**"))
    assert plain[2] == "80.0 ± 0.0 → 79.5 ± 0.0 (-0.50)" and plain[6] == "yes"  # all four, relevance rows as before
    assert 'SIZES="0 16" METHODS=frank_wolfe run_irrelevance --statistics targets`' in plain[7]
    assert "(every irrelevance row with --statistics targets)" in text


def test_a_variants_series_stays_on_its_own_fine_tunes_when_other_methods_are_re_made(tmp_path):
    """Seed 1's pool was fine-tuned again and only task arithmetic re-made on it: the scaled_vertices variant's
    irrelevance series of seed 1 (older fine-tunes) still counts, and never pairs with the newer rows."""
    for seed in (0, 1):
        for extra, score in ((0, 80.0), (16, 79.0)):
            _row(tmp_path, "toy_irrelevance", "frank_wolfe", score + seed, seed, extra, preset="scaled_vertices")
    for extra, score in ((0, 70.0), (16, 40.0)):  # newer fine-tunes of seed 1: TA, and a newer variant row at 16
        append_row(tmp_path / "toy_irrelevance" / "results.csv",
                   {"method": "task_arithmetic", "normalized": score, "overrides": "", "pool_seed": 1,
                    "extra": extra, "targets": "a b", "finetuned_digest": "a=00000002 b=00000002"})
    assert _table(tmp_path)["scaled"][1] == "80.5 ± 0.7 → 79.5 ± 0.7 (-1.00)"
    append_row(tmp_path / "toy_irrelevance" / "results.csv",
               {"method": "frank_wolfe", "normalized": 60.0, "overrides": json.dumps({"preset": "scaled_vertices"}),
                "pool_seed": 1, "extra": 16, "targets": "a b", "finetuned_digest": "a=00000002 b=00000002"})
    assert _table(tmp_path)["scaled"][1] == "80.0 → 79.0 (-1.00)"  # seed 1 has no point 0 on its newest fine-tunes


def test_the_hull_preset_runs_the_vision_winner_soft_hull_scaled_exactly():
    """``--preset hull`` registers issue 19's soft_hull_scaled: the same parameters and grid as the variant's flags
    (the irrelevance preset and six flags), in every domain, so rows of either form run the same merge."""
    from merging.benchmark.experiment import CONFIGS, method_config

    variant, = [v for v in load_variants(CONFIGS / "fw_variants.yaml").variants if v.name == "soft_hull_scaled"]
    for domain in ("discriminative", "vision", "generative"):
        assert method_config(domain, "frank_wolfe_soft", {"preset": "hull"}) == method_config(
            domain, "frank_wolfe_soft", variant.flags)
