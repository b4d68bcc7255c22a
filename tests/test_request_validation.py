"""Bad requests are refused before any work: ``python -m discriminative | vision | generative`` check the pool
YAML, the method name, every parameter (command line, method YAML, grid) against the method's schema, the
seeds, the sizes and the local folders first, and answer with one ``error: ...`` line that names the bad value.

Every test runs with the expensive steps (downloads, data preparation, fine-tuning, scoring, merging) replaced by
a trap: a test passes only if the request is refused before any of them starts."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import yaml

import generative.__main__ as generative_cli
import merging.io.pypi
from discriminative import tasks
from discriminative.__main__ import main as discriminative_main
from discriminative.data import TaskSpec
from discriminative.domain import TEXT
from generative import data as generative_data
from generative import run as generative_run
from merging.benchmark import experiment, store
from vision.__main__ import main as vision_main
from vision.domain import VISION

SPECS = {"has_good": TaskSpec("has_good", "classification", 2, "accuracy"),
         "has_sport": TaskSpec("has_sport", "classification", 2, "accuracy")}
BAD_YAML = {"non-UTF-8 bytes": (b"name: caf\xe9\n", "UTF-8"),
            "a YAML syntax error": (b"name: [unclosed\n", "invalid YAML"),
            "a list at the top level": (b"- name: x\n- base: y\n", "expected a mapping")}


def _trap(*args, **kwargs):
    raise AssertionError("expensive work before validation")


@pytest.fixture(autouse=True)
def no_work(monkeypatch, tmp_path):
    """Downloads, data preparation, fine-tuning, evaluation and merges all raise."""
    import huggingface_hub

    monkeypatch.setenv("MERGING_CACHE", str(tmp_path / "cache"))
    for owner, name in [(merging.io.pypi, "fetch"), (merging.io.pypi, "resolve_package_ref"),
                        (huggingface_hub, "snapshot_download"),
                        (store, "finetune"), (store, "finetune_many"), (store, "base_folder"),
                        (experiment, "finetune"), (experiment, "base_folder"), (experiment, "Evaluator"),
                        (TEXT, "prepare"), (VISION, "prepare"),
                        (generative_data, "prepare"), (generative_data, "fetch"),
                        (generative_cli, "train_many"), (generative_cli, "evaluate_model"),
                        (generative_run, "finetuned_scores"), (generative_run, "scores_of"),
                        (generative_run, "merge_adapters"), (generative_run, "run_merge"),
                        (generative_run, "read_lora_adapter"), (generative_run, "train_many")]:
        monkeypatch.setattr(owner, name, _trap)


def refusal(capsys, main, argv: list[str]) -> str:
    """The one-line error of a refused request: exit status 2 and one ``error:`` line on stderr (every command
    line, and argparse); any other exception fails the test."""
    try:
        code = main(argv)
    except SystemExit as stop:
        code = stop.code
    assert code == 2, f"exit status {code} for a bad request {argv}"
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines and "error: " in lines[-1], lines
    return lines[-1]


@pytest.fixture
def text_pool(tmp_path, monkeypatch):
    """``text_pool(**keys)`` -> the path of a discriminative pool YAML (two toy tasks, seeds 0 and 1, an existing
    base folder); no data or model is ever read."""
    monkeypatch.setitem(tasks.PROVIDERS, "toy", lambda: (SPECS.__getitem__, _trap))
    (tmp_path / "base").mkdir()

    def write(**keys) -> str:
        path = tmp_path / "text_pool.yaml"
        path.write_text(yaml.safe_dump({"name": "toy", "base": str(tmp_path / "base"), "tasks": list(SPECS),
                                        "data": "toy", "finetune": {"seeds": [0, 1]}, **keys}))
        return str(path)
    return write


@pytest.fixture
def vision_pool(tmp_path):
    (tmp_path / "base").mkdir(exist_ok=True)
    path = tmp_path / "vision_pool.yaml"
    path.write_text(yaml.safe_dump({"name": "toy", "base": str(tmp_path / "base"), "tasks": ["mnist", "mnist_parity"]}))
    return str(path)


@pytest.fixture
def generative_pool(suite, tmp_path):
    """``generative_pool(kind, **keys)`` -> the path of a generative pool YAML over the fake suite's qa and yesno
    (tests/conftest.py), with an existing base folder and no trained checkpoint."""
    (tmp_path / "lm").mkdir()

    def write(kind: str = "lora", **keys) -> str:
        path = tmp_path / f"generative_{kind}.yaml"
        path.write_text(yaml.safe_dump({"name": f"g_{kind}", "base": str(tmp_path / "lm"), "kind": kind,
                                        "tasks": ["qa", "yesno"], **keys}))
        return str(path)
    return write


# ------------------------------------------------------------------------------ python -m discriminative | vision
def test_an_unknown_method_is_named_with_the_known_ones(text_pool, capsys):
    error = refusal(capsys, discriminative_main, ["run", "--pool", text_pool(), "--method", "tie"])
    assert "unknown method 'tie'" in error and "ties" in error and "frank_wolfe" in error


@pytest.mark.parametrize("method,overrides,named", [
    ("ties", ["--density", "abc"], ["density", "'abc'", "number"]),      # ill-typed
    ("ties", ["--density", "1.5"], ["density", "1.5", "less than or equal to 1"]),  # out of the schema's range
    ("ties", ["--sparsity", "0.2"], ["sparsity", "density"]),           # not a parameter (the known ones listed)
    ("task_arithmetic", ["--scaling", "big"], ["lambda", "'big'"]),     # the alias of lambda
    ("frank_wolfe", ["--iterations", "0"], ["iterations", "0"]),        # a data-driven method's schema
    ("frank_wolfe", ["--oracle", "exact"], ["oracle", "'exact'", "cosine"]),
    ("greedy_soup", ["--lambda", "0.5"], ["greedy_soup", "lambda"]),    # takes no parameters
    ("finetuned", ["--density", "0.2"], ["finetuned", "density"]),      # neither does a reference
    ("ties", ["--merge-biases", "maybe"], ["--merge-biases", "'maybe'", "true or false"]),
    ("ties", ["--density", "!!python/object/apply:os.system [id]"], ["--density", "not a YAML value"]),
])
def test_each_override_is_checked_against_the_methods_parameters(text_pool, capsys, method, overrides, named):
    error = refusal(capsys, discriminative_main, ["run", "--pool", text_pool(), "--method", method, *overrides])
    assert all(word in error for word in named), error


@pytest.mark.parametrize("main,statistics,named", [
    (discriminative_main, "reestimate", "no running statistics"),  # text models have no BatchNorm
    (vision_main, "recompute", "average, reestimate"),
])
def test_a_bad_statistics_value_is_refused(text_pool, vision_pool, capsys, main, statistics, named):
    pool = text_pool() if main is discriminative_main else vision_pool
    error = refusal(capsys, main, ["run", "--pool", pool, "--method", "ties", "--statistics", statistics])
    assert statistics in error and named in error


def test_a_routed_merge_is_refused_where_it_would_route_among_one_tasks_checkpoints(text_pool, vision_pool, capsys):
    error = refusal(capsys, discriminative_main, ["scale", "--pool", text_pool(), "--claim", "relevance", "--method",
                                                  "twin_merging", "--targets", "has_good", "--extra", "1"])
    assert "--claim relevance" in error and "irrelevance and relevance_tasks" in error
    error = refusal(capsys, vision_main, ["run", "--pool", vision_pool, "--method", "twin_merging",
                                          "--statistics", "reestimate"])
    assert "--statistics reestimate" in error and "average running statistics" in error


@pytest.mark.parametrize("where", ["base", "checkpoint"])
def test_a_missing_local_folder_is_named(text_pool, tmp_path, capsys, where):
    missing = str(tmp_path / "nowhere" / "model")
    keys = {"base": missing} if where == "base" else {"checkpoints": {"has_sport": missing}}
    error = refusal(capsys, discriminative_main, ["run", "--pool", text_pool(**keys), "--method", "ties"])
    assert missing in error and "does not exist" in error


@pytest.mark.parametrize("command", [
    ["run", "--method", "ties"],
    ["scale", "--claim", "relevance", "--method", "ties", "--targets", "has_good", "--extra", "1"]])
def test_pool_seeds_must_be_fine_tuning_seeds_of_the_pool(text_pool, capsys, command):
    error = refusal(capsys, discriminative_main, [*command, "--pool", text_pool(), "--pool-seeds", "0", "5"])
    assert "--pool-seeds [5]" in error and "[0, 1]" in error


@pytest.mark.parametrize("command, named", [
    (["run", "--method", "regmean", "--grid-points", "1", "3"],
     ["--grid-points 3", "has 3 point(s), 0 to 2", "0: alpha 0.1; 1: alpha 0.5; 2: alpha 0.9"]),
    (["run", "--method", "regmean", "--alpha", "0.5", "--grid-points", "1"], ["--grid-points 1", "has 1 point(s)"]),
    (["scale", "--claim", "irrelevance", "--method", "frank_wolfe", "--preset", "layerwise", "--targets", "has_good",
      "--extra", "1", "--grid-points", "-1"], ["--grid-points -1", "vertex_scale 2"]),
    (["run", "--method", "ties", "--grid-points", "0"], ["only a data-driven merge's", "'ties' is not one"])])
def test_grid_points_must_be_points_of_a_data_driven_methods_grid(text_pool, capsys, command, named):
    error = refusal(capsys, discriminative_main, [*command, "--pool", text_pool()])
    assert all(needle in error for needle in named), error


@pytest.mark.parametrize("claim, extra", [("irrelevance", "-1"), ("irrelevance", "two"), ("relevance", "all")])
def test_a_bad_number_of_extra_checkpoints_is_refused(text_pool, capsys, claim, extra):
    error = refusal(capsys, discriminative_main, ["scale", "--pool", text_pool(), "--claim", claim,
                                                  "--method", "ties", "--targets", "has_good", "--extra", extra])
    assert f"--extra {extra}" in error and "expected a number" in error


def test_extra_all_is_every_other_task_once():
    from merging.benchmark.scaling import extra_candidates, extra_count

    pool = SimpleNamespace(tasks=["a", "b", "c", "d"], finetune=SimpleNamespace(seeds=[0, 1]))
    assert extra_count(pool, ["a"], "irrelevance", "all") == extra_count(pool, ["a"], "relevance_tasks", "all") == 3
    assert extra_candidates(pool, ["a"], "irrelevance", 3, 1) == [("b", 1), ("c", 1), ("d", 1)]


@pytest.mark.parametrize("command", [["run", "--method", "ties"], ["variants", "--targets", "has_good"],
                                     ["claims", "--targets", "has_good"], ["plot", "--claim", "irrelevance"]])
def test_an_experiment_must_be_one_folder_name_under_outs(text_pool, capsys, command):
    error = refusal(capsys, discriminative_main, [*command, "--pool", text_pool(), "--experiment", "../elsewhere"])
    assert "--experiment '../elsewhere'" in error and "one folder name under outs/" in error


def test_claims_targets_must_be_tasks_of_the_pool(text_pool, capsys):
    error = refusal(capsys, discriminative_main, ["claims", "--pool", text_pool(), "--targets", "has_good", "nosuch"])
    assert "nosuch" in error and "has_good" in error


@pytest.mark.parametrize("options,named", [
    (["--workers", "0"], ["--workers", "'0'"]),
    (["--tasks", "has_good", "has_bad"], ["has_bad", "has_sport"]),
    (["--seeds", "0", "-1"], ["--seeds", "-1"]),
    (["--only", "has_good:0", "nosuch:0"], ["--only", "nosuch"]),  # a worker's share is checked too
])
def test_finetune_checks_workers_tasks_and_seeds_first(text_pool, capsys, options, named):
    error = refusal(capsys, discriminative_main, ["finetune", "--pool", text_pool(), *options])
    assert all(word in error for word in named), error


@pytest.mark.parametrize("content,named", [
    (b"parameters: {density: 0.2}\nsearch: {lambda: 0.5}\n", "search"),  # a grid value that is not a list
    (b"parameters: {density: abc}\n", "'abc'"),                          # the YAML's own values are checked
    (b"search: {lambda: [0.5, 1.0], density: [0.2, 7]}\n", "7"),         # so is every point of the grid
    (b"presets: {p: {source: s, parameters: {density: 0.2}, search: {density: [0.1]}}}\n",
     "both fixed (parameters) and searched (search)"),                   # a preset fixes or searches a key
    *((content, named) for content, named in BAD_YAML.values())])
def test_a_bad_method_yaml_is_named_before_any_work(text_pool, tmp_path, monkeypatch, capsys, content, named):
    configs = tmp_path / "configs"
    (configs / "methods").mkdir(parents=True)
    (configs / "methods" / "ties.yaml").write_bytes(content)
    monkeypatch.setattr(experiment, "CONFIGS", configs)
    experiment._method_yaml.cache_clear()
    try:
        error = refusal(capsys, discriminative_main, ["run", "--pool", text_pool(), "--method", "ties"])
    finally:
        experiment._method_yaml.cache_clear()
    assert "ties.yaml" in error and named in error


def test_a_preset_may_carry_its_own_validation_grid(text_pool, tmp_path, monkeypatch, capsys):
    """A preset's ``search`` replaces the method YAML's grid for its keys; the command line still fixes any key;
    every point of the preset's grid is checked against the schema when the preset is asked for."""
    configs = tmp_path / "configs"
    (configs / "methods").mkdir(parents=True)
    (configs / "methods" / "ties.yaml").write_text(
        "parameters: {density: 0.2}\nsearch: {lambda: [0.5, 1.0]}\npresets:\n"
        "  wide: {source: ours, parameters: {elect: count}, search: {lambda: [0.3, 0.6, 0.9], density: [0.1, 0.3]}}\n"
        "  bad: {source: ours, parameters: {}, search: {density: [0.2, 7]}}\n")
    monkeypatch.setattr(experiment, "CONFIGS", configs)
    experiment._method_yaml.cache_clear()
    try:
        params, grid, _ = experiment.method_config("discriminative", "ties", {"preset": "wide"})
        assert params == {"density": 0.2, "elect": "count"} and grid == {"lambda": [0.3, 0.6, 0.9],
                                                                         "density": [0.1, 0.3]}
        assert experiment.method_config("discriminative", "ties", {"preset": "wide", "density": 0.5})[1] == {
            "lambda": [0.3, 0.6, 0.9]}
        assert experiment.method_config("discriminative", "ties", {})[1] == {"lambda": [0.5, 1.0]}
        error = refusal(capsys, discriminative_main, ["run", "--pool", text_pool(), "--method", "ties",
                                                      "--preset", "bad"])
    finally:
        experiment._method_yaml.cache_clear()
    assert "ties.yaml" in error and "7" in error


