"""What both tasks' LightningModules share: optimiser/scheduler from config, the L2 penalty."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torchmetrics import MeanMetric

from hw2.utils.compat import batch_index

log = logging.getLogger(__name__)

def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_steps: int = 100,
    min_lr_ratio: float = 0.1,
) -> LambdaLR:
    """Linear warm-up, then cosine decay to `min_lr_ratio` of the base rate at `total_steps`."""

    def cosine(p: float) -> float:
        return 0.5 * (1 + math.cos(math.pi * p))

    return _warmup_then_decay(optimizer, total_steps, warmup_steps, min_lr_ratio, cosine)


def warmup_linear(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_steps: int = 100,
    min_lr_ratio: float = 0.0,
) -> LambdaLR:
    """Linear warm-up, then linear decay to `min_lr_ratio` at `total_steps`: with 0, the
    "straight to zero" schedule that beat cosine to 10 % in long LLM runs (Bergsma et al.)."""
    return _warmup_then_decay(optimizer, total_steps, warmup_steps, min_lr_ratio, lambda p: 1.0 - p)


def _warmup_then_decay(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_steps: int,
    min_lr_ratio: float,
    shape: Callable[[float], float],
) -> LambdaLR:
    """The rate factor: (step + 1) / warmup_steps, then `min_lr_ratio` plus the rest times
    `shape(progress)`, where shape falls from 1 at progress 0 to 0 at progress 1."""
    total_steps = max(int(total_steps), 1)
    warmup_steps = min(warmup_steps, total_steps // 2)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
        return min_lr_ratio + (1 - min_lr_ratio) * shape(progress)

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


class NonFiniteLossError(FloatingPointError):
    """The training loss became inf/NaN: the run stops rather than train on (or save) garbage."""


def last_good_checkpoint(trainer: pl.Trainer | None) -> str:
    """The newest checkpoint this run has written, for the stop message."""
    paths = [p for cb in (trainer.checkpoint_callbacks if trainer is not None else [])
             for p in (getattr(cb, "last_model_path", ""), getattr(cb, "best_model_path", ""))
             if p]
    existing = [Path(p) for p in paths if Path(p).is_file()]
    if not existing:
        return "none yet (the run had not validated)"
    return str(max(existing, key=lambda p: p.stat().st_mtime))


class TaskModule(pl.LightningModule):
    """Base of every task: holds `net`, the L2 weight and the optimiser/scheduler factories."""

    def __init__(
        self,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., object] | None = None,
        l2: float = 0.0,
        skip_nonfinite: bool = False,
    ) -> None:
        super().__init__()
        if l2 < 0:
            raise ValueError(f"model.l2 must be >= 0, got {l2}")
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.l2 = float(l2)
        self.skip_nonfinite = skip_nonfinite
        self.skipped_steps = 0
        # the last training loss whose finiteness is not read yet: (flag on the host, CUDA
        # event after its copy or None, the loss, where); see checked_loss
        self._unchecked: tuple | None = None
        self._flag_copied: torch.cuda.Event | None = None
        # per split: (logged name, metric attribute, progress bar?), logged at its epoch end
        self._epoch_metrics: dict[str, list[tuple[str, str, bool]]] = {}

    def log_at_epoch_end(self, name: str, metric_attr: str, prog_bar: bool = False) -> None:
        """Log the metric object `self.<metric_attr>` as `name` (`<split>/...`) once, when its
        split's epoch ends; the steps only update it. Lightning computes and resets it then, as
        when it is logged at every step with on_epoch=True, but each such `self.log` costs
        ~0.3 ms of Lightning's Python per step (measured on a CPU: docs/benchmarks.md, framework
        tax; estimated ~4 % of a ~15 ms GPU CharLM step, not measured there)."""
        split = name.split("/", 1)[0]
        if split not in ("train", "val", "test"):
            raise ValueError(f"{name!r}: an epoch metric's name starts with train/, val/ or test/")
        self._epoch_metrics.setdefault(split, []).append((name, metric_attr, prog_bar))

    def _log_epoch_metrics(self, split: str) -> None:
        for name, attr, prog_bar in self._epoch_metrics.get(split, ()):
            metric = getattr(self, attr)
            if metric.update_count:  # not updated this epoch (e.g. resumed at its end): no value
                self.log(name, metric, on_step=False, on_epoch=True, prog_bar=prog_bar)

    def on_train_epoch_end(self) -> None:
        self._log_epoch_metrics("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """With `skip_nonfinite`: a finite loss can still give inf/NaN gradients (overflow),
        and one such step makes every weight NaN, so drop them. Without it nothing is read here
        (a read is a device sync per step): the NaN weights give a NaN loss at the next step,
        which stops the run before anything is saved (checked_loss)."""
        if not self.skip_nonfinite:
            return
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if not grads or bool(torch.isfinite(torch.stack([g.norm() for g in grads])).all()):
            return
        self.skipped_steps += 1
        log.warning("non-finite gradient at %s: step skipped (%d so far)", self._where(),
                    self.skipped_steps)
        optimizer.zero_grad(set_to_none=True)  # optimisers leave grad-less weights alone

    def _where(self) -> str:
        batch = batch_index(self.trainer) if self._trainer else "?"
        return f"step {self.global_step} (epoch {self.current_epoch}, batch {batch})"

    def checked_loss(self, loss: torch.Tensor) -> torch.Tensor | None:
        """`loss`, whose inf/NaN stops the run naming the step and the last good checkpoint.

        Reading a GPU value on the host waits for the GPU (a sync per step, which the plain
        loop has not), so the flag is copied to the host without waiting and read one step
        later, or before a validation, a checkpoint or the end of training, whichever comes
        first (`raise_if_nonfinite`): the run stops before anything trained on it is saved.
        `model.skip_nonfinite=true` must decide now (it returns None: Lightning then skips
        backward and the optimiser step for this batch), so it pays that sync."""
        if self.skip_nonfinite:
            if bool(torch.isfinite(loss.detach()).all()):
                return loss
            self.skipped_steps += 1
            log.warning("non-finite training loss (%s) at %s: step skipped (%d so far)",
                        float(loss.detach().float().mean()), self._where(), self.skipped_steps)
            return None
        self.raise_if_nonfinite()  # the previous step's: copied long ago, no wait
        flag = torch.isfinite(loss.detach()).all()
        copied = None
        if flag.is_cuda:
            flag = flag.to("cpu", non_blocking=True)
            copied = self._flag_copied = self._flag_copied or torch.cuda.Event()
            copied.record()
        self._unchecked = (flag, copied, loss.detach(), self._where())
        return loss

    def raise_if_nonfinite(self) -> None:
        """Stop if the last unread training loss was inf/NaN (see checked_loss)."""
        if self._unchecked is None:
            return
        flag, copied, loss, where = self._unchecked
        self._unchecked = None
        if copied is not None:
            copied.synchronize()
        if bool(flag):
            return
        raise NonFiniteLossError(
            f"non-finite training loss ({float(loss.float().mean())}) at {where}; "
            f"stopped without saving. last good checkpoint: {last_good_checkpoint(self._trainer)}"
            " (resume it with a lower model.optimizer.lr, or skip such steps with "
            "model.skip_nonfinite=true)")

    def on_validation_start(self) -> None:
        self.raise_if_nonfinite()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self.raise_if_nonfinite()  # before anything is written

    def on_train_end(self) -> None:
        self.raise_if_nonfinite()

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
