"""Hydra callbacks, wired in `conf/hydra/default.yaml`.

- `SharedRunDir`: torchrun and srun start every DDP rank as a whole `python train.py`; the ranks
  must agree on one run directory (the default name is the start time, which differs per
  process) and only rank 0 may write Hydra's files into it.
- `CheckRunDir`: Hydra creates the run directory before any of our code runs, so an unwritable
  `paths.log_dir` would end in a raw mkdir traceback; this checks it first and says what to do.
  It also locks the run (or sweep) directory (`hw2.runs.lock`) before Hydra writes into it:
  a second process on a directory a live one trains into stops here, before Hydra rewrites
  the holder's `.hydra/` files or appends to its log. A sweep directory that workers share by
  design (one Optuna study) is not locked; its jobs are.
- `SweepReport`: every multirun ends in its report and a summary of the jobs that failed. Jobs
  survive failures in `hw2.sweeps.job.run_job`; here the sweep as a whole exits non-zero when
  any job did not finish, so scripts and CI see it.
- `MlflowSweep`: with `logger=mlflow`, the sweep's MLflow parent run, made before the first job
  so every job's run nests under it; `SweepReport` ends it with the report as its artifacts.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from hw2.runs import tracking
from hw2.runs.lock import RunDirBusy, acquire, release
from hw2.utils.fileio import UnwritablePathError, writable_dir
from hw2.utils.ranks import external_launcher, global_rank, launch_id

log = logging.getLogger(__name__)


def given_on_command_line(config: DictConfig, *keys: str) -> bool:
    overrides = [*config.hydra.overrides.task, *config.hydra.overrides.hydra]
    return any(o.lstrip("+~").split("=", 1)[0] in keys for o in overrides)


class SharedRunDir(Callback):
    """Under torchrun/srun: one run directory for all ranks, written by rank 0 alone.

    Without `run_name=` (or `hydra.run.dir=`) the run is named after the launch
    (`torchrun-<rdzv id>`, `slurm-<job>.<step>`), the same on every node; a torchrun without
    --rdzv-id has no shared id and is an error that says what to pass. Ranks > 0 save no
    `.hydra/` and log to `<job>_rank<r>.log` (Lightning's own launcher does the same for the
    ranks it starts)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        launcher = external_launcher()
        if launcher is None:
            return
        if not given_on_command_line(config, "run_name", "hydra.run.dir"):
            name = launch_id()
            if name is None:
                print(f"error: {launcher} started this run's ranks without a shared name, so "
                      "each would write its own run directory: pass run_name=<name> (the same "
                      "on every node) or torchrun --rdzv-id=<id>", file=sys.stderr)
                raise SystemExit(2)
            with open_dict(config):
                config.run_name = name
        rank = global_rank()
        if rank > 0:
            with read_write(config.hydra), open_dict(config.hydra):
                config.hydra.output_subdir = None
                config.hydra.job.name = f"{config.hydra.job.name}_rank{rank}"


def sweep_dir_is_shared(config: DictConfig) -> bool:
    """Whether the configured sweeper lets several processes work in one sweep directory at
    once (its class says `shares_sweep_dir = True`): the workers of one Optuna study do, each
    job in its own trial's directory, which it locks itself (`hw2.sweeps.job.run_job`)."""
    target = OmegaConf.select(config, "hydra.sweeper._target_")
    if not target:
        return False
    try:
        return bool(getattr(get_class(str(target)), "shares_sweep_dir", False))
    except Exception:  # noqa: BLE001 - Hydra itself reports a sweeper it cannot load
        return False


