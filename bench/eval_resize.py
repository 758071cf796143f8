"""Test accuracy of trained FoodCNN checkpoints for several `data.eval_resize` values.

Random resized crops show the food larger than a centre crop of the whole photo does (a crop of
a `s` share of the area enlarges it by 1/sqrt(s)), so a network trained on them may score
better when the test photo is resized larger before the same centre crop (FixRes). This re-tests
finished checkpoints on photo folders (`<class>/*.jpg`, class names as in the checkpoint), with
`hw2.predict`: the checkpoint's own network, crop size, draft decoding and flip at test; only
the resize of the evaluated photo varies. `a+b+c` tests each photo at several resizes and
averages the probabilities (`data.eval_resize=[a,b,c]`, multi-scale test-time augmentation):

    python bench/eval_resize.py --sizes 128,160,144+160+176 \\
        --folders ../shared/data/food10_dev/test --ckpt runs/*/checkpoints/last.ckpt

A table: one row per checkpoint, test accuracy (%) per eval resize, and the mean row. fp32 on
the CPU, so a figure can differ from the bf16 run's test/acc by a photo or two.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from torchvision.datasets import ImageFolder

from hw2.inference import predict
from hw2.models.classifier import ImageClassifier
from hw2.runs.checkpoints import load_module


def photos(folders: list[Path], class_names: list[str]) -> dict[Path, str]:
    """photo -> class name for every image (torchvision's extensions) of every `<class>/`
    folder under the given folders."""
    found = {}
    for folder in folders:
        listing = ImageFolder(folder)  # lists the files; decodes nothing
        unknown = sorted(set(listing.classes) - set(class_names))
        if unknown:
            raise SystemExit(f"{folder}: classes {unknown} are not the checkpoint's "
                             f"({', '.join(class_names)})")
        found |= {Path(path): listing.classes[i] for path, i in listing.samples}
    return found


def accuracy(ckpt: Path, labels: dict[Path, str], eval_resize: int | list[int]) -> float:
    """Share of the photos whose top class (`hw2.predict`, the checkpoint's own preprocessing
    with this eval resize) is their folder's."""
    results = predict(ckpt, list(labels), top_k=1, batch_size=50, eval_resize=eval_resize)
    hits = [not isinstance(top, str) and top[0][0] == labels[path] for path, top in results]
    return sum(hits) / len(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", nargs="+", type=Path, required=True)
    parser.add_argument("--folders", nargs="+", type=Path, required=True,
                        help="folders of <class>/ photo folders, e.g. <data>/test")
    parser.add_argument("--sizes", default="128,144,160,176,144+160+176",
                        help="eval resizes, comma-separated; a+b: several averaged "
                             "(default %(default)s)")
    args = parser.parse_args()
    columns = args.sizes.split(",")
    sizes = [[int(s) for s in c.split("+")] for c in columns]
    rows = []
    print(f"| checkpoint | {' | '.join(columns)} |")
    print(f"|---|{'---|' * len(sizes)}")
    for ckpt in args.ckpt:
        labels = photos(args.folders, list(load_module(ckpt, ImageClassifier).class_names))
        rows.append([100 * accuracy(ckpt, labels, size if len(size) > 1 else size[0])
                     for size in sizes])
        print(f"| {ckpt} | {' | '.join(f'{a:.1f}' for a in rows[-1])} |", flush=True)
    means = [sum(col) / len(col) for col in zip(*rows, strict=True)]
    print(f"| mean of {len(rows)} ({len(labels)} photos each) | "
          f"{' | '.join(f'{a:.1f}' for a in means)} |")


if __name__ == "__main__":
    main()
