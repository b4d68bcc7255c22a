"""Data-driven merges from the merge command line (merging/data_merge.py, discriminative/merge_data.py): two tiny
BERT classifiers fine-tuned on two JSONL keyword tasks, merged by FW, RegMean and AdaMerging from a config with a
``data:`` section; the outputs load and beat the pre-trained encoder; the CLI's FW merge equals the benchmark's on
the same pool and data; every bad-data case is refused before any weight is read."""
import copy
import json

import pytest
import torch
import yaml

from discriminative.demo import KEYWORDS as SPECS
from discriminative.demo import write_demo
from discriminative.pool import load_pool
from merging.benchmark.evaluate import Evaluator
from merging.benchmark.experiment import merged_body, run_experiment
from merging.cli import main
from merging.registry import known_methods

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(root, a merge-config writer, the path of the ``data: files`` pool YAML): the demo's base encoder, JSONL
    files and pool (discriminative/demo.py) with its two fine-tuned checkpoints, in this module's own cache."""
    root = tmp_path_factory.mktemp("merge_data")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MERGING_CACHE", str(root / "cache"))
        demo = yaml.safe_load(write_demo(root).read_text())
        run_experiment(load_pool(root / "pool.yaml"), "finetuned", "demo", {}, progress=False, outs=root / "outs")

        def config(method: str, parameters: dict) -> dict:
            return {**copy.deepcopy(demo), "method": method, "parameters": parameters}
        yield root, config, root / "pool.yaml"  # the cache stays this module's until its last test


def _merge(root, cfg: dict, name: str) -> int:
    """``python -m merging merge`` of ``cfg`` into root/name; its exit status."""
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return main(["merge", str(path), "--out", str(root / name), "--quiet"])


def _accuracy(folder, task: str, root) -> float:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    rows = [json.loads(line) for line in (root / "data" / f"{task}_test.jsonl").read_text().splitlines()]
    with torch.no_grad():
        batch = tokenizer([r["sentence"] for r in rows], padding=True, truncation=True, max_length=16,
                          return_tensors="pt")
        predicted = model(**batch).logits.argmax(-1)
    return float((predicted == torch.tensor([r["label"] for r in rows])).float().mean())


