"""Safety guarantees of the merge CLI against careless or hostile input (issue 15), one section per class:
no foreign code runs; no corrupt model is saved as a success; mergekit keys are never dropped; no input is
destroyed; OS errors, signals and kill -9 leave nothing behind and no traceback; every check runs before any
work. Each test names the class it guards."""
import contextlib
import hashlib
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import assert_refused, edit_tensors, leftovers, native, read_weights, run_cli, write_yaml

from merging.errors import MergeError
from merging.io.atomic import INCOMPLETE, atomic_write_text
from merging.io.pypi import model_wheels

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def fingerprint(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``: an input must come out of a refused run byte for byte."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str, read_only: bool = False):
    """A tmpfs of ``size`` mounted at ``where`` (skips the test where mounting is not permitted)."""
    where.mkdir()
    options = f"size={size}" + (",ro" if read_only else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()})")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


# --- 1. no foreign code runs ------------------------------------------------------------------------------

def test_package_reference_never_imports_a_module_beside_the_config(bert_pool, tmp_path, capsys, monkeypatch):
    marker = tmp_path / "ran.txt"
    (tmp_path / "evilpkg.py").write_text(textwrap.dedent(f"""
        open({str(marker)!r}, "w").write("foreign code ran")
        def get_model_path():
            return {str(bert_pool['base'])!r}
    """))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    config = native(bert_pool, models=("ft1", "ft2"))
    config["base"] = "package:evilpkg"
    assert_refused(tmp_path, capsys, config, "package:evilpkg", "not a pinned model package",
                   *sorted(model_wheels()))
    assert not marker.exists() and "evilpkg" not in sys.modules


def test_package_reference_never_imports_the_standard_library(bert_pool, tmp_path, capsys, monkeypatch):
    monkeypatch.delitem(sys.modules, "this", raising=False)
    config = native(bert_pool, models=("ft1", "ft2"))
    config["models"][0]["model"] = "package:this"
    assert_refused(tmp_path, capsys, config, "package:this", "not a pinned model package")
    assert "this" not in sys.modules


# --- 2. no corrupt output saved as a success ----------------------------------------------------------------

def test_weights_summing_to_zero_are_refused_where_the_method_divides_by_them(bert_pool, tmp_path, capsys):
    config = native(bert_pool, "average", models=("ft1", "ft2"), parameters={})
    config["models"][0]["parameters"] = {"weight": 1.0}
    config["models"][1]["parameters"] = {"weight": -1.0}
    assert_refused(tmp_path, capsys, config, "sum to 0", "normalize")


@pytest.mark.parametrize("text", [
    "models: [{model: FT1, parameters: {weight: .nan}}, {model: FT2}]\nparameters: {}",
    "models: [{model: FT1}, {model: FT2}]\nparameters: {lambda: .inf}",
    "models: [{model: FT1}, {model: FT2}]\nparameters: {lambda: [0.5, -.inf]}",
])
def test_non_finite_parameters_are_refused_when_the_config_is_read(bert_pool, tmp_path, capsys, text):
    method = "average" if "weight" in text else "task_arithmetic"
    body = text.replace("FT1", str(bert_pool["ft1"])).replace("FT2", str(bert_pool["ft2"]))
    config = tmp_path / "merge.yaml"
    config.write_text(f"method: {method}\nbase: {bert_pool['base']}\n{body}\n")
    assert_refused(tmp_path, capsys, config, "expected a finite number")


def test_an_output_chunk_that_is_not_finite_is_never_saved(bert_pool, tmp_path, capsys):
    config = native(bert_pool, "task_arithmetic", models=("ft1", "ft2"), parameters={"lambda": 1e8},
                    out_dtype="float16")  # finite inputs and parameters, but float16 overflows to Inf
    assert_refused(tmp_path, capsys, config, "method 'task_arithmetic' gives NaN or Inf in tensor",
                   "float16", "nothing was saved")


def test_a_nan_in_a_base_tensor_that_is_only_copied_is_reported(bert_pool, copy_model, tmp_path, capsys):
    base = copy_model(bert_pool["base"])
    edit_tensors(base, lambda t: t["pooler.dense.weight"].__setitem__((0, 0), float("nan")))
    config = native(bert_pool, models=("ft1", "ft2"), exclude=["pooler"])
    config["base"] = str(base)
    assert_refused(tmp_path, capsys, config, base / "model.safetensors", "tensor 'pooler.dense.weight'",
                   "NaN or Inf", "copied")


