"""`python train.py -m` sweeps on a tiny CharLM, and reading back the report's run table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna

from tests.helpers.paths import ROOT

TINY_CHARLM = ["data=text_file", "data.corpus.test_fraction=0.1", "model.net.hidden_size=8",
               "model.net.embedding_dim=4",
               "model.net.num_layers=1", "data.batch_size=4", "data.seq_len=8",
               "trainer.max_epochs=1",
               "++trainer.limit_train_batches=6", "++trainer.limit_val_batches=3",
               "trainer.val_check_interval=3", "trainer.log_every_n_steps=1",
               "trainer.num_sanity_val_steps=0", "callbacks.progress_bar.refresh_rate=0",
               "trainer.enable_model_summary=false"]


def sweep(args: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "train.py", "-m", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=900)


def queued_search(tmp_path: Path, text: Path, lrs: tuple[float, ...], *args: str,
                  steps: int = 12) -> tuple[subprocess.CompletedProcess, optuna.Study]:
    """An Optuna search of a tiny CharLM (`hparams_search=charlm_optuna`) whose trials come from a
    queue, one per learning rate in `lrs`, each training `steps` steps with a validation every 4;
    `args` add to or override the sweep's. Returns the sweep and its study, loaded after it."""
    sweep_dir = tmp_path / "search"
    sweep_dir.mkdir()
    storage = f"sqlite:///{sweep_dir / 'optuna.db'}"
    study = optuna.create_study(study_name="search", storage=storage)
    for lr in lrs:
        study.enqueue_trial({"model.optimizer.lr": lr, "model.net.hidden_size": 8,
                             "data.seq_len": 8, "model.net.dropout": 0.0})
    out = sweep(["hparams_search=charlm_optuna", *TINY_CHARLM, f"data.corpus.path={text}",
                 f"trainer.limit_train_batches={steps}", "trainer.val_check_interval=4",
                 f"paths.root_dir={tmp_path}", f"hydra.sweep.dir={sweep_dir}",
                 "model.net.hidden_size=choice(8,12)", "data.seq_len=choice(8,16)",
                 f"hydra.sweeper.n_trials={len(lrs)}", "hydra.callbacks.sweep_report.samples=false",
                 *args])
    return out, optuna.load_study(study_name="search", storage=storage)


def md_rows(report: Path) -> dict[str, list[str]]:
    """The run table of report.md: run name -> cells."""
    rows = {}
    for line in report.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0].isdigit():
            rows[cells[0]] = cells
    return rows
