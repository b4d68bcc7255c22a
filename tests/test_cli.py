"""The command line on bad input: a non-zero exit, a message on stderr that names the offending file / key /
value and says what was expected, and no output folder (nor temporary folder) left behind. And on good
input: every registered method and a mergekit config run to completion."""
import json
import math
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import assert_refused, edit_tensors, leftovers, native, read_weights, run_cli, write_yaml
from safetensors.torch import load_file

from merging.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

PARAMETERS = {  # a valid native config for every registered method
    "average": {},
    "task_arithmetic": {"lambda": 0.7},
    "ties": {"density": 0.5},
    "dare_ta": {"drop_rate": 0.3},
    "dare_ties": {"drop_rate": 0.3, "rescale": "l1"},
    "from": {"k": 2.0},
    "slerp": {"t": 0.3},
    "passthrough": {},
    "model_stock": {},
    "breadcrumbs": {"density": 0.5, "gamma": 0.05},
    "breadcrumbs_ties": {"density": 0.5},
    "della": {"density": 0.5, "epsilon": 0.1},
    "della_linear": {"density": 0.5},
    "nuslerp": {},
    "multislerp": {},
    "karcher": {},
    "sce": {"select_topk": 0.5},
    "nearswap": {"t": 0.05},
    "arcee_fusion": {},
    "tsv_m": {"lambda": 1.5},
    "iso_c": {},
    "iso_cts": {"common_fraction": 0.5},
    "cart": {"rank_ratio": 0.2},
    "star": {"eta": 60.0},
    "wudi": {"steps": 5, "lr": 1.0e-4},
    "pcb": {"ratio": 0.2},
}
TWO_MODELS = {"slerp", "nuslerp"}
ONE_MODEL = {"passthrough", "nearswap", "arcee_fusion"}
ADAPTER_PARAMETERS = {"from_lora": {"rank": 4, "k": 1.0}, "knots": {"density": 0.5}}  # methods whose models are LoRA adapters


# --- bad checkpoints ----------------------------------------------------------------------------------

def test_tensor_missing_in_one_model(bert_pool, copy_model, tmp_path, capsys):
    broken = copy_model(bert_pool["ft2"])
    edit_tensors(broken, lambda t: t.pop("encoder.layer.1.output.dense.weight"))
    assert_refused(tmp_path, capsys, native(bert_pool, models=("ft1", broken)),
                   broken, "tensor 'encoder.layer.1.output.dense.weight'", "is missing", bert_pool["base"])


def test_tensor_only_in_one_model(bert_pool, copy_model, tmp_path, capsys):
    broken = copy_model(bert_pool["ft2"])
    edit_tensors(broken, lambda t: t.update(extra_head=torch.zeros(3)))
    assert_refused(tmp_path, capsys, native(bert_pool, models=("ft1", broken)),
                   broken, "'extra_head'", "not in the base", "exclude")


def test_shape_mismatch(bert_pool, copy_model, tmp_path, capsys):
    broken = copy_model(bert_pool["ft1"])
    edit_tensors(broken, lambda t: t.update({"pooler.dense.weight": torch.zeros(32, 16)}))
    assert_refused(tmp_path, capsys, native(bert_pool, models=(broken, "ft2")),
                   broken / "model.safetensors", "tensor 'pooler.dense.weight'", "shape [32, 16]", "[32, 32]")


def test_different_architectures(bert_pool, copy_model, tmp_path, capsys):
    other = copy_model(bert_pool["ft1"])
    config = json.loads((other / "config.json").read_text())
    config["model_type"] = "roberta"
    (other / "config.json").write_text(json.dumps(config))
    assert_refused(tmp_path, capsys, native(bert_pool, models=(other, "ft2")),
                   "different architectures", "model_type", "'bert'", "'roberta'", other / "config.json")


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_or_inf_in_a_checkpoint(bert_pool, copy_model, tmp_path, capsys, bad):
    broken = copy_model(bert_pool["ft3"])

    def poison(tensors):
        tensors["encoder.layer.0.attention.self.query.weight"][3, 4] = bad

    edit_tensors(broken, poison)
    assert_refused(tmp_path, capsys, native(bert_pool, models=("ft1", broken)), broken / "model.safetensors",
                   "tensor 'encoder.layer.0.attention.self.query.weight'", "NaN or Inf")


