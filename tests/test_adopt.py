"""Rows made before the finetuned_digest column are adopted only on evidence: a re-made row that reproduces them."""
import pytest

from merging.benchmark.adopt import adopt, adopt_files
from merging.benchmark.results import append_row, current_finetunes, read_rows
from merging.errors import MergeError

TASKS = ["a", "b", "c"]
DIGEST = "a=000000aa b=000000bb"


def _row(method: str, scores: dict[str, float], seed: int = 0, extra: int = 0, digest: str = "") -> dict[str, str]:
    row = {"method": method, "normalized": f"{sum(scores.values()) / len(scores):.2f}", "pool_seed": str(seed),
           "extra": str(extra), "overrides": "", **{task: f"{score:.2f}" for task, score in scores.items()}}
    return {**row, "finetuned_digest": digest} if digest else row


def test_older_rows_are_adopted_when_a_re_made_row_reproduces_every_task_they_score():
    older = [_row("task_arithmetic", {"a": 70.0, "b": 60.0}), _row("ties", {"a": 72.0, "b": 61.0})]
    files = {"irrelevance": [*older, _row("task_arithmetic", {"a": 70.0, "b": 60.0}, digest=DIGEST)]}
    adopted, left = adopt(files, TASKS)
    assert [row["method"] for _, row in adopted] == ["task_arithmetic", "ties"] and left == []
    assert all(row["finetuned_digest"] == DIGEST for row in older)
    assert current_finetunes(files["irrelevance"]) == files["irrelevance"]  # none hidden any more


def test_a_re_made_row_that_scores_differently_verifies_nothing():
    older = [_row("task_arithmetic", {"a": 70.0, "b": 60.0})]
    files = {"irrelevance": [*older, _row("task_arithmetic", {"a": 70.0, "b": 60.01}, digest=DIGEST)]}
    adopted, left = adopt(files, TASKS)
    assert adopted == [] and "no re-made row reproduces a, b" in left[0] and "finetuned_digest" not in older[0]


def test_a_seeds_older_rows_in_a_file_are_adopted_together_or_not_at_all():
    # The row at 1 extra checkpoint also scores c, which no reproduction covers: adopting only the first row would
    # hide the second (a seed's digested rows hide its undigested ones), so neither is adopted.
    older = [_row("ties", {"a": 72.0, "b": 61.0}), _row("ties", {"a": 71.0, "b": 60.0, "c": 50.0}, extra=1)]
    files = {"relevance_tasks": older,
             "irrelevance": [_row("ties", {"a": 72.0, "b": 61.0}), _row("ties", {"a": 72.0, "b": 61.0}, digest=DIGEST)]}
    adopted, left = adopt(files, TASKS)
    assert [name for name, _ in adopted] == ["irrelevance"]  # verified across files, adopted where complete
    assert left == ["relevance_tasks: pool seed 0, 2 older rows kept as they are: no re-made row reproduces c"]


def test_older_rows_that_run_the_same_but_score_differently_are_not_adopted():
    older = [_row("ties", {"a": 72.0, "b": 61.0}), _row("ties", {"a": 69.0, "b": 61.0})]  # two fine-tunings
    files = {"irrelevance": [*older, _row("ties", {"a": 72.0, "b": 61.0}, digest=DIGEST)]}
    adopted, left = adopt(files, TASKS)
    assert adopted == [] and "score differently" in left[0]


def test_older_rows_are_adopted_only_for_the_seed_whose_rows_were_reproduced():
    files = {"irrelevance": [_row("ties", {"a": 72.0, "b": 61.0}, seed=0), _row("ties", {"a": 72.0, "b": 61.0}, seed=1),
                             _row("ties", {"a": 72.0, "b": 61.0}, seed=1, digest=DIGEST)]}
    adopted, left = adopt(files, TASKS)
    assert [row["pool_seed"] for _, row in adopted] == ["1"] and left[0].startswith("irrelevance: pool seed 0")


def test_an_older_row_with_extra_checkpoints_takes_the_digest_of_a_re_made_twin_that_names_them():
    """A scaling row's extra checkpoints are not scored, so a reproduction of its targets' scores at another point
    does not verify them: only a re-made row of the same run that names every checkpoint it merged does."""
    def scaling(extra: int, scores: dict[str, float], digest: str = "") -> dict[str, str]:
        return {**_row("ties", scores, extra=extra, digest=digest), "candidates": str(2 + extra)}

    full = "a=000000aa b=000000bb c=000000cc c@1=000000dd"
    at_zero = [scaling(0, {"a": 72.0, "b": 61.0}), scaling(0, {"a": 72.0, "b": 61.0}, digest=DIGEST)]
    older = scaling(2, {"a": 60.0, "b": 50.0})
    adopted, left = adopt({"irrelevance": [*at_zero, older]}, TASKS)
    assert adopted == [] and "at extra 2 (their extra checkpoints are unknown)" in left[0]
    twin = scaling(2, {"a": 60.0, "b": 50.0}, digest=full)
    adopted, left = adopt({"irrelevance": [*at_zero, older, twin]}, TASKS)
    assert len(adopted) == 2 and left == []
    assert at_zero[0]["finetuned_digest"] == DIGEST and older["finetuned_digest"] == full


def test_reproductions_that_name_different_fine_tunes_are_an_error():
    files = {"irrelevance": [_row("ties", {"a": 72.0}), _row("ties", {"a": 72.0}, digest="a=000000aa"),
                             _row("average", {"a": 50.0}), _row("average", {"a": 50.0}, digest="a=000000ff")]}
    with pytest.raises(MergeError, match="reproduced rows name different fine-tunes"):
        adopt(files, TASKS)


def test_adopt_files_rewrites_each_results_file_in_place(tmp_path):
    path = tmp_path / "toy_irrelevance" / "results.csv"
    for row in (_row("ties", {"a": 72.0, "b": 61.0}), _row("ties", {"a": 72.0, "b": 61.0}, digest=DIGEST)):
        append_row(path, row)
    adopted, _ = adopt_files([path, tmp_path / "toy_relevance" / "results.csv"], TASKS)  # a missing file is skipped
    assert len(adopted) == 1 and [row["finetuned_digest"] for row in read_rows(path)] == [DIGEST, DIGEST]
    with pytest.raises(MergeError, match="no results file"):
        adopt_files([tmp_path / "nothing.csv"], TASKS)


def test_the_domain_command_adopts_over_every_results_file_of_the_pool(tmp_path, monkeypatch, capsys):
    import yaml

    from vision.__main__ import main as vision_main

    (tmp_path / "base").mkdir()
    pool = tmp_path / "pool.yaml"
    pool.write_text(yaml.safe_dump({"name": "toy", "base": str(tmp_path / "base"), "tasks": ["mnist", "digits"]}))
    monkeypatch.chdir(tmp_path)
    digest = "mnist=000000aa digits=000000bb"
    append_row(tmp_path / "outs/toy_relevance_tasks/results.csv", _row("ties", {"mnist": 72.0, "digits": 61.0}))
    for row in (_row("ties", {"mnist": 71.0, "digits": 60.0}), _row("ties", {"mnist": 71.0, "digits": 60.0},
                                                                      digest=digest)):
        append_row(tmp_path / "outs/toy/results.csv", row)  # an all-task run re-made, to the digit
    assert vision_main(["adopt", "--pool", str(pool)]) == 0
    assert "2 rows adopted" in capsys.readouterr().out
    assert read_rows(tmp_path / "outs/toy_relevance_tasks/results.csv")[0]["finetuned_digest"] == digest
