"""FoodCNN test accuracy against the number of training photos, projected to a larger set.

The recipes are developed on food10_dev (150 training photos per class) and checked on a
held-out Food-101 subset with 375 per class. This trains a recipe through `train.py` on
folders of 75..150 of food10_dev's training photos per class (drawn with a fixed seed) and, for
more than 150, all of them plus food10_small's 50 per class, tests each run on food10_dev's
500 test photos, fits accuracy = a + b * log2(photos) over every run and projects it:

    python bench/data_scaling.py --per-class 75,150,200 --seeds 1,2,3
    python bench/data_scaling.py --recipe cnn_recipe_bf16 --per-class 75,150 --seeds 1

The folders are symlinks (`<out>/n<photos>/train/<class>/<split>_<file>`, `test` -> food10_dev's
test/); a run already finished under `--out` is read back, not trained again. The epochs stay
the recipe's, so a larger set trains more steps, as it would on the held-out subset.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hw2.runs.record import read_record  # noqa: E402

DATA = Path(os.environ.get("HW2_DATA_DIR", ROOT.parent / "shared" / "data"))


def build_folder(out: Path, per_class: int, dev: Path, extra: Path) -> Path:
    """A train/ + test/ folder with `per_class` training photos per class: a seeded draw from
    dev's train/ (all of it when per_class is at least its count), then extra's train/ and
    test/ photos."""
    root = out / f"n{per_class * len(list((dev / 'train').iterdir()))}"
    if not (root / "test").exists():
        root.mkdir(parents=True, exist_ok=True)
        (root / "test").symlink_to((dev / "test").resolve())
    for class_dir in sorted((dev / "train").iterdir()):
        own = sorted(class_dir.iterdir())
        files = random.Random(0).sample(own, per_class) if per_class < len(own) else list(own)
        if per_class > len(own):
            more = []
            for split in ("train", "test"):
                d = extra / split / class_dir.name
                if not d.is_dir():
                    raise SystemExit(f"{d} not found: --per-class {per_class} needs --extra "
                                     f"photos beyond the {len(own)} of {class_dir}")
                more += sorted(d.iterdir())
            if len(own) + len(more) < per_class:
                raise SystemExit(f"{class_dir.name}: {len(own)} + {len(more)} photos in {dev} "
                                 f"and {extra}, fewer than --per-class {per_class}")
            files += more[: per_class - len(own)]
        target = root / "train" / class_dir.name
        target.mkdir(parents=True, exist_ok=True)
        for f in files:
            link = target / f"{f.parent.parent.name}_{f.name}"
            if not link.exists():
                link.symlink_to(f.resolve())
    return root


def train(folder: Path, recipe: str, seed: int, out: Path, overrides: list[str]) -> dict:
    """Final metrics of `train.py experiment=<recipe>` on the folder (trained unless finished)."""
    name = f"{folder.name}_s{seed}"
    run_dir = out / "logs" / "cnn" / "runs" / name
    record = read_record(run_dir) if run_dir.is_dir() else None
    wanted = [f"experiment={recipe}", *overrides]
    if record and not set(wanted) <= set(record.get("overrides", [])):
        raise SystemExit(f"{run_dir} was trained with {record.get('overrides')}, not with "
                         f"{wanted}: give another --out")
    if not (record and record.get("status") == "finished"):
        cmd = [sys.executable, str(ROOT / "train.py"), f"experiment={recipe}", "data=image_folder",
               f"data.root={folder}", f"seed={seed}", f"run_name={name}",
               f"paths.root_dir={out}", "callbacks.progress_bar.refresh_rate=0", *overrides]
        with open(out / f"{name}.log", "w") as log:
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT).returncode
        record = read_record(run_dir)
        if rc != 0 or not record:
            raise SystemExit(f"{name} failed (exit {rc}): see {out / f'{name}.log'}")
    return record["metrics"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--per-class", default="75,150,200", help="training photos per class")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--recipe", default="cnn_recipe")
    ap.add_argument("--dev", type=Path, default=DATA / "food10_dev")
    ap.add_argument("--extra", type=Path, default=DATA / "food10_small",
                    help="photos added beyond dev's own (its train/ and test/)")
    ap.add_argument("--project", type=int, default=3750, help="training photos to project to")
    ap.add_argument("--out", type=Path, default=ROOT / "bench_out" / "data_scaling")
    ap.add_argument("overrides", nargs="*", help="more train.py overrides")
    args = ap.parse_args()
    if not (args.dev / "train").is_dir():
        raise SystemExit(f"{args.dev}/train not found: set HW2_DATA_DIR or --dev")
    args.out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]

    rows, xs, ys = [], [], []
    for per_class in (int(n) for n in args.per_class.split(",")):
        folder = build_folder(args.out.resolve(), per_class, args.dev, args.extra)
        photos = sum(1 for _ in (folder / "train").rglob("*.*"))
        test, fit = [], []
        for seed in seeds:
            m = train(folder, args.recipe, seed, args.out.resolve(), args.overrides)
            test.append(100 * m["test/acc"])
            fit.append(100 * m["train/acc"])
            print(f"{photos} photos, seed {seed}: test acc {test[-1]:.1f} %, "
                  f"train acc {fit[-1]:.1f} %", flush=True)
        xs += [math.log2(photos)] * len(test)
        ys += test
        rows.append((photos, test, fit))

    print(f"\n`experiment={args.recipe}`, tested on {args.dev / 'test'}; accuracy in %\n")
    print("| training photos | test acc per seed | mean +- std | train acc (mean) |")
    print("|---|---|---|---|")
    for photos, test, fit in rows:
        spread = f" +- {statistics.stdev(test):.1f}" if len(test) > 1 else ""
        print(f"| {photos} | {' / '.join(f'{a:.1f}' for a in test)} | "
              f"{statistics.mean(test):.1f}{spread} | {statistics.mean(fit):.1f} |")
    if len(rows) > 1:
        mx, my = statistics.mean(xs), statistics.mean(ys)
        sxx = sum((x - mx) ** 2 for x in xs)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
        at = my + slope * (math.log2(args.project) - mx)
        print(f"\nfit over {len(ys)} runs: {slope:+.1f} points per doubling of the training "
              f"photos; projected to {args.project} photos: {at:.1f} %")


if __name__ == "__main__":
    main()
