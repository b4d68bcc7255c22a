"""A benchmark's headline ranks every merge by its mean over seeds and names the best one only among the merges
run on the same, largest set of seeds (merging/benchmark/leaderboard.py, the ``leaderboard`` block of
merging/benchmark/docs.py)."""
import json

import pytest

from merging.benchmark.docs import refresh
from merging.benchmark.leaderboard import leaderboard, ranking, row_namer, verdict
from merging.benchmark.results import append_row, read_rows
from merging.benchmark.variants import load_variants
from merging.errors import MergeError


def _rows(tmp_path, scores: dict[str, list[float]], **columns: dict[str, str]) -> list[dict[str, str]]:
    """One all-task row per method and seed (``scores[method][seed]``, None: no row), as the runners write them;
    ``columns[name][method]`` sets a column of that method's rows. Seconds are 10 × the seed + 1."""
    path = tmp_path / "outs/pool/results.csv"
    for method, values in scores.items():
        for seed, value in enumerate(values):
            if value is not None:
                append_row(path, {"method": method, "normalized": value, "seconds": 10.0 * (seed + 1),
                                  "peak_rss_gb": 2.0, "pool_seed": seed, "overrides": "",
                                  **{name: by_method.get(method, "") for name, by_method in columns.items()}})
    return read_rows(path)


def _ranked(rows):
    return ranking(rows, row_namer(None))


def test_merges_are_ranked_by_their_mean_over_seeds_without_the_references_or_unregistered_names(tmp_path):
    rows = _rows(tmp_path, {"finetuned": [100, 100], "probe": [95, 95], "ties": [50, 54], "iso_c": [56, 58],
                            "base": [40, 40], "task_arithmetic": [49, 51]})
    assert [(s.name, s.kind, len(s.scores), s.mean) for s in _ranked(rows)] == [
        ("iso_c", "data-free", 2, 57.0), ("ties", "data-free", 2, 52.0), ("task_arithmetic", "data-free", 2, 50.0)]


def test_the_latest_row_of_a_seed_counts_and_scaling_and_validation_rows_are_left_out(tmp_path):
    rows = _rows(tmp_path, {"ties": [50, 54]})
    rows += [dict(rows[0], normalized="60"), dict(rows[1], extra="16", normalized="10"),
             dict(rows[1], split="validation", normalized="99")]
    (standing,) = _ranked(rows)
    assert standing.scores == (60.0, 54.0)


def test_rows_of_a_seeds_older_fine_tunes_are_left_out(tmp_path):
    rows = _rows(tmp_path, {"iso_c": [70, 58], "ties": [50, 54]}, finetuned_digest={"iso_c": "a=old", "ties": "a=new"})
    assert [(s.name, s.scores) for s in _ranked(rows)] == [("ties", (50.0, 54.0))]  # ties re-made on new fine-tunes


def test_the_best_is_judged_among_the_merges_run_on_the_same_largest_set_of_seeds(tmp_path):
    rows = _rows(tmp_path, {"ties": [50, 54, 52], "iso_c": [56, 58, 57], "cart": [70], "wudi": [None, 80, 80, 80]})
    standings = _ranked(rows)
    assert [s.name for s in standings[:2]] == ["wudi", "cart"]  # ranked first on other seeds …
    text = verdict(standings)
    assert text.startswith("**Best merge: iso_c, 57.00 ± 1.00 (n = 3)**")  # … but not judged against these
    assert "next ties, 52.00 ± 2.00 (n = 3), +5.00: more than either one's standard deviation" in text
    assert text.endswith("Ranked above it on other seeds, not judged (seeds 0, 1, 2 are): wudi, 80.00 ± 0.00 (n = 3, "
                         "seeds 1, 2, 3); cart, 70.00 (n = 1, seeds 0).")


def test_a_gap_within_the_spread_one_seed_and_a_tie_are_said_so(tmp_path):
    within = verdict(_ranked(_rows(tmp_path / "a", {"ties": [50, 60], "iso_c": [52, 60]})))
    assert "next ties, 55.00 ± 7.07 (n = 2), +1.00: within the standard deviation over seeds" in within
    one = verdict(_ranked(_rows(tmp_path / "b", {"ties": [50], "iso_c": [52]})))
    assert one.startswith("**Best merge: iso_c, 52.00 (n = 1)**") and "one seed, no spread" in one
    tie = verdict(_ranked(_rows(tmp_path / "c", {"ties": [50, 52], "iso_c": [51, 51]})))
    assert "+0.00: tied" in tie


