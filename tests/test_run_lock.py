"""One live owner per run directory (`hw2.runs.lock`): a second `python train.py` on a directory
a live run trains into stops at once, naming the holder, and changes none of its files; once
the holder is SIGKILLed the directory is free and `resume=auto` continues the run."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hw2.config import compose_config
from hw2.runs.lock import LOCK_NAME, RunDirBusy, acquire, holder, inheritable, release
from hw2.runs.record import read_record
from hw2.train import run
from tests.helpers.paths import ROOT

TINY = ["data=text_file", "model.net.hidden_size=8", "model.net.embedding_dim=4",
        "model.net.num_layers=1", "data.batch_size=4", "data.seq_len=8", "trainer.max_epochs=1",
        "++trainer.limit_train_batches=8", "++trainer.limit_val_batches=2",
        "trainer.val_check_interval=3", "trainer.log_every_n_steps=1",
        "trainer.num_sanity_val_steps=0", "callbacks.progress_bar.refresh_rate=0",
        "callbacks.text_sample.length=10", "~callbacks.param_histograms",
        "trainer.enable_model_summary=false", "trainer.accelerator=cpu", "tune_malloc=false",
        "test=false"]


def snapshot(run_dir: Path) -> dict[str, tuple[bytes, int]]:
    """Every file of the run directory (the lock file aside): its bytes and mtime."""
    return {str(p.relative_to(run_dir)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(run_dir.rglob("*")) if p.is_file() and p.name != LOCK_NAME}


def try_lock_in_child(run_dir: Path) -> subprocess.CompletedProcess:
    code = ("import sys; from hw2.runs.lock import acquire, RunDirBusy\n"
            f"try: acquire({str(run_dir)!r})\n"
            "except RunDirBusy as e: print(e); sys.exit(3)")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def test_lock_refuses_another_process_names_the_holder_and_dies_with_it(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    assert acquire(run_dir) is True
    try:
        assert acquire(run_dir) is False  # this process already holds it: no self-deadlock
        busy = try_lock_in_child(run_dir)
        assert busy.returncode == 3
        assert f"is in use by pid {os.getpid()} on host {socket.gethostname()}" in busy.stdout
        # a child handed the lock adopts it (same open file) instead of locking again
        fds, env = inheritable(run_dir)
        code = (f"from hw2.runs.lock import acquire, holds; r = {str(run_dir)!r}; "
                "assert acquire(r) is True and holds(r); import time; time.sleep(30)")
        child = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, pass_fds=fds,
                                 env={**os.environ, **env})
        deadline = time.time() + 30
        while holder(run_dir).get("pid") != child.pid and time.time() < deadline:
            time.sleep(0.05)
        assert holder(run_dir)["parent"] == os.getpid()  # the child names itself
    finally:
        release(run_dir)
    assert try_lock_in_child(run_dir).returncode == 3  # the child still holds it
    child.kill()
    child.wait()
    assert try_lock_in_child(run_dir).returncode == 0  # its SIGKILL freed the directory
    # another process holds it: rank 0 is refused, a DDP rank > 0 of the same run never locks
    holding = subprocess.Popen(
        [sys.executable, "-c", f"from hw2.runs.lock import acquire; acquire({str(run_dir)!r}); "
                               "print(1, flush=True); import time; time.sleep(30)"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holding.stdout is not None and holding.stdout.readline().strip() == "1"
        with pytest.raises(RunDirBusy, match=f"in use by pid {holding.pid} "):
            acquire(run_dir)
        os.environ["LOCAL_RANK"] = "1"
        try:
            assert acquire(run_dir) is False
        finally:
            del os.environ["LOCAL_RANK"]
    finally:
        holding.kill()
        holding.wait()


@pytest.mark.slow  # subprocesses of train.py / the CLI: ~10 s each
def test_second_train_on_a_live_run_dir_stops_at_once_and_touches_nothing(
        tmp_path: Path, small_text: Path) -> None:
    logs, ready = tmp_path / "logs", tmp_path / "ready"
    args = [sys.executable, "train.py", *TINY, f"data.corpus.path={small_text}",
            f"paths.log_dir={logs}", f"paths.cache_dir={tmp_path / 'cache'}", "run_name=dup"]
    run_dir = logs / "charlm" / "runs" / "dup"
    hold = ["+callbacks.fault._target_=tests.helpers.faults.Fault", "+callbacks.fault.kind=hold",
            "+callbacks.fault.at_step=4", f"+callbacks.fault.ready_file={ready}"]
    first = subprocess.Popen([*args, *hold], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 240
        while not ready.exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert ready.exists(), first.stdout.read() if first.poll() is not None else "timeout"
        before = snapshot(run_dir)
        assert {"run.json", "checkpoints/last.ckpt", ".hydra/config.yaml", "train.log"} <= set(
            before) and any(name.startswith("tensorboard/events") for name in before)

        started = time.time()  # a different config too: Hydra would write it into .hydra/
        second = subprocess.run([*args, "model.net.hidden_size=16"], cwd=ROOT,
                                capture_output=True, text=True, timeout=120)
        took = time.time() - started
        assert second.returncode == 2, second.stdout + second.stderr
        assert (f"{run_dir} is in use by pid {first.pid} on host {socket.gethostname()}"
                in second.stderr), second.stderr
        assert "wait for it to end, or give this run another run_name" in second.stderr
        assert "Traceback" not in second.stderr
        assert snapshot(run_dir) == before  # run.json, checkpoints, events, .hydra, log
        print(f"\nsecond process refused in {took:.1f} s")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()

    # the directory is free again: the same run, here in this process, continues it
    overrides = [*TINY, f"data.corpus.path={small_text}", f"paths.log_dir={logs}",
                 f"paths.cache_dir={tmp_path / 'cache'}", "run_name=dup"]
    run(compose_config(overrides, run_dir))
    record = read_record(run_dir)
    assert record["status"] == "finished" and record["attempts"] == 2
    assert record["resumed_from"] == str(run_dir / "checkpoints" / "last.ckpt")
    assert record["metrics"]["trainer/global_step"] == 8


def test_only_an_optuna_sweep_dir_is_shared_by_its_workers() -> None:
    """A grid sweep's directory is locked (a second submission of it stops at once); the
    workers of one Optuna study share theirs, each trial's job locking its own directory."""
    from omegaconf import OmegaConf

    from hw2.sweeps.hydra_callbacks import sweep_dir_is_shared

    def sweeper(target: str | None) -> bool:
        return sweep_dir_is_shared(OmegaConf.create({"hydra": {"sweeper": {"_target_": target}}}))

    assert sweeper("hydra_plugins.hw2_optuna_sweeper.optuna_sweeper.OptunaSweeper")
    assert not sweeper("hydra._internal.core_plugins.basic_sweeper.BasicSweeper")
    assert not sweeper(None)


