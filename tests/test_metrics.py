"""Metrics against hand-computed values; results rows and tables."""
import pytest
import torch

from merging.benchmark import metrics
from merging.benchmark.results import append_row, pivot_table, read_rows, rebuild_markdown, summary_rows

P = torch.tensor([1, 0, 1, 1, 0, 1])
L = torch.tensor([1, 0, 0, 1, 1, 1])  # TP 3, TN 1, FP 1, FN 1


def test_accuracy_and_f1_by_hand():
    assert metrics.accuracy(P, L) == pytest.approx(4 / 6)
    assert metrics.binary_f1(P, L) == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    assert metrics.score("f1_acc", P, L) == pytest.approx(100 * (4 / 6 + 0.75) / 2)


def test_matthews_by_hand():
    # (TP·TN − FP·FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (3 − 1) / sqrt(4·4·2·2) = 0.25
    assert metrics.matthews(P, L) == pytest.approx(0.25)
    assert metrics.matthews(torch.tensor([1, 1, 1]), torch.tensor([1, 0, 1])) == 0.0  # constant prediction


def test_multiclass_matthews_perfect_and_inverted():
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    assert metrics.matthews(labels, labels) == pytest.approx(1.0)
    assert metrics.matthews(torch.tensor([1, 0, 0, 1, 0, 0]), torch.tensor([0, 1, 1, 0, 1, 1])) == pytest.approx(-1.0)


def test_pearson_and_spearman_by_hand():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert metrics.pearson(x, 2 * x + 1) == pytest.approx(1.0)
    assert metrics.spearman(x, x ** 3) == pytest.approx(1.0)        # monotone, not linear
    assert metrics.pearson(x, x ** 3) < 1.0
    # ties get average ranks: ranks of [1, 2, 2, 3] are [1, 2.5, 2.5, 4]
    assert metrics.spearman(torch.tensor([1.0, 2.0, 2.0, 3.0]), torch.tensor([1.0, 2.5, 2.5, 4.0])) == pytest.approx(1.0)
    assert metrics.score("pearson_spearman", x, -x) == pytest.approx(-100.0)
    assert metrics.pearson(x, torch.ones(4)) == 0.0 and metrics.spearman(x, torch.ones(4)) == 0.0  # undefined: 0
    assert metrics.pearson(x[:1], x[:1]) == 0.0 and metrics.spearman(x[:1], x[:1]) == 0.0  # one value: undefined
    assert metrics.binary_f1(torch.tensor([1, 2, 0]), torch.tensor([1, 1, 2])) == pytest.approx(2 / 3)  # 1 vs rest


def test_normalized_score_is_the_mean_ratio():
    merged, finetuned = {"a": 45.0, "b": 90.0}, {"a": 90.0, "b": 90.0}
    assert metrics.normalized_score(merged, finetuned, ["a", "b"]) == pytest.approx(75.0)


def test_unknown_metric_is_an_error():
    with pytest.raises(ValueError, match="unknown metric 'auc'"):
        metrics.score("auc", P, L)


def test_results_rows_gain_columns_and_tables_are_rebuilt(tmp_path):
    path = tmp_path / "results.csv"
    append_row(path, {"method": "ta", "avg": 81.234})
    append_row(path, {"method": "ties", "avg": 83.0, "density": 0.2})
    rows = read_rows(path)
    assert [r["method"] for r in rows] == ["ta", "ties"] and rows[0]["density"] == "" and rows[1]["avg"] == "83.00"
    rebuild_markdown(path, tmp_path / "results.md", "Demo", ["method", "avg"])
    text = (tmp_path / "results.md").read_text()
    assert "| method | avg | density |" in text and "| ties | 83.00 | 0.20 |" in text


def test_summary_is_mean_and_sample_std_over_the_latest_row_of_each_seed(tmp_path):
    path = tmp_path / "results.csv"
    for method, seed, score in [("ta", 0, 70.0), ("ta", 1, 80.0), ("ta", 1, 84.0), ("ta", 2, 86.0),
                                ("ties", 0, 90.0)]:
        append_row(path, {"method": method, "pool_seed": seed, "normalized": score})
    summary = summary_rows(read_rows(path), "method", "pool_seed", ["normalized"])
    # ta: seeds 0, 1 (rerun: 84 replaces 80), 2 -> 70, 84, 86: mean 80, sample std sqrt(76) = 8.72
    assert summary == [{"method": "ta", "n": "3", "normalized": "80.00 ± 8.72"},
                       {"method": "ties", "n": "1", "normalized": "90.00"}]
    rebuild_markdown(path, tmp_path / "results.md", "Demo", ["method"], summary=("method", "pool_seed", ["normalized"]))
    text = (tmp_path / "results.md").read_text()
    assert text.index("| ta | 3 | 80.00 ± 8.72 |") < text.index("## All rows")