def _pretrained_accuracy(root, config, task: str) -> float:
    """The pre-trained encoder with the task's own head (classifier and pooler): what a merge must beat."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertModel

    cfg = config("regmean", {})
    model = AutoModelForSequenceClassification.from_pretrained(next(m["model"] for m in cfg["models"]
                                                                    if m["task"] == task))
    encoder = BertModel.from_pretrained(cfg["base"]).state_dict()
    model.bert.load_state_dict({k: v for k, v in encoder.items() if not k.startswith("pooler.")}, strict=False)
    folder = root / f"pretrained_{task}"
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(cfg["base"]).save_pretrained(folder)
    return _accuracy(folder, task, root)


@pytest.mark.parametrize("method,parameters", [("frank_wolfe", {"iterations": 3, "lambda": 1.0}),
                                               ("regmean", {"alpha": 0.5}),
                                               ("adamerging", {"steps": 20, "init": 1.0})])
def test_a_data_driven_merge_from_the_cli_writes_task_models_that_beat_the_pretrained_encoder(
        trained, method, parameters):
    root, config, _ = trained
    assert _merge(root, config(method, parameters), method) == 0
    info = json.loads((root / method / "merge_info.json").read_text())
    assert info["method"] == method and set(info["tasks"]) == set(SPECS)
    if method == "frank_wolfe":
        assert len(info["log"]["history"]) == 3 and "gap" in info["log"]["history"][0]
    assert "tags:" in (root / method / "README.md").read_text() and (root / method / "merge_config.yaml").is_file()
    for task in SPECS:
        assert _accuracy(root / method / task, task, root) > _pretrained_accuracy(root, config, task) + 0.1, task


@pytest.mark.parametrize("method,parameters", [("frank_wolfe", {"iterations": 3, "lambda": 0.3, "eta": 0.1}),
                                               ("regmean", {"alpha": 0.5})])
def test_the_cli_merge_equals_the_benchmark_merge_on_the_same_pool_and_data(trained, method, parameters):
    root, config, pool_yaml = trained
    assert _merge(root, config(method, parameters), f"{method}_same") == 0
    pool = load_pool(pool_yaml)
    body, _ = merged_body(pool, Evaluator(pool, "validation", 0), method, parameters, [], 0, [(t, 0) for t in SPECS])
    from safetensors.torch import load_file

    for task in SPECS:
        written = load_file(root / f"{method}_same" / task / "model.safetensors")
        assert all(torch.equal(written[name], tensor) for name, tensor in body.items() if name in written)
        assert sum(name in written for name in body) > 10


def _refused(root, cfg: dict, name: str, capsys) -> str:
    code = _merge(root, cfg, name)
    error = capsys.readouterr().err
    assert code == 2 and "error:" in error and not (root / name).exists(), error
    return error


def _task(cfg: dict, task: str = "has_good") -> dict:
    return cfg["data"]["tasks"][task]


@pytest.mark.parametrize("case,named", [
    ("missing file", ["nowhere.jsonl", "does not exist"]),
    ("missing column", ["has_good_proxy.jsonl", "row 1", "'text'", "'sentence'"]),
    ("label outside the head", ["bad_labels.jsonl", "row 2", "7", "2 labels"]),
    ("label name unknown", ["bad_labels.jsonl", "row 2", "'maybe'"]),
    ("not JSON", ["broken.jsonl", "line 2", "not JSON"]),
    ("unsupported format", ["data.txt", ".jsonl"]),
    ("task without a model", ["['has_good', 'has_sport']", "['extra', 'has_good', 'has_sport']"]),
    ("model without a task", ["each model entry", "'task'"]),
    ("unknown kind", ["data.kind 'speech'", "sequence_classification"]),
    ("unknown key", ["data", "colour"]),
    ("data-free method", ["'ties' reads no data"]),
    ("greedy soup without validation", ["greedy_soup", "validation", "has_good"]),
    ("bad parameter", ["iterations"]),
])
def test_bad_data_is_refused_before_any_weight_is_read_naming_file_column_and_value(trained, capsys, case, named):
    root, config, _ = trained
    cfg = config("frank_wolfe", {"iterations": 2})
    bad = root / "data" / "bad_labels.jsonl"
    if case == "missing file":
        _task(cfg)["proxy"] = str(root / "data" / "nowhere.jsonl")
    elif case == "missing column":
        _task(cfg)["text"] = "text"
    elif case in ("label outside the head", "label name unknown"):
        value = 7 if case == "label outside the head" else "maybe"
        bad.write_text(json.dumps({"sentence": "good film", "label": 1}) + "\n"
                       + json.dumps({"sentence": "bad plot", "label": value}) + "\n")
        _task(cfg)["proxy"] = str(bad)
    elif case == "not JSON":
        broken = root / "data" / "broken.jsonl"
        broken.write_text('{"sentence": "good", "label": 1}\n{"sentence": oops}\n')
        _task(cfg)["proxy"] = str(broken)
    elif case == "unsupported format":
        _task(cfg)["proxy"] = str(root / "data" / "data.txt")
    elif case == "task without a model":
        cfg["data"]["tasks"]["extra"] = dict(_task(cfg))
    elif case == "model without a task":
        del cfg["models"][0]["task"]
    elif case == "unknown kind":
        cfg["data"]["kind"] = "speech"
    elif case == "unknown key":
        cfg["data"]["colour"] = "red"
    elif case == "data-free method":
        cfg["method"] = "ties"
    elif case == "greedy soup without validation":
        cfg["method"], cfg["parameters"] = "greedy_soup", {}
    elif case == "bad parameter":
        cfg["parameters"] = {"iterations": -1}
    error = _refused(root, cfg, case.replace(" ", "_"), capsys)
    assert all(word in error for word in named), error


def test_csv_and_parquet_tables_and_label_names_read_as_jsonl_does(trained, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from discriminative.files import FileTask, examples

    rows = [{"sentence": "good film", "label": "positive"}, {"sentence": "bad plot", "label": "negative"}]
    (tmp_path / "t.csv").write_text("sentence,label\n" + "".join(f"{r['sentence']},{r['label']}\n" for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "t.parquet")
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    read = [examples(FileTask(proxy=tmp_path / f"t.{suffix}", text="sentence", num_labels=2,
                              label_names=["negative", "positive"]), "t", "proxy")
            for suffix in ("csv", "parquet", "jsonl")]
    assert read[0] == read[1] == read[2] and [e.label for e in read[0]] == [1, 0]


def test_a_split_may_come_from_a_hub_data_set(monkeypatch):
    from discriminative import files
    from merging.benchmark import hub_data

    asked = []

    def fake_hub(repo, name=None, split=None):
        asked.append((repo, name, split))
        return [{"sentence": "good film", "label": 1}, {"sentence": "bad plot", "label": 0}]
    monkeypatch.setattr(hub_data, "load_hub_dataset", fake_hub)
    task = files.FileTask.model_validate({"proxy": {"hub": "nyu-mll/glue", "name": "sst2", "split": "train[:2]"},
                                          "text": "sentence", "num_labels": 2})
    assert [e.label for e in files.examples(task, "sst2", "proxy")] == [1, 0]
    assert asked == [("nyu-mll/glue", "sst2", "train[:2]")]


SMALL = {"frank_wolfe": {"iterations": 2}, "frank_wolfe_soft": {"iterations": 1, "ada_steps": 2},
         "adamerging": {"steps": 2}, "regmean": {}, "regmean_plusplus": {}, "fisher": {}, "greedy_soup": {}}


@pytest.mark.parametrize("method", known_methods("data_driven"))
def test_every_data_driven_method_merges_from_the_cli(trained, method):
    root, config, _ = trained
    cfg = config(method, SMALL[method])  # a method missing from SMALL fails here: give it small settings
    for task, entry in cfg["data"]["tasks"].items():
        entry["validation"] = str(root / "data" / f"{task}_validation.jsonl")  # greedy soup chooses on it
    assert _merge(root, cfg, f"every_{method}") == 0
    for task in SPECS:
        assert (root / f"every_{method}" / task / "model.safetensors").is_file()
    assert json.loads((root / f"every_{method}" / "merge_info.json").read_text())["method"] == method


def test_a_benchmark_pool_never_scores_on_the_proxy_in_place_of_a_missing_test_file(tmp_path):
    from discriminative.files import FileTask, examples
    from merging.errors import MergeError

    (tmp_path / "p.jsonl").write_text(json.dumps({"sentence": "good", "label": 1}) + "\n")
    task = FileTask(proxy=tmp_path / "p.jsonl", text="sentence", num_labels=2)
    with pytest.raises(MergeError, match="task 't': no 'test' file for this task"):
        examples(task, "t", "test")