def test_a_run_stopped_while_its_sample_prints_is_recorded_finished(
        tmp_path: Path, small_text: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The results are in run.json (finished) before the report and its sample print: a run
    killed while they print is not resumed and run to completion again by the next sweep."""
    import hw2.train

    def stopped(*args: object, **kwargs: object) -> str:
        raise KeyboardInterrupt  # stands for a kill while the sample is generated

    monkeypatch.setattr(hw2.train, "sample_report", stopped)
    run_dir = tmp_path / "run"
    cfg = compose_config([*TINY, f"data.corpus.path={small_text}",
                          f"paths.cache_dir={tmp_path / 'cache'}"], run_dir)
    assert cfg.sample_at_end.prime == "ROMEO"  # the default experiment samples at its end
    with pytest.raises(KeyboardInterrupt):
        run(cfg)
    record = read_record(run_dir)
    assert record["status"] == "finished", record
    assert record["metrics"]["trainer/global_step"] == 8


def test_a_run_killed_during_its_test_resumes_with_the_metrics_of_its_fit(
        tmp_path: Path, small_text: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run killed after its fit, during the test, resumes from the fit's end checkpoint: that
    attempt trains nothing and logs no train or val metric, yet its run.json ends with the same
    metrics as a run never interrupted (the fit's, recorded before the test)."""
    import hw2.train

    args = [*TINY, f"data.corpus.path={small_text}", f"paths.cache_dir={tmp_path / 'cache'}",
            "test=true", "data.corpus.test_fraction=0.1", "trainer.val_check_interval=4",
            "sample_at_end=null", "seed=3", "trainer.deterministic=true"]
    run(compose_config(args, tmp_path / "reference"))
    reference = read_record(tmp_path / "reference")["metrics"]
    assert {"train/bpc", "val/bpc", "test/bpc"} <= set(reference)

    tested = hw2.train.tested_checkpoint

    def killed(*a: object, **k: object) -> str:
        raise KeyboardInterrupt  # stands for a kill as the test starts

    run_dir = tmp_path / "run"
    monkeypatch.setattr(hw2.train, "tested_checkpoint", killed)
    with pytest.raises(KeyboardInterrupt):
        run(compose_config(args, run_dir))
    assert read_record(run_dir)["status"] == "interrupted"
    monkeypatch.setattr(hw2.train, "tested_checkpoint", tested)
    run(compose_config(args, run_dir))  # resume=auto: from the end checkpoint
    record = read_record(run_dir)
    assert record["attempts"] == 2 and record["resumed_from"], record
    assert record["metrics"] == reference


@pytest.mark.parametrize("shared", [False, True], ids=["grid", "optuna"])
def test_a_trial_running_in_another_worker_does_not_fail_a_shared_sweep(
        tmp_path: Path, shared: bool, capsys: pytest.CaptureFixture[str]) -> None:
    """At a worker's end, a job another live process is running: for a grid sweep it is a job
    this sweep did not finish (exit 1); in an Optuna study's shared directory it is another
    worker's trial in progress, named, and the worker exits 0."""
    import json

    from omegaconf import OmegaConf, open_dict

    from hw2.sweeps.hydra_callbacks import SweepReport

    job = tmp_path / "5"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "config.yaml").write_text("seed: 1\n")
    (job / "run.json").write_text(json.dumps({"status": "running", "pid": os.getpid(),
                                              "host": socket.gethostname(), "attempts": 1}))
    sweeper = ("hydra_plugins.hw2_optuna_sweeper.optuna_sweeper.OptunaSweeper" if shared
               else "hydra._internal.core_plugins.basic_sweeper.BasicSweeper")
    config = compose_config([f"hydra.sweep.dir={tmp_path}"], tmp_path / "unused")
    OmegaConf.set_readonly(config.hydra, False)
    with open_dict(config):
        config.hydra.sweeper = OmegaConf.create({"_target_": sweeper})
    callback = SweepReport(enabled=False)
    if shared:
        callback.on_multirun_end(config)
        out = capsys.readouterr().out
        assert "1 trial(s) still running in other workers of the study: 5" in out
    else:
        with pytest.raises(SystemExit) as stop:
            callback.on_multirun_end(config)
        assert stop.value.code == 1
        out = capsys.readouterr().out
        assert "1 job(s) did not finish:" in out and "not this sweep" in out
