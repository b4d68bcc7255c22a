"""The runner functions of scripts/*.sh, with python3 replaced by an echo of its arguments."""
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Every runner's cache (its stage times) is the test's folder, never the user's."""
    monkeypatch.setenv("MERGING_CACHE", str(tmp_path))


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


@pytest.mark.parametrize("call,expected", [
    ("run_frank_wolfe --space product",
     "-m generative run --pool configs/generative/smollm2_12_lora_v2.yaml --method frank_wolfe --space product"),
    ("run_from", "-m generative run --pool configs/generative/smollm2_12_lora_v2.yaml --method from_lora"),
    ("POOL=configs/generative/smollm2_3_full.yaml LIMIT=5 POOL_SEEDS='0 1' run_from",
     "-m generative run --pool configs/generative/smollm2_3_full.yaml --limit 5 --method from --pool-seeds 0 1"),
    ("run_pretrained", "-m generative run --pool configs/generative/smollm2_12_lora_v2.yaml --method pretrained"),
    ("WORKERS=2 POOL_SEEDS='0 1' run_finetune",
     "-m generative finetune --pool configs/generative/smollm2_12_lora_v2.yaml --workers 2 --seeds 0 1"),
])
def test_the_generative_runners_are_the_shared_ones_on_its_cli(call, expected):
    assert run(call, "scripts/generative.sh").stdout.strip() == expected


def test_experiment_names_the_folder_of_every_command_that_writes_or_judges_rows():
    lines = run("export EXPERIMENT=remade; run_ties; SIZES=0 METHODS=ties run_irrelevance; run_claims; run_variants; "
                "run_prepare; run_finetune").stdout.splitlines()
    assert [line.split()[2] for line in lines] == ["run", "scale", "plot", "claims", "variants", "prepare", "finetune"]
    assert all("--experiment remade" in line for line in lines[:5])
    assert not any("--experiment" in line for line in lines[5:])  # the pool's checkpoints are one cache
    assert "--experiment" not in run("run_ties").stdout
    generative = run("EXPERIMENT=remade LIMIT=5 run_ties", "scripts/generative.sh").stdout
    assert "--limit 5 --experiment remade --method ties" in generative


def test_generative_has_no_runner_for_what_its_cli_lacks():
    done = run("run_baselines; run_irrelevance", "scripts/generative.sh")
    stages = [line.split()[2] for line in done.stderr.splitlines() if line.startswith("[stage ")]
    assert stages == ["run_finetune", "run_finetuned", "run_pretrained", "run_task_arith", "run_ties",
                      "run_dare_ties", "run_from"]
    assert "run_irrelevance: command not found" in done.stderr


def test_the_stage_lines_give_the_time_left_from_the_last_run_of_every_stage_left(tmp_path):
    first = run("run_baselines")
    assert "[stage 1/10] run_finetune (0 min elapsed)" in first.stderr  # nothing timed yet
    times = tmp_path / "stage_times" / "discriminative-minilm_8tasks_v2.tsv"
    assert [line.split("\t")[0] for line in times.read_text().splitlines()][:2] == ["run_finetune", "run_finetuned"]
    times.write_text("".join(f"{stage}\t{600 if stage == 'run_finetune' else 60}\n" for stage in
                             ["run_finetune", "run_finetuned", "run_majority", "run_probe", "run_pretrained",
                              "run_avg", "run_task_arith", "run_ties", "run_dare_ties", "run_from"]))
    again = run("run_baselines")
    assert "[stage 1/10] run_finetune (0 min elapsed, about 19 min left)" in again.stderr  # 600 s + 9 × 60 s
    assert "[stage 10/10] run_from (0 min elapsed, about 1 min left)" in again.stderr
    other = run("POOL=configs/discriminative/minilm_trial.yaml run_baselines")
    assert "min left" not in other.stderr  # timed per pool


