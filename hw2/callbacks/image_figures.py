"""The report's CNN figures in TensorBoard: misclassified test photos with their true and
predicted classes, feature maps of the conv layers, the confusion matrix, per-class accuracy."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn
from torch.utils.data import default_collate
from torchvision.utils import make_grid

from hw2.callbacks.histograms import tensorboard
from hw2.data.image_data import MEAN, STD


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """Undo Normalize(MEAN, STD): back to [0, 1] pixels, so images look like the photos."""
    mean = torch.tensor(MEAN, dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(STD, dtype=torch.float32).view(-1, 1, 1)
    return (x.float().cpu() * std + mean).clamp(0, 1)


def short(name: str, width: int = 18) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def class_names(pl_module: pl.LightningModule) -> list[str]:
    names = getattr(pl_module, "class_names", None)
    return list(names) if names else [str(i) for i in range(pl_module.hparams["num_classes"])]


class MisclassifiedImages(pl.Callback):
    """Up to `max_images` wrongly predicted test photos (a seeded sample over the split) in one
    grid captioned with true and predicted class (test end)."""

    def __init__(self, max_images: int = 16, ncols: int = 4, seed: int = 0,
                 tag: str = "test/misclassified") -> None:
        self.max_images, self.ncols, self.seed, self.tag = max_images, ncols, seed, tag
        self.kept: list[tuple[int, int, torch.Tensor]] = []  # (true, pred, image)
        self.seen = 0
        self.rng = random.Random(seed)

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.kept, self.seen, self.rng = [], 0, random.Random(self.seed)

    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                          outputs: Any, batch: Any, batch_idx: int,
                          dataloader_idx: int = 0) -> None:
        if not isinstance(outputs, dict) or "preds" not in outputs:
            return
        x, y = batch
        if x.dim() == 5:  # several views per photo (eval at several resizes): show the first
            x = x[:, 0]
        preds = outputs["preds"]
        # reservoir sample: a seeded, uniform pick over the whole (class-sorted) test split
        for i in (preds != y).nonzero().flatten().tolist():
            self.seen += 1
            slot = len(self.kept) if len(self.kept) < self.max_images else \
                self.rng.randrange(self.seen)
            if slot < self.max_images:
                item = (int(y[i]), int(preds[i]), denormalize(x[i]))
                if slot == len(self.kept):
                    self.kept.append(item)
                else:
                    self.kept[slot] = item

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        writer = tensorboard(trainer)
        if writer is None or not trainer.is_global_zero or not self.kept:
            return
        names = class_names(pl_module)
        kept = sorted(self.kept, key=lambda item: item[:2])
        ncols = min(self.ncols, len(kept))
        nrows = math.ceil(len(kept) / ncols)
        fig = Figure(figsize=(2.6 * ncols, 2.9 * nrows), layout="constrained")
        for k, (true, pred, image) in enumerate(kept):
            ax = fig.add_subplot(nrows, ncols, k + 1)
            ax.imshow(image.permute(1, 2, 0).numpy())
            ax.set_title(f"true: {short(names[true])}\npred: {short(names[pred])}", fontsize=9)
            ax.axis("off")
        writer.add_figure(self.tag, fig, global_step=trainer.global_step)


def default_layers(net: nn.Module) -> list[str]:
    """Direct children of the network that are, or hold, convolutions (conv1..conv3; for
    ResNet conv1 and layer1..layer4)."""
    out = []
    for name, child in net.named_children():
        if isinstance(child, nn.Conv2d) or any(isinstance(m, nn.Conv2d) for m in child.modules()):
            out.append(name)
    return out


class FeatureMaps(pl.Callback):
    """Outputs of the conv layers (forward hooks) for a few fixed validation images, after
    every `every_n_epochs`-th validation: one grid of channels per image and layer."""

    def __init__(self, num_images: int = 2, max_channels: int = 16,
                 layers: Sequence[str] | None = None, every_n_epochs: int = 1,
                 max_side: int = 128) -> None:
        self.num_images, self.max_channels = num_images, max_channels
        self.layers = list(layers) if layers else None
        self.every_n_epochs, self.max_side = every_n_epochs, max_side

    def _images(self, trainer: pl.Trainer) -> torch.Tensor | None:
        dataset = getattr(trainer.datamodule, "datasets", {}).get("val")
        if dataset is None or len(dataset) == 0:
            return None
        # evenly spread over the split (sorted by class): different classes, same every epoch
        n = min(self.num_images, len(dataset))
        idx = [round(i * (len(dataset) - 1) / max(n - 1, 1)) for i in range(n)]
        # finished as the loader's batches are (photos from the photo cache come as uint8)
        x = trainer.datamodule.on_after_batch_transfer(default_collate([dataset[i] for i in idx]),
                                                       0)[0]
        return x[:, 0] if x.dim() == 5 else x  # several views per photo: the first

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule
                                ) -> None:
        writer = tensorboard(trainer)
        if writer is None or trainer.sanity_checking or not trainer.is_global_zero:
            return
        if trainer.current_epoch % self.every_n_epochs:
            return
        x = self._images(trainer)
        if x is None:
            return
        net = pl_module.net
        names = self.layers or default_layers(net)
        modules = dict(net.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            raise ValueError(f"callbacks.feature_maps.layers: {missing} are not layers of the "
                             f"network; choose from {default_layers(net)}")
        maps: dict[str, torch.Tensor] = {}
        hooks = [modules[n].register_forward_hook(
            lambda _m, _i, out, n=n: maps.__setitem__(n, out.detach().float().cpu()))
            for n in names]
        was_training = pl_module.training
        pl_module.eval()
        try:
            with torch.no_grad():
                pl_module(x.to(pl_module.device))
        finally:
            for h in hooks:
                h.remove()
            pl_module.train(was_training)
        step = trainer.global_step
        for i in range(len(x)):
            writer.add_image(f"feature_maps/input/{i}", denormalize(x[i]), global_step=step)
            for name in names:
                writer.add_image(f"feature_maps/{name}/{i}", self._grid(maps[name][i]),
                                 global_step=step)

    def _grid(self, fmap: torch.Tensor) -> torch.Tensor:
        """(C, H, W) -> (1, H', W') grid of the first `max_channels` channels, each scaled to
        [0, 1] on its own, at most `max_side` pixels a side."""
        fmap = fmap[: self.max_channels].unsqueeze(1)  # (C, 1, H, W)
        if max(fmap.shape[-2:]) > self.max_side:
            fmap = F.adaptive_avg_pool2d(fmap, self.max_side)
        lo = fmap.amin(dim=(2, 3), keepdim=True)
        hi = fmap.amax(dim=(2, 3), keepdim=True)
        fmap = (fmap - lo) / (hi - lo).clamp_min(1e-8)
        nrow = math.ceil(math.sqrt(fmap.shape[0]))
        return make_grid(fmap, nrow=nrow, padding=2, pad_value=1.0)[:1]


class ConfusionMatrix(pl.Callback):
    """The test confusion matrix as a figure and per-class accuracy as a bar chart and
    scalars, from the model's `test_results` (test end)."""

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        writer = tensorboard(trainer)
        results = getattr(pl_module, "test_results", None)
        if writer is None or not trainer.is_global_zero or not results:
            return
        names = class_names(pl_module)
        step = trainer.global_step
        writer.add_figure("test/confusion_matrix", confusion_figure(results["confusion"], names),
                          global_step=step)
        acc = results["class_acc"].tolist()
        writer.add_figure("test/per_class_accuracy", accuracy_figure(acc, names),
                          global_step=step)
        for name, a in zip(names, acc, strict=True):
            writer.add_scalar(f"test_per_class/{name.replace('/', '-')}", a, global_step=step)


def confusion_figure(confusion: torch.Tensor, names: Sequence[str]) -> Figure:
    """Counts with rows = true class, columns = predicted class, colour = row fraction."""
    n = len(names)
    counts = confusion.cpu().numpy()
    rows = counts.sum(axis=1, keepdims=True).clip(min=1)
    size = max(4.0, 0.55 * n + 2)
    fig = Figure(figsize=(size + 1, size), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(counts / rows, cmap="Blues", vmin=0, vmax=1)
    labels = [short(x, 16) for x in names]
    ax.set_xticks(range(n), labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(n):
        for j in range(n):
            if counts[i, j]:
                ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if counts[i, j] / rows[i, 0] > 0.5 else "black")
    fig.colorbar(im, ax=ax, label="fraction of the true class")
    return fig


def accuracy_figure(acc: Sequence[float], names: Sequence[str]) -> Figure:
    fig = Figure(figsize=(max(4.0, 0.5 * len(names) + 2), 3.5), layout="constrained")
    ax = fig.add_subplot()
    ax.bar(range(len(acc)), acc, color="tab:blue")
    ax.set_xticks(range(len(acc)), [short(x, 16) for x in names], rotation=60, ha="right",
                  fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("test accuracy")
    return fig
