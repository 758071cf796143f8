"""One Optuna study on a real PostgreSQL server, three `python train.py -m` workers standing for
three machines; one is SIGKILLed in the middle of a trial. Optuna's heartbeat (not a pid check)
fails that trial, a surviving worker runs its parameters again, and the study ends with exactly
`n_trials` finished trials: none lost, none counted twice."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from optuna.trial import TrialState

from hw2.report import build_report
from hw2.utils.optuna_study import retried_numbers, retry_of
from tests.helpers.optuna_workers import (
    running_trial,
    start_worker,
    summary,
    trials,
    wait_retried,
    worker_of,
)
from tests.helpers.postgres import postgres_url  # noqa: F401 - the fixture
from tests.helpers.sweeps import TINY_CHARLM, md_rows

N_TRIALS = 5


def search_args(tmp_path: Path, text: Path, url: str, n_trials: int) -> list[str]:
    """A tiny CharLM search (a few seconds a trial) on `url`; a heartbeat every 2 s, a trial
    without one for 10 s is failed (a grace period that a busy 2-core machine still keeps)."""
    return ["hparams_search=charlm_optuna", *TINY_CHARLM, f"data.corpus.path={text}",
            "trainer.limit_train_batches=12", "trainer.val_check_interval=4",
            f"paths.root_dir={tmp_path}", f"hydra.sweep.dir={tmp_path / 'search'}",
            "model.net.hidden_size=choice(8,12,16)", "data.seq_len=choice(8,16)",
            f"hydra.sweeper.storage={url}", f"hydra.sweeper.n_trials={n_trials}",
            "hydra.sweeper.heartbeat_interval=2", "hydra.sweeper.grace_period=10",
            "hydra.callbacks.sweep_report.samples=false"]


@pytest.mark.slow
def test_three_workers_one_postgres_study_survive_a_killed_worker(
        tmp_path: Path, small_text: Path, postgres_url: str) -> None:  # noqa: F811
    args = search_args(tmp_path, small_text, postgres_url, N_TRIALS)
    workers = [start_worker(args, seed=100 + i, log=tmp_path / f"worker{i}.log")
               for i in range(3)]
    try:
        victim = workers[0]
        killed = running_trial(postgres_url, victim.pid, timeout=300)
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
        took = wait_retried(postgres_url, killed, timeout=120)
        print(f"\nworker pid {victim.pid} SIGKILLed running trial #{killed}; failed by the "
              f"heartbeat and re-queued {took:.1f} s later")
        codes = [w.wait(timeout=900) for w in workers[1:]]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
    logs = [(tmp_path / f"worker{i}.log").read_text() for i in range(3)]
    assert codes == [0, 0], "\n\n".join(log[-3000:] for log in logs[1:])
    ts = trials(postgres_url)
    print(summary(ts))
    retried = retried_numbers(ts)
    assert retried == {killed}
    assert ts[killed].state == TrialState.FAIL
    again = [t for t in ts if retry_of(t) == killed]
    assert len(again) == 1 and again[0].state == TrialState.COMPLETE
    assert again[0].params == ts[killed].params and worker_of(again[0]) != victim.pid
    # exactly n_trials finished trials besides the retried one; nothing left running or queued
    assert len(ts) == N_TRIALS + 1
    assert all(t.state == TrialState.COMPLETE for t in ts if t.number != killed)
    workers_used = {worker_of(t) for t in ts}
    assert len(workers_used) == 3  # each worker ran trials of the one study
    # the study's report covers every trial, the dead one marked as re-run
    build_report(tmp_path / "search", samples=False)
    md = (tmp_path / "search" / "report.md").read_text()
    assert f"FAIL (worker died, re-run as #{again[0].number})" in md
    assert sorted(md_rows(tmp_path / "search" / "report.md"), key=int) == \
        [str(i) for i in range(N_TRIALS + 1)]
