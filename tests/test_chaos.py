"""Chaos on a real sweep (slow): `bench/chaos_sweep.py` with 12 tiny jobs on 4 fake devices,
job processes and the sweep itself SIGKILLed while it runs, re-run until it exits 0. Every job
must finish with the metrics of an uninterrupted sweep, each killed attempt counted, none run
to completion twice."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.paths import ROOT

pytestmark = pytest.mark.slow


def test_sweep_survives_sigkills_of_jobs_and_of_itself(tmp_path: Path) -> None:
    summary_path = tmp_path / "summary.json"
    res = subprocess.run([sys.executable, "bench/chaos_sweep.py", "--jobs", "12", "--kills", "3",
                          "--steps", "24", "--work", str(tmp_path / "work"),
                          "--json", str(summary_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=3600)
    print(res.stdout[-2000:])
    assert summary_path.is_file(), (res.stdout + res.stderr)[-4000:]
    summary = json.loads(summary_path.read_text())
    assert res.returncode == 0, summary
    assert summary["job_kills"] == 3 and summary["sweep_kills"] == ["group", "parent"]
    assert summary["last_exit"] == 0 and summary["reruns"] >= 2
    for lost in ("unfinished", "metrics_differ", "completed_twice", "no_completion_line",
                 "kills_not_counted"):
        assert summary[lost] == [], (lost, summary)
    assert summary["compared"] == 12
    assert summary["attempts_total"] > 12  # killed attempts were counted and resumed
    assert "lost: nothing" in res.stdout
