"""Faults injected into real `python train.py` runs through the config, e.g.
`+callbacks.fault._target_=tests.helpers.faults.Fault +callbacks.fault.kind=kill
+callbacks.fault.at_step=6`
(train.py runs from the repository root, so `tests` is importable)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch


class _DieWhilePickled:
    """Kills its process when torch.save pickles it: a SIGKILL in the middle of a save."""

    def __reduce__(self):
        os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError("unreachable")


class Fault(pl.Callback):
    """kind=kill: SIGKILL after training step `at_step`; term: SIGTERM there; save: SIGKILL
    inside the `at_save`-th checkpoint write; nan_weights: the weights become NaN after `at_step`
    (the next loss is non-finite); nan_loss: the loss of step `at_step` alone is NaN; hold: after
    step `at_step` flush the loggers, create `ready_file` and sleep until killed (a live run
    whose files stay still). Fires only in the run that starts at step 0."""

    def __init__(self, kind: str, at_step: int = 0, at_save: int = 0,
                 ready_file: str = "") -> None:
        self.kind, self.at_step, self.at_save = kind, at_step, at_save
        self.ready_file = ready_file
        self.saves = 0
        self.armed = True

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.armed = trainer.global_step == 0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                             batch: Any, batch_idx: int) -> None:
        if self.armed and self.kind == "nan_loss" and trainer.global_step == self.at_step:
            self.armed = False
            checked = pl_module.checked_loss

            def once(loss: torch.Tensor) -> torch.Tensor | None:
                pl_module.checked_loss = checked
                return checked(loss * float("nan"))

            pl_module.checked_loss = once

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        if not self.armed or trainer.global_step != self.at_step:
            return
        if self.kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif self.kind == "term":
            self.armed = False
            os.kill(os.getpid(), signal.SIGTERM)
        elif self.kind == "hold":
            for logger in trainer.loggers:
                logger.save()
            Path(self.ready_file).write_text(str(os.getpid()))
            while True:
                time.sleep(60)
        elif self.kind == "nan_weights":
            self.armed = False
            with torch.no_grad():
                for p in pl_module.parameters():
                    p.fill_(float("nan"))

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        self.saves += 1
        if self.armed and self.kind == "save" and self.saves == self.at_save:
            checkpoint["fault"] = _DieWhilePickled()
