"""Which checkpoint a run starts from: `resume=auto` continues the run directory's own
`last.ckpt`; `ckpt_path` takes Lightning's names (last, best, hpc) or a file."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from pytorch_lightning.loggers import CSVLogger

from hw2.runs.atomic_io import remove_stale_temps
from hw2.runs.layout import best_checkpoint, checkpoint_dir, last_checkpoint
from hw2.utils import compat
from hw2.utils.compat import batches_that_stepped

log = logging.getLogger(__name__)

RESUME = ("auto", "never", "must")
LIGHTNING_NAMES = ("last", "best", "hpc")


def _best_of(run_dir: Path) -> Path:
    """ckpt_path=best: the run directory's best checkpoint, else a short error."""
    best = best_checkpoint(run_dir)
    if best is None:
        raise FileNotFoundError(f"ckpt_path=best: no best checkpoint found in "
                                f"{checkpoint_dir(run_dir)}; give a checkpoint file instead")
    return best


def resolve_checkpoint(cfg: DictConfig) -> str | None:
    """The checkpoint to fit (or test) from, or None to start fresh. Removes temporary files a
    killed save left in the run's checkpoint folder."""
    resume = str(cfg.get("resume", "auto")).lower()
    resume = {"true": "must", "false": "never"}.get(resume, resume)
    if resume not in RESUME:
        raise ValueError(f"resume={cfg.get('resume')!r} is not one of {RESUME}")
    run_dir = Path(cfg.paths.output_dir)
    remove_stale_temps(checkpoint_dir(run_dir))
    last = last_checkpoint(run_dir)
    value = cfg.get("ckpt_path")
    if value is None:
        if not cfg.get("train") or resume == "never":
            return None
        # the newest of last.ckpt and SLURM's requeue checkpoints (<run dir>/hpc_ckpt_<n>.ckpt)
        found = [p for p in (last, *run_dir.glob("hpc_ckpt_*.ckpt"))
                 if p.is_file()]
        if found:
            newest = max(found, key=lambda p: p.stat().st_mtime)
            log.info("resume=%s: continuing this run from %s", resume, newest)
            return str(newest)
        if resume == "must":
            raise FileNotFoundError(f"resume=must but {last} does not exist: run without "
                                    "resume=must to start, or give ckpt_path=<checkpoint>")
        return None
    value = str(value)
    if value == "hpc":
        return value  # Lightning finds <run dir>/hpc_ckpt_<n>.ckpt (SLURM requeue)
    if value == "last":
        path = last
    elif value == "best":
        path = _best_of(run_dir)
    else:
        path = Path(value)
    if not path.is_file():
        raise FileNotFoundError(
            f"ckpt_path={value}: {path} is not a file; give last, best or hpc (of this run "
            "directory, e.g. with run_name=<name>) or a checkpoint written by a run, e.g. "
            f"logs/<task>/runs/<name>/{last.relative_to(run_dir)}")
    return str(path)


def logging_step(ckpt_path: str | None) -> int | None:
    """The first logger step after the checkpoint, for TensorBoard's `purge_step`: events a
    killed run wrote after its checkpoint are dropped, so curves go on without a gap or a
    duplicated step. None when not resuming a Lightning checkpoint."""
    if ckpt_path is None or not Path(ckpt_path).is_file():
        return None
    try:
        state: dict[str, Any] = torch.load(ckpt_path, map_location="cpu", weights_only=True,
                                           mmap=True)
    except Exception as e:  # noqa: BLE001 - Lightning's own load will report a bad file
        log.warning("could not read the logging step of %s (%s): curves may overlap", ckpt_path, e)
        return None
    stepped = batches_that_stepped(state)
    return None if stepped is None else stepped + 1


def keep_csv_rows(logger: CSVLogger, purge_step: int) -> None:
    """Lightning's CSV logger deletes an existing metrics.csv when it starts: on a resume keep
    the rows logged before the checkpoint (step < purge_step); they are written back first."""
    path = Path(logger.log_dir) / "metrics.csv"
    rows: list[dict[str, str]] = []
    if path.is_file():
        with path.open(newline="") as f:
            rows = [r for r in csv.DictReader(f) if r.get("step", "").isdigit()
                    and int(r["step"]) < purge_step]
    compat.keep_csv_rows(logger.experiment, rows)  # .experiment removes the old file
