"""`hydra/sweeper=hw2_optuna`: an Optuna search driven by Hydra's config and override syntax.

Why not hydra-optuna-sweeper: 1.3.0 pins optuna<3 and fails on any RDB storage under
SQLAlchemy 2, its 1.4 line needs pre-release hydra-core. This is a thin layer over
`optuna.create_study(..., load_if_exists=True)` + ask/tell:

- search space from `hydra.sweeper.params` and sweep overrides of the command line, in the
  optuna sweeper's syntax: `a,b,c` / `choice(a,b)` (categorical), `range(1,9,2)` (int/float
  steps), `interval(1e-4,1e-1)` (float), `tag(log, interval(...))`, `tag(int, interval(2,8))`;
- the study lives in `storage` (default `sqlite:///<sweep dir>/optuna.db`, any SQLAlchemy URL):
  re-running the command continues it up to `n_trials` finished trials, several processes can
  share it (each counts the others' running trials);
- each trial is one job of the configured launcher (`launcher=local_gpus`: one GPU per trial),
  in `<sweep dir>/<trial number>/`; a failed job is a FAIL trial, the search goes on;
- with `heartbeat_interval` set (default 60 s) every worker records Optuna's heartbeat for
  the trials it runs, and fails (`optuna.storages.fail_stale_trials`) the trials of workers
  that stopped beating for `grace_period` s, on any host: their parameters are queued again
  (`RetryHeartbeatStaleTrialCallback`, at most `max_retry` times) and run by the next worker
  that asks;
- each job is told its trial number (`optuna_trial=<n>`): `hw2.callbacks.pruning` reports
  every validation to the trial and, with a `pruner`, stops a run the pruner prunes (the
  trial is PRUNED, `run.json` says `pruned`);
- after every batch `<sweep dir>/optuna_study.json` lists the trials for `python -m hw2.report`.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import warnings
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import optuna
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, TrialState

from hw2.utils.fileio import atomic_write_json
from hw2.utils.optuna_study import (
    DEFAULT_STUDY,
    TRIAL_KEY,
    Heartbeat,
    fail_stale,
    open_storage,
    retried_numbers,
    retry_of,
    storage_url,
    study_pruner,
    trial_id,
)

log = logging.getLogger(__name__)

STUDY_FILE = "optuna_study.json"
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)


def distribution(override: Override) -> BaseDistribution | None:
    """The Optuna distribution of one sweep override; None for a plain value."""
    if not override.is_sweep_override():
        return None
    value = override.value()
    tags = set(getattr(value, "tags", ()) or ())
    if isinstance(value, ChoiceSweep):
        return CategoricalDistribution(list(value.list))
    if isinstance(value, RangeSweep):
        assert value.start is not None and value.stop is not None
        items = list(value.range())
        if all(isinstance(x, int) for x in (value.start, value.stop, value.step)):
            return IntDistribution(int(items[0]), int(items[-1]), step=int(value.step))
        return FloatDistribution(float(items[0]), float(items[-1]), step=float(value.step))
    if isinstance(value, IntervalSweep):
        assert value.start is not None and value.end is not None
        if "int" in tags:
            return IntDistribution(int(value.start), int(value.end), log="log" in tags)
        return FloatDistribution(float(value.start), float(value.end), log="log" in tags)
    raise ValueError(f"{override.input_line}: not a search space optuna can sample "
                     "(use a,b / choice(...) / range(...) / interval(...))")


def search_space(params: dict[str, Any] | None, arguments: Sequence[str]
                 ) -> tuple[dict[str, BaseDistribution], list[str]]:
    """(distributions, fixed overrides) from `hydra.sweeper.params` and the command line (which
    wins for a key given in both)."""
    lines = [f"{k}={v}" for k, v in (params or {}).items()] + list(arguments)
    space: dict[str, BaseDistribution] = {}
    fixed: dict[str, str] = {}
    for ov in OverridesParser.create().parse_overrides(lines):
        key = ov.get_key_element()
        space.pop(key, None)
        fixed.pop(key, None)
        dist = distribution(ov)
        if dist is None:
            fixed[key] = ov.input_line
        else:
            space[key] = dist
    return space, list(fixed.values())


class OptunaSweeper(Sweeper):
    # workers of one study (on one machine or several over a shared disk) work in the same
    # sweep dir: each trial has its own job dir, locked by its job (hw2.sweeps.hydra_callbacks)
    shares_sweep_dir = True

    def __init__(self, sampler: Any = None, pruner: Any = None, direction: str = "minimize",
                 study_name: str | None = None, storage: str | None = None, n_trials: int = 20,
                 n_jobs: int = 1, params: dict[str, Any] | None = None,
                 heartbeat_interval: int | None = 60, grace_period: int | None = None,
                 max_retry: int | None = 3) -> None:
        self.sampler_cfg, self.pruner_cfg, self.direction = sampler, pruner, direction
        self.study_name, self.storage = study_name, storage
        self.n_trials, self.n_jobs = int(n_trials), max(1, int(n_jobs))
        self.params = OmegaConf.to_container(params) if isinstance(params, DictConfig) else params
        self.heartbeat_interval, self.grace_period = heartbeat_interval, grace_period
        self.max_retry = max_retry

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def _sampler(self, n_existing: int) -> optuna.samplers.BaseSampler:
        """The configured sampler; its seed is shifted by the trials already in the study, so a
        continued search does not replay the first trials' random draws."""
        cfg = self.sampler_cfg
        if cfg is None:
            return optuna.samplers.TPESampler(seed=n_existing or None)
        if isinstance(cfg, optuna.samplers.BaseSampler):
            return cfg
        kwargs = {}
        if cfg.get("seed") is not None:
            kwargs["seed"] = int(cfg.seed) + n_existing
        return instantiate(cfg, **kwargs)

    @staticmethod
    def counted(trials: list[FrozenTrial]) -> int:
        """Trials that count towards `n_trials`: finished or running, except the stale ones the
        heartbeat queued again: their retry (WAITING) is still to run, and the next `ask` of
        any worker takes it before sampling new parameters."""
        retried = retried_numbers(trials)
        return sum(1 for t in trials if t.state in COUNTED and t.number not in retried)

    def _write_summary(self, study: optuna.Study, metric: str | None) -> None:
        from sqlalchemy.engine import make_url

        try:
            shown = make_url(self.storage_url).render_as_string(hide_password=True)
        except Exception:
            shown = self.storage_url
        all_trials = study.get_trials(deepcopy=False)
        retried = retried_numbers(all_trials)
        trials = [{"number": t.number, "state": t.state.name, "value": t.value,
                   "params": t.params, "stale": t.number in retried, "retry_of": retry_of(t),
                   "worker": t.user_attrs.get("worker"),
                   "steps": len(t.intermediate_values),
                   "last_value": t.intermediate_values[t.last_step]
                   if t.last_step is not None else None}
                  for t in all_trials]
        atomic_write_json(self.sweep_dir / STUDY_FILE, {
            "study_name": study.study_name, "storage": shown, "metric": metric,
            "direction": self.direction, "n_trials": self.n_trials, "trials": trials})

    def sweep(self, arguments: list[str]) -> Any:
        # the sweep dir may use ${hydra:...} (task_name): Hydra sets its config only per job
        HydraConfig.instance().set_config(self.config)
        self.sweep_dir = Path(str(self.config.hydra.sweep.dir))
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        space, fixed = search_space(self.params, arguments)
        if not space:
            raise ValueError("hydra.sweeper.params is empty: give a search space, e.g. "
                             "hydra.sweeper.params.model.optimizer.lr='tag(log,interval(1e-4,1e-2))'")
        self.storage_url = storage_url(self.storage, self.sweep_dir)
        name = self.study_name or DEFAULT_STUDY
        metric = self.config.get("optimized_metric")
        storage = open_storage(self.storage_url, self.heartbeat_interval, self.grace_period,
                               self.max_retry)
        study = optuna.create_study(study_name=name, storage=storage,
                                    pruner=study_pruner(self.pruner_cfg),
                                    direction=self.direction, load_if_exists=True)
        study.sampler = self._sampler(len(study.trials))
        log.info("study %r in %s: %d trial(s) so far, target %d finished", name,
                 self.storage_url, len(study.trials), self.n_trials)
        worker = f"{socket.gethostname()}:{os.getpid()}"
        beat = Heartbeat(study, storage, self.heartbeat_interval) if self.heartbeat_interval \
            else None
        with beat or nullcontext():
            fail_stale(study)
            while (left := self.n_trials - self.counted(study.get_trials(deepcopy=False))) > 0:
                self._run_batch(study, storage, beat, space, fixed, min(self.n_jobs, left),
                                worker)
                self._write_summary(study, metric)
                fail_stale(study)
        self._write_summary(study, metric)
        try:
            best = study.best_trial
            print(f"best trial #{best.number}: {metric} = {best.value:.4f} "
                  f"{best.params} (study {name!r}, {self.storage_url})", flush=True)
            return best.value
        except ValueError:
            print(f"no trial of study {name!r} completed", flush=True)
            return None

    def _run_batch(self, study: optuna.Study, storage: Any, beat: Heartbeat | None,
                   space: dict[str, BaseDistribution], fixed: list[str], n: int,
                   worker: str) -> None:
        """Ask `n` trials (queued retries first), run them as one launch per run of
        consecutive trial numbers (job dir = trial number), tell their results."""
        with warnings.catch_warnings():  # ask/tell is the documented way to run trials elsewhere
            warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used")
            trials = [study.ask(space) for _ in range(n)]
        ids = [trial_id(storage, study.study_name, t.number) for t in trials]
        for t, i in zip(trials, ids, strict=True):
            t.set_user_attr("worker", worker)
            if beat is not None:
                beat.add(i)
        batch = [fixed + [f"{k}={v}" for k, v in t.params.items()]
                 + [f"{TRIAL_KEY}={t.number}"] for t in trials]
        self.validate_batch_is_legal(batch)
        returns: list[Any] = []
        start = 0
        for i in range(1, len(trials) + 1):
            if i == len(trials) or trials[i].number != trials[i - 1].number + 1:
                returns += self.launcher.launch(batch[start:i],
                                                initial_job_idx=trials[start].number)
                start = i
        for t, i, ret in zip(trials, ids, returns, strict=True):
            try:
                value = ret.return_value
            except Exception as e:  # the job raised (a launcher that does not catch)
                log.warning("trial %d failed: %s", t.number, e)
                value = None
            # a pruned job has told its trial PRUNED itself (hw2.callbacks.pruning)
            if isinstance(value, (int, float)) and math.isfinite(value):
                told = study.tell(t, float(value), skip_if_finished=True)
            else:
                told = study.tell(t, state=TrialState.FAIL, skip_if_finished=True)
            if told.state == TrialState.FAIL and told.number in retried_numbers(study.trials):
                log.warning("trial %d was failed by another worker (no heartbeat for longer than "
                            "the grace period) and re-queued: its result is dropped. A busy "
                            "machine? raise hydra.sweeper.grace_period", t.number)
            if beat is not None:
                beat.remove(i)

