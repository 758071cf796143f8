"""One sweep job that survives: a re-run skips it when it finished, resumes it when it was
interrupted, and (in a multirun) a failure ends only this job, not the sweep.

The decisions are made from the job's own record (`run.json`, `hw2/runs/record.py`), written by
the previous attempt, never from log text. The record keeps the job's overrides, so a job
directory that holds a different run is not mistaken for this one.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from hw2.runs.lock import RunDirBusy, run_dir_lock
from hw2.runs.record import DONE, job_overrides, read_record, status_of
from hw2.sweeps.gpu_slots import run_in_gpu_slot

log = logging.getLogger(__name__)


def in_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.get().mode == RunMode.MULTIRUN
    except (ValueError, AttributeError):
        return False


class SweepDirConflict(RuntimeError):
    """The job directory holds another run: running into it would mix two runs' events."""


def previous_attempt(out_dir: str | Path, overrides: list[str] | None) -> tuple[str, dict] | None:
    """(status, record) of an earlier attempt of this same job in `out_dir`, or None when there
    is none. A directory holding a run with other overrides is an error, not a restart."""
    record = read_record(out_dir)
    if not record:
        return None
    if overrides is not None and record.get("overrides") not in (None, overrides):
        raise SweepDirConflict(
            f"{out_dir} holds a run with other overrides {record.get('overrides')}, not this "
            f"job's {overrides}: give this sweep its own hydra.sweep.dir=...")
    return status_of(record), record


def objective(metrics: Mapping[str, Any], metric: str | None) -> float | None:
    """The value a sweeper optimises (`optimized_metric`); None when absent or not finite."""
    if not metric or metric not in metrics:
        return None
    value = float(metrics[metric])
    return value if math.isfinite(value) else None


def run_job(cfg: DictConfig, train: Callable[[DictConfig], dict[str, float]]) -> float | None:
    """Run `train(cfg)` as one sweep job and return `cfg.optimized_metric` of its metrics.

    - the job holds its directory's lock (`hw2.runs.lock`) from before it reads the record to
      its end: a directory another live process trains into is refused without touching it
      (in a multirun: this job is left out and the sweep goes on; a re-run tries it again);
    - with `spread_gpus=true` (launcher=local_gpus) the job locks a free GPU of the pool and
      trains in a child process that sees only it (`hw2.sweeps.gpu_slots`);
    - a job dir holding a different run stops the sweep (SweepDirConflict);
    - a finished (or pruned) earlier attempt with the same overrides is skipped (its recorded
      metrics count);
    - an interrupted (or failed) one runs again in its directory, where `resume=auto`
      (`hw2/runs/resume.py`) continues it from `<job dir>/checkpoints/last.ckpt`;
    - in a multirun an exception is logged and recorded (`run.json`: failed + its last line)
      and the sweep goes on; the sweep's end reports it and exits non-zero
      (`hw2.sweeps.hydra_callbacks.SweepReport`). A single run still raises.
    """
    out_dir = Path(cfg.paths.output_dir)
    multirun = in_multirun()
    try:
        with run_dir_lock(out_dir):
            return _run_job(cfg, train, out_dir, multirun)
    except RunDirBusy as e:
        if not multirun:
            raise
        # not logged: the job's log file is the holder's
        print(f"sweep job left out: {e}", file=sys.stderr, flush=True)
        return None


def _run_job(cfg: DictConfig, train: Callable[[DictConfig], dict[str, float]], out_dir: Path,
             multirun: bool) -> float | None:
    if cfg.get("spread_gpus"):  # launcher=local_gpus: train in a child holding a free GPU
        train = run_in_gpu_slot
    metric = cfg.get("optimized_metric")
    previous = previous_attempt(out_dir, job_overrides()) if multirun else None
    if previous is not None:
        status, record = previous
        if status in DONE and cfg.get("skip_finished", True):
            log.info("skipping %s: %s in an earlier attempt (run.json)", out_dir, status)
            print(f"skipped ({status} before): {out_dir}", flush=True)
            return objective(record.get("metrics") or {}, metric)
    if not multirun:
        return objective(train(cfg), metric)
    try:
        return objective(train(cfg), metric)
    except Exception:  # KeyboardInterrupt still stops the sweep (recorded as interrupted)
        log.exception("sweep job %s failed; the sweep goes on", out_dir)
        return None