# --- 3. mergekit keys are never dropped ---------------------------------------------------------------------

def mergekit(pool, **top):
    return {"merge_method": "ties", "base_model": str(pool["base"]),
            "models": [{"model": str(pool["ft1"]), "parameters": {"weight": 1.0, "density": 0.5}},
                       {"model": str(pool["ft2"]), "parameters": {"weight": 0.5, "density": 0.5}}], **top}


def as_slice(config, layer_range=(0, 2), **slice_keys):
    """``config``'s models as one slice over ``layer_range``, the base among its sources (mergekit needs it)."""
    models = [{"model": config["base_model"]}, *config.pop("models")]
    config["slices"] = [{"sources": [{**m, "layer_range": list(layer_range)} for m in models], **slice_keys}]
    return config


def test_unknown_key_in_a_mergekit_model_entry(bert_pool, tmp_path, capsys):
    config = mergekit(bert_pool)
    config["models"][1]["paramters"] = config["models"][1].pop("parameters")
    assert_refused(tmp_path, capsys, config, "models[1]", "unknown key(s) ['paramters']")


def test_unknown_key_in_a_mergekit_slice_source(bert_pool, tmp_path, capsys):
    config = as_slice(mergekit(bert_pool))
    config["slices"][0]["sources"][1]["paramters"] = config["slices"][0]["sources"][1].pop("parameters")
    assert_refused(tmp_path, capsys, config, "slices[0].sources[1]", "unknown key(s) ['paramters']")


@pytest.mark.parametrize("where, edit", [
    ("slices[0]", lambda c: c["slices"][0].update(mystery=1)),
    ("tokenizer", lambda c: c.update(tokenizer={"source": "base", "pad_to_multiple_of": 8})),
])
def test_unknown_keys_at_every_mergekit_level(bert_pool, tmp_path, capsys, where, edit):
    config = as_slice(mergekit(bert_pool))
    edit(config)
    assert_refused(tmp_path, capsys, config, where, "unknown key(s)")


def test_a_layer_range_past_a_models_layers_is_refused(bert_pool, tmp_path, capsys):
    assert_refused(tmp_path, capsys, as_slice(mergekit(bert_pool), layer_range=(1, 3)),
                   "slices[0]", "has 2 layers", "layer_range [1, 3] goes past them")


def test_a_slice_without_the_base_among_its_sources_is_refused_as_mergekit_refuses_it(bert_pool, tmp_path,
                                                                                       capsys):
    config = as_slice(mergekit(bert_pool))
    config["slices"][0]["sources"].pop(0)
    assert_refused(tmp_path, capsys, config, "slices[0]", "reads the base model's layers",
                   f"list base_model '{bert_pool['base']}' among its sources")


def test_one_slice_over_every_layer_with_slice_parameters_is_read_as_mergekit_reads_it(bert_pool, tmp_path,
                                                                                     capsys):
    plain = mergekit(bert_pool, parameters={"normalize": True})
    for entry in plain["models"]:
        del entry["parameters"]["density"]
    plain["parameters"]["density"] = 0.3
    code, _, _, expected = run_cli(tmp_path, capsys, plain, out_name="plain")
    assert code == 0
    sliced = as_slice(mergekit(bert_pool, parameters={"normalize": True, "density": 0.9}),
                      parameters={"density": 0.3})  # the slice's density wins over the top level's
    for source in sliced["slices"][0]["sources"][1:]:
        del source["parameters"]["density"]
    code, _, _, out = run_cli(tmp_path, capsys, write_yaml(tmp_path / "sliced.yml", sliced), out_name="sliced")
    assert code == 0
    want, got = read_weights(expected), read_weights(out)
    assert all(torch.equal(want[name], got[name]) for name in want)