@pytest.mark.parametrize("parameters", [{"weight": 0.3}, {"weight": 0.5, "lambda": 1.0},
                                        {"weight": 0.4999999999, "lambda": 1.0, "dtype": "float16"}])
@pytest.mark.parametrize("where", ["base", "ft3"])
def test_nan_in_any_task_arithmetic_input_names_its_checkpoint(bert_pool, copy_model, tmp_path, capsys,
                                                               parameters, where):
    """With every coefficient nonzero the output check stands for the inputs' (a NaN reaches the output); with
    the base's coefficient 1 − λΣw = 0 (the second parameters), or 2e-10 that float16 rounds to 0 (the third),
    the inputs are checked themselves."""
    parameters = dict(parameters)
    extra = {"dtype": parameters.pop("dtype")} if "dtype" in parameters else {}
    broken = copy_model(bert_pool[where])
    edit_tensors(broken, lambda t: t["encoder.layer.0.attention.self.query.weight"].__setitem__((3, 4), math.nan))
    config = native(bert_pool, method="task_arithmetic", models=("ft1", broken if where == "ft3" else "ft3"),
                    parameters=parameters, **extra)
    if where == "base":
        config["base"] = str(broken)
    assert_refused(tmp_path, capsys, config, broken / "model.safetensors",
                   "tensor 'encoder.layer.0.attention.self.query.weight'", "NaN or Inf")


@pytest.mark.parametrize("keep", [0.5, 0.999, 100, 4])
def test_truncated_safetensors_file(bert_pool, copy_model, tmp_path, capsys, keep):
    broken = copy_model(bert_pool["ft1"])
    file = broken / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[:int(len(data) * keep) if keep < 1 else keep])
    stderr = assert_refused(tmp_path, capsys, native(bert_pool, models=(broken, "ft2")), file)
    assert "truncated" in stderr


def test_unparsable_config_json(bert_pool, copy_model, tmp_path, capsys):
    broken = copy_model(bert_pool["ft1"])
    (broken / "config.json").write_text("{not json")
    assert_refused(tmp_path, capsys, native(bert_pool, models=(broken,)), broken / "config.json", "invalid JSON")


# --- bad configs --------------------------------------------------------------------------------------

def test_unknown_method_lists_the_known_ones(bert_pool, tmp_path, capsys):
    assert_refused(tmp_path, capsys, native(bert_pool, method="tie"), "unknown merge method 'tie'",
                   "known methods: " + ", ".join(sorted({**PARAMETERS, **ADAPTER_PARAMETERS})))


def test_unknown_config_key(bert_pool, tmp_path, capsys):
    config = native(bert_pool)
    config["denisty"] = 0.5
    assert_refused(tmp_path, capsys, config, tmp_path / "merge.yaml", "key 'denisty'", "unknown key",
                   "expected one of", "'parameters'")


def test_unknown_model_entry_key(bert_pool, tmp_path, capsys):
    config = native(bert_pool)
    config["models"][0]["weight"] = 0.5
    assert_refused(tmp_path, capsys, config, "key 'models.0.weight'", "expected one of ['model', 'parameters', 'task']")


def test_unknown_method_parameter(bert_pool, tmp_path, capsys):
    assert_refused(tmp_path, capsys, native(bert_pool, parameters={"density": 0.5, "denisty": 0.5}),
                   "method 'ties' has no parameter(s) ['denisty']", "'density'", "'weight'")


@pytest.mark.parametrize("density,expected", [(0, "greater than 0"), (1.5, "less than or equal to 1"),
                                              (-0.1, "greater than 0")])
def test_density_outside_0_1(bert_pool, tmp_path, capsys, density, expected):
    assert_refused(tmp_path, capsys, native(bert_pool, parameters={"density": density}),
                   "parameter 'density'", expected, f"(got {density})")


def test_per_model_density_outside_0_1(bert_pool, tmp_path, capsys):
    config = native(bert_pool)
    config["models"][1]["parameters"] = {"density": 1.5}
    assert_refused(tmp_path, capsys, config, "parameter 'density'", "less than or equal to 1", "(got 1.5)")


def test_empty_model_list(bert_pool, tmp_path, capsys):
    assert_refused(tmp_path, capsys, native(bert_pool, models=()), tmp_path / "merge.yaml", "key 'models'",
                   "at least 1 item")


