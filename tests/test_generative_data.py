"""generative/data.py: BIG-bench subtasks become seeded, disjoint splits of exact-match and multiple-choice
examples (on a fake bigbench sdist), prepared once, and lm-eval local tasks."""
from __future__ import annotations

import json

import pytest

from generative import data
from generative.__main__ import main
from merging.errors import MergeError


def test_splits_are_seeded_disjoint_and_sized_by_the_formula(suite):
    splits = {s: data.load_split("add", s) for s in data.SPLITS}
    # 29 unique inputs (0 … 29 less the disagreeing 5): validation 29 // 5 = 5, test (29 − 5) // 2 = 12, train 12
    assert {s: len(rows) for s, rows in splits.items()} == {"train": 12, "validation": 5, "test": 12, "proxy": 12}
    inputs = {s: {r["input"] for r in rows} for s, rows in splits.items() if s != "proxy"}
    assert not (inputs["train"] & inputs["test"] or inputs["train"] & inputs["validation"]
                or inputs["test"] & inputs["validation"])
    assert "What is 5 plus 1?" not in set.union(*inputs.values())
    assert {"input": "What is 0 plus 1?", "target": "1"} in sum(splits.values(), [])
    assert splits["proxy"] == splits["train"]
    stamp = (data.task_dir("add") / "test.jsonl").stat().st_mtime_ns
    data.prepare(["add"])  # prepared once
    assert (data.task_dir("add") / "test.jsonl").stat().st_mtime_ns == stamp


def test_multiple_choice_from_target_scores_and_from_the_label_set(suite):
    qa = data.load_split("qa", "test") + data.load_split("qa", "train") + data.load_split("qa", "validation")
    assert len(qa) == 20 and all(r["choices"] == ["10", "20", "30"] and r["label"] == 1 for r in qa)
    yesno = data.load_split("yesno", "train")
    assert all(r["choices"] == ["No.", "Yes."] for r in yesno)
    assert all(r["label"] == (1 if int(r["input"].split()[1]) % 3 else 0) for r in yesno)
    tasks = data.local_tasks("test", ["add", "yesno"])
    assert [(t.name, t.kind, t.prompt) for t in tasks] == [("add", "exact_match", data.DEFAULT_PROMPT),
                                                           ("yesno", "multiple_choice", "{{input}} ok?")]


def test_bad_names_and_entries_are_errors(suite, tmp_path):
    with pytest.raises(MergeError, match="unknown generative task"):
        data.prepare(["nope"])
    with pytest.raises(MergeError, match="unknown split"):
        data.load_split("add", "dev")
    (tmp_path / "tasks.yaml").write_text("tasks:\n  - {name: a, bigbench: x/y, kind: rouge}\n")
    with pytest.raises(MergeError, match="kind 'rouge'"):
        data.entries()