@pytest.mark.parametrize("case", list(BAD_YAML))
@pytest.mark.parametrize("domain", ["discriminative", "vision", "generative"])
def test_a_bad_pool_yaml_is_a_clean_error_naming_the_file(tmp_path, capsys, suite, domain, case):
    content, named = BAD_YAML[case]
    path = tmp_path / "bad_pool.yaml"
    path.write_bytes(content)
    main = {"discriminative": discriminative_main, "vision": vision_main, "generative": generative_cli.main}[domain]
    error = refusal(capsys, main, ["prepare", "--pool", str(path)])
    assert "bad_pool.yaml" in error and named in error


@pytest.mark.parametrize("argv", [
    ["run", "--method", "ties", "--density", "0.2", "--scaling", "0.7", "--pool-seeds", "1"],
    ["run", "--method", "frank_wolfe", "--iterations", "3", "--oracle", "linear", "--merge-biases", "false"],
    ["run", "--method", "finetuned"],
    ["run", "--method", "regmean", "--grid-points", "2", "0"],
    ["scale", "--claim", "irrelevance", "--method", "regmean", "--targets", "has_good", "--extra", "1",
     "--grid-points", "0"],
    ["scale", "--claim", "relevance", "--method", "task_arithmetic", "--targets", "has_good", "--extra", "4"],
    ["finetune", "--seeds", "3", "--tasks", "has_sport", "--workers", "2"]])
