"""Sweeps that survive: a failing job ends only itself (the sweep exits non-zero and names it),
and re-running the same command into the same sweep dir skips finished jobs and resumes an
interrupted one from its last checkpoint, counted from the jobs' own run.json."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hw2.fileio import atomic_write_json
from hw2.run_record import read_record, status_of
from tests.test_report import TINY_CHARLM, md_rows, sweep


def dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(proc.stdout)


@pytest.mark.slow
def test_failed_job_does_not_stop_the_sweep_and_rerun_skips_and_resumes(
        tmp_path: Path, small_text: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    args = [*TINY_CHARLM, f"data.corpus.path={small_text}", f"paths.root_dir={tmp_path}",
            "model.cell=rnn,transformer,gru", f"hydra.sweep.dir={sweep_dir}"]
    first = sweep(args)
    assert first.returncode == 1, first.stderr[-3000:]  # some job failed
    records = {i: read_record(sweep_dir / str(i)) for i in range(3)}
    assert [status_of(records[i]) for i in range(3)] == ["finished", "failed", "finished"]
    assert "model.cell='transformer' is not a cell" in records[1]["error"]
    assert "1 job(s) did not finish:" in first.stdout
    assert f"{sweep_dir / '1'}: failed: ValueError: model.cell='transformer'" in first.stdout
    rows = md_rows(sweep_dir / "report.md")
    assert rows["1"][-1].startswith("failed: ValueError: model.cell='transformer' is not a cell")
    assert rows["0"][-1] == rows["2"][-1] == "finished"

    # job 2 killed mid-run: its record still says running, with a process that is gone
    rec2 = records[2]
    rec2.update(status="running", ended=None, pid=dead_pid())
    atomic_write_json(sweep_dir / "2" / "run.json", rec2)
    assert status_of(read_record(sweep_dir / "2")) == "interrupted"

    second = sweep(args)
    assert second.returncode == 1, second.stderr[-3000:]
    after = {i: read_record(sweep_dir / str(i)) for i in range(3)}
    assert after[0]["attempts"] == 1 and after[0]["started"] == records[0]["started"]  # skipped
    assert after[1]["attempts"] == 2 and after[1]["status"] == "failed"  # tried again
    assert after[2]["attempts"] == 2 and after[2]["status"] == "finished"  # resumed
    assert after[2]["resumed_from"] == str(sweep_dir / "2" / "checkpoints" / "last.ckpt")
    assert f"skipped (finished before): {sweep_dir / '0'}" in second.stdout
    assert len(md_rows(sweep_dir / "report.md")) == 3  # the skipped job stays in the report


@pytest.mark.slow
def test_sweep_into_a_dir_of_another_sweep_stops(tmp_path: Path, small_text: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    base = [*TINY_CHARLM, f"data.corpus.path={small_text}", f"paths.root_dir={tmp_path}",
            f"hydra.sweep.dir={sweep_dir}"]
    assert sweep([*base, "model.cell=rnn"]).returncode == 0
    before = (sweep_dir / "0" / "run.json").read_text()
    out = sweep([*base, "model.cell=gru"])
    assert out.returncode != 0
    assert "holds a run with other overrides" in out.stderr + out.stdout
    assert (sweep_dir / "0" / "run.json").read_text() == before  # the old run is untouched
