"""MLflow and W&B through real `python train.py` runs: against a real `mlflow server` started
here (private port, backend store and artifact folder in tmp, stopped at the end) a run killed
with SIGKILL and resumed continues ONE MLflow run whose metric history equals TensorBoard's, and
a sweep is a parent run with one child run per job; W&B runs offline under the same resume rule.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from hw2.runs.record import read_record, status_of
from hw2.runs.resume import logging_step
from tests.helpers.drills import CHAR, curves, fault, run_dir, step_of, write_drill_text
from tests.helpers.paths import ROOT
from tests.helpers.sweeps import TINY_CHARLM, sweep

pytestmark = pytest.mark.slow
mlflow = pytest.importorskip("mlflow")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mlflow server` on a private port with its own SQLite store and artifact folder."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = (root / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"mlflow server did not start:\n"
                                   f"{(root / 'server.log').read_text()[-3000:]}")
            time.sleep(1)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def text(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_drill_text(tmp_path_factory.mktemp("text") / "play.txt")


def client(url: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(url)


def runs_of(url: str, experiment: str) -> list:
    exp = client(url).get_experiment_by_name(experiment)
    return [] if exp is None else client(url).search_runs([exp.experiment_id])


def train(args: list[str], logs: Path, name: str) -> subprocess.CompletedProcess:
    """`python train.py` as tests/test_faults.py runs it, with the logger of `args`."""
    common = ["trainer.deterministic=true", "trainer.enable_model_summary=false",
              "callbacks.progress_bar.refresh_rate=0"]
    return subprocess.run([sys.executable, "train.py", *args, *common, f"paths.log_dir={logs}",
                           f"run_name={name}"], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=600)


def test_killed_and_resumed_run_continues_one_mlflow_run_equal_to_tensorboard(
        server: str, text: Path, tmp_path: Path) -> None:
    experiment = f"killed-{tmp_path.name}"
    args = [*CHAR, f"data.corpus.path={text}", "trainer.log_every_n_steps=1", "logger=mlflow",
            f"logger.mlflow.tracking_uri={server}", f"logger.mlflow.experiment_name={experiment}"]
    killed = train([*args, *fault("kill", at_step=34)], tmp_path, "cut")
    out = run_dir(tmp_path, "charlm", "cut")
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-3000:]
    first = read_record(out)
    assert status_of(first) == "interrupted" and first["mlflow_run_id"]
    assert 25 < step_of(out / "checkpoints" / "last.ckpt") < 34
    purge = logging_step(str(out / "checkpoints" / "last.ckpt"))  # TensorBoard's purge_step
    assert purge is not None

    resumed = train(args, tmp_path, "cut")
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert f"mlflow: {server}/#/experiments/" in resumed.stdout
    record = read_record(out)
    assert record["attempts"] == 2 and record["mlflow_run_id"] == first["mlflow_run_id"]

    runs = runs_of(server, experiment)
    assert len(runs) == 1  # one MLflow run for the run directory, both attempts in it
    run = runs[0]
    assert run.info.run_id == record["mlflow_run_id"] and run.info.status == "FINISHED"
    tb = curves(out)  # TensorBoard's scalars, purged of the killed attempt's tail
    assert set(run.data.metrics) == set(tb)
    resumed_ms = record["started"] * 1000
    relogged = {}
    for tag, points in tb.items():
        hist = client(server).get_metric_history(run.info.run_id, tag)
        # what resume implies: steps the killed attempt logged after its checkpoint are logged
        # again by the resumed attempt (MLflow keeps both; TensorBoard purges the first)
        stale = [m.timestamp < resumed_ms and m.step >= purge for m in hist]
        relogged[tag] = {m.step for m, old in zip(hist, stale, strict=True) if old}
        assert all(purge <= s <= 34 for s in relogged[tag]), (tag, relogged[tag])
        kept = sorted((m.step, m.value) for m, old in zip(hist, stale, strict=True) if not old)
        assert [s for s, _ in kept] == sorted(s for s, _ in points), tag  # no gap, no dup
        assert [v for _, v in kept] == pytest.approx([v for _, v in sorted(points)],
                                                     rel=1e-6), tag
    assert any(relogged.values())  # the killed attempt logged past its checkpoint
    artifacts = {a.path for a in client(server).list_artifacts(run.info.run_id)}
    assert {"hydra", "run.json"} <= artifacts
    hydra = {a.path for a in client(server).list_artifacts(run.info.run_id, "hydra")}
    assert "hydra/config.yaml" in hydra


def test_sweep_is_a_parent_run_with_a_child_per_job(server: str, tmp_path: Path,
                                                    small_text: Path) -> None:
    experiment = f"sweep-{tmp_path.name}"
    sweep_dir = tmp_path / "sweep"
    args = [*TINY_CHARLM, f"data.corpus.path={small_text}", f"paths.root_dir={tmp_path}",
            "logger=mlflow", f"logger.mlflow.tracking_uri={server}",
            f"logger.mlflow.experiment_name={experiment}",
            "hydra.callbacks.sweep_report.samples=false",
            "model.net.cell=rnn,gru", f"hydra.sweep.dir={sweep_dir}"]
    out = sweep(args)
    assert out.returncode == 0, out.stderr[-3000:]
    parent_id = json.loads((sweep_dir / "mlflow_parent.json").read_text())["run_id"]
    assert f"mlflow: the sweep is parent run {parent_id}" in out.stdout

    def check() -> None:
        runs = {r.info.run_id: r for r in runs_of(server, experiment)}
        assert len(runs) == 3  # the parent and one child per job
        parent = runs.pop(parent_id)
        assert parent.info.status == "FINISHED"
        assert parent.data.tags["hw2.sweep_dir"] == str(sweep_dir)
        assert {r.data.tags["mlflow.parentRunId"] for r in runs.values()} == {parent_id}
        jobs = {r.info.run_name: r for r in runs.values()}
        assert sorted(jobs) == ["0", "1"]
        for name, r in jobs.items():
            assert r.info.run_id == read_record(sweep_dir / name)["mlflow_run_id"]
            assert r.data.params["model/net/cell"] == ("rnn" if name == "0" else "gru")
            assert r.info.status == "FINISHED" and "val/bpc" in r.data.metrics
        report = {a.path for a in client(server).list_artifacts(parent_id, "report")}
        assert {"report/report.md", "report/runs.csv"} <= report

    check()
    again = sweep(args)  # the same sweep again: jobs skipped, the parent reused
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((sweep_dir / "mlflow_parent.json").read_text())["run_id"] == parent_id
    check()


def test_wandb_offline_run_resumes_the_same_run(tmp_path: Path, small_text: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))  # wandb's own settings and caches
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    base = [sys.executable, "train.py", *TINY_CHARLM, f"data.corpus.path={small_text}",
            f"paths.root_dir={tmp_path}", "logger=wandb", "run_name=w", "test=false"]
    first = subprocess.run(base, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    out = tmp_path / "logs" / "charlm" / "runs" / "w"
    run_id = read_record(out)["wandb_run_id"]
    assert f"wandb sync {out / 'wandb'}/offline-run-*-{run_id}" in first.stdout
    # a second attempt in the same run directory (one more epoch from last.ckpt)
    second = subprocess.run([*base, "trainer.max_epochs=2"], cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    record = read_record(out)
    assert record["attempts"] == 2 and record["wandb_run_id"] == run_id
    assert "resume=auto: continuing this run" in second.stdout + second.stderr
    folders = sorted((out / "wandb").glob("offline-run-*"))
    assert len(folders) == 2 and all(f.name.endswith(f"-{run_id}") for f in folders)
    assert all((f / f"run-{run_id}.wandb").is_file() for f in folders)