def test_a_good_request_passes_the_checks_and_reaches_the_work(text_pool, argv):
    with pytest.raises(AssertionError, match="expensive work"):
        discriminative_main([*argv, "--pool", text_pool()])


def test_every_shipped_method_config_passes_the_checks():
    from discriminative.pool import TextPool
    from generative.merge import adapter_methods
    from generative.pool import GenerativePool
    from generative.run import check_method as check_generative
    from merging.registry import known_methods
    from vision.pool import VisionPool

    fixed = {"slerp": {"t": 0.5}}  # the one method without a config: t has no default
    for pool in (TextPool(name="t", base="b", tasks=["a"]), VisionPool(name="v", base="b", tasks=["a"])):
        for method in [*experiment.REFERENCES, *experiment.runnable_methods()]:
            experiment.check_method(pool, method, fixed.get(method, {}))
    for kind, methods in (("lora", adapter_methods()), ("full", known_methods("per_tensor"))):
        for method in methods:
            check_generative(GenerativePool(name="g", base="b", kind=kind, tasks=["qa"]), method, fixed.get(method, {}))
    pool = VisionPool(name="v", base="b", tasks=["a"])
    for method in known_methods("data_driven"):  # and every preset
        for preset in experiment._method_yaml("vision", method).get("presets") or {}:
            experiment.check_method(pool, method, {"preset": preset})


