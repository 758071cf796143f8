"""A dropout rate that moves linearly over the run ("late dropout")."""

from __future__ import annotations

import pytorch_lightning as pl


class DropoutRamp(pl.Callback):
    """Sets the network's dropout rate before every training step to `start` + (`end` -
    `start`) x the fraction of the run's steps done (`trainer.estimated_stepping_batches`).
    Why: early on the CharLM is short of updates, so dropout only slows it; late it over-fits,
    and dropout is what holds that back (Liu et al. 2023, "Dropout reduces underfitting").
    The rate is a function of the global step, so a resumed run continues the same ramp.
    The module needs a `net.set_dropout(p)` (`CharRNN` has one)."""

    def __init__(self, start: float, end: float) -> None:
        for key, rate in (("start", start), ("end", end)):
            if not 0 <= rate < 1:
                raise ValueError(f"callbacks.dropout_ramp.{key} must be in [0, 1), got {rate}")
        self.start, self.end = start, end
        self.total = 1

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not callable(getattr(getattr(pl_module, "net", None), "set_dropout", None)):
            raise ValueError(f"callbacks.dropout_ramp needs a network with a dropout rate to "
                             f"move (net.set_dropout, as the CharLM's); "
                             f"{type(pl_module).__name__} has none: remove the callback")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.total = max(int(trainer.estimated_stepping_batches), 1)  # once, not per step

    def rate(self, step: int) -> float:
        return self.start + (self.end - self.start) * min(step / self.total, 1.0)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                             batch: object, batch_idx: int) -> None:
        p = self.rate(trainer.global_step)
        pl_module.net.set_dropout(p)
        pl_module.log("train/dropout", p, on_step=True, on_epoch=False)
