"""What the engine tests share: a tiny CharLM's overrides, `python train.py` in a subprocess,
and the job records a sweep leaves."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from hw2.runs.record import read_record
from tests.helpers.paths import ROOT

TINY = ["model.net.hidden_size=32", "model.net.embedding_dim=16", "model.net.num_layers=1",
        "model.net.dropout=0", "data.seq_len=16", "data.batch_size=4",
        "callbacks.progress_bar.refresh_rate=0", "callbacks.text_sample.length=20",
        "~callbacks.param_histograms", "logger=csv", "trainer.enable_model_summary=false",
        "trainer.accelerator=cpu", "tune_malloc=false", "model.scheduler.warmup_steps=5",
        "model.optimizer.lr=0.01"]


def train_cmd(overrides: Sequence[str], tmp: Path, multirun: bool = False) -> list[str]:
    return [sys.executable, "train.py", *(["-m"] if multirun else []),
            f"paths.root_dir={tmp}", f"paths.cache_dir={tmp / 'cache'}", *overrides]


def job_records(sweep: Path) -> dict[int, dict]:
    out = {}
    for d in sweep.iterdir():
        if d.name.isdigit() and (rec := read_record(d)) is not None:
            out[int(d.name)] = rec
    return out


def train_once(overrides: Sequence[str], tmp: Path, run_dir: Path) -> tuple[dict, str]:
    """`python train.py` into `run_dir`; its record and its output."""
    res = subprocess.run(train_cmd([*overrides, f"hydra.run.dir={run_dir}"], tmp), cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    rec = read_record(run_dir)
    assert rec is not None and rec["status"] == "finished", out[-4000:]
    return rec, out