def test_an_unknown_preset_is_named_with_the_known_ones(text_pool, capsys):
    error = refusal(capsys, discriminative_main, ["run", "--pool", text_pool(), "--method", "frank_wolfe_soft",
                                                  "--preset", "irrelevant"])
    assert "'irrelevant'" in error and "irrelevance, relevance, main" in error


# ------------------------------------------------------------------------------------------ python -m generative
def test_generative_run_names_an_unknown_method_not_a_missing_checkpoint(generative_pool, capsys):
    error = refusal(capsys, generative_cli.main, ["run", "--method", "tie", "--pool", generative_pool()])
    assert "unknown method 'tie'" in error and "ties" in error and "no trained checkpoint" not in error


def test_generative_run_says_why_a_routed_merge_does_not_run_there(generative_pool, capsys):
    error = refusal(capsys, generative_cli.main, ["run", "--method", "twin_merging", "--pool", generative_pool()])
    assert "routed merge" in error and "discriminative and vision pools only" in error


def test_a_good_generative_request_passes_the_checks(generative_pool):
    with pytest.raises(AssertionError, match="expensive work"):  # training the missing adapters: the request was good
        generative_cli.main(["run", "--method", "frank_wolfe", "--pool", generative_pool(), "--space", "product",
                             "--iterations", "2"])
    with pytest.raises(AssertionError, match="expensive work"):
        generative_cli.main(["finetune", "--pool", generative_pool(), "--epochs", "2", "--seeds", "0", "1"])


