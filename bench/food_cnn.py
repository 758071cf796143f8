"""FoodCNN on real photos (food10_small: 400 train / 100 test, 10 classes) on this machine.

Measures, in one run and with the project's own datamodule and model:
  1. the loader alone (decode + preprocessing, `--num-workers` processes): images/s;
  2. one training step (forward, backward, Adam) on a fixed real batch, side by side:
     fp32 NCHW vs channels_last + bf16 autocast (what `trainer.precision=bf16-mixed` and
     `model.channels_last=true` give): images/s and their ratio;
  2b. training steps through the loader for num_workers 0, 1, 2 (`--workers-sweep`);
  3. `--epochs` of training (channels_last + bf16, through the loader): per epoch train loss and
     accuracy, test accuracy, and end-to-end images/s, to compare with 1. and 2.

    python bench/food_cnn.py                      # the report's 512 px, ~4 min on 2 cores
    python bench/food_cnn.py --image-size 128 --resize 128 --epochs 3
Data: $HW2_DATA_DIR/food10_small, else ../shared/data/food10_small (or --data).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from hw2.data.image_data import ImageDataModule
from hw2.models.classifier import ImageClassifier
from hw2.models.food_cnn import FoodCNN
from hw2.utils.runtime import tune_malloc

ROOT = Path(__file__).resolve().parents[1]


def default_data() -> Path:
    base = os.environ.get("HW2_DATA_DIR") or str(ROOT.parent / "shared" / "data")
    return Path(base) / "food10_small"


def make_model(num_classes: int, image_size: int, channels_last: bool, lr: float, l2: float
               ) -> tuple[ImageClassifier, torch.optim.Optimizer]:
    model = ImageClassifier(functools.partial(FoodCNN), num_classes, image_size=image_size,
                            channels_last=channels_last, l2=l2,
                            optimizer=functools.partial(torch.optim.Adam, lr=lr))
    return model, model.configure_optimizers()["optimizer"]


def train_step(model: ImageClassifier, opt: torch.optim.Optimizer, x: torch.Tensor,
               y: torch.Tensor, bf16: bool) -> tuple[float, torch.Tensor]:
    """What Lightning's training step does: autocast forward, fp32 loss + L2, backward, step."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = model(x).float()
    loss = F.cross_entropy(logits, y) + model.l2_penalty()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach()), logits.detach()


def loader_alone(dm: ImageDataModule, max_batches: int | None) -> float:
    start = time.perf_counter()
    n, first = 0, None
    for i, (x, _) in enumerate(dm.train_dataloader()):
        if first is None:
            first = time.perf_counter()
        else:
            n += len(x)  # the first batch pays the worker start-up: left out of the rate
        if max_batches is not None and i + 1 >= max_batches:
            break
    rate = n / (time.perf_counter() - first) if n and first else float("nan")
    print(f"loader alone: {rate:7.1f} images/s ({dm.num_workers} workers; first batch "
          f"after {first - start:.2f} s)", flush=True)
    return rate


def step_throughput(dm: ImageDataModule, args: argparse.Namespace) -> dict[str, float]:
    x, y = next(iter(dm.train_dataloader()))
    n_cls = len(dm.class_names)
    rates: dict[str, float] = {}
    for name, channels_last, bf16 in (("fp32 NCHW", False, False),
                                      ("channels_last+bf16", True, True)):
        torch.manual_seed(0)
        model, opt = make_model(n_cls, args.image_size, channels_last, args.lr, args.l2)
        model.train()
        for _ in range(args.warmup):
            train_step(model, opt, x, y, bf16)
        start = time.perf_counter()
        for _ in range(args.steps):
            train_step(model, opt, x, y, bf16)
        rates[name] = args.steps * len(x) / (time.perf_counter() - start)
        print(f"train step {name:<19} {rates[name]:7.1f} images/s "
              f"(batch {len(x)}, {args.steps} steps)", flush=True)
    ratio = rates["channels_last+bf16"] / rates["fp32 NCHW"]
    print(f"channels_last+bf16 / fp32 NCHW: {ratio:.2f}x", flush=True)
    return rates


