"""hparams_search: the hw2_optuna sweeper's search space parsing, stale-trial recovery, and a
study that continues where a stopped search left it (same SQLite study, 2 then 3 trials)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from hw2.runs.record import read_record
from hydra_plugins.hw2_optuna_sweeper.optuna_sweeper import STALE, OptunaSweeper, search_space
from tests.helpers.sweeps import TINY_CHARLM, sweep


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


def test_trial_of_a_dead_process_is_failed_and_queued_again(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="s", storage=storage)
    trial = study.ask({"x": FloatDistribution(0, 1)})
    trial.set_user_attr("host", os.uname().nodename)
    trial.set_user_attr("pid", 2**22 + 12345)  # beyond pid_max: no such process
    sweeper = OptunaSweeper(n_trials=3)
    sweeper._release_stale(study)
    old = study.trials[0]
    assert old.state == TrialState.FAIL and old.user_attrs[STALE]
    assert sweeper._counted(study) == 0  # not counted towards n_trials
    again = study.ask({"x": FloatDistribution(0, 1)})
    assert again.params == old.params  # the same parameters run again


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
    assert rec["overrides"][-2:] == [f"{k}={v}" for k, v in study.trials[2].params.items()][-2:]
    summary = json.loads((sweep_dir / "optuna_study.json").read_text())
    assert [t["number"] for t in summary["trials"]] == [0, 1, 2]
    md = (sweep_dir / "report.md").read_text()
    assert "## Search: study 'search'" in md and "Best trial: #" in md