@pytest.mark.parametrize("kind,method,settings,named", [
    ("lora", "ties", ["density=abc"], ["density", "'abc'"]),
    ("lora", "ties", ["weight=2"], ["weight"]),                    # a per-model key: not for LoRA merges
    ("lora", "frank_wolfe", ["space=diagonal"], ["space", "'diagonal'"]),
    ("lora", "frank_wolfe", ["proxy_examples=0"], ["proxy_examples"]),
    ("lora", "from_lora", ["rank=0"], ["rank"]),
    ("full", "ties", ["rank=4"], ["rank"]),                        # full fine-tunes merge through the engine
    ("full", "frank_wolfe", [], ["frank_wolfe", "lora"]),          # not wired for full fine-tunes
    ("full", "from_lora", [], ["from_lora"]),                      # adapters only
])
def test_generative_run_checks_the_method_and_each_set_value(generative_pool, capsys, kind, method, settings,
                                                               named):
    argv = ["run", "--method", method, "--pool", generative_pool(kind),
            *(token for s in settings for token in ("--" + s.split("=")[0].replace("_", "-"), s.split("=", 1)[1]))]
    error = refusal(capsys, generative_cli.main, argv)
    assert all(word in error for word in named) and "no trained checkpoint" not in error, error


@pytest.mark.parametrize("setting,named", [("lr=abc", ["lr", "'abc'"]), ("rank=8", ["rank"]),
                                           ("epochs=0", ["epochs"]), ("lr=!!python/name:os.system", ["not a YAML"])])