@pytest.mark.parametrize("config, needle", [
    ({"merge_method": "slerp", "parameters": {"t": 0.5},
      "models": [{"model": "FT1", "parameters": {"t": 0.9}}]}, "per-model parameters of"),
    ({"merge_method": "dare_ties", "parameters": {"rescale": "false"},
      "models": [{"model": "FT1", "parameters": {"weight": 1, "density": 0.5}}]}, "rescale 'false'"),
    ({"merge_method": "dare_linear", "parameters": {"int8_mask": float("nan")},
      "models": [{"model": "FT1", "parameters": {"weight": 1, "density": 0.5}}]}, "int8_mask nan"),
    ({"merge_method": "dare_linear", "models": [{"model": "FT1", "parameters": {"weight": 1, "density": True}}]},
     "density True"),
    ({"merge_method": "ties", "dtype": 0, "models": [{"model": "FT1", "parameters": {"density": 0.5, "weight": 1}}]},
     "dtype"),
    ({"merge_method": "ties", "models": [{"model": "BASE", "parameters": {"weight": 5, "density": 0.1}},
                                         {"model": "FT1", "parameters": {"density": 0.5}}]}, "does not use"),
    ({"merge_method": ["ties"], "models": [{"model": "FT1"}]}, "merge_method ['ties'] is not supported"),
])
def test_mergekit_values_that_would_not_be_honoured_are_refused(bert_pool, tmp_path, capsys, config, needle):
    text = yaml.safe_dump({**config, "base_model": "BASE"})
    config_file = tmp_path / "mergekit.yml"
    config_file.write_text(text.replace("BASE", str(bert_pool["base"])).replace("FT1", str(bert_pool["ft1"])))
    assert_refused(tmp_path, capsys, config_file, needle)


# --- 4. no input destroyed -----------------------------------------------------------------------------------

@pytest.mark.parametrize("relation", ["is", "inside", "contains"])
@pytest.mark.parametrize("which", ["base", "ft2"])
def test_the_output_may_not_be_an_input_nor_inside_or_around_one(bert_pool, copy_model, tmp_path, capsys,
                                                                  relation, which):
    inputs = {name: copy_model(bert_pool[name]) for name in ("base", "ft1", "ft2")}
    before = {name: fingerprint(folder) for name, folder in inputs.items()}
    config = native(bert_pool, models=(inputs["ft1"], inputs["ft2"]))
    config["base"] = str(inputs["base"])
    out = {"is": inputs[which], "inside": inputs[which] / "merged", "contains": tmp_path}[relation]
    code = cli_merge(write_yaml(tmp_path.parent / f"{tmp_path.name}.yaml", config), out, "--overwrite")
    captured = capsys.readouterr()
    named = str(inputs["base"] if relation == "contains" else inputs[which])  # the first input it holds
    assert code == 2 and f"error: output '{out}' {relation.replace('inside', 'is inside')}" in captured.err
    assert named in captured.err
    assert {name: fingerprint(folder) for name, folder in inputs.items()} == before


def test_the_output_may_not_be_where_an_inputs_linked_files_live(bert_pool, copy_model, tmp_path, capsys):
    """The Hugging Face cache layout: a snapshot folder whose files are links into blobs/."""
    blobs, snapshot = tmp_path / "blobs", tmp_path / "snapshot"
    blobs.mkdir()
    snapshot.mkdir()
    for file in bert_pool["ft1"].iterdir():
        (blobs / file.name).write_bytes(file.read_bytes())
        (snapshot / file.name).symlink_to(blobs / file.name)
    before = fingerprint(blobs)
    config = write_yaml(tmp_path / "merge.yaml", native(bert_pool, models=(snapshot, "ft2")))
    assert cli_merge(config, blobs, "--overwrite") == 2
    assert "error: output" in capsys.readouterr().err and fingerprint(blobs) == before


def cli_merge(config: Path, out: Path | str, *flags: str) -> int:
    from merging.cli import main

    return main(["merge", str(config), "--out", str(out), "--quiet", *flags])


# --- 5. OS errors, signals and kill -9: one line, nothing left behind -----------------------------------------

def test_a_later_run_removes_the_temporary_folders_of_dead_processes_only(bert_pool, tmp_path, capsys):
    dead, alive = dead_pid(), os.getppid()
    stale = [tmp_path / f".out.tmp-{dead}-0123abcd", tmp_path / f".out.old-{dead}"]
    live = tmp_path / f".out.tmp-{alive}-0123abcd"
    unrelated = tmp_path / f".other.tmp-{dead}-0123abcd"
    for folder in [*stale, live, unrelated]:
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"x" * 1000)
        (folder / INCOMPLETE).write_text("")  # what the toolkit puts in its temporary folders
    code, _, _, out = run_cli(tmp_path, capsys, native(bert_pool, models=("ft1", "ft2")))
    assert code == 0 and out.is_dir() and not (out / INCOMPLETE).exists()
    assert not any(p.exists() for p in stale) and live.exists() and unrelated.exists()


