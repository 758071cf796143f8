"""Callbacks that record what a real fit did, for tests that must tell a resumed fit from a
fresh one."""

from __future__ import annotations

import copy
from typing import Any

import pytorch_lightning as pl
import torch


class FitProbe(pl.Callback):
    """Where a fit starts (step, epoch, weights and optimizer state, after Lightning restored a
    checkpoint) and how many training batches it runs."""

    def __init__(self) -> None:
        self.step = self.epoch = -1
        self.weights: dict[str, torch.Tensor] = {}
        self.optimizer: dict[str, Any] = {}
        self.batches = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.step, self.epoch = trainer.global_step, trainer.current_epoch
        self.weights = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        self.optimizer = copy.deepcopy(trainer.optimizers[0].state_dict())

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        self.batches += 1


def assert_same_tensors(got: dict[str, Any], expected: dict[str, Any], what: str) -> None:
    """Two state dicts (nested: optimizer states) hold equal tensors and values."""
    assert got.keys() == expected.keys(), what
    for key, value in expected.items():
        if isinstance(value, dict):
            assert_same_tensors(got[key], value, f"{what}[{key!r}]")
        elif torch.is_tensor(value):
            torch.testing.assert_close(got[key], value, rtol=0, atol=0,
                                       msg=lambda m, k=key: f"{what}[{k!r}]: {m}")
        else:
            assert got[key] == value, f"{what}[{key!r}]"
