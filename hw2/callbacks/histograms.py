"""Per-layer weight and bias histograms in TensorBoard, for any task."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger

if TYPE_CHECKING:  # a type only: a run logging to CSV needs no TensorBoard import
    from torch.utils.tensorboard import SummaryWriter


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


def add_histogram(writer: SummaryWriter, tag: str, values: torch.Tensor, step: int) -> None:
    """`writer.add_histogram(tag, values, step)` with its default buckets, the same record,
    computed in torch. TensorBoard's own takes the sum of squares with numpy's `dot`, whose
    OpenBLAS threads then busy-wait ~0.1 s for more work on the cores the training steps run
    on: the FoodCNN's steps ran ~3 % slower with the histograms than without
    (bench/framework_tax.py). Values must be finite."""
    v = values.detach().reshape(-1).to("cpu", torch.float64)
    edges = torch.tensor(writer.default_bins, dtype=torch.float64)
    counts = torch.histogram(v, bins=edges).hist
    filled = counts.nonzero()
    first, last = int(filled[0]), int(filled[-1])
    # TensorBoard's layout: an empty bucket, then the first to the last filled one, each
    # bucket given by its upper edge
    writer.add_histogram_raw(
        tag, min=float(v.min()), max=float(v.max()), num=v.numel(), sum=float(v.sum()),
        sum_squares=float((v * v).sum()), bucket_limits=edges[first:last + 2].tolist(),
        bucket_counts=[0.0, *counts[first:last + 1].tolist()], global_step=step)


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
            add_histogram(writer, f"params/{layer_tag(name)}", p, trainer.global_step)
