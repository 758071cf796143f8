"""What a tuned recipe costs on this machine: a short run of it, projected to its full length.

A quality run of `experiment=charlm_recipe` (30 min) or `experiment=cnn_recipe` (40 min on the
held-out photos) cannot be repeated for every machine, so this bench runs the recipe itself
through `train.py`'s path for a few steps, times the training steps, one validation or test
pass and the start-up, and projects the whole recipe from the recipe's own length:

    python bench/recipe_cost.py charlm                 # experiment=charlm_recipe, tiny shakespeare
    python bench/recipe_cost.py cnn --train-images 3750 --test-images 1250   # Food-101 subset size
    python bench/recipe_cost.py cnn --data ../shared/data/food10_dev           # its own counts
    python bench/recipe_cost.py cnn --recipe cnn_recipe_bf16 --train-images 3750 --test-images 1250

Steps are deterministic in the recipe (max_steps, or epochs x batches per epoch), so the
projection is steps x measured step time + validations/tests x measured pass time + start-up.
"""

from __future__ import annotations

import time

T_START = time.time()  # before the imports: start-up counts them

import argparse  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import pytorch_lightning as pl  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class Timer(pl.Callback):
    """Wall time of the training steps after `warmup` (loading the batches and epoch-end
    callbacks included, validation left out), of each validation and test pass, and of the
    start-up (process start to the first step)."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.passes: dict[str, list[float]] = {"val": [], "test": []}
        self.first_step: float | None = None
        self.start: float | None = None
        self.end = 0.0
        self.steps = 0
        self.val_inside = 0.0  # validation time between start and end
        self.val_pending = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.first_step is None:
            self.first_step = time.time()
        if self.start is None and trainer.global_step == self.warmup:
            self.start = time.perf_counter()
        self.val_inside += self.val_pending
        self.val_pending = 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.start is not None:
            self.end = time.perf_counter()
            self.steps = trainer.global_step - self.warmup

    @property
    def step_s(self) -> float:
        if self.start is None or not self.steps:
            return float("nan")
        return (self.end - self.start - self.val_inside) / self.steps

    def on_validation_start(self, trainer, pl_module) -> None:
        self.v = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.passes["val"].append(time.perf_counter() - self.v)
            if self.start is not None:  # counted once training goes on after it
                self.val_pending += self.passes["val"][-1]

    def on_test_start(self, trainer, pl_module) -> None:
        self.v = time.perf_counter()

    def on_test_end(self, trainer, pl_module) -> None:
        self.passes["test"].append(time.perf_counter() - self.v)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("task", choices=["charlm", "cnn"])
    p.add_argument("--steps", type=int, default=None,
                   help="steps to time (default: charlm 120, cnn 2 epochs)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--recipe", default=None,
                   help="experiment preset to time (default: <task>_recipe, e.g. cnn_recipe_bf16)")
    p.add_argument("--data", type=Path, default=None,
                   help="cnn: train/ + test/ folders (default: food10_dev under $HW2_DATA_DIR)")
    p.add_argument("--train-images", type=int, default=None,
                   help="cnn: project for this many training photos (default: the data's)")
    p.add_argument("--test-images", type=int, default=None)
    p.add_argument("overrides", nargs="*", help="extra train.py overrides (the recipe's too)")
    args = p.parse_intermixed_args(argv)  # overrides before or after the options
    recipe = args.recipe or f"{args.task}_recipe"
    data_dir = Path(os.environ.get("HW2_DATA_DIR") or ROOT.parent / "shared" / "data")

    from hw2.config import compose_config
    from hw2.train import run

    out = Path(tempfile.mkdtemp(prefix=f"recipe_cost_{args.task}_"))
    full = compose_config([f"experiment={recipe}", f"paths.data_dir={data_dir}",
                           *args.overrides], out / "full")
    timer = Timer(args.warmup)
    common = [f"experiment={recipe}", f"paths.data_dir={data_dir}",
              f"paths.root_dir={out}", "callbacks.progress_bar.refresh_rate=0",
              "trainer.enable_model_summary=false", "trainer.num_sanity_val_steps=0"]
    if args.task == "charlm":
        steps = args.steps or 120
        cfg = compose_config([*common, f"trainer.max_steps={steps}",
                              f"trainer.val_check_interval={steps}", *args.overrides], out / "run")
    else:
        root = (args.data or data_dir / "food10_dev").resolve()
        if not (root / "train").is_dir():
            print(f"skip: no train/ under {root} (give --data or set HW2_DATA_DIR)")
            return 0
        cfg = compose_config([*common, f"data.root={root}", "trainer.max_epochs=2",
                              *([f"+trainer.max_steps={args.steps}"] if args.steps else []),
                              *args.overrides], out / "run")
    t0 = time.time()
    run(cfg, extra_callbacks=[timer])
    step = timer.step_s
    startup = (timer.first_step or t0) - T_START
    lines = [f"{args.task}: experiment={recipe} {' '.join(args.overrides)}",
             f"  timed {timer.steps} training steps after {args.warmup}: {step:.3f} s/step, "
             f"start-up (process start to the first step) {startup:.1f} s"]
    if args.task == "charlm":
        total_steps = int(full.trainer.max_steps)
        n_val = total_steps // int(full.trainer.val_check_interval)
        val = timer.passes["val"][-1] if timer.passes["val"] else float("nan")
        total = startup + total_steps * step + n_val * val
        lines.append(f"  one validation {val:.1f} s; recipe: {total_steps} steps + {n_val} "
                     f"validations -> {total / 60:.1f} min")
    else:
        from hw2.data.image_folders import find_splits

        _, splits = find_splits(Path(cfg.data.root), cfg.data.layout, 0.0, 0, download=False)
        n_train = len(splits.samples["train"])
        n_test = len(splits.samples.get("test", []))
        train_images = args.train_images or n_train
        test_images = args.test_images or n_test
        batches = math.ceil(train_images / int(full.data.batch_size))
        epochs = int(full.trainer.max_epochs)
        test = timer.passes["test"][-1] * test_images / max(n_test, 1) if timer.passes[
            "test"] else float("nan")
        total = startup + epochs * batches * step + test
        lines.append(f"  test pass {test:.1f} s for {test_images} photos; recipe: {epochs} "
                     f"epochs x {batches} batches of {full.data.batch_size} "
                     f"({train_images} training photos) -> {total / 60:.1f} min")
    import torch

    lines.append(f"  {torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
