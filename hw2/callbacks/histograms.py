"""Per-layer weight and bias histograms in TensorBoard, for any task."""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.loggers import TensorBoardLogger


def tensorboard(trainer: pl.Trainer):
    """The SummaryWriter of the first TensorBoard logger, or None (other loggers are skipped)."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


def layer_tag(name: str) -> str:
    """`net.conv1.weight` -> `conv1/weight`: one TensorBoard section per layer."""
    parts = name.split(".")
    if parts[0] == "net":
        parts = parts[1:]
    return "/".join([".".join(parts[:-1]) or parts[-1], parts[-1]]) if len(parts) > 1 else name


class ParamHistograms(pl.Callback):
    """Histogram of every parameter after each training epoch (the report's figures)."""

    def __init__(self, every_n_epochs: int = 1) -> None:
        self.every_n_epochs = every_n_epochs

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        writer = tensorboard(trainer)
        if writer is None or not trainer.is_global_zero:
            return
        if trainer.current_epoch % self.every_n_epochs:
            return
        for name, p in pl_module.named_parameters():
            if not bool(p.detach().isfinite().all()):
                continue  # diverged weights have no histogram (the run is about to stop)
            writer.add_histogram(f"params/{layer_tag(name)}", p.detach().float().cpu(),
                                 global_step=trainer.global_step)
