"""Per-layer weight and bias histograms in TensorBoard, for any task."""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.loggers import TensorBoardLogger
from threadpoolctl import threadpool_limits


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
    """Histogram of every parameter after each training epoch (the report's figures), written
    with numpy's BLAS on one thread: TensorBoard's `add_histogram` takes the sum of squares with
    numpy's `dot`, whose OpenBLAS threads would then busy-wait for more work on the cores the
    next training steps need (bench/histogram_cost.py)."""

    def __init__(self, every_n_epochs: int = 1) -> None:
        self.every_n_epochs = every_n_epochs

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        writer = tensorboard(trainer)
        if writer is None or not trainer.is_global_zero:
            return
        if trainer.current_epoch % self.every_n_epochs:
            return
        with threadpool_limits(limits=1, user_api="blas"):
            for name, p in pl_module.named_parameters():
                values = p.detach().cpu().float()  # numpy has no bfloat16
                if not bool(values.isfinite().all()):
                    continue  # diverged weights have no histogram (the run is about to stop)
                writer.add_histogram(f"params/{layer_tag(name)}", values, trainer.global_step)