def workers_sweep(dm: ImageDataModule, args: argparse.Namespace) -> dict[int, float]:
    """Training steps through the loader for each num_workers: on 2 cores the decoding
    processes compete with the model's threads, so the best setting is measured, not assumed."""
    rates: dict[int, float] = {}
    torch.manual_seed(0)
    model, opt = make_model(len(dm.class_names), args.image_size, True, args.lr, args.l2)
    model.train()
    for workers in args.workers_sweep:
        loader = ImageDataModule(str(dm.root), layout="folders", image_size=args.image_size,
                                 resize=args.resize, batch_size=args.batch_size,
                                 num_workers=workers)
        loader.splits, loader.datasets = dm.splits, dm.datasets  # same files, no re-scan
        n, start = 0, None
        for i, (x, y) in enumerate(loader.train_dataloader()):
            train_step(model, opt, x, y, bf16=True)
            if i == 0:
                start = time.perf_counter()  # after worker start-up and one warm step
            else:
                n += len(y)
            if i >= args.sweep_batches:
                break
        rates[workers] = n / (time.perf_counter() - start) if n and start else float("nan")
        print(f"train with loading, num_workers={workers}: {rates[workers]:7.1f} images/s",
              flush=True)
    return rates


class EpochTimer(pl.Callback):
    """Training images/s of each epoch inside the Lightning loop (loading included), from the
    epoch start to its last training batch: the validation that Lightning runs before
    `on_train_epoch_end` is left out, as in the hand-written loop."""

    def __init__(self) -> None:
        self.rates: list[float] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start, self.n = time.perf_counter(), 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.n += len(batch[1])
        self.end = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.rates.append(self.n / (self.end - self.start))


def framework(data: Path, args: argparse.Namespace) -> float:
    """The same training through `python train.py task=cnn` (Hydra config, Lightning trainer,
    default callbacks and TensorBoard logging): images/s of its last training epoch."""
    from tempfile import mkdtemp

    from hw2.config import compose_config
    from hw2.train import run

    out = Path(mkdtemp(prefix="bench_food_cnn_"))
    timer = EpochTimer()
    cfg = compose_config([
        "task=cnn", f"data.root={data}", f"data.image_size={args.image_size}",
        f"data.resize={args.resize or 'null'}", f"data.batch_size={args.batch_size}",
        f"data.num_workers={args.num_workers}", f"trainer.max_epochs={args.framework_epochs}",
        "test=false", "callbacks.progress_bar.refresh_rate=0", f"paths.root_dir={out}",
        "trainer.enable_model_summary=false", f"seed={args.seed}",
    ], out)
    run(cfg, extra_callbacks=[timer])
    rate = timer.rates[-1] if timer.rates else float("nan")
    print(f"framework (train.py task=cnn, {args.framework_epochs} epochs): last epoch "
          f"{rate:6.1f} images/s (with loading, validation excluded)", flush=True)
    return rate


@torch.no_grad()
def evaluate(model: ImageClassifier, loader, max_batches: int | None) -> tuple[float, float]:
    model.eval()
    correct = total = 0
    start = time.perf_counter()
    for i, (x, y) in enumerate(loader):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            correct += int((model(x).argmax(1) == y).sum())
        total += len(y)
        if max_batches is not None and i + 1 >= max_batches:
            break
    model.train()
    return correct / max(total, 1), total / (time.perf_counter() - start)


