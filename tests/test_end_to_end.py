"""README's commands, run as a user runs them (slow: minutes; `python -m pytest -m slow`)."""
import json
import os
import subprocess
from pathlib import Path

import pytest

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
