"""hparams_search: the hw2_optuna sweeper's search space parsing, heartbeat recovery of a killed
worker's trial, and a study that continues where a stopped search left it (same SQLite study,
2 then 3 trials)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from hw2.runs.record import read_record
from hw2.utils.optuna_study import fail_stale, open_storage, retry_of, study_pruner
from hydra_plugins.hw2_optuna_sweeper.optuna_sweeper import OptunaSweeper, search_space
from tests.helpers.sweeps import TINY_CHARLM, queued_search, sweep

# a MedianPruner that judges from the third trial on, at every validation
MEDIAN_AFTER_2 = ("hydra/sweeper/pruner=median", "hydra.sweeper.pruner.n_startup_trials=2",
                  "hydra.sweeper.pruner.n_warmup_steps=0")


def test_search_space_uses_the_optuna_sweeper_syntax() -> None:
    space, fixed = search_space(
        {"model.optimizer.lr": "tag(log, interval(1e-4, 1e-2))", "model.net.cell": "rnn,lstm",
         "model.net.hidden_size": "choice(8, 16)", "data.seq_len": "range(16, 65, 16)",
         "model.net.num_layers": "tag(int, interval(1, 3))",
         "model.net.dropout": "interval(0, 0.5)"},
        ["model.net.hidden_size=choice(32,64)", "seed=7"])
    assert space["model.optimizer.lr"] == FloatDistribution(1e-4, 1e-2, log=True)
    assert space["model.net.cell"] == CategoricalDistribution(["rnn", "lstm"])
    assert space["model.net.hidden_size"] == CategoricalDistribution([32, 64])  # command line wins
    assert space["data.seq_len"] == IntDistribution(16, 64, step=16)
    assert space["model.net.num_layers"] == IntDistribution(1, 3)
    assert space["model.net.dropout"] == FloatDistribution(0.0, 0.5)
    assert fixed == ["seed=7"]


WORKER = """
import sys, time
import optuna
from optuna.distributions import FloatDistribution
from hw2.utils.optuna_study import Heartbeat, open_storage, trial_id

storage = open_storage(sys.argv[1], heartbeat_interval=1, grace_period=2)
study = optuna.load_study(study_name="s", storage=storage)
trial = study.ask({"x": FloatDistribution(0, 1)})
with Heartbeat(study, storage, 1) as beat:
    beat.add(trial_id(storage, "s", trial.number))
    print("running", trial.number, flush=True)
    time.sleep(600)
