"""merging/benchmark/parallel.py: jobs are dealt costliest first to the least-loaded share, and a failed worker is named."""
from __future__ import annotations

import pytest

from merging.benchmark import parallel
from merging.errors import MergeError


def test_the_costliest_job_goes_first_to_the_least_loaded_share():
    # 5 -> A (5), 4 -> B (4), 3 -> B (7), 1 -> A (6)
    assert parallel.deal([1, 5, 3, 4], float, workers=2) == [[5, 1], [4, 3]]
    assert parallel.deal(["only"], len, workers=4) == [["only"]]  # no empty shares
    with pytest.raises(MergeError, match="workers=0"):
        parallel.deal([1], float, workers=0)


def test_workers_run_with_a_share_of_the_cores_and_failures_are_named(monkeypatch):
    launched = []

    class FakeProcess:
        def __init__(self, cmd, env):
            launched.append((cmd[1:], env["OMP_NUM_THREADS"]))
            self.code = 1 if "bad" in cmd else 0

        def wait(self):
            return self.code
    monkeypatch.setattr(parallel.subprocess, "Popen", FakeProcess)
    monkeypatch.setattr(parallel.os, "cpu_count", lambda: 6)
    with pytest.raises(MergeError, match=r"\[\['bad', 'x'\]\]"):
        parallel.run_workers(["-m", "tool"], [["ok"], ["bad", "x"], ["fine"]])
    assert launched == [(["-m", "tool", "ok"], "2"), (["-m", "tool", "bad", "x"], "2"), (["-m", "tool", "fine"], "2")]
