"""merging/distributed.py: one process needs no setup (the helpers are identities, accelerate is not imported),
the shares partition the batches and rows, and two CPU processes under ``accelerate launch`` give the
single-process FW gradient, RegMean Grams, Fisher diagonals, AdaMerging step and FW runs, and the
generative FW objective and FW runs on a tiny Llama with LoRA merges in product and factor space."""
from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path

import distributed_gradient_script as script
import pytest
import torch

from merging import distributed
from merging.statistics import local_rows

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 120  # the launch takes ~12 s on 2 busy cores; past this it is hung (a missed collective)
LAUNCHER_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                 "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


@pytest.fixture
def fake_world(monkeypatch):
    """Pretend to be process ``rank`` of ``size`` (shares only: no collective may run)."""
    def set_world(rank: int, size: int) -> None:
        monkeypatch.setattr(distributed, "_WORLD", distributed.World(rank, size, torch.device("cpu")))
    return set_world


def test_one_process_helpers_are_identities():
    assert not distributed.launched()
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    batches = [{"x": torch.ones(2)}, {"x": torch.zeros(3)}, {"x": torch.ones(1)}]
    assert list(distributed.shard(batches)) == batches
    assert list(distributed.shard(iter(batches))) == batches
    assert distributed.row_range(5) == (0, 5)
    assert local_rows(batches[1]) is batches[1]
    t = torch.randn(3)
    tree = {"grad": {"w": t}, "counts": (2.5, 3)}
    for value in (t, 2.5, 3, tree):
        assert distributed.all_reduce_sum(value) is value
    assert distributed.gather_objects("x") == ["x"]
    assert distributed.device().type in ("cpu", "cuda", "mps", "xpu")


def test_plain_python_does_not_import_accelerate():
    code = ("import sys; sys.path.insert(0, 'tests'); from toy_objective import ToyObjective; "
            "from merging.methods.frank_wolfe import proxy_objective; from merging import distributed; "
            "o = ToyObjective(); v, g = proxy_objective(o, o.base, grad=True); "
            "assert distributed.world_size() == 1 and distributed.all_reduce_sum(v) == v; "
            "assert 'accelerate' not in sys.modules, 'accelerate was imported'")
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS} | {"OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr[-2000:]


def test_a_launcher_environment_is_detected(monkeypatch):
    for var in LAUNCHER_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not distributed.launched()
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert distributed.launched()
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(RuntimeError, match="WORLD_SIZE"):
        distributed.launched()


def test_shares_partition_batches_round_robin_and_rows_contiguously(fake_world):
    shards, ranges = [], []
    for rank in range(3):
        fake_world(rank, 3)
        shards.append(list(distributed.shard(range(7))))
        ranges.append(distributed.row_range(10))
    assert shards == [[0, 3, 6], [1, 4], [2, 5]]
    assert ranges == [(0, 3), (3, 6), (6, 10)]
    batch = {"x": torch.arange(10).reshape(5, 2), "ids": list("abcde"), "scale": torch.tensor(2.0), "k": 7}
    fake_world(1, 2)  # rows [2, 5)
    mine = local_rows(batch)
    assert torch.equal(mine["x"], batch["x"][2:5]) and mine["ids"] == ["c", "d", "e"]
    assert mine["scale"] is batch["scale"] and mine["k"] == 7
    shares = []
    for rank in range(6):  # 3 rows over 6 processes: three get one row, three none
        fake_world(rank, 6)
        shares.append(local_rows({"x": torch.arange(3)}))
    assert [None if s is None else s["x"].tolist() for s in shares] == [None, [0], None, [1], None, [2]]


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm()) if b.norm() > 0 else float((a - b).norm())


GLOO_ABORT = "terminate called without an active exception"


def _launch(cmd: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run the launcher in its own process group (so a hang kills every worker); (return code, output)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        log, _ = proc.communicate()
        pytest.fail(f"`accelerate launch` with 2 CPU processes ran past {TIMEOUT_S} s (hung?):\n{log[-3000:]}")
    return proc.returncode, log


def test_two_cpu_processes_give_the_single_process_gradient_and_statistics(tmp_path):
    """``accelerate launch --cpu --num_processes 2`` would start ONE process (accelerate's simple launcher needs
    mpirun for several CPU processes), so the torchrun launcher (``--multi_gpu``) starts the two processes and
    ACCELERATE_USE_CPU=true (what ``--cpu`` exports) with no visible GPU keeps them on the CPU (gloo)."""
    if importlib.util.find_spec("accelerate") is None:
        pytest.skip("accelerate is not installed, so `accelerate launch` is unavailable")
    out = tmp_path / "two_processes.pt"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
           str(ROOT / "tests" / "distributed_gradient_script.py"), str(out)]
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS} | {
        "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true", "CUDA_VISIBLE_DEVICES": "",
        "HF_HOME": str(tmp_path / "hf"),  # no `accelerate config` file is read: every option is on the line
        "PYTHONPATH": os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    returncode, log = _launch(cmd, env)
    if returncode != 0 and GLOO_ABORT in log:
        # one gloo process aborts now and then when other jobs load both cores (6 of 35 pytest runs on
        # 2026-11-24, with this session's code and with 3f9b1ba's; never in 22 direct launches): one more
        # launch. A real fault repeats and fails below.
        returncode, log = _launch(cmd, env)
    if returncode != 0 and "No module named accelerate.commands.launch" in log:
        pytest.skip("`accelerate launch` is unavailable (accelerate.commands.launch is missing)")
    assert returncode == 0, f"accelerate launch failed ({returncode}):\n{log[-3000:]}"
    saved = torch.load(out, weights_only=False)
    assert saved["world_size"] == 2 and saved["shares"] == [2, 1]  # really two processes, unequal shares
    assert saved["ranks_agree"], "the two processes ended with different results"
    two, one = saved["results"], script.compute()
    assert two.keys() == one.keys()
    for key, reference in one.items():
        if isinstance(reference, torch.Tensor):
            assert _relative_error(two[key], reference) <= 1e-6, key
        elif isinstance(reference, float):
            assert two[key] == pytest.approx(reference, rel=1e-6, abs=0.0), key
        else:
            assert two[key] == reference, key
