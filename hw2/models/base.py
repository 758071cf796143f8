"""What both tasks' LightningModules share: optimiser/scheduler from config, the L2 penalty."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import pytorch_lightning as pl
import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torchmetrics import MeanMetric


def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_steps: int = 100,
    min_lr_ratio: float = 0.1,
) -> LambdaLR:
    """Linear warm-up, then cosine decay to `min_lr_ratio` of the base rate at `total_steps`."""
    total_steps = max(int(total_steps), 1)
    warmup_steps = min(warmup_steps, total_steps // 2)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


class WeightedMean(MeanMetric):
    """`MeanMetric` without its NaN check on every update, which is a device sync per step
    (a NaN then shows in the mean, as it should). torchmetrics' own `nan_strategy="disable"`
    drops the weights (1.9.0), hence this class."""

    def update(self, value: torch.Tensor, weight: float | torch.Tensor = 1.0) -> None:
        value = value.to(self.dtype)
        if isinstance(weight, torch.Tensor):
            weight = torch.broadcast_to(weight.to(self.dtype), value.shape)
            self.mean_value += (value * weight).sum()
            self.weight += weight.sum()
        else:
            self.mean_value += value.sum() * weight
            self.weight += value.numel() * weight


def penalised_weights(module: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """Parameters the L2 penalty acts on: weights of conv/linear/recurrent layers, not biases,
    embeddings' rows included, norm layers' scales excluded."""
    for name, p in module.named_parameters():
        if not p.requires_grad or p.ndim < 2:
            continue  # biases and norm scales/offsets are 1-D
        yield name, p


class TaskModule(pl.LightningModule):
    """Base of every task: holds `net`, the L2 weight and the optimiser/scheduler factories."""

    def __init__(
        self,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., object] | None = None,
        l2: float = 0.0,
    ) -> None:
        super().__init__()
        if l2 < 0:
            raise ValueError(f"model.l2 must be >= 0, got {l2}")
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.l2 = float(l2)

    def l2_penalty(self) -> torch.Tensor:
        """`l2 * sum(w**2)` over `penalised_weights`: the report's L2 term, added to the loss.

        The gradient is `2 * l2 * w`: SGD(weight_decay=2*l2) does the same step, AdamW does not
        (its decay is decoupled from the adaptive scaling).
        """
        if self.l2 == 0:
            return torch.zeros((), device=self.device)
        return self.l2 * sum(p.pow(2).sum() for _, p in penalised_weights(self))

    def logs_this_step(self) -> bool:
        """True on the steps whose values the logger writes (`trainer.log_every_n_steps`).

        Per-step values are logged only then: each `self.log` costs Python time (~7 % of a
        small CharLM step here) and a progress-bar value a device sync (bench/framework_tax.py).
        """
        trainer = self._trainer
        if trainer is None:
            return True
        every = max(int(trainer.log_every_n_steps), 1)
        return (trainer.global_step + 1) % every == 0

    def with_l2(self, loss: torch.Tensor) -> torch.Tensor:
        """`loss` plus the L2 term; no extra operation at all when `l2` is 0."""
        return loss if self.l2 == 0 else loss + self.l2_penalty()

    def configure_optimizers(self) -> dict:
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        # the schedule spans the whole fit, unless the config fixes its length (time-bound runs)
        fixed = getattr(self.scheduler_factory, "keywords", {}).get("total_steps")
        total = fixed or self.trainer.estimated_stepping_batches
        if total == float("inf"):
            raise ValueError("the LR schedule needs a length: set trainer.max_epochs or "
                             "trainer.max_steps, or model.scheduler.total_steps")
        scheduler = self.scheduler_factory(optimizer, total_steps=int(total))
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
