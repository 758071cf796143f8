"""Sweeps that survive: a failing job ends only itself (the sweep exits non-zero and names it),
and re-running the same command into the same sweep dir skips finished jobs and resumes an
interrupted one from its last checkpoint, counted from the jobs' own run.json."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from hw2.config import compose_config
from hw2.runs.record import job_overrides, read_record, recorded_run, status_of
from hw2.runs.resume import resolve_checkpoint
from hw2.sweeps.hydra_callbacks import sweep_title
from hw2.sweeps.job import SweepDirConflict, run_job
from hw2.utils.fileio import atomic_write_json
from tests.helpers.sweeps import TINY_CHARLM, md_rows, sweep


def dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(proc.stdout)


@pytest.mark.slow
def test_failed_job_does_not_stop_the_sweep_and_rerun_skips_and_resumes(
        tmp_path: Path, small_text: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    args = [*TINY_CHARLM, f"data.corpus.path={small_text}", f"paths.root_dir={tmp_path}",
            "model.net.cell=rnn,transformer,gru", f"hydra.sweep.dir={sweep_dir}"]
    first = sweep(args)
    assert first.returncode == 1, first.stderr[-3000:]  # some job failed
    records = {i: read_record(sweep_dir / str(i)) for i in range(3)}
    assert [status_of(records[i]) for i in range(3)] == ["finished", "failed", "finished"]
    assert "model.net.cell='transformer' is not a cell" in records[1]["error"]
    assert "1 job(s) did not finish:" in first.stdout
    assert f"{sweep_dir / '1'}: failed: ValueError: model.net.cell='transformer'" in first.stdout
    rows = md_rows(sweep_dir / "report.md")
    assert rows["1"][-1].startswith(
        "failed: ValueError: model.net.cell='transformer' is not a cell")
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
    assert sweep([*base, "model.net.cell=rnn"]).returncode == 0
    before = (sweep_dir / "0" / "run.json").read_text()
    out = sweep([*base, "model.net.cell=gru"])
    assert out.returncode != 0
    assert "holds a run with other overrides" in out.stderr + out.stdout
    assert (sweep_dir / "0" / "run.json").read_text() == before  # the old run is untouched


def test_sigterm_is_recorded_as_interrupted(tmp_path: Path) -> None:
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    with pytest.raises(SIGTERMException), recorded_run(tmp_path):
        raise SIGTERMException()
    assert read_record(tmp_path)["status"] == "interrupted"
    with pytest.raises(ValueError), recorded_run(tmp_path):
        raise ValueError("bad value")
    record = read_record(tmp_path)
    assert record["status"] == "failed" and record["error"] == "ValueError: bad value"
    assert record["attempts"] == 2


def test_record_names_the_node_and_only_rank_zero_writes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside Ray the node is the host; a DDP rank > 0 (torchrun's RANK) writes no record."""
    with recorded_run(tmp_path / "run"):
        pass
    assert read_record(tmp_path / "run")["node"] == socket.gethostname()
    monkeypatch.setenv("RANK", "1")
    with recorded_run(tmp_path / "rank1"):
        pass
    assert not (tmp_path / "rank1").exists()


def multirun_cfg(tmp_path: Path, overrides: list[str]) -> DictConfig:
    """A job config as a multirun's launcher hands it over (Hydra's mode MULTIRUN)."""
    cfg = compose_config([f"paths.root_dir={tmp_path}", *overrides], tmp_path / "job")
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.mode = RunMode.MULTIRUN
    HydraConfig().set_config(cfg)
    return cfg


def test_run_job_decides_from_the_record(tmp_path: Path) -> None:
    """Fast: run_job's skip / retry / resume decisions with a stand-in for hw2.train.run that
    records its run the same way."""
    calls: list[str | None] = []

    def train(cfg: DictConfig, fail: bool = False) -> dict[str, float]:
        with recorded_run(cfg.paths.output_dir) as record:
            start = resolve_checkpoint(cfg)  # what hw2.train.run starts from (resume=auto)
            record.update(overrides=job_overrides(), resumed_from=start)
            calls.append(start)
            if fail:
                raise RuntimeError("loss is nan")
            record.update(metrics={"best/val/bpc": 1.25})
            return {"best/val/bpc": 1.25}

    overrides = ["model.net.cell=gru", "+optimized_metric=best/val/bpc"]
    job = tmp_path / "job"
    assert run_job(multirun_cfg(tmp_path, overrides), lambda c: train(c, fail=True)) is None
    assert read_record(job)["status"] == "failed"  # the sweep went on: nothing raised
    assert run_job(multirun_cfg(tmp_path, overrides), train) == 1.25  # failed: run again
    assert run_job(multirun_cfg(tmp_path, overrides), train) == 1.25  # finished: skipped
    assert calls == [None, None] and read_record(job)["attempts"] == 2

    record = read_record(job)  # killed mid-run, a last checkpoint on disk
    record.update(status="running", pid=dead_pid())
    atomic_write_json(job / "run.json", record)
    (job / "checkpoints").mkdir()
    (job / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert run_job(multirun_cfg(tmp_path, overrides), train) == 1.25
    assert calls[-1] == str(job / "checkpoints" / "last.ckpt")

    with pytest.raises(SweepDirConflict, match="holds a run with other overrides"):
        run_job(multirun_cfg(tmp_path, ["model.net.cell=rnn"]), train)


def test_a_sweep_is_titled_by_its_dir_and_what_it_varies(tmp_path: Path) -> None:
    """The MLflow parent run's name: the sweep dir's name, the swept overrides of the command
    line, then the sweeper's `params` that the command line did not override."""
    config = OmegaConf.create({"hydra": {
        "overrides": {"task": ["seed=1", "model.net.cell=rnn,gru", "data.seq_len=choice(8,16)",
                               "trainer.max_epochs=2"]},
        "sweeper": {"params": {"data.seq_len": "choice(32,64)",
                               "model.optimizer.lr": "tag(log, interval(1e-4, 1e-2))"}}}})
    assert sweep_title(config, tmp_path / "2026-12-07_20-01-02") == (
        "2026-12-07_20-01-02: model.net.cell=rnn,gru data.seq_len=choice(8,16) "
        "model.optimizer.lr=tag(log, interval(1e-4, 1e-2))")
    plain = OmegaConf.create({"hydra": {"overrides": {"task": ["seed=1"]}, "sweeper": {}}})
    assert sweep_title(plain, tmp_path / "s") == "s"
    long = OmegaConf.create({"hydra": {"overrides": {"task": [f"seed={','.join(['1'] * 200)}"]},
                                       "sweeper": {}}})
    assert len(sweep_title(long, tmp_path / "s")) == 250
