"""Optuna pruning for a job of `hparams_search`: each validation's monitored metric is reported
to the job's trial, and a run the study's pruner prunes stops cleanly.

The hw2_optuna sweeper gives each job its trial number (`optuna_trial=<n>`); the storage, study
name and pruner come from the job's own `hydra.sweeper` config, so a job on another machine
(Ray, SLURM) opens the same study. The step reported is the number of validations so far, not
the global step: trials with other batch counts (e.g. another `data.seq_len`) are then compared
at the same point of their schedule. The count is kept in checkpoints, so a resumed job goes on.

A pruned run: `trainer.should_stop`, even before `min_epochs` (Lightning ends the fit
normally, checkpoints kept), the
trial is told PRUNED, the test is skipped and `run.json` says `pruned` (`hw2.train`).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import pytorch_lightning as pl

from hw2.utils.compat import stop_fit_now

log = logging.getLogger(__name__)


class OptunaPruning(pl.Callback):
    """Report `monitor` to Optuna trial `trial` after every validation; stop when pruned.
    A no-op when `trial` is None (not an Optuna search)."""

    def __init__(self, trial: int | None = None, monitor: str | None = None) -> None:
        self.number, self.monitor = trial, monitor
        self.validations = 0
        self.pruned = False
        self._study: Any = None
        self._trial: Any = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.number is None or stage != "fit" or not trainer.is_global_zero:
            return
        if not self.monitor:
            raise ValueError("callbacks.optuna_pruning.monitor is empty: name the validation "
                             "metric to report to the Optuna trial (e.g. val/bpc)")
        import optuna
        from hydra.core.hydra_config import HydraConfig

        from hw2.utils.optuna_study import (
            DEFAULT_STUDY,
            open_storage,
            storage_url,
            study_pruner,
            trial_id,
        )

        hydra = HydraConfig.get()
        sweeper = hydra.sweeper
        storage = open_storage(storage_url(sweeper.get("storage"), hydra.sweep.dir))
        name = sweeper.get("study_name") or DEFAULT_STUDY
        self._study = optuna.load_study(study_name=name, storage=storage,
                                        pruner=study_pruner(sweeper.get("pruner")))
        self._trial = optuna.trial.Trial(self._study, trial_id(storage, name, self.number))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # a validation after the pruning one (a fit that goes on to its end): the trial is done
        if self.number is None or trainer.sanity_checking or self.pruned:
            return
        prune = False
        if self._trial is not None:
            from optuna.exceptions import UpdateFinishedTrialError

            value = trainer.callback_metrics.get(self.monitor)
            try:
                if value is not None and math.isfinite(float(value)):
                    self._trial.report(float(value), self.validations)
                    prune = self._trial.should_prune()
            except UpdateFinishedTrialError:  # failed by another worker's heartbeat check
                log.warning("trial %d was finished by another worker: no more reports",
                            self.number)
                self._trial = None
        self.validations += 1
        # every DDP rank stops at the same validation: rank 0 holds the trial and decides
        if trainer.strategy.broadcast(prune, src=0):
            self.pruned = True
            stop_fit_now(trainer)  # also before the configured min_epochs (trainer: 1)
            if self._trial is not None:
                from optuna.trial import TrialState

                self._study.tell(self.number, state=TrialState.PRUNED)
                log.info("trial %d pruned at validation %d (%s)", self.number,
                         self.validations, self.monitor)

    def state_dict(self) -> dict[str, Any]:
        return {"validations": self.validations}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.validations = int(state_dict.get("validations", 0))