def test_generative_finetune_checks_training_settings_first(generative_pool, capsys, setting, named):
    key, value = setting.split("=", 1)
    error = refusal(capsys, generative_cli.main, ["finetune", "--pool", generative_pool(), f"--{key}", value])
    assert all(word in error for word in named), error


def test_generative_pool_tasks_must_be_tasks_of_the_suite(generative_pool, capsys):
    pool = generative_pool(tasks=["qa", "riddles"])
    error = refusal(capsys, generative_cli.main, ["finetune", "--pool", pool])
    assert "riddles" in error and "yesno" in error


@pytest.mark.parametrize("argv,named", [
    (["evaluate", "--limit", "0"], "--limit"),
    (["evaluate", "--batch-size", "0"], "--batch-size"),
    (["run", "--method", "ties", "--limit-validation", "0"], "--limit-validation"),
    (["run", "--method", "finetuned", "--lambda", "0.5"], "reference"),
    (["finetune", "--seeds", "-1"], "--seeds"),
    (["finetune", "--only", "nosuch:0"], "nosuch"),
])
def test_generative_sizes_and_seeds_are_checked_first(generative_pool, capsys, argv, named):
    error = refusal(capsys, generative_cli.main, [*argv, "--pool", generative_pool()])
    assert named in error


@pytest.mark.parametrize("where", ["base", "--model", "--adapter"])
def test_generative_missing_local_folders_are_named(generative_pool, tmp_path, capsys, where):
    missing = str(tmp_path / "nowhere" / "model")
    if where == "base":
        argv = ["run", "--method", "ties", "--pool", generative_pool(base=missing)]
    else:
        argv = ["evaluate", "--pool", generative_pool(), where, missing]
    error = refusal(capsys, generative_cli.main, argv)
    assert missing in error and "does not exist" in error and "no trained checkpoint" not in error


@pytest.mark.parametrize("keys,argv,named", [
    ({"proxy": "missing_proxy.json"}, ["--lambda", "0.5"], "missing_proxy.json"),
    ({}, [], "no tasks to choose"),  # the grid of lambda must be fixed on the command line
])
def test_generative_given_checkpoints_are_not_downloaded_for_a_bad_request(generative_pool, capsys, keys, argv,
                                                                          named):
    pool = generative_pool(tasks=[], checkpoints={"code": "owner/code-adapter", "math": "owner/math-adapter"},
                           **keys)
    error = refusal(capsys, generative_cli.main, ["run", "--method", "ties", "--pool", pool, *argv])
    assert named in error


def test_run_help_lists_every_method_with_its_parameters_grid_and_presets(capsys):
    from merging.registry import known_methods

    with pytest.raises(SystemExit):
        discriminative_main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # the epilog is wrapped: compare with whitespace collapsed
    for method in [*known_methods("per_tensor"), *known_methods("data_driven")]:
        assert f" {method} (" in text, method
    assert "--lambda {0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0}" in text  # configs/discriminative/methods/task_arithmetic.yaml
    assert "--t REQUIRED" in text and "--preset irrelevance | relevance | main" in text
    assert "--statistics average|reestimate" in text and "--scaling is --lambda" in text


def test_generative_run_help_lists_the_references_and_the_adapter_methods(capsys):
    from generative.merge import adapter_methods

    with pytest.raises(SystemExit):
        generative_cli.main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "references (no parameters): pretrained, finetuned" in text
    assert all(f" {method} (" in text for method in adapter_methods()) and " from_lora (adapter," in text
    assert "--space product|factors" in text and "--statistics" not in text  # no BatchNorm option here