def test_slerp_needs_exactly_two_models(bert_pool, tmp_path, capsys):
    assert_refused(tmp_path, capsys, native(bert_pool, method="slerp", parameters={"t": 0.5}),
                   "method 'slerp' needs exactly 2 models, got 3")


@pytest.mark.parametrize("role", ["base", "model"])
def test_path_that_does_not_exist(bert_pool, tmp_path, capsys, role):
    missing = tmp_path / "no" / "such" / "model"
    config = native(bert_pool, models=("ft1", missing) if role == "model" else ("ft1",))
    if role == "base":
        config["base"] = str(missing)
    assert_refused(tmp_path, capsys, config, f"'{missing}' does not exist")


def test_config_file_that_does_not_exist(tmp_path, capsys):
    assert_refused(tmp_path, capsys, tmp_path / "absent.yaml", f"'{tmp_path / 'absent.yaml'}' does not exist")


def test_mergekit_unsupported_merge_method(bert_pool, tmp_path, capsys):
    config = {"merge_method": "ram", "base_model": str(bert_pool["base"]),
              "models": [{"model": str(bert_pool["ft1"])}]}
    assert_refused(tmp_path, capsys, config, tmp_path / "merge.yaml", "merge_method 'ram' is not supported",
                   "supported: ['arcee_fusion', 'breadcrumbs', 'breadcrumbs_ties', 'dare_linear', 'dare_ties', "
                   "'della', 'della_linear', 'karcher', 'linear', 'model_stock', 'multislerp', 'nearswap', "
                   "'nuslerp', 'passthrough', 'sce', 'slerp', 'task_arithmetic', 'ties']")


