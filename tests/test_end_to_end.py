"""README's commands, run as a user runs them (the slow ones take minutes: `python -m pytest -m slow`) or checked
against the pools they name."""
import json
import os
import subprocess
from pathlib import Path

import pytest

from generative.pool import load_pool

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_readme_vision_trial_prepares_fine_tunes_and_merges():
    lines = [line.split("#")[0].strip() for line in (ROOT / "README.md").read_text().splitlines()
             if line.startswith("POOL=configs/vision/efficientnet_lite0_trial.yaml")]
    assert len(lines) == 2, "README's vision trial commands changed: update this test with them"
    script = "set -e; source scripts/vision.sh; " + "; ".join(lines)
    done = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [row["method"] for row in rows] == ["ties"]
    assert rows[0]["pool"] == "efficientnet_lite0_trial" and 0 < rows[0]["normalized"] <= 110
    assert "validation normalised" in done.stderr  # the grid's progress, on stderr


@pytest.mark.slow
def test_readme_data_driven_example_merges_the_demo_classifiers_by_fw(tmp_path):
    lines = [line.split("#")[0].strip() for line in (ROOT / "README.md").read_text().splitlines()
             if line.startswith("python -m") and "demo_data" in line]
    assert len(lines) == 3, "README's data-driven example changed: update this test with its commands"
    done = subprocess.run(["bash", "-c", "set -e; " + "; ".join(lines)], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "MERGING_CACHE": str(tmp_path / "cache")},
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads((tmp_path / "demo_data" / "merged" / "merge_info.json").read_text())
    assert info["method"] == "frank_wolfe" and len(info["log"]["history"]) == 5
    assert {p.name for p in (tmp_path / "demo_data" / "merged").iterdir()} >= {"has_good", "has_sport", "README.md"}


def test_readme_generative_trial_names_tasks_of_the_default_pool():
    script = (ROOT / "scripts" / "generative.sh").read_text()
    default_pool = next(line.split("=", 1)[1] for line in script.splitlines() if line.startswith("_DEFAULT_POOL="))
    lines = [line.split("#")[0] for line in (ROOT / "README.md").read_text().splitlines()
             if line.startswith("source scripts/generative.sh") and "--tasks" in line]
    assert len(lines) == 1, "README's generative trial changed: update this test with it"
    tasks = lines[0].split("--tasks", 1)[1].split()
    pool_tasks = load_pool(ROOT / default_pool).tasks
    assert tasks and set(tasks) <= set(pool_tasks), f"{tasks} are not all tasks of {default_pool}"
