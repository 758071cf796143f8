"""Does the FoodCNN learn as fast through `train.py` as in a plain PyTorch loop?

For each seed, the report's recipe (3 conv + 1 fc, Adam 1e-3, batch 32, CenterCrop + flip +
Normalize(0.5), no L2) is trained twice on the same photos:
  (a) through train.py's own path (`hw2.config.compose_config` + `hw2.train.run`, task=cnn,
      default callbacks and loggers);
  (b) in a minimal plain loop below (torchvision ImageFolder, an nn.Sequential copy of the
      report's network, torch.optim.Adam), written from the report, not from hw2.
After every epoch both models are scored by the same code on the same test photos. The table
gives train accuracy (running, augmented batches) and test accuracy per epoch: mean +- std over
seeds for each path, and the difference of the means.

    python bench/cnn_parity.py --data ../shared/data/food10_small --image-size 128 \
        --epochs 3 --seeds 3                  # a smoke run: minutes
    python bench/cnn_parity.py                # food10_dev, 512 px, 10 epochs, 3 seeds: hours

`--hw2-overrides` passes extra train.py overrides to (a) (e.g. `data.val_fraction=0.1` to
train on 90 % of the photos as a validation split would).

`--paired` takes the seeds out of the comparison: (b) starts from the weights that (a) started
from and reads (a)'s own batches (hw2's data module, the same per-epoch order and flips), so
any difference left is the framework's doing (with the same NHWC layout as (a), so the same
conv kernels run): the two paths should then give the same curves.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision.transforms import v2

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def default_data() -> Path:
    base = os.environ.get("HW2_DATA_DIR") or str(ROOT.parent / "shared" / "data")
    return Path(base) / "food10_dev"


def report_transform(size: int, resize: int | None, train: bool) -> v2.Compose:
    """The report's transform (its Resize is only used when --resize is given)."""
    steps = [v2.Resize(resize, antialias=True)] if resize else []
    steps += [v2.CenterCrop(size)] + ([v2.RandomHorizontalFlip()] if train else [])
    steps += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
              v2.Normalize([0.5] * 3, [0.5] * 3)]
    return v2.Compose(steps)


def report_cnn(num_classes: int, size: int) -> nn.Sequential:
    """The report's network, as it wrote it (layer order = parameter creation order)."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(4),
        nn.Flatten(), nn.Linear(32 * (size // 16) ** 2, num_classes))


def autocast(precision: str) -> contextlib.AbstractContextManager:
    """The autocast that Lightning's `precision` applies, for the plain loop and scoring."""
    if precision.startswith("bf16"):
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def test_accuracy(model: nn.Module, loader: DataLoader, precision: str) -> float:
    was = model.training
    model.eval()
    correct = total = 0
    for x, y in loader:
        with autocast(precision):
            correct += int((model(x).argmax(1) == y).sum())
        total += len(y)
    model.train(was)
    return correct / total


class Curve(pl.Callback):
    """(a)'s per-epoch train accuracy (the model's own epoch metric) and test accuracy scored
    by `test_accuracy`, like (b); also the weights it started from (for `--paired`)."""

    def __init__(self, test_loader: DataLoader, precision: str) -> None:
        self.test_loader, self.precision = test_loader, precision
        self.rows: list[tuple[float, float, float]] = []
        self.initial: list[torch.Tensor] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.initial = [p.detach().clone() for p in pl_module.net.parameters()]

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        train_acc = float(pl_module.train_acc.compute())  # before Lightning resets it
        seconds = time.perf_counter() - self.start
        self.rows.append((train_acc, test_accuracy(pl_module, self.test_loader, self.precision),
                          seconds))


def through_train_py(args: argparse.Namespace, seed: int, test_loader: DataLoader,
                     precision: str) -> Curve:
    from hw2.config import compose_config
    from hw2.train import run

    out = Path(tempfile.mkdtemp(prefix=f"cnn_parity_{seed}_"))
    cfg = compose_config([
        "task=cnn", f"data.root={args.data}", f"data.image_size={args.image_size}",
        f"data.resize={args.resize or 'null'}", f"data.batch_size={args.batch_size}",
        f"data.num_workers={args.num_workers}", f"trainer.max_epochs={args.epochs}",
        f"trainer.precision={precision}", f"seed={seed}", "test=false",
        f"paths.root_dir={out}", "callbacks.progress_bar.refresh_rate=0",
        "trainer.enable_model_summary=false", *args.hw2_overrides,
    ], out)
    curve = Curve(test_loader, precision)
    run(cfg, extra_callbacks=[curve])
    return curve


def hw2_batches(args: argparse.Namespace, seed: int) -> DataLoader:
    """(a)'s training loader, made by hw2's data module as train.py makes it (`--paired`):
    its order and flips follow the run's seed and the epoch (set per epoch below)."""
    from hw2.data.image_data import ImageDataModule

    os.environ["PL_GLOBAL_SEED"] = str(seed)  # what seed_everything(seed) sets for (a)
    dm = ImageDataModule(str(args.data), image_size=args.image_size, resize=args.resize,
                         val_fraction=0, batch_size=args.batch_size,
                         num_workers=args.num_workers)
    dm.setup("fit")
    return dm.train_dataloader()