def train(dm: ImageDataModule, args: argparse.Namespace) -> list[float]:
    torch.manual_seed(args.seed)
    model, opt = make_model(len(dm.class_names), args.image_size, True, args.lr, args.l2)
    model.train()
    train_loader, test_loader = dm.train_dataloader(), dm.test_dataloader()
    rates: list[float] = []
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        n = correct = 0
        loss_sum = 0.0
        for i, (x, y) in enumerate(train_loader):
            loss, logits = train_step(model, opt, x, y, bf16=True)
            n += len(y)
            correct += int((logits.argmax(1) == y).sum())
            loss_sum += loss * len(y)
            if args.max_batches is not None and i + 1 >= args.max_batches:
                break
        rate = n / (time.perf_counter() - start)
        rates.append(rate)
        test_acc, test_rate = evaluate(model, test_loader, args.max_batches)
        print(f"epoch {epoch:2d}: train loss {loss_sum / n:.3f} acc {correct / n:6.1%} | "
              f"test acc {test_acc:6.1%} | train {rate:6.1f} images/s (with loading), "
              f"test {test_rate:6.1f} images/s", flush=True)
    return rates


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=None, help="food10_small folder")
    p.add_argument("--image-size", type=int, default=512, help="CenterCrop size (report: 512)")
    p.add_argument("--resize", type=int, default=None, help="resize the shorter side first")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--steps", type=int, default=6, help="timed steps per throughput variant")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before those")
    p.add_argument("--max-batches", type=int, default=None,
                   help="cap batches per pass (quick check)")
    p.add_argument("--workers-sweep", type=lambda v: [int(w) for w in v.split(",") if w],
                   default=[0, 1, 2], help="num_workers values to compare, e.g. 0,1,2 ('' off)")
    p.add_argument("--sweep-batches", type=int, default=6, help="timed batches per value")
    p.add_argument("--framework-epochs", type=int, default=4,
                   help="epochs through train.py's own path (0: skip)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--l2", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=1234)
    args = p.parse_args(argv)

    data = args.data or default_data()
    if not (data / "train").is_dir():
        print(f"no food10_small at {data}: set HW2_DATA_DIR (or --data) to the folder holding "
              "it; nothing to measure", file=sys.stderr)
        return 0
    tune_malloc()  # as `python train.py` does
    dm = ImageDataModule(str(data), layout="folders", image_size=args.image_size,
                         resize=args.resize, batch_size=args.batch_size,
                         num_workers=args.num_workers)
    dm.setup("fit")
    counts = ", ".join(f"{k} {len(v)}" for k, v in dm.datasets.items())
    print(f"{data}: {len(dm.class_names)} classes, {counts}; image_size {args.image_size}, "
          f"resize {args.resize}, batch {args.batch_size}, torch threads "
          f"{torch.get_num_threads()}, {torch.__version__}", flush=True)

    load_rate = loader_alone(dm, args.max_batches)
    rates = step_throughput(dm, args)
    sweep = workers_sweep(dm, args)
    hand_rates = train(dm, args)
    epoch_rate = hand_rates[-1]
    fw_rate = framework(data, args) if args.framework_epochs else float("nan")
    same = min(args.framework_epochs, len(hand_rates))  # early epochs run slower: same epoch
    step_rate = rates["channels_last+bf16"]
    verdict = "not the bottleneck" if load_rate > 2 * step_rate else "a possible bottleneck"
    print(f"\nsummary: loader {load_rate:.1f} images/s vs train step {step_rate:.1f} images/s "
          f"(channels_last+bf16) -> the loader is {verdict}; training with loading "
          f"{epoch_rate:.1f} images/s; channels_last+bf16 is "
          f"{step_rate / rates['fp32 NCHW']:.2f}x fp32 NCHW; through train.py (Lightning) "
          f"{fw_rate:.1f} images/s in epoch {same} vs this hand-written loop "
          f"{hand_rates[same - 1] if same else float('nan'):.1f} in epoch {same}", flush=True)
    if sweep:
        best = max(sweep, key=lambda w: sweep[w])
        print(f"fastest num_workers here: {best} ({sweep[best]:.1f} images/s; "
              f"data.num_workers={best})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
