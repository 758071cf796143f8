"""Image classification task: any network from `model.net`, cross-entropy (+ the report's L2
term), top-1 accuracy per epoch, per-class accuracy and a confusion matrix on the test split."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
)

from hw2.data.image_data import MEAN, STD  # the data's normalisation, saved for inference
from hw2.models.base import TaskModule, WeightedMean
from hw2.models.nets import NetSpec, build_net, net_config

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor]


class ImageClassifier(TaskModule):
    """`net(num_classes=, image_size=)` trained with cross-entropy; the network is `self.net` so
    its layers show in TensorBoard as `conv1/weight`, ..., `fc/bias`. The checkpoint keeps the
    network's config, the class names and the evaluation preprocessing (`image_size`,
    `resize`, `eval_resize`, `jpeg_draft`, `mean`, `std`), so `hw2.predict` needs nothing else."""

    def __init__(
        self,
        net: NetSpec,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        image_size: int = 512,
        resize: int | None = None,
        eval_resize: int | Sequence[int] | None = None,
        jpeg_draft: bool = False,
        mean: Sequence[float] = MEAN,
        std: Sequence[float] = STD,
        channels_last: bool = True,
        label_smoothing: float = 0.0,
        tta_flip: bool = False,
        l2: float = 0.0,
        skip_nonfinite: bool = False,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__(optimizer=optimizer, scheduler=scheduler, l2=l2,
                         skip_nonfinite=skip_nonfinite)
        if num_classes < 2:
            raise ValueError(f"num_classes={num_classes}: a classifier needs at least 2 classes")
        names = list(class_names) if class_names is not None else [str(i) for i in
                                                                    range(num_classes)]
        if len(names) != num_classes:
            raise ValueError(f"{len(names)} class_names for num_classes={num_classes}")
        net = net_config(net)  # plain data in the checkpoint (save_hyperparameters reads it)
        class_names, mean, std = names, list(mean), list(std)
        self.save_hyperparameters(ignore=["optimizer", "scheduler"], logger=False)
        self.class_names = names
        self.image_size = image_size
        self.channels_last = channels_last
        self.label_smoothing = label_smoothing
        self.tta_flip = tta_flip
        self.net = build_net(net, num_classes=num_classes, image_size=image_size)
        if channels_last:
            # NHWC: oneDNN's fast convolution path on CPU (and tensor cores on GPU)
            self.net = self.net.to(memory_format=torch.channels_last)
        # no per-step argument checks: each is a device sync (labels come from the data module)
        kw = {"num_classes": num_classes, "validate_args": False}
        self.train_acc = MulticlassAccuracy(**kw, average="micro")
        # epoch means as metric objects; the training ones are saved in checkpoints, so a run
        # resumed mid-epoch reports the same epoch means as one that never stopped
        for stage in ("train", "val", "test"):
            setattr(self, f"{stage}_loss", WeightedMean())  # no per-step NaN-check sync
        self.train_l2 = WeightedMean()
        for metric in (self.train_acc, self.train_loss, self.train_l2):
            metric.persistent(True)
        self.val_acc = MulticlassAccuracy(**kw, average="micro")
        self.test_acc = MulticlassAccuracy(**kw, average="micro")
        self.test_class_acc = MulticlassAccuracy(**kw, average=None)
        self.test_confusion = MulticlassConfusionMatrix(**kw)
        for stage in ("train", "val", "test"):
            self.log_at_epoch_end(f"{stage}/loss", f"{stage}_loss")
            self.log_at_epoch_end(f"{stage}/acc", f"{stage}_acc", prog_bar=stage != "train")
        if self.l2:
            self.log_at_epoch_end("train/l2_penalty", "train_l2")
        # filled at test end for the figures: {"confusion": (C, C), "class_acc": (C,)}
        self.test_results: dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of `(B, 3, H, W)` photos; for `(B, V, 3, H, W)`, V views of each photo (eval
        at several resizes), the log of their mean probability: an ensemble's prediction, and
        logits for cross-entropy and argmax like any other."""
        if x.dim() == 5:
            b, v = x.shape[:2]
            logp = self(x.flatten(0, 1)).float().log_softmax(-1).unflatten(0, (b, v))
            return logp.logsumexp(dim=1) - math.log(v)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.tta_flip and not self.training:
            # evaluation sees the photo and its mirror image (training flips at random)
            return (self.net(x) + self.net(x.flip(-1))) / 2
        return self.net(x)

    def _step(self, batch: Batch, stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        logits = self(x).float()
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        preds = logits.argmax(dim=1)
        acc = getattr(self, f"{stage}_acc")
        acc.update(preds, y)
        # epoch means, weighted by batch size: runs with and without L2 overlay per epoch
        mean_loss = getattr(self, f"{stage}_loss")
        mean_loss.update(loss.detach(), weight=len(y))  # both logged at epoch end
        return loss, preds

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor | None:
        loss, _ = self._step(batch, "train")
        if self.l2 == 0:
            return self.checked_loss(loss)
        penalty = self.l2_penalty()
        self.train_l2.update(penalty.detach(), weight=len(batch[1]))
        return self.checked_loss(loss + penalty)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> dict[str, torch.Tensor]:
        loss, preds = self._step(batch, "test")
        self.test_class_acc.update(preds, batch[1])
        self.test_confusion.update(preds, batch[1])
        return {"loss": loss, "preds": preds}  # preds: for the misclassified-images figure

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
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