def test_a_routed_model_is_ranked_but_not_named_best_and_a_data_merge_names_the_best_data_free(tmp_path):
    standings = _ranked(_rows(tmp_path, {"twin_merging": [90, 92], "regmean": [80, 82], "adamerging": [79, 79],
                                         "ties": [50, 54]}))
    assert [s.kind for s in standings] == ["routed", "reads data", "reads data", "data-free"]
    text = verdict(standings)
    assert text.startswith("**Best merge: regmean, 81.00 ± 1.41 (n = 2)**; next adamerging")
    assert text.endswith("; best data-free: ties, 52.00 ± 2.83 (n = 2). Above it, a routed model (a body per input, "
                         "not one set of weights): twin_merging, 91.00 ± 1.41 (n = 2).")
    assert verdict(standings[:1]) == "No single-model merge yet (a routed model is ranked, never named best)."
    assert verdict(standings[1:2]) == ("**Best merge: regmean, 81.00 ± 1.41 (n = 2)**; no data-free merge on "
                                       "these seeds.")
    below = _ranked(_rows(tmp_path / "below", {"twin_merging": [70, 72], "regmean": [80, 82]}))
    assert "routed" not in verdict(below)              # a routed model below the best is not mentioned


def test_the_runner_up_is_not_named_twice_when_it_is_the_best_data_free(tmp_path):
    text = verdict(_ranked(_rows(tmp_path, {"regmean": [80, 82], "ties": [50, 54]})))
    assert text.count("ties") == 1


def test_a_fw_variant_is_named_after_configs_fw_variants_and_other_overrides_read_as_flags(tmp_path):
    variant = next(v for v in load_variants().variants if v.name == "soft_hull_scaled")
    flags = json.dumps(variant.flags, sort_keys=True)  # as the runners write overrides
    rows = _rows(tmp_path, {"frank_wolfe_soft": [70, 72], "frank_wolfe": [60, 60], "ties": [50, 54]},
                 overrides={"frank_wolfe_soft": flags, "frank_wolfe": flags, "ties": json.dumps({"density": 0.2})},
                 limit={"ties": "100"})
    assert [s.name for s in ranking(rows, row_namer(load_variants()))] == [
        "frank_wolfe_soft (soft_hull_scaled)", "frank_wolfe --ada-init 0.0 --ada-lr 0.01 --ada-simplex true "
        "--monotone true --oracle linear --preset irrelevance --vertex-scale tasks",
        "ties --density 0.2 [first 100 test examples]"]


def test_the_leaderboard_block_shows_the_top_lines_and_the_verdict(tmp_path):
    _rows(tmp_path, {"ties": [50, 54], "iso_c": [56, 58], "task_arithmetic": [49, 51]})
    append_row(tmp_path / "outs/pool/results.csv", {"method": "ties", "normalized": 54, "pool_seed": 1})
    page = tmp_path / "page.md"
    page.write_text("<!-- generated: leaderboard outs/pool/results.csv top=2 -->\nstale\n<!-- end generated -->\n")
    assert refresh(page, tmp_path) == []
    text = page.read_text()
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    assert lines == ["| # | method | kind | n | normalised | seconds | peak RSS GB |",
                     "| 1 | iso_c | data-free | 2 | 57.00 ± 1.41 | 15.00 ± 7.07 | 2.00 ± 0.00 |",
                     "| 2 | ties | data-free | 2 | 52.00 ± 2.83 | 10.00 (n = 1) | 2.00 (n = 1) |"]
    assert "… and 1 more" in text and "**Best merge: iso_c" in text and "stale" not in text
    assert leaderboard([], row_namer(None)) is None


@pytest.mark.parametrize("directive", ["leaderboard", "leaderboard x.csv top=0", "leaderboard x.csv 3"])
def test_a_malformed_leaderboard_directive_is_an_error(tmp_path, directive):
    page = tmp_path / "page.md"
    page.write_text(f"<!-- generated: {directive} -->\n<!-- end generated -->\n")
    with pytest.raises(MergeError, match="'leaderboard CSV \\[top=N\\]'"):
        refresh(page, tmp_path)
