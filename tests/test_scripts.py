"""The runner functions of scripts/*.sh, with python3 replaced by an echo of its arguments."""
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(call: str, script: str = "scripts/discriminative.sh") -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", f'source {script}; python3() {{ echo "$@"; }}; {call}'],
                          capture_output=True, text=True, cwd=ROOT, check=False)


def test_run_baselines_announces_each_stage_and_stops_at_the_first_failure():
    done = run("run_baselines")
    assert done.returncode == 0
    stages = [line for line in done.stderr.splitlines() if line.startswith("[stage ")]
    assert stages[0].startswith("[stage 1/10] run_finetune") and stages[-1].startswith("[stage 10/10] run_from")
    assert "[stages done] 10 in 0 min" in done.stderr
    failing = run("run_probe() { return 3; }; run_baselines")
    assert failing.returncode == 3 and "[stage 4/10] run_probe" in failing.stderr and "stage 5/10" not in failing.stderr


@pytest.mark.parametrize("script", ["scripts/generative.sh", "scripts/discriminative.sh"])
def test_fine_tuning_workers_default_to_the_cores_not_to_omp_num_threads(script):
    out = run("OMP_NUM_THREADS=1 run_finetune", script).stdout.split()
    assert out[out.index("--workers") + 1] == str(len(os.sched_getaffinity(0)))