def test_existing_output_needs_overwrite_which_replaces_it(bert_pool, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("keep me")
    code, stdout, stderr, _ = run_cli(tmp_path, capsys, native(bert_pool))
    assert code != 0 and stdout == ""
    assert f"output folder '{out}' already exists" in stderr and "--overwrite" in stderr
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"] and leftovers(out) == []

    code, stdout, stderr, _ = run_cli(tmp_path, capsys, native(bert_pool), "--overwrite")
    assert code == 0, stderr
    assert not (out / "old.txt").exists() and (out / "model.safetensors").is_file()
    assert json.loads(stdout)["method"] == "ties" and leftovers(out) == []


def test_bad_input_through_a_real_subprocess(bert_pool, copy_model, tmp_path):
    broken = copy_model(bert_pool["ft1"])
    file = broken / "model.safetensors"
    file.write_bytes(file.read_bytes()[:-64])
    config = write_yaml(tmp_path / "merge.yaml", native(bert_pool, models=(broken, "ft2")))
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "merging", "merge", str(config), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and done.stdout == ""
    assert done.stderr.startswith("error: ") and str(file) in done.stderr and "truncated" in done.stderr
    assert "Traceback" not in done.stderr
    assert not out.exists() and leftovers(out) == []


# --- good input ---------------------------------------------------------------------------------------

def test_methods_command_lists_every_registered_method(capsys):
    assert main(["methods"]) == 0
    table, note = capsys.readouterr().out.split("\n\n")
    header, *lines = [line.split(maxsplit=4) for line in table.splitlines()]
    assert "'data:' section of kind sequence_classification, image_classification, causal_lm" in note
    assert header == ["method", "kind", "LoRA", "paper", "data read"]
    assert all(paper.startswith("https://") for _, _, _, paper, _ in lines)  # each names its paper
    runs_here = {name for name, kind, *_ in lines if kind in ("per_tensor", "adapter")}
    assert runs_here == set(PARAMETERS) | set(ADAPTER_PARAMETERS), \
        "give every method the merge CLI runs a valid config in PARAMETERS / ADAPTER_PARAMETERS"
    reads_data = {name: data for name, kind, _, _, data in lines if kind == "data_driven"}
    assert {"frank_wolfe", "frank_wolfe_soft", "regmean", "regmean_plusplus", "fisher", "adamerging",
            "greedy_soup"} == set(reads_data)
    assert all(data != "none" for data in reads_data.values())


def test_a_data_driven_method_without_data_is_refused_with_what_it_needs(bert_pool, tmp_path, capsys):
    assert_refused(tmp_path, capsys, native(bert_pool, method="regmean", parameters={}), "method 'regmean' reads data",
                   "'data:' section (docs/data-driven.md)", "run --method regmean")


def test_a_routed_method_is_refused_with_where_it_runs(bert_pool, tmp_path, capsys):
    assert_refused(tmp_path, capsys, native(bert_pool, method="twin_merging", parameters={}),
                   "'twin_merging' is a routed merge", "a body per input", "run --method twin_merging")


def test_workers_must_be_positive(bert_pool, tmp_path, capsys):
    config = write_yaml(tmp_path / "merge.yaml", native(bert_pool))
    with pytest.raises(SystemExit) as exit_:
        main(["merge", str(config), "--out", str(tmp_path / "out"), "--workers", "0"])
    assert exit_.value.code == 2
    assert "argument --workers: expected a positive integer, got '0'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("method", sorted(PARAMETERS))
def test_native_config_of_every_method_succeeds(bert_pool, tmp_path, capsys, method):
    models = ("ft1", "ft2") if method in TWO_MODELS else ("ft1",) if method in ONE_MODEL else ("ft1", "ft2", "ft3")
    code, stdout, stderr, out = run_cli(tmp_path, capsys, native(bert_pool, method, models, PARAMETERS[method]))
    assert code == 0, stderr
    info = json.loads(stdout)
    assert info == json.loads((out / "merge_info.json").read_text())
    assert info["method"] == method and info["tensors_merged"] == len(bert_pool.tensors["base"])
    got = read_weights(out)
    base = bert_pool.tensors["base"]
    assert {n: t.shape for n, t in got.items()} == {n: t.shape for n, t in base.items()}
    assert all(torch.isfinite(t).all() for t in got.values())
    assert any(not torch.equal(got[n], base[n]) for n in base)
    assert yaml.safe_load((out / "merge_config.yaml").read_text())["method"] == method
    assert not (out / "mergekit_config.yml").exists() and leftovers(out) == []


@pytest.mark.parametrize("method", sorted(ADAPTER_PARAMETERS))
def test_native_config_of_every_adapter_method_succeeds(llama_lora, tmp_path, capsys, method):
    config = {"method": method, "base": str(llama_lora.base), "parameters": ADAPTER_PARAMETERS[method],
              "models": [{"model": str(llama_lora.adapter)}, {"model": str(llama_lora.other_adapter)}]}
    code, stdout, stderr, out = run_cli(tmp_path, capsys, config)
    assert code == 0, stderr
    assert json.loads(stdout)["method"] == method
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    factors = load_file(out / "adapter_model.safetensors")
    assert factors and all(torch.isfinite(t).all() for t in factors.values()) and leftovers(out) == []


def test_mergekit_config_succeeds_and_is_recorded(bert_pool, tmp_path, capsys):
    config = {"merge_method": "ties", "base_model": str(bert_pool["base"]),
              "models": [{"model": str(bert_pool["base"])},
                         {"model": str(bert_pool["ft1"]), "parameters": {"weight": 1.0, "density": 0.5}},
                         {"model": str(bert_pool["ft2"]), "parameters": {"weight": 0.6, "density": 0.7}}],
              "parameters": {"int8_mask": True}, "dtype": "float32"}
    source = write_yaml(tmp_path / "mergekit.yml", config)
    code, stdout, stderr, out = run_cli(tmp_path, capsys, source)
    assert code == 0, stderr
    assert (out / "mergekit_config.yml").read_text() == source.read_text()
    recorded = yaml.safe_load((out / "merge_config.yaml").read_text())
    assert recorded["method"] == "ties" and recorded["origin"] == "mergekit"
    assert [m["parameters"] for m in recorded["models"]] == [{"weight": 1.0, "density": 0.5},
                                                             {"weight": 0.6, "density": 0.7}]
    # the same merge written natively (mergekit's ties normalizes by default) gives the same tensors
    same = {"method": "ties", "base": str(bert_pool["base"]),
            "models": [{"model": str(bert_pool[m]), "parameters": p} for m, p in
                       (("ft1", {"weight": 1.0, "density": 0.5}), ("ft2", {"weight": 0.6, "density": 0.7}))],
            "parameters": {"density": 1.0, "normalize": True}}
    code, _, stderr, native_out = run_cli(tmp_path, capsys, same, out_name="native")
    assert code == 0, stderr
    got, expected = read_weights(out), read_weights(native_out)
    assert all(torch.equal(got[n], expected[n]) for n in expected)