class CheckRunDir(Callback):
    """Stop with one line naming the directory when the run (or sweep) directory cannot be
    written (a file in the way, a read-only or full disk) or another live process holds it;
    otherwise hold it until the run (or sweep) ends."""

    _path: str | None = None

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._path = self._check(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        shared = sweep_dir_is_shared(config)  # then each job locks only its own directory
        path = self._check(config, "hydra.sweep.dir", lock=not shared)
        self._path = None if shared else path

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self._path is not None:
            release(self._path)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self._path is not None:
            release(self._path)

    @staticmethod
    def _check(config: DictConfig, key: str, lock: bool = True) -> str:
        HydraConfig.instance().set_config(config)  # ${hydra:...} in the path resolves
        path = str(OmegaConf.select(config, key))
        try:  # the lock first: a busy directory gets no probe file either
            if lock:
                acquire(path)
            writable_dir(path, hint="set paths.log_dir (or hydra.run.dir) to a writable "
                                    "directory with free space")
        except RunDirBusy as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from e
        except UnwritablePathError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from e
        return path


class SweepReport(Callback):
    """At the end of a multirun: `python -m hw2.report <sweep dir>`, then the failed jobs."""

    def __init__(self, enabled: bool = True, samples: bool = True,
                 exit_nonzero_on_failure: bool = True) -> None:
        self.enabled, self.samples = enabled, samples
        self.exit_nonzero_on_failure = exit_nonzero_on_failure

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from hw2.report import build_report, unfinished_jobs

        if not HydraConfig.initialized():  # ${hydra:...} in the sweep dir needs it
            HydraConfig.instance().set_config(config)
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir():
            return
        lines = [""]
        if self.enabled:
            try:
                html = build_report(sweep_dir, samples=self.samples)
                lines += [f"report: {html}", f"        {html.with_suffix('.md')}"]
            except Exception as e:  # the jobs' results are on disk either way
                log.exception("the sweep's report failed")
                lines.append(f"report failed ({type(e).__name__}: {e}); retry: "
                             f"python -m hw2.report {sweep_dir}")
        bad = unfinished_jobs(sweep_dir)
        others = []
        if sweep_dir_is_shared(config):  # a study's other workers are running these trials
            others = [d for d, status, _ in bad if status == "running"]
            bad = [job for job in bad if job[1] != "running"]
        try:
            parent = tracking.finish_sweep_parent(sweep_dir, all_finished=not bad)
            if parent:
                lines.append(f"mlflow: the sweep is parent run {parent}")
        except Exception as e:  # the report is on disk either way
            log.warning("could not finish the sweep's MLflow run: %s", e)
        if others:
            lines.append(f"{len(others)} trial(s) still running in other workers of the study: "
                         + ", ".join(d.name for d in others))
        if bad:
            lines.append(f"{len(bad)} job(s) did not finish:")
            lines += [f"  {d}: {status}{': ' + err if err else ''}" for d, status, err in bad]
            lines.append("re-run the same command with hydra.sweep.dir="
                         f"{sweep_dir} to run them again (finished jobs are skipped)")
        print("\n".join(lines), flush=True)
        if bad and self.exit_nonzero_on_failure:
            sys.exit(1)  # SystemExit passes Hydra's callback guard: the sweep's exit status


SWEEP_SYNTAX = (",", "choice(", "range(", "interval(", "glob(")


def sweep_title(config: DictConfig, sweep_dir: Path) -> str:
    """A sweep's name where runs are listed (MLflow's parent run): its directory's name and what
    it varies, from the command line's swept overrides and the sweeper's `params`, e.g.
    `2026-12-07_20-01-02_123456: model.net.cell=rnn,lstm,gru`."""
    swept = [o for o in config.hydra.overrides.get("task") or []
             if "=" in o and any(m in o.split("=", 1)[1] for m in SWEEP_SYNTAX)]
    keys = {o.split("=", 1)[0].lstrip("+~") for o in swept}
    params = config.hydra.sweeper.get("params") or {}
    swept += [f"{k}={v}" for k, v in params.items() if k not in keys]
    title = f"{sweep_dir.name}: {' '.join(swept)}" if swept else sweep_dir.name
    return title if len(title) <= 250 else title[:249] + "…"  # MLflow's limit: 250


class MlflowSweep(Callback):
    """With an MLflow logger configured: the sweep's parent run, created once per sweep dir
    (`mlflow_parent.json`) and reused when the sweep is run again into the same dir."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        node = tracking.mlflow_node(config.get("logger"))
        if node is None:
            return
        if not HydraConfig.initialized():  # ${hydra:...} in the sweep dir and task name
            HydraConfig.instance().set_config(config)
        sweep_dir = Path(str(config.hydra.sweep.dir))
        run_id = tracking.ensure_sweep_parent(sweep_dir, node, str(node.experiment_name),
                                              sweep_title(config, sweep_dir))
        log.info("MLflow parent run of %s: %s", sweep_dir, run_id)