def test_one_command_evaluates_a_model_folder_on_the_suite(tiny_pool, suite, tmp_path, capsys):
    pool = str(tiny_pool(tasks=["add", "yesno"]))
    main(["evaluate", "--pool", pool, "--label", "tiny", "--limit", "3", "--outs", str(tmp_path / "outs"),
          "--batch-size", "1"])
    scores = json.loads(capsys.readouterr().out.strip().splitlines()[-1])  # the printed {task: %} JSON
    assert set(scores) == {"add", "yesno"} and all(0 <= v <= 100 for v in scores.values())
    row = (tmp_path / "outs" / "tiny_lora" / "results.csv").read_text().splitlines()
    assert row[0].startswith("method,normalized,average,add,yesno") and row[1].startswith("tiny,,")  # no reference yet
    saved = json.loads((tmp_path / "outs" / "tiny_lora" / "lm_eval" / "tiny-test.json").read_text())
    assert saved["results"]["yesno"]["acc,none"] == pytest.approx(scores["yesno"] / 100, abs=1e-4)  # printed: 2 d.p.
    main(["finetune", "--pool", pool, "--tasks", "yesno", "--epochs", "0.5"])  # one step
    adapter = suite / "generative" / "pools" / "tiny_lora" / "yesno-seed0"
    assert json.loads((adapter / "finetune.json").read_text())["steps"] == 1
    main(["evaluate", "--pool", pool, "--adapter", str(adapter), "--label", "yesno", "--tasks", "yesno",
          "--limit", "3", "--outs", str(tmp_path / "outs")])
    rows = (tmp_path / "outs" / "tiny_lora" / "results.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[2].startswith("yesno,") and str(adapter) in rows[2]


# ----------------------------------------------------------------------------------- generated arithmetic
@pytest.mark.parametrize("operation", ["plus", "minus", "times", "divided by"])
def test_generated_arithmetic_is_right_distinct_seeded_and_in_bigbench_form(operation):
    from generative.arithmetic import arithmetic_task, result_range

    task = arithmetic_task(operation, 3, 300, seed="0/t")
    assert task == arithmetic_task(operation, 3, 300, seed="0/t") != arithmetic_task(operation, 3, 300, seed="1/t")
    examples = task["examples"]
    assert len(examples) == len({e["input"] for e in examples}) == 300
    low, high = result_range(operation, 3)
    for e in examples:
        a, b = (int(x) for x in e["input"].removeprefix("What is ").removesuffix("?").split(f" {operation} "))
        assert 0 <= a < 1000 and 0 <= b < 1000
        truth = {"plus": a + b, "minus": a - b, "times": a * b, "divided by": a // b}[operation]
        if operation == "divided by":
            assert a % b == 0 and 1 < b < a  # exact, and never a copy of an operand
        assert e["target"] == str(truth)
        scores = e["target_scores"]
        assert sorted(scores.values()) == [0] * 6 + [1] and scores[str(truth)] == 1
        wrong = [int(c) for c in scores if c not in ("banana", "house", str(truth))]
        assert len(wrong) == 4 and all(low <= x <= high for x in wrong) and {"banana", "house"} <= set(scores)


def test_arithmetic_tasks_build_without_the_bigbench_sdist(tmp_path, monkeypatch):
    monkeypatch.setenv("MERGING_CACHE", str(tmp_path / "cache"))
    (tmp_path / "tasks.yaml").write_text("tasks:\n  - {name: a2, arithmetic: {operation: plus, digits: 2}, "
                                         "kind: exact_match}\n  - {name: bb, bigbench: x/y, kind: exact_match}\n")
    monkeypatch.setattr(data, "TASKS_YAML", tmp_path / "tasks.yaml")
    monkeypatch.setattr(data, "fetch", lambda *a, **k: pytest.fail("no archive is needed for generated tasks"))
    splits = {s: data.load_split("a2", s) for s in data.SPLITS}
    assert {s: len(r) for s, r in splits.items()} == {"train": 1000, "validation": 100, "test": 200, "proxy": 100}
    assert all(int(r["target"]) == sum(map(int, r["input"][8:-1].split(" plus "))) for r in splits["test"])


@pytest.mark.parametrize("entry, message", [
    ("{name: a, kind: exact_match}", "expected one source"),
    ("{name: a, bigbench: x/y, arithmetic: {operation: plus, digits: 2}, kind: exact_match}", "expected one source"),
    ("{name: a, arithmetic: {operation: plus}, kind: exact_match}", r"expected \{operation, digits\}"),
])
def test_a_task_names_one_source(tmp_path, monkeypatch, entry, message):
    (tmp_path / "tasks.yaml").write_text(f"tasks:\n  - {entry}\n")
    monkeypatch.setattr(data, "TASKS_YAML", tmp_path / "tasks.yaml")
    with pytest.raises(MergeError, match=message):
        data.entries()


def test_an_unknown_operation_or_digit_count_is_an_error():
    from generative.arithmetic import arithmetic_task

    with pytest.raises(MergeError, match="arithmetic: operation .modulo. unknown; known: plus, minus, times, divided by"):
        arithmetic_task("modulo", 2, 10, seed="0")
    with pytest.raises(MergeError, match="digits 9, expected an integer from 2 to 6"):
        arithmetic_task("plus", 9, 10, seed="0")


# ----------------------------------------------------------------------------------------- evals registry
def fake_evals(path, rows_by_file):
    import io
    import tarfile

    with tarfile.open(path, "w:gz") as tar:
        for file, rows in rows_by_file.items():
            blob = "".join(json.dumps(r) + "\n" for r in rows).encode()
            info = tarfile.TarInfo(f"evals-3.0.1.post1/evals/registry/data/{file}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


def test_an_eval_becomes_inputs_after_its_instructions_and_its_ideal_as_target(tmp_path):
    def row(expression, ideal):
        return {"input": [{"role": "system", "content": "You judge logic."},
                          {"role": "user", "content": f"Decide. The expression is: {expression} which evaluates to:"}],
                "ideal": ideal}
    sdist = fake_evals(tmp_path / "evals.tar.gz", {"logic/x.jsonl": [row("not true", "false"), row("true", ["1", "true"])]})
    joined = data.evals_task(sdist, "logic/x.jsonl")
    assert joined["examples"][0] == {"input": "Decide. The expression is: not true which evaluates to:", "target": "false"}
    assert data.evals_task(sdist, "logic/x.jsonl", skip=0)["examples"][1]["input"].startswith("You judge logic.\n")
    cut = data.evals_task(sdist, "logic/x.jsonl", pattern=r".*is: (?P<input>.*?) which evaluates to:",
                          labels={"1": "yes"})
    assert cut["examples"] == [{"input": "not true", "target": "false"}, {"input": "true", "target": "yes"}]
    with pytest.raises(MergeError, match=r"task 't': .*evals\.tar\.gz logic/x\.jsonl row 1: input 'Decide.* does not "
                                         r"match 'nope'"):
        data.evals_task(sdist, "logic/x.jsonl", pattern="nope", task="task 't'")
    mc = data.examples_of({"kind": "multiple_choice"}, cut)  # choices: the task's label set, as BIG-bench's
    assert [(e["choices"], e["label"]) for e in mc] == [(["false", "yes"], 0), (["false", "yes"], 1)]


def test_evals_tasks_read_the_pinned_evals_sdist(tmp_path, monkeypatch):
    monkeypatch.setenv("MERGING_CACHE", str(tmp_path / "cache"))
    rows = [{"input": [{"role": "user", "content": f"Is {i} even?"}], "ideal": "yes" if i % 2 == 0 else "no"}
            for i in range(40)]
    sdist = fake_evals(tmp_path / "evals.tar.gz", {"even/samples.jsonl": rows})
    fetched = []
    monkeypatch.setattr(data, "fetch", lambda pkg, *a, **k: fetched.append(pkg.name) or sdist)
    (tmp_path / "tasks.yaml").write_text("tasks:\n  - {name: even, evals: {file: even/samples.jsonl, skip: 0}, "
                                         "kind: multiple_choice}\n")
    monkeypatch.setattr(data, "TASKS_YAML", tmp_path / "tasks.yaml")
    test = data.load_split("even", "test")
    assert fetched == ["evals"] and len(test) == (40 - 8) // 2
    assert all(r["choices"] == ["no", "yes"] and r["label"] == (int(r["input"].split()[1]) % 2 == 0) for r in test)
    (tmp_path / "tasks.yaml").write_text("tasks:\n  - {name: even, evals: {file: x, skip: 0, regex: y}, "
                                         "kind: multiple_choice}\n")
    with pytest.raises(MergeError, match="expected file and optionally labels, pattern, skip"):
        data.entries()
