"""A benchmark's headline ranks every merge by its mean over seeds and names the best one only among the methods
run on the most seeds (merging/benchmark/leaderboard.py, the ``leaderboard`` block of merging/benchmark/docs.py)."""
import json

import pytest

from merging.benchmark.docs import refresh
from merging.benchmark.leaderboard import entries, labeller, leaderboard, verdict
from merging.benchmark.results import append_row, read_rows
from merging.benchmark.variants import load_variants
from merging.errors import MergeError


def _rows(tmp_path, scores: dict[str, list[float]], overrides: dict[str, str] | None = None) -> list[dict[str, str]]:
    """One all-task row per method and seed (``scores[method][seed]``), as the runners write them."""
    path = tmp_path / "outs/pool/results.csv"
    for method, values in scores.items():
        for seed, value in enumerate(values):
            append_row(path, {"method": method, "normalized": value, "seconds": 10.0, "peak_rss_gb": 2.0,
                              "pool_seed": seed, "overrides": (overrides or {}).get(method, "")})
    return read_rows(path)


def test_merges_are_ranked_by_their_mean_over_seeds_without_the_references(tmp_path):
    rows = _rows(tmp_path, {"finetuned": [100, 100], "probe": [95, 95], "ties": [50, 54], "iso_c": [56, 58],
                            "task_arithmetic": [49, 51]})
    ranked = entries(rows, labeller(None))
    assert [(e.label, e.kind, e.n, e.mean) for e in ranked] == [
        ("iso_c", "data-free", 2, 57.0), ("ties", "data-free", 2, 52.0), ("task_arithmetic", "data-free", 2, 50.0)]


def test_the_latest_row_of_a_seed_counts_and_scaling_rows_are_left_out(tmp_path):
    rows = _rows(tmp_path, {"ties": [50, 54]})
    rows += [dict(rows[0], normalized="60"), dict(rows[1], extra="16", normalized="10")]
    (entry,) = entries(rows, labeller(None))
    assert entry.scores == (60.0, 54.0)


def test_the_best_is_judged_among_the_methods_run_on_the_most_seeds(tmp_path):
    rows = _rows(tmp_path, {"ties": [50, 54, 52], "iso_c": [56, 58, 57], "cart": [70]})
    ranked = entries(rows, labeller(None))
    assert ranked[0].label == "cart"  # ranked first on its one seed …
    text = verdict(ranked)
    assert text.startswith("**Best merge: iso_c, 57.00 ± 1.00 (n = 3)**")  # … but not judged against three
    assert "next ties, 52.00 ± 2.00 (n = 3), +5.00: more than one standard deviation" in text
    assert "Methods run on fewer seeds (1) are ranked but not judged" in text


def test_a_gap_within_the_spread_is_said_not_to_tell_the_methods_apart(tmp_path):
    text = verdict(entries(_rows(tmp_path, {"ties": [50, 60], "iso_c": [52, 60]}), labeller(None)))
    assert "next ties, 55.00 ± 7.07 (n = 2), +1.00: no more than one standard deviation, so the seeds do not" in text


def test_one_seed_has_no_spread_to_judge_a_gap_by(tmp_path):
    text = verdict(entries(_rows(tmp_path, {"ties": [50], "iso_c": [52]}), labeller(None)))
    assert text.startswith("**Best merge: iso_c, 52.00 (n = 1)**") and "one seed, no spread" in text


def test_a_routed_model_is_ranked_but_not_named_best_and_a_data_merge_names_the_best_data_free(tmp_path):
    rows = _rows(tmp_path, {"twin_merging": [90, 92], "regmean": [80, 82], "ties": [50, 54]})
    ranked = entries(rows, labeller(None))
    assert [e.kind for e in ranked] == ["routed", "reads data", "data-free"]
    text = verdict(ranked)
    assert text.startswith("**Best merge: regmean, 81.00 ± 1.41 (n = 2)**")
    assert text.endswith("; best data-free: ties, 52.00 ± 2.83 (n = 2).")


def test_a_fw_variant_is_named_after_configs_fw_variants_and_other_overrides_read_as_flags(tmp_path):
    variant = next(v for v in load_variants().variants if v.name == "soft_hull_scaled")
    rows = _rows(tmp_path, {"frank_wolfe_soft": [70, 72], "ties": [50, 54]},
                 {"frank_wolfe_soft": json.dumps(variant.flags), "ties": json.dumps({"density": 0.2})})
    assert [e.label for e in entries(rows, labeller(load_variants()))] == [
        "frank_wolfe_soft (soft_hull_scaled)", "ties --density 0.2"]


def test_the_leaderboard_block_shows_the_top_lines_and_the_verdict(tmp_path):
    _rows(tmp_path, {"ties": [50, 54], "iso_c": [56, 58], "task_arithmetic": [49, 51]})
    page = tmp_path / "page.md"
    page.write_text("<!-- generated: leaderboard outs/pool/results.csv top=2 -->\nstale\n<!-- end generated -->\n")
    assert refresh(page, tmp_path) == []
    text = page.read_text()
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    assert lines == ["| # | method | data | n | normalised | seconds | peak RSS GB |",
                     "| 1 | iso_c | data-free | 2 | 57.00 ± 1.41 | 10.00 ± 0.00 | 2.00 ± 0.00 |",
                     "| 2 | ties | data-free | 2 | 52.00 ± 2.83 | 10.00 ± 0.00 | 2.00 ± 0.00 |"]
    assert "… and 1 more" in text and "**Best merge: iso_c" in text and "stale" not in text
    assert leaderboard([], labeller(None)) is None


@pytest.mark.parametrize("directive", ["leaderboard", "leaderboard x.csv top=0", "leaderboard x.csv 3"])
def test_a_malformed_leaderboard_directive_is_an_error(tmp_path, directive):
    page = tmp_path / "page.md"
    page.write_text(f"<!-- generated: {directive} -->\n<!-- end generated -->\n")
    with pytest.raises(MergeError, match="'leaderboard CSV \\[top=N\\]'"):
        refresh(page, tmp_path)
