"""A sweep checked before it starts (hw2/sweeps/preflight.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from hw2.sweeps.preflight import check_node, job_overrides, rate_key

ROOT = Path(__file__).resolve().parents[1]
TINY = ["data=text_file", "model.net.hidden_size=8", "model.net.embedding_dim=4",
        "model.net.num_layers=1", "data.batch_size=2", "data.seq_len=8",
        "callbacks.progress_bar.refresh_rate=0"]


def sweep(tmp_path: Path, text: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "train.py", "-m", *TINY, f"data.corpus.path={text}",
         f"paths.log_dir={tmp_path / 'logs'}", f"hydra.sweep.dir={tmp_path / 'sweep'}",
         *overrides], cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # subprocesses of train.py / the CLI: ~10 s each
def test_a_misspelt_key_stops_the_sweep_before_any_job(tmp_path: Path, small_text: Path
                                                       ) -> None:
    out = sweep(tmp_path, small_text, "model.net.cell=rnn,lstm,gru",
                "model.optimizer.lr=1e-3,0.1x", "+model.net.hiden=3")
    assert out.returncode == 2, out.stdout + out.stderr
    err = out.stderr
    assert "preflight: 6 job(s)" in err and "no job was started" in err
    assert "all 6 jobs: model.net.hiden is not an argument of hw2.models.char_rnn.CharRNN " \
           "(did you mean hidden_size?)" in err
    # the bad value concerns 3 of the 6 jobs, each named by the keys that tell it apart
    assert ("job 1 (model.net.cell=rnn model.optimizer.lr=0.1x), job 3 (model.net.cell=lstm "
            "model.optimizer.lr=0.1x), job 5 (model.net.cell=gru model.optimizer.lr=0.1x): "
            "model.optimizer.lr='0.1x' does not fit torch.optim.AdamW's lr") in err
    assert not (tmp_path / "sweep").exists() or not any(
        p.is_dir() for p in (tmp_path / "sweep").iterdir())  # no job directory
    assert "Launching" not in out.stdout + err


@pytest.mark.slow  # subprocesses of train.py / the CLI: ~10 s each
def test_missing_data_is_found_before_the_sweep(tmp_path: Path, small_text: Path) -> None:
    out = sweep(tmp_path, small_text, "model.net.cell=rnn,gru",
                f"data.corpus.test_path={tmp_path / 'nope.txt'}")
    assert out.returncode == 2
    assert f"all 2 jobs: data.corpus.test_path={tmp_path / 'nope.txt'} does not exist" \
        in out.stderr


def test_grid_jobs_are_the_basic_sweepers() -> None:
    jobs = job_overrides({"seed": "1,2"}, ["model.net.cell=rnn,gru", "data.seq_len=8"])
    assert jobs == [["seed=1", "model.net.cell=rnn", "data.seq_len=8"],
                    ["seed=1", "model.net.cell=gru", "data.seq_len=8"],
                    ["seed=2", "model.net.cell=rnn", "data.seq_len=8"],
                    ["seed=2", "model.net.cell=gru", "data.seq_len=8"]]


def test_check_node_binds_keys_and_types() -> None:
    cfg = OmegaConf.create({"opt": {"_target_": "torch.optim.AdamW", "_partial_": True,
                                    "lr": "fast", "betas": [0.9, 0.99], "weight_decy": 0.1}})
    errors = check_node("opt", cfg.opt)
    assert errors == ["opt.lr='fast' does not fit torch.optim.AdamW's lr: "
                      + errors[0].rsplit(": ", 1)[1],
                      "opt.weight_decy is not an argument of torch.optim.AdamW (did you mean "
                      "weight_decay?)"]
    assert check_node("x", OmegaConf.create({"_target_": "hw2.nope.Thing"}))[0].startswith(
        "x._target_=hw2.nope.Thing: cannot be imported")
    ok = OmegaConf.create({"_target_": "hw2.data.char_data.CharDataModule", "corpus": None,
                           "batch_size": 4, "seq_len": 8, "unknown_chars": "map"})
    assert check_node("data", ok) == []
    bad = OmegaConf.create({"_target_": "hw2.data.char_data.CharDataModule",
                            "unknown_chars": "drop", "batch_size": 2.5})
    assert len(check_node("data", bad)) == 2


def test_jobs_share_a_step_timing_only_when_network_data_and_precision_agree() -> None:
    base = {"model": {"net": {"cell": "lstm", "hidden_size": 8}, "optimizer": {"lr": 1e-3},
                      "l2": 0.0},
            "data": {"seq_len": 8}, "trainer": {"precision": "32-true", "accelerator": "cpu"}}

    def key(**changes: Any) -> str:
        cfg = OmegaConf.create(base)
        for dotted, value in changes.items():
            OmegaConf.update(cfg, dotted.replace("__", "."), value)
        return rate_key(cfg)

    assert key(model__optimizer__lr=0.1) == key() == key(model__l2=1e-3)
    assert len({key(), key(model__net__cell="gru"), key(data__seq_len=16),
                key(trainer__precision="bf16-mixed")}) == 4


@pytest.mark.slow
def test_a_good_sweep_prints_its_jobs_and_estimate_then_runs(tmp_path: Path, small_text: Path
                                                              ) -> None:
    out = sweep(tmp_path, small_text, "model.net.cell=rnn,gru", "+trainer.max_steps=4",
                "trainer.max_epochs=1", "test=false")
    assert out.returncode == 0, out.stderr[-2000:]
    table = out.stdout[out.stdout.index("preflight: 2 job(s)"):]
    rows = table.splitlines()
    assert rows[1].split() == ["job", "model.net.cell", "steps", "s/step", "est.", "time"]
    assert rows[2].split()[:3] == ["0", "rnn", "4"] and rows[3].split()[:3] == ["1", "gru", "4"]
    assert "timed here for each of 2 distinct network/data config(s)" in table
    assert (tmp_path / "sweep" / "0" / "run.json").is_file()
    assert (tmp_path / "sweep" / "1" / "run.json").is_file()