def plain_loop(args: argparse.Namespace, seed: int, train_set: datasets.ImageFolder,
               test_loader: DataLoader, precision: str,
               initial: list[torch.Tensor] | None = None) -> list[tuple[float, float, float]]:
    torch.manual_seed(seed)
    model = report_cnn(len(train_set.classes), args.image_size)
    memory = torch.contiguous_format
    if initial is None:
        loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True,
                            num_workers=args.num_workers)
    else:  # --paired: (a)'s starting weights (same creation order) and batches
        with torch.no_grad():
            for p, w in zip(model.parameters(), initial, strict=True):
                p.copy_(w)
        loader = hw2_batches(args, seed)
        memory = torch.channels_last  # (a)'s layout (model.channels_last): the same conv kernels
        model = model.to(memory_format=memory)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    rows = []
    for epoch in range(args.epochs):
        start, correct, total = time.perf_counter(), 0, 0
        if initial is not None:
            loader.sampler.set_epoch(epoch)  # as Lightning does for (a)
        for x, y in loader:
            x = x.contiguous(memory_format=memory)
            with autocast(precision):
                logits = model(x).float()
            loss = F.cross_entropy(logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            correct += int((logits.argmax(1) == y).sum())
            total += len(y)
        seconds = time.perf_counter() - start
        rows.append((correct / total, test_accuracy(model, test_loader, precision), seconds))
    return rows


def spread(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):5.1f} +-{100 * sd:4.1f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=None, help="train/<class>/ + test/<class>/")
    p.add_argument("--image-size", type=int, default=512)
    p.add_argument("--resize", type=int, default=None, help="resize the shorter side first")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--precision", default="auto", help="auto: what trainer.precision=auto picks")
    p.add_argument("--hw2-overrides", nargs="*", default=[], help="extra overrides for (a)")
    p.add_argument("--paired", action="store_true",
                   help="(b) starts from (a)'s initial weights and reads (a)'s batches")
    args = p.parse_args(argv)
    args.data = (args.data or default_data()).resolve()
    if not (args.data / "train").is_dir():
        print(f"no train/ under {args.data}: give --data (or set HW2_DATA_DIR)", file=sys.stderr)
        return 0
    if args.resize is None and args.image_size < 256:
        args.resize = args.image_size  # a small crop of a 512 px photo is a central patch

    from hw2.utils.runtime import fast_precision, tune_malloc

    tune_malloc()  # what train.py does on a CPU: (a) and (b) run in the same process
    precision = fast_precision("cpu") if args.precision == "auto" else args.precision
    train_set = datasets.ImageFolder(str(args.data / "train"),
                                     report_transform(args.image_size, args.resize, True))
    test_set = datasets.ImageFolder(str(args.data / "test"),
                                    report_transform(args.image_size, args.resize, False))
    test_loader = DataLoader(test_set, batch_size=64, num_workers=args.num_workers)
    print(f"{args.data}: {len(train_set)} train / {len(test_set)} test photos, "
          f"{len(train_set.classes)} classes; {args.image_size} px, precision {precision}, "
          f"{args.seeds} seeds x {args.epochs} epochs{', paired' if args.paired else ''}; "
          f"torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads", flush=True)

    runs: dict[str, list[list[tuple[float, float, float]]]] = {"train.py": [], "plain": []}
    if args.paired and "data.val_fraction=0" not in args.hw2_overrides:
        args.hw2_overrides.append("data.val_fraction=0")  # (b) reads every training photo
    for seed in range(args.seeds):
        curve = through_train_py(args, seed, test_loader, precision)
        runs["train.py"].append(curve.rows)
        runs["plain"].append(plain_loop(args, seed, train_set, test_loader, precision,
                                        curve.initial if args.paired else None))
        for name, rows in runs.items():
            print(f"seed {seed} {name:>8}: test acc " +
                  " ".join(f"{100 * r[1]:5.1f}" for r in rows[-1]) +
                  f" | train acc {100 * rows[-1][-1][0]:5.1f} | "
                  f"{sum(r[2] for r in rows[-1]):6.1f} s", flush=True)

    print(f"\nmean +- std over {args.seeds} seeds, accuracy in %")
    print("| epoch | train acc train.py | train acc plain | test acc train.py | test acc plain "
          "| test diff |")
    print("|---|---|---|---|---|---|")
    for e in range(args.epochs):
        col = {(name, k): [rows[e][k] for rows in runs[name]] for name in runs for k in (0, 1)}
        diff = statistics.mean(col["train.py", 1]) - statistics.mean(col["plain", 1])
        print(f"| {e + 1} | {spread(col['train.py', 0])} | {spread(col['plain', 0])} | "
              f"{spread(col['train.py', 1])} | {spread(col['plain', 1])} | {100 * diff:+5.1f} |")
    best = {name: [max(r[1] for r in rows) for rows in runs[name]] for name in runs}
    print(f"best test acc over epochs: train.py {spread(best['train.py'])}, "
          f"plain {spread(best['plain'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
