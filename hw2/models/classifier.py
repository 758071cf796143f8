"""Image classification task: any network from `model.net`, cross-entropy (+ the report's L2
term), top-1 accuracy per epoch, per-class accuracy and a confusion matrix on the test split."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
)

from hw2.models.base import TaskModule, WeightedMean

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor]


class ImageClassifier(TaskModule):
    """`net(num_classes=, image_size=)` trained with cross-entropy; the network is `self.net` so
    its layers show in TensorBoard as `conv1/weight`, ..., `fc/bias`."""

    def __init__(
        self,
        net: Callable[..., nn.Module],
        num_classes: int,
        class_names: Sequence[str] | None = None,
        image_size: int = 512,
        channels_last: bool = True,
        label_smoothing: float = 0.0,
        l2: float = 0.0,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__(optimizer=optimizer, scheduler=scheduler, l2=l2)
        if num_classes < 2:
            raise ValueError(f"num_classes={num_classes}: a classifier needs at least 2 classes")
        names = list(class_names) if class_names is not None else [str(i) for i in
                                                                    range(num_classes)]
        if len(names) != num_classes:
            raise ValueError(f"{len(names)} class_names for num_classes={num_classes}")
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"], logger=False)
        self.class_names = names
        self.image_size = image_size
        self.channels_last = channels_last
        self.label_smoothing = label_smoothing
        self.net = net(num_classes=num_classes, image_size=image_size)
        if channels_last:
            # NHWC: oneDNN's fast convolution path on CPU (and tensor cores on GPU)
            self.net = self.net.to(memory_format=torch.channels_last)
        # no per-step argument checks: each is a device sync (labels come from the data module)
        kw = {"num_classes": num_classes, "validate_args": False}
        self.train_acc = MulticlassAccuracy(**kw, average="micro")
        self.val_acc = MulticlassAccuracy(**kw, average="micro")
        self.test_acc = MulticlassAccuracy(**kw, average="micro")
        # epoch means of the loss, weighted by batch size
        self.train_loss, self.val_loss, self.test_loss = (WeightedMean() for _ in range(3))
        self.test_class_acc = MulticlassAccuracy(**kw, average=None)
        self.test_confusion = MulticlassConfusionMatrix(**kw)
        # filled at test end for the figures: {"confusion": (C, C), "class_acc": (C,)}
        self.test_results: dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def _step(self, batch: Batch, stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        logits = self(x).float()
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        preds = logits.argmax(dim=1)
        # metric updates only; logged once per epoch (`_log_epoch`): no per-step self.log
        getattr(self, f"{stage}_acc").update(preds, y)
        getattr(self, f"{stage}_loss").update(loss.detach(), weight=len(y))
        return loss, preds

    def _log_epoch(self, stage: str) -> None:
        """Epoch loss and accuracy (runs with and without L2 overlay per epoch)."""
        acc, loss = getattr(self, f"{stage}_acc"), getattr(self, f"{stage}_loss")
        if loss.update_count == 0:
            return
        self.log(f"{stage}/loss", loss.compute())
        self.log(f"{stage}/acc", acc.compute(), prog_bar=stage != "train")
        acc.reset()
        loss.reset()

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        loss, _ = self._step(batch, "train")
        if self.l2 == 0:
            return loss
        penalty = self.l2_penalty()
        if self.logs_this_step():
            self.log("train/l2_penalty", penalty.detach())
        return loss + penalty

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> dict[str, torch.Tensor]:
        loss, preds = self._step(batch, "test")
        self.test_class_acc.update(preds, batch[1])
        self.test_confusion.update(preds, batch[1])
        return {"loss": loss, "preds": preds}  # preds: for the misclassified-images figure

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")
        if self.test_confusion.update_count == 0:
            return
        confusion = self.test_confusion.compute().cpu()
        class_acc = self.test_class_acc.compute().float().cpu()
        class_acc[confusion.sum(dim=1) == 0] = float("nan")  # no test image of that class
        self.test_results = {"confusion": confusion, "class_acc": class_acc}
        self.test_class_acc.reset()
        self.test_confusion.reset()
        width = max(len(n) for n in self.class_names)
        rows = [f"  {n:<{width}} {a:6.1%}  ({int(c)} images)" if c else f"  {n:<{width}}    n/a"
                for n, a, c in
                zip(self.class_names, class_acc.tolist(), confusion.sum(dim=1).tolist(),
                    strict=True)]
        log.info("test accuracy per class:\n%s", "\n".join(rows))