def test_summary_reads_only_the_rows_of_each_seeds_latest_fine_tunes(tmp_path):
    path = tmp_path / "results.csv"
    for method, seed, score, digest in [("ta", 0, 70.0, "a=1"), ("ties", 0, 90.0, "a=1"),
                                        ("ta", 0, 60.0, "a=2"), ("ta", 1, 80.0, "")]:  # seed 0 re-made elsewhere
        append_row(path, {"method": method, "pool_seed": seed, "normalized": score, "finetuned_digest": digest})
    rebuild_markdown(path, tmp_path / "results.md", "Demo", ["method"], summary=("method", "pool_seed", ["normalized"]))
    summary, _, every = (tmp_path / "results.md").read_text().partition("## All rows")
    assert "| ta | 2 | 70.00 ± 14.14 |" in summary and "| ties |" not in summary  # 60 (seed 0 now) and 80
    assert every.count("| ta |") == 3 and "| ties |" in every


def test_summary_describes_each_seed_row_when_asked(tmp_path):
    path = tmp_path / "results.csv"
    for seed, lam in [(0, "0.5"), (1, "0.4"), (1, "0.3")]:
        append_row(path, {"method": "ta", "pool_seed": seed, "normalized": 80.0, "lambda": lam})
    append_row(path, {"method": "ref", "pool_seed": 0, "normalized": 100.0, "lambda": ""})
    describe = ("chosen", lambda row: f"lambda {row['lambda']}" if row["lambda"] else "")
    summary = summary_rows(read_rows(path), "method", "pool_seed", ["normalized"], describe=describe)
    assert [s["chosen"] for s in summary] == ["0: lambda 0.5; 1: lambda 0.3", ""]  # the rerun's choice wins


def test_a_scaling_claim_is_pivoted_by_extra_checkpoints(tmp_path):
    path = tmp_path / "results.csv"
    for method, extra, seed, score in [("fw", 0, 0, 60.0), ("fw", 4, 0, 50.0), ("fw", 4, 0, 52.0), ("fw", 4, 1, 56.0),
                                       ("ta", 4, 0, 40.0)]:
        append_row(path, {"method": method, "extra": extra, "pool_seed": seed, "normalized": score})
    table = pivot_table(read_rows(path), lambda row: row["method"], "extra", "normalized")
    # fw at extra 4: seed 0 rerun (52 replaces 50) and seed 1 -> 52, 56: mean 54, sample std 2.83
    assert table.splitlines() == ["|  | extra 0 | extra 4 |", "|---|---|---|", "| fw | 60.00 | 54.00 ± 2.83 |",
                                  "| ta |  | 40.00 |"]
    by_extra = [("By extra", pivot_table(read_rows(path), lambda r: r["method"], "extra", "normalized"))]
    rebuild_markdown(path, tmp_path / "results.md", "Demo", ["method"], summary=("method", "pool_seed", ["normalized"]),
                     sections=lambda rows: by_extra)
    text = (tmp_path / "results.md").read_text()
    assert text.index("## By extra") < text.index("| fw | 60.00 | 54.00 ± 2.83 |") < text.index("## All rows")


def test_a_rows_code_version_is_the_one_its_process_started_with(monkeypatch):
    """A checkout during a long run must not relabel its rows: the commit is read once per process."""
    from types import SimpleNamespace

    from merging import run

    run.git_sha.cache_clear()
    answers = iter(["a" * 40, "b" * 40])
    monkeypatch.setattr(run.subprocess, "run", lambda *args, **kwargs: SimpleNamespace(returncode=0,
                                                                                     stdout=next(answers)))
    assert run.git_sha() == "a" * 40 and run.run_stamp(0.0)["git_sha"] == "a" * 7
    run.git_sha.cache_clear()