def test_fw_logs_counts_fw_softs_picks_and_the_inner_loops_reach(tmp_path):
    import json

    logs = tmp_path / "exp" / "logs"
    logs.mkdir(parents=True)
    row = {"pool_seed": 0, "extra": 16, "overrides": '{"preset": "irrelevance"}', "normalized": "51.7",
           "seconds": 215.7, "peak_rss_gb": 1.51, "date": "2026-12-04 17:36"}
    step = {"iteration": 0, "objective": 7.3, "inner_loss": "entropy", "entropy_before": 8.2, "entropy_after": 5.45,
            "selections": {"mnist": "mnist-seed0", "digits": "mnist_parity-seed0", "cifar10": "digits-seed0"},
            "lambdas": {"a": [0.2, 0.4], "b": [0.3, 0.18]}}
    (logs / "frank_wolfe_soft-seed0-2026-12-04T17:36.json").write_text(json.dumps({"row": row, "log": {
        "history": [step]}}))
    (logs / "frank_wolfe_soft-seed0-2026-12-01T10:00.json").write_text(json.dumps({"row": {**row, "date": "2026-12-01"},
                                                                                  "log": {"history": [step]}}))
    out = subprocess.run(["python3", "scripts/fw_logs.py", str(tmp_path / "exp"), "--since", "2026-12-04"],
                         capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.count("normalised") == 1          # the older row is left out
    assert "normalised 51.70, 215.7 s, 1.51 GB" in out
    assert "f 7.30, entropy 8.20 → 5.45, own 1/3, a target's 2/3, λ 0.18–0.40" in out
    assert 'total {"preset": "irrelevance"} extra 16: 1 rows, own checkpoint 1/3, a target\'s 2/3' in out
    assert "proxy" not in out  # no backtracking recorded: nothing said about it
    monotone = {**step, "proxy_before": 3.6, "proxy_after": 3.48, "step_scale": 0.5}
    (logs / "frank_wolfe_soft-seed0-2026-12-04T17:36.json").write_text(json.dumps({"row": row, "log": {
        "history": [monotone]}}))
    out = subprocess.run(["python3", "scripts/fw_logs.py", str(tmp_path / "exp"), "--since", "2026-12-04"],
                         capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert "λ 0.18–0.40, proxy 3.60 → 3.48 (β 0.5)" in out


def test_fw_logs_splits_fw_hards_layer_choices_into_targets_others_and_the_special_vertices(tmp_path):
    import json

    logs = tmp_path / "exp" / "logs"
    logs.mkdir(parents=True)
    row = {"pool_seed": 1, "extra": 16, "overrides": '{"preset": "pairwise"}', "normalized": "60.5", "seconds": 90,
           "peak_rss_gb": 1.5, "date": "2026-12-04 23:00", "targets": "mnist digits"}
    steps = [{"iteration": 0, "objective": 9.0, "gap_max": 3.5, "gamma": 0.4, "gamma_range": [0.1, 0.6],
              "counts": {"mnist-seed1": 3, "digits-seed0": 1, "cifar10-seed1": 2, "zero": 4}},
             {"iteration": 1, "objective": 7.25, "gap_max": 0.5, "gamma": 0.2, "counts": {"initial": 9, "keep": 1}},
             {"iteration": 2, "objective": 7.1, "gap_max": 0.4, "gamma": 0.1, "counts": {"mnist-seed1": 2},
              "fallback": True}]  # selection: per_task, where the joint LMO's step was taken
    (logs / "frank_wolfe-seed1-2026-12-04T23:00.json").write_text(json.dumps(
        {"row": row, "log": {"history": steps, "final_objective": 7.0}}))
    (logs / "frank_wolfe_soft-seed1-2026-12-04T23:00.json").write_text("not read: another method")
    out = subprocess.run(["python3", "scripts/fw_logs.py", str(tmp_path / "exp"), "--method", "frank_wolfe"],
                         capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert "iteration 0: f 9, gap 3.5, γ 0.1–0.6; layers: a target's 4, another task's 2, zero 4" in out
    assert "iteration 1: f 7.25, gap 0.5, γ 0.2; layers: initial 9, keep 1" in out
    assert "iteration 2: f 7.1, gap 0.4, γ 0.1; layers (the joint LMO's step): a target's 2" in out
    assert ('total {"preset": "pairwise"} extra 16: 1 rows, layer choices: a target\'s 6, another task\'s 2, '
            "zero 4, initial 9, keep 1") in out


def test_task_learnability_states_its_bar():
    out = subprocess.run(["python3", "scripts/task_learnability.py", "--help"], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[1])
    assert "Is each task of a pool worth merging?" in out.stdout