"""


@pytest.mark.slow  # ~2 s of grace period after a worker's start-up: ~6 s on 2 busy cores
def test_trial_of_a_killed_worker_is_failed_by_the_heartbeat_and_run_again(
        tmp_path: Path) -> None:
    """A worker process beats for its trial; SIGKILLed, it loses it: another worker's
    `fail_stale` marks it FAIL one grace period later (no pid or host check) and queues its
    parameters, which the next `ask` gets; the retry counts once taken, the stale one never.
    (That a live worker keeps its trial: the slow PostgreSQL test, test_optuna_workers.py.)"""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    storage = open_storage(url, heartbeat_interval=1, grace_period=2)
    study = optuna.create_study(study_name="s", storage=storage)
    worker = subprocess.Popen([sys.executable, "-c", WORKER, url], stdout=subprocess.PIPE,
                              text=True, cwd=Path(__file__).parents[1])
    try:
        assert worker.stdout is not None and worker.stdout.readline().startswith("running")
        fail_stale(study)
        assert study.trials[0].state == TrialState.RUNNING
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
        deadline = time.monotonic() + 10
        while study.trials[0].state == TrialState.RUNNING and time.monotonic() < deadline:
            time.sleep(0.5)
            fail_stale(study)
    finally:
        worker.kill()
        worker.wait()
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert retry_of(trials[1]) == 0 and trials[1].params == trials[0].params
    # neither counts yet: the dead trial was re-queued, and its retry is still to run, so no
    # worker stops while it waits; once an ask takes it, the retry counts
    assert OptunaSweeper.counted(trials) == 0
    again = study.ask({"x": FloatDistribution(0, 1)})
    assert again.number == 1 and again.params == trials[0].params
    assert OptunaSweeper.counted(study.get_trials()) == 1


@pytest.mark.slow
def test_stopped_search_continues_the_same_study(tmp_path: Path, small_text: Path) -> None:
    sweep_dir = tmp_path / "search"
    args = ["hparams_search=charlm_optuna", *TINY_CHARLM, f"data.corpus.path={small_text}",
            f"paths.root_dir={tmp_path}", f"hydra.sweep.dir={sweep_dir}",
            "model.net.hidden_size=choice(8,12)", "data.seq_len=choice(8,16)"]
    first = sweep([*args, "hydra.sweeper.n_trials=2"])
    assert first.returncode == 0, first.stderr[-3000:]
    storage = f"sqlite:///{sweep_dir / 'optuna.db'}"
    study = optuna.load_study(study_name="search", storage=storage)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    started = [read_record(sweep_dir / str(i))["started"] for i in range(2)]

    second = sweep([*args, "hydra.sweeper.n_trials=3"])
    assert second.returncode == 0, second.stderr[-3000:]
    study = optuna.load_study(study_name="search", storage=storage)
    assert [t.number for t in study.trials] == [0, 1, 2]
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    # trials 0 and 1 were not run again; trial 2 ran once, in job dir 2, and its value is the
    # best val BPC that run recorded
    assert [read_record(sweep_dir / str(i))["started"] for i in range(2)] == started
    rec = read_record(sweep_dir / "2")
    assert rec["attempts"] == 1 and rec["status"] == "finished"
    assert study.trials[2].value == pytest.approx(rec["metrics"]["best/val/bpc"])
    assert rec["overrides"][-3:] == [*[f"{k}={v}" for k, v in study.trials[2].params.items()][-2:],
                                     "optuna_trial=2"]  # the job knows its trial
    summary = json.loads((sweep_dir / "optuna_study.json").read_text())
    assert [t["number"] for t in summary["trials"]] == [0, 1, 2]
    md = (sweep_dir / "report.md").read_text()
    assert "## Search: study 'search'" in md and "Best trial: #" in md


@pytest.mark.parametrize("cfg, pruned", [
    (None, False),
    ({"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 5}, True),
], ids=["null", "median"])
def test_a_null_pruner_prunes_nothing(cfg: dict | None, pruned: bool) -> None:
    """Five trials at 1.0, then one at 100.0: only a configured pruner stops it (Optuna's
    default for `pruner=None` is a MedianPruner, which would)."""
    study = optuna.create_study(pruner=study_pruner(cfg))
    for _ in range(5):
        trial = study.ask()
        trial.report(1.0, 0)
        study.tell(trial, 1.0)
    trial = study.ask()
    trial.report(100.0, 0)
    assert bool(trial.should_prune()) is pruned


@pytest.mark.slow
def test_a_search_without_a_pruner_prunes_nothing(tmp_path: Path, small_text: Path) -> None:
    """`hydra.sweeper.pruner: null` (the default) runs every trial to its end: six good learning
    rates, then a hopeless one (lr 1e-6), which Optuna's own default (a MedianPruner after 5
    trials) would stop at its first validation."""
    out, study = queued_search(tmp_path, small_text, (0.05,) * 6 + (1e-6,), "test=false", steps=8)
    assert out.returncode == 0, out.stderr[-3000:]
    sweep_dir = tmp_path / "search"
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 7
    hopeless = study.trials[6]
    assert list(hopeless.intermediate_values) == [0, 1]  # reported, not stopped
    assert read_record(sweep_dir / "6")["metrics"]["trainer/global_step"] == 8


@pytest.mark.slow
def test_pruned_trials_stop_early_and_are_a_normal_outcome(tmp_path: Path,
                                                           small_text: Path) -> None:
    """MedianPruner on a search whose trials come from a queue: two good learning rates, then a
    hopeless one (lr 1e-6), a good one, a hopeless one. Each job reports its validations to its
    trial; the hopeless ones are pruned at their first validation: the job stops there (fewer
    steps, checkpoint kept, no test), run.json says `pruned`, the trial is PRUNED, the next trial
    runs, and the sweep ends with status 0 and a report that lists them as pruned."""
    out, study = queued_search(tmp_path, small_text, (0.05, 0.05, 1e-6, 0.05, 1e-6),
                               *MEDIAN_AFTER_2)
    assert out.returncode == 0, out.stderr[-3000:]
    sweep_dir = tmp_path / "search"
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE] * 2 + [TrialState.PRUNED, TrialState.COMPLETE,
                                                  TrialState.PRUNED], states
    for t in study.trials:
        rec = read_record(sweep_dir / str(t.number))
        assert rec is not None
        steps = rec["metrics"]["trainer/global_step"]
        if t.state == TrialState.PRUNED:
            # stopped at the first validation (step 4; Lightning may run one more step and
            # validation after should_stop) of 12 steps, its checkpoints kept, not tested
            assert rec["status"] == "pruned" and 4 <= steps < 12
            assert list(t.intermediate_values) == [0]
            assert (sweep_dir / str(t.number) / "checkpoints" / "last.ckpt").is_file()
            assert not any(k.startswith("test/") for k in rec["metrics"])
        else:
            assert rec["status"] == "finished" and steps == 12
            assert list(t.intermediate_values) == [0, 1, 2]
    md = (sweep_dir / "report.md").read_text()
    assert "2 pruned" in md and md.count("| PRUNED |") == 2
    assert "did not finish" not in out.stdout
    assert (sweep_dir / "report_figures" / "search_objective.png").is_file()


@pytest.mark.slow
def test_a_pruned_trial_frees_its_device_for_the_next_trial(tmp_path: Path,
                                                            small_text: Path) -> None:
    """`launcher=local_gpus` with one (fake) device: each trial's job locks it and trains in a
    child process. The hopeless trials are pruned at their first validation; their job ends
    there, releases the device, and the next trial gets it and runs to its end."""
    out, study = queued_search(tmp_path, small_text, (0.05, 0.05, 1e-6, 0.05, 1e-6, 0.05),
                               "launcher=local_gpus", "gpu_pool=[0]",
                               f"gpu_lock_dir={tmp_path / 'locks'}", "hydra.launcher.n_jobs=1",
                               "trainer.accelerator=cpu", *MEDIAN_AFTER_2, "test=false")
    assert out.returncode == 0, out.stderr[-3000:]
    sweep_dir = tmp_path / "search"
    assert [t.state for t in study.trials] == [
        TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED, TrialState.COMPLETE,
        TrialState.PRUNED, TrialState.COMPLETE]
    recs = [read_record(sweep_dir / str(t.number)) for t in study.trials]
    assert [r["gpu"] for r in recs] == ["0"] * 6  # every job held the one device
    assert [r["status"] for r in recs] == ["finished", "finished", "pruned", "finished",
                                           "pruned", "finished"]
    for pruned in (2, 4):  # stopped early; the next trial started once its job had ended
        assert recs[pruned]["metrics"]["trainer/global_step"] < 12
        assert recs[pruned + 1]["started"] >= recs[pruned]["ended"]
        assert recs[pruned + 1]["metrics"]["trainer/global_step"] == 12

