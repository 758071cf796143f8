"""The Optuna study of an `hparams_search`, as the sweeper and its jobs both open it.

The sweeper (hydra_plugins/hw2_optuna_sweeper) asks and tells trials; a job reports its
validations to its own trial for pruning (`hw2.callbacks.pruning`). Both open the same storage
the same way, through Optuna's public API only: an `RDBStorage` with Optuna's heartbeat, so a
trial whose worker died (on any host) is failed by whichever worker looks next and its
parameters are queued again (`RetryHeartbeatStaleTrialCallback`).
"""

from __future__ import annotations

import random
import threading
import time
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial
from sqlalchemy.exc import IntegrityError, OperationalError

DEFAULT_STUDY = "search"
TRIAL_KEY = "optuna_trial"  # a job's config key holding its trial number (conf/train.yaml)
DB_NAME = "optuna.db"


@contextmanager
def quiet() -> Iterator[None]:
    """Optuna's heartbeat and retry API, stable since 2.8/2.9, still warns "experimental" on
    every call."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        yield


def study_pruner(cfg: Any) -> optuna.pruners.BasePruner:
    """The pruner of `hydra.sweeper.pruner` (a `_target_` config), or none at all when it is
    null: `optuna.create_study(pruner=None)` would give Optuna's default, a MedianPruner."""
    if not cfg:
        return optuna.pruners.NopPruner()
    from hydra.utils import instantiate

    return instantiate(cfg)


def storage_url(storage: str | None, sweep_dir: str | Path) -> str:
    """`hydra.sweeper.storage`, or the SQLite file of the sweep dir when it is null."""
    return storage or f"sqlite:///{(Path(sweep_dir) / DB_NAME).resolve()}"


def open_storage(url: str, heartbeat_interval: int | None = None, grace_period: int | None = None,
                 max_retry: int | None = 3) -> RDBStorage:
    """An RDB storage; with `heartbeat_interval` set, RUNNING trials without a heartbeat for
    `grace_period` s (default 2 intervals) are failed by `fail_stale_trials` and re-queued as
    WAITING trials with the same parameters, each original at most `max_retry` times
    (None: always; 0: never)."""
    if heartbeat_interval is not None and int(heartbeat_interval) <= 0:
        raise ValueError(f"hydra.sweeper.heartbeat_interval={heartbeat_interval}: give a "
                         "positive number of seconds (or null: no heartbeat)")
    if grace_period is not None and heartbeat_interval is not None \
            and int(grace_period) <= int(heartbeat_interval):
        raise ValueError(f"hydra.sweeper.grace_period={grace_period} is not longer than "
                         f"heartbeat_interval={heartbeat_interval}: a live trial would be failed; "
                         "give at least twice the interval")
    with quiet():
        retry = None
        if heartbeat_interval is not None and max_retry != 0:
            retry = RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
        for attempt in range(5):
            try:
                return RDBStorage(url, heartbeat_interval=heartbeat_interval and
                                  int(heartbeat_interval),
                                  grace_period=grace_period and int(grace_period),
                                  heartbeat_stale_trial_callback=retry)
            except (IntegrityError, OperationalError):
                # workers starting together on a new database race to create its tables and
                # schema version ("table ... already exists", a duplicate alembic_version row):
                # the losers find them made on the next try (an unreachable server: 5 tries)
                if attempt == 4:
                    raise
                time.sleep(0.5 + random.random())
    raise AssertionError("unreachable")


def trial_id(storage: RDBStorage, study_name: str, number: int) -> int:
    """The storage's id of trial `number` of the study (what `optuna.trial.Trial` takes)."""
    study_id = storage.get_study_id_from_name(study_name)
    return storage.get_trial_id_from_study_id_trial_number(study_id, number)


def retried_numbers(trials: Iterable[FrozenTrial]) -> set[int]:
    """Numbers of the stale trials that the heartbeat re-queued (they ran again under another
    number, so they do not count as finished)."""
    out: set[int] = set()
    with quiet():
        for t in trials:
            out.update(RetryHeartbeatStaleTrialCallback.retry_history(t))
    return out


def retry_of(trial: FrozenTrial) -> int | None:
    """The number of the stale trial whose parameters `trial` runs again, if it is a retry."""
    with quiet():
        history = RetryHeartbeatStaleTrialCallback.retry_history(trial)
    return history[-1] if history else None


def fail_stale(study: optuna.Study) -> None:
    """Optuna's `fail_stale_trials` (a no-op without a heartbeat), its warning silenced."""
    with quiet():
        optuna.storages.fail_stale_trials(study)


class Heartbeat:
    """Records a heartbeat for the trials this process runs every `interval` s, and fails stale
    trials of other workers at the same pace, in a daemon thread. A worker that dies stops
    beating; another worker's thread fails its trial one grace period later."""

    def __init__(self, study: optuna.Study, storage: RDBStorage, interval: float) -> None:
        self.study, self.storage, self.interval = study, storage, float(interval)
        self.trial_ids: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="optuna-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def add(self, trial_id: int) -> None:
        """Beat for this trial from now on (the first beat now: a trial without any heartbeat
        is never considered stale)."""
        with self._lock:
            self.trial_ids.add(trial_id)
        self.storage.record_heartbeat(trial_id)

    def remove(self, trial_id: int) -> None:
        with self._lock:
            self.trial_ids.discard(trial_id)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                ids = list(self.trial_ids)
            try:
                for i in ids:
                    self.storage.record_heartbeat(i)
                fail_stale(self.study)
            except Exception as e:  # a database hiccup: the next beat tries again
                warnings.warn(f"optuna heartbeat failed: {type(e).__name__}: {e}", stacklevel=1)

