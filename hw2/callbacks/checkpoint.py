"""Checkpoints that are never written from a diverged model."""

from __future__ import annotations

import logging

import pytorch_lightning as pl
import torch

from hw2.models.base import NonFiniteLossError
from hw2.utils.compat import CheckpointHooks, validation_has_run

log = logging.getLogger(__name__)


def finite_weights(module: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in module.parameters())


class FiniteCheckpoint(CheckpointHooks):
    """Lightning's ModelCheckpoint, except that a model with a non-finite weight is never saved
    (a diverged run would otherwise overwrite the last good `last.ckpt`, e.g. through
    `save_on_exception`), and a stop for a non-finite loss saves nothing either. The loggers
    are flushed with every checkpoint, so a run killed later has its curves on disk up to the
    checkpoint it resumes from (TensorBoard buffers up to two minutes otherwise). A run without
    validation (`data.val_fraction=0`) keeps no best checkpoint, said once, instead of
    Lightning's "could not find the monitored key" warning at every epoch end."""

    _said_no_validation = False  # per instance once set

    def skip_topk(self, trainer: pl.Trainer, monitor_candidates: dict) -> bool:
        if (self.monitor is None or self.monitor in monitor_candidates
                or validation_has_run(trainer)):
            return False
        # before the first validation (or with none at all) there is nothing to rank
        if not sum(trainer.num_val_batches) and not self._said_no_validation:
            log.info("no validation data: no best checkpoint by %s is kept (last.ckpt is; "
                     "the last weights are tested)", self.monitor)
            self._said_no_validation = True
        return True

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                     exception: BaseException) -> None:
        if isinstance(exception, NonFiniteLossError):
            return
        super().on_exception(trainer, pl_module, exception)

    def may_save(self, trainer: pl.Trainer, filepath: str) -> bool:
        if not finite_weights(trainer.lightning_module):
            log.warning("not saving %s: the model has non-finite weights (kept: %s)", filepath,
                        self.last_model_path or self.best_model_path or "nothing")
            return False
        for logger in trainer.loggers:
            logger.save()
        return True
