"""Test accuracy of trained FoodCNN checkpoints for several `data.eval_resize` values.

Random resized crops show the food larger than a centre crop of the whole photo does (a crop of
a `s` share of the area enlarges it by 1/sqrt(s)), so a network trained on them may score
better when the test photo is resized larger before the same centre crop (FixRes). This re-tests
finished checkpoints on photo folders (`<class>/*.jpg`, class names as in the checkpoint), with
the checkpoint's own network, crop size, draft decoding and flip at test; only the resize of the
evaluated photo varies:

    python bench/eval_resize.py --sizes 128,144,160,176 \\
        --folders ../shared/data/food10_dev/test --ckpt runs/*/checkpoints/last.ckpt

A table: one row per checkpoint, test accuracy (%) per eval resize, and the mean row. fp32 on
the CPU, so a figure can differ from the bf16 run's test/acc by a photo or two.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from hw2.checkpoints import load_module
from hw2.data.image_data import build_transform, load_rgb
from hw2.models.classifier import ImageClassifier


def photos(folders: list[Path], class_names: list[str]) -> list[tuple[Path, int]]:
    """(photo, label) for every file of every `<class>/` folder under the given folders."""
    found = []
    for folder in folders:
        for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
            if class_dir.name not in class_names:
                raise SystemExit(f"{class_dir}: class {class_dir.name!r} is not one of the "
                                 f"checkpoint's ({', '.join(class_names)})")
            label = class_names.index(class_dir.name)
            found += [(p, label) for p in sorted(class_dir.iterdir()) if p.is_file()]
    if not found:
        raise SystemExit(f"no photos under {', '.join(map(str, folders))}")
    return found


@torch.no_grad()
def accuracy(model: ImageClassifier, files: list[tuple[Path, int]], eval_resize: int,
             batch_size: int = 50) -> float:
    """Share of `files` whose top class is right, photos resized to `eval_resize` first."""
    hp = model.hparams
    transform = build_transform(hp.image_size, train=False, resize=eval_resize,
                                mean=hp.get("mean", (0.5,) * 3), std=hp.get("std", (0.5,) * 3))
    min_side = eval_resize if hp.get("jpeg_draft", True) else None
    correct = 0
    for start in range(0, len(files), batch_size):
        chunk = files[start:start + batch_size]
        x = torch.stack([transform(load_rgb(path, min_side)) for path, _ in chunk])
        y = torch.tensor([label for _, label in chunk])
        correct += int((model(x).argmax(-1) == y).sum())
    return correct / len(files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", nargs="+", type=Path, required=True)
    parser.add_argument("--folders", nargs="+", type=Path, required=True,
                        help="folders of <class>/ photo folders, e.g. <data>/test")
    parser.add_argument("--sizes", default="128,144,160,176",
                        help="eval resizes, comma-separated (default %(default)s)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    print(f"| checkpoint | {' | '.join(str(s) for s in sizes)} |")
    print(f"|---|{'---|' * len(sizes)}")
    for ckpt in args.ckpt:
        model = load_module(ckpt, ImageClassifier).eval()
        files = photos(args.folders, list(model.class_names))
        rows.append([100 * accuracy(model, files, size) for size in sizes])
        print(f"| {ckpt} | {' | '.join(f'{a:.1f}' for a in rows[-1])} |", flush=True)
    means = [sum(col) / len(col) for col in zip(*rows, strict=True)]
    print(f"| mean of {len(rows)} ({len(files)} photos each) | "
          f"{' | '.join(f'{a:.1f}' for a in means)} |")


if __name__ == "__main__":
    main()