def test_an_input_named_like_a_stale_temporary_folder_is_never_removed(bert_pool, copy_model, tmp_path, capsys):
    victim = copy_model(bert_pool["ft1"], f".out.tmp-{dead_pid()}-0123abcd")
    before = fingerprint(victim)
    code, _, _, out = run_cli(tmp_path, capsys, native(bert_pool, models=(victim, "ft2")))
    assert code == 0 and out.is_dir() and fingerprint(victim) == before


SLOW_MERGE = """
import sys, time
from merging.io import safetensors_io
write = safetensors_io.ShardedSafetensorsWriter.write
def slow_write(self, name, start, values):
    time.sleep(0.2)
    return write(self, name, start, values)
safetensors_io.ShardedSafetensorsWriter.write = slow_write
from merging.cli import main
sys.exit(main(["merge", sys.argv[1], "--out", sys.argv[2], "--quiet", "--workers", "1"]))
"""


def _ctrl_c_as_at_a_terminal() -> None:
    """SIGINT's default action in the child, as in a terminal: a test run started in the background (``cmd &``)
    inherits SIGINT ignored, and Python then never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_slow_merge(bert_pool, tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    """A merge CLI process whose writes are slowed down, once its temporary output folder exists."""
    config = write_yaml(tmp_path / "merge.yaml", native(bert_pool, models=("ft1", "ft2")))
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-c", SLOW_MERGE, str(config), str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=_ctrl_c_as_at_a_terminal)
    deadline = time.monotonic() + 60
    while not leftovers(out):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    time.sleep(0.3)  # inside the engine, writing
    return process, out


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_ctrl_c_remove_the_temporary_folder_without_a_traceback(bert_pool, tmp_path, signum):
    process, out = start_slow_merge(bert_pool, tmp_path)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130 and stdout == ""
    assert stderr.strip() == "error: interrupted; no output was written"
    assert not out.exists() and leftovers(out) == []


def test_after_kill_9_the_next_run_removes_the_leftover(bert_pool, tmp_path, capsys):
    process, out = start_slow_merge(bert_pool, tmp_path)
    process.kill()
    process.communicate(timeout=60)
    assert leftovers(out) != []  # kill -9 cannot be caught: its temporary folder stays ...
    code = cli_merge(tmp_path / "merge.yaml", out)
    assert code == 0 and out.is_dir() and leftovers(out) == []  # ... until the next run for the same output


def assert_one_line_error(bert_pool, tmp_path, capsys, out: Path, *needles, flags=()):
    code = cli_merge(write_yaml(tmp_path / "merge.yaml", native(bert_pool, models=("ft1", "ft2"))), out, *flags)
    captured = capsys.readouterr()
    assert code == 2 and captured.out == "" and "Traceback" not in captured.err
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1, captured.err
    for needle in needles:
        assert str(needle) in captured.err, (needle, captured.err)


@pytest.mark.parametrize("out", ["", ".", ".."])
def test_output_that_is_empty_or_the_current_folder_or_above_it(bert_pool, tmp_path, capsys, monkeypatch, out):
    work = tmp_path / "work"
    (work / "keep").mkdir(parents=True)
    (work / "keep" / "file").write_text("precious")
    monkeypatch.chdir(work)
    config = write_yaml(tmp_path / "merge.yaml", native(bert_pool, models=("ft1", "ft2")))
    assert cli_merge(config, out, "--overwrite") == 2
    assert "error: output" in capsys.readouterr().err and (work / "keep" / "file").read_text() == "precious"


def test_output_below_a_regular_file(bert_pool, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert_one_line_error(bert_pool, tmp_path, capsys, tmp_path / "file" / "out", tmp_path / "file",
                          "Not a directory")
    assert (tmp_path / "file").read_text() == "x"


def test_output_name_too_long(bert_pool, tmp_path, capsys):
    assert_one_line_error(bert_pool, tmp_path, capsys, tmp_path / ("x" * 300), "File name too long")
    assert leftovers(tmp_path / ("x" * 300)) == []


@pytest.mark.parametrize("kind", ["dangling", "loop", "to a folder"])
def test_output_that_is_a_symbolic_link(bert_pool, tmp_path, capsys, kind):
    link = tmp_path / "out"
    target = {"dangling": tmp_path / "missing", "loop": link, "to a folder": tmp_path / "real"}[kind]
    if kind == "to a folder":
        target.mkdir()
    link.symlink_to(target)
    assert_one_line_error(bert_pool, tmp_path, capsys, link, link, "symbolic link", flags=("--overwrite",))
    assert link.is_symlink() and os.readlink(link) == str(target) and leftovers(link) == []


def test_no_space_left_on_device(bert_pool, tmp_path, capsys):
    with small_tmpfs(tmp_path / "disk", "64k") as disk:
        assert_one_line_error(bert_pool, tmp_path, capsys, disk / "out", disk, "No space left on device")
        assert list(disk.iterdir()) == []


def test_read_only_file_system(bert_pool, tmp_path, capsys):
    with small_tmpfs(tmp_path / "disk", "1m", read_only=True) as disk:
        assert_one_line_error(bert_pool, tmp_path, capsys, disk / "out", disk, "Read-only file system")


def test_immutable_parent_folder(bert_pool, tmp_path, capsys):
    parent = tmp_path / "frozen"
    parent.mkdir()
    if subprocess.run(["chattr", "+i", str(parent)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not permitted here")
    try:
        assert_one_line_error(bert_pool, tmp_path, capsys, parent / "out", parent, "Operation not permitted")
    finally:
        subprocess.run(["chattr", "-i", str(parent)], check=True)
    assert list(parent.iterdir()) == []


def test_results_files_get_ordinary_permissions_and_a_full_disk_leaves_no_temporary_file(tmp_path):
    atomic_write_text(tmp_path / "results.csv", "a,b\n1,2\n")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "results.csv").stat().st_mode & 0o777 == 0o666 & ~umask
    with small_tmpfs(tmp_path / "disk", "64k") as disk:
        with pytest.raises(MergeError, match=f"{disk / 'results.csv'}: No space left on device"):
            atomic_write_text(disk / "results.csv", "x" * 200_000)
        assert list(disk.iterdir()) == []


# --- 6. every check before any work ---------------------------------------------------------------------------

@pytest.mark.parametrize("parameters, needle", [
    ({"density": "abc"}, "density"),
    ({"density": [0.5, 7.0]}, "density"),  # the second point of a gradient is out of range
    ({"density": [{"filter": "attention", "value": -1}, {"value": 0.5}]}, "density"),
    ({"densty": 0.5}, "densty"),
])
def test_a_bad_parameter_is_refused_before_any_model_is_fetched(bert_pool, tmp_path, capsys, monkeypatch,
                                                                parameters, needle):
    import huggingface_hub

    def no_download(*args, **kwargs):
        raise AssertionError("a model was fetched before the config was checked")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_download)
    config = native(bert_pool, models=("ft1",), parameters=parameters)
    config["models"].append({"model": "some-org/some-model"})
    assert_refused(tmp_path, capsys, config, "method 'ties'", needle)


# --- 7. other tracebacks --------------------------------------------------------------------------------------

def test_a_config_that_is_not_utf8(bert_pool, tmp_path, capsys):
    config = tmp_path / "merge.yaml"
    config.write_bytes(b"method: ties\nbase: \xff\xfe\n")
    assert_refused(tmp_path, capsys, config, config, "not UTF-8")


@pytest.mark.parametrize("device", ["bogus", "meta", "mps", "xpu"])
def test_an_unsupported_device_in_the_config_or_on_the_command_line(bert_pool, tmp_path, capsys, device):
    assert_refused(tmp_path, capsys, native(bert_pool, device=device), "device", f"'{device}'")
    assert_refused(tmp_path, capsys, native(bert_pool), "device", f"'{device}'", flags=("--device", device))


def test_negative_dimensions_in_a_safetensors_header(bert_pool, copy_model, tmp_path, capsys):
    broken = copy_model(bert_pool["ft1"])
    file = broken / "model.safetensors"
    data = file.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + size])
    name = "pooler.dense.weight"
    header[name]["shape"] = [-32, -32]  # the same element count, so only the sign is wrong
    blob = json.dumps(header).encode()  # data_offsets are relative to the data block: they stay valid
    file.write_bytes(struct.pack("<Q", len(blob)) + blob + data[8 + size:])
    assert_refused(tmp_path, capsys, native(bert_pool, models=(broken, "ft2")), file, name, "[-32, -32]", ">= 0")


@pytest.mark.parametrize("edit, needle", [
    (lambda c: c["models"][0].update(parameters={"weight": True}), "weight"),
    (lambda c: c.update(parameters={"density": "0.5"}), "density"),
    (lambda c: c.update(shard_size=True), "shard_size"),
    (lambda c: c.update(chunk_size=True), "chunk_size"),
])
def test_a_boolean_or_a_string_where_a_number_is_expected(bert_pool, tmp_path, capsys, edit, needle):
    config = native(bert_pool, models=("ft1", "ft2"))
    edit(config)
    assert_refused(tmp_path, capsys, config, needle)


# --- 8. low -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [-1, 0, "0MB", "-5GB"])
def test_shard_size_must_be_positive(bert_pool, tmp_path, capsys, size):
    assert_refused(tmp_path, capsys, native(bert_pool, shard_size=size), "shard_size")


def edit_adapter_config(adapter: Path, **settings) -> Path:
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, **settings}))
    return adapter


@pytest.mark.parametrize("trained_on", ["someone/another-model", "/some/other/org/base"])
def test_a_lora_adapter_trained_on_another_base_needs_an_opt_in(llama_lora, copy_model, tmp_path, capsys,
                                                              trained_on):
    adapter = edit_adapter_config(copy_model(llama_lora.adapter), base_model_name_or_path=trained_on)
    config = {"method": "task_arithmetic", "base": str(llama_lora.base), "models": [{"model": str(adapter)}]}
    assert_refused(tmp_path, capsys, config, trained_on, "allow_adapter_base_mismatch")
    code, _, _, out = run_cli(tmp_path, capsys, {**config, "allow_adapter_base_mismatch": True})
    assert code == 0 and out.is_dir()


@pytest.mark.parametrize("key, value", [("exclude", ["q_proj"]), ("device", "cuda:0"), ("dtype", "float16"),
                                        ("shard_size", 1),
                                        ("slices", [{"sources": [{"model": "m", "layer_range": [0, 1]}]}])])
def test_an_adapter_merge_refuses_settings_it_does_not_use(llama_lora, tmp_path, capsys, key, value):
    config = {"method": "from_lora", "base": str(llama_lora.base), key: value,
              "models": [{"model": str(llama_lora.adapter)}, {"model": str(llama_lora.other_adapter)}]}
    assert_refused(tmp_path, capsys, config, "from_lora", "does not use", key)


def test_a_lora_adapter_naming_its_base_by_hub_id_merges_onto_a_local_copy(llama_lora, copy_model, tmp_path,
                                                                          capsys):
    base = copy_model(llama_lora.base, "tiny-llama")
    adapter = edit_adapter_config(copy_model(llama_lora.adapter), base_model_name_or_path="some-org/Tiny-Llama")
    code, _, _, out = run_cli(tmp_path, capsys, {"method": "task_arithmetic", "base": str(base),
                                                 "models": [{"model": str(adapter)}]})
    assert code == 0 and out.is_dir()


def test_fan_in_fan_out_on_a_model_of_linear_layers_is_refused(llama_lora, copy_model, tmp_path, capsys):
    """peft ignores the flag on nn.Linear; applying it would transpose ΔW of square modules silently."""
    adapter = edit_adapter_config(copy_model(llama_lora.adapter), fan_in_fan_out=True)
    config = {"method": "task_arithmetic", "base": str(llama_lora.base), "models": [{"model": str(adapter)}]}
    assert_refused(tmp_path, capsys, config, "fan_in_fan_out", "'llama'")


def test_a_yaml_alias_bomb_is_refused_quickly_in_one_short_line(bert_pool, tmp_path, capsys):
    levels = ["a: &a [" + ", ".join(["x"] * 9) + "]"] + [
        f"{b}: &{b} [" + ", ".join([f"*{a}"] * 9) + "]" for a, b in zip("abcdefg", "bcdefgh")]
    config = tmp_path / "bomb.yaml"
    config.write_text("\n".join(levels) + f"\nmethod: average\nbase: {bert_pool['base']}\n"
                      f"models: [{{model: {bert_pool['ft1']}}}]\n")
    stderr = assert_refused(tmp_path, capsys, config, "expands to more than")
    assert len(stderr) < 500
