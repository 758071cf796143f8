"""Where the photos are: the Food-11 layout, a class-per-folder tree, or torchvision's Food-101,
parsed into `(path, label)` lists per split, with errors that say what layout was expected."""

from __future__ import annotations

import logging
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from hw2.utils.compat import food101_samples

log = logging.getLogger(__name__)

Sample = tuple[Path, int]
Layout = Literal["auto", "food11", "folders", "food101"]
LAYOUTS = ("auto", "food11", "folders", "food101")

# Food-11 file names carry the class index: <class>_<id>.jpg
FOOD11_CLASSES = (
    "Bread", "Dairy product", "Dessert", "Egg", "Fried food", "Meat",
    "Noodles/Pasta", "Rice", "Seafood", "Soup", "Vegetable/Fruit",
)
FOOD11_SPLITS = {"train": "training", "val": "validation", "test": "evaluation"}
FOOD11_NAME = re.compile(r"^(\d+)_[^/]+$")
FOLDER_SPLITS = {"train": "train", "val": "val", "test": "test"}

FOOD11_HELP = ("Food-11 layout: training/, validation/, evaluation/ holding <class>_<id>.jpg "
               "with class an integer 0..10")
FOLDERS_HELP = ("class-per-folder layout: train/<class>/*.jpg, optional val/<class>/, "
                "test/<class>/")


class LayoutError(ValueError):
    """The data folder does not look like the layout it was taken for."""


@dataclass
class Splits:
    """Samples per split and the class names, label i is `class_names[i]`."""

    class_names: list[str]
    samples: dict[str, list[Sample]] = field(default_factory=dict)


def is_image_file(path: str | Path) -> bool:
    """torchvision's image extensions, hidden files (e.g. macOS `._x.jpg`) left out."""
    path = Path(path)
    return path.suffix.lower() in IMG_EXTENSIONS and not path.name.startswith(".")


def detect_layout(root: Path) -> Literal["food11", "folders", "food101"]:
    """`training/` -> food11, `train/` -> folders, `food-101/` -> food101."""
    if not root.is_dir():
        raise LayoutError(f"data.root={root} is not a directory: set data.root (or paths.data_dir "
                          "/ the HW2_DATA_DIR environment variable) to your image folder")
    if (root / "training").is_dir():
        return "food11"
    if (root / "train").is_dir():
        return "folders"
    if (root / "food-101").is_dir():
        return "food101"
    raise LayoutError(f"data.root={root} has neither training/ ({FOOD11_HELP}) nor train/ "
                      f"({FOLDERS_HELP}) nor food-101/ (torchvision Food101); set data.root or "
                      "data.layout")


def food11(root: Path) -> Splits:
    """Food-11: the label is the integer before the first underscore of each file name."""
    n = len(FOOD11_CLASSES)
    splits = Splits(list(FOOD11_CLASSES))
    for split, folder in FOOD11_SPLITS.items():
        path = root / folder
        if not path.is_dir():
            raise LayoutError(f"missing split: {path} is not a directory ({FOOD11_HELP})")
        samples: list[Sample] = []
        for file in sorted(p for p in path.iterdir() if p.is_file() and is_image_file(p)):
            match = FOOD11_NAME.match(file.name)
            if match is None or int(match.group(1)) >= n:
                raise LayoutError(f"{file}: name is not <class>_<id> with class 0..{n - 1} "
                                  f"({FOOD11_HELP}); rename or remove it")
            samples.append((file, int(match.group(1))))
        if not samples:
            raise LayoutError(f"empty split: no images in {path} ({FOOD11_HELP})")
        splits.samples[split] = samples
    return splits


def _classes(folder: Path) -> list[str]:
    """Class folder names (torchvision's `find_classes`, hidden folders left out)."""
    try:
        names, _ = find_classes(folder)
    except FileNotFoundError:
        names = []
    return [n for n in names if not n.startswith(".")]


def _samples(folder: Path, index: dict[str, int]) -> list[Sample]:
    """Images of each class folder (torchvision's `make_dataset`); an empty one is an error."""
    found = make_dataset(str(folder), index, is_valid_file=is_image_file, allow_empty=True)
    counts = {label: 0 for label in index.values()}
    for _, label in found:
        counts[label] += 1
    empty = [name for name, label in index.items() if counts[label] == 0]
    if empty:
        raise LayoutError(f"empty class folder: {folder / empty[0]} has no images "
                          f"({', '.join(IMG_EXTENSIONS)}); add images or remove it")
    return [(Path(p), label) for p, label in found]


def folders(root: Path, val_fraction: float = 0.1, seed: int = 0) -> Splits:
    """train/<class>/ (class names = sorted folder names), val/ and test/ with the same
    classes (a subset is fine); without val/, a seeded per-class fraction of train."""
    train_dir = root / FOLDER_SPLITS["train"]
    if not train_dir.is_dir():
        raise LayoutError(f"missing split: {train_dir} is not a directory ({FOLDERS_HELP})")
    names = _classes(train_dir)
    if not names:
        raise LayoutError(f"no class folders in {train_dir} ({FOLDERS_HELP})")
    index = {name: i for i, name in enumerate(names)}
    splits = Splits(names)
    splits.samples["train"] = _samples(train_dir, index)
    for split in ("val", "test"):
        path = root / FOLDER_SPLITS[split]
        if not path.is_dir():
            continue
        subs = _classes(path)
        for sub in subs:
            if sub not in index:
                raise LayoutError(f"{path / sub}: class {sub!r} is not a class of {train_dir} "
                                  f"({', '.join(names)}); every class needs training images")
        if not subs:
            raise LayoutError(f"empty split: no class folders with images in {path} "
                              f"({FOLDERS_HELP})")
        splits.samples[split] = _samples(path, {sub: index[sub] for sub in subs})
    if "test" not in splits.samples:
        raise LayoutError(f"missing split: {root / 'test'} is not a directory ({FOLDERS_HELP}); "
                          "add test/<class>/ images, or run with test=false")
    if "val" not in splits.samples:
        splits.samples["train"], val = split_fraction(
            splits.samples["train"], val_fraction, seed, where=str(train_dir))
        if val:
            splits.samples["val"] = val
    return splits


def split_fraction(samples: list[Sample], fraction: float, seed: int, where: str
                   ) -> tuple[list[Sample], list[Sample]]:
    """Per class, a seeded `fraction` (at least one image) goes to validation. Fraction 0
    keeps every photo for training (as the report and a plain loop do): no validation split."""
    if fraction == 0:
        return sorted(samples), []
    if not 0 < fraction < 1:
        raise ValueError(f"data.val_fraction={fraction} must be in [0, 1): {where} has no val/ "
                         "split, so validation images are taken from train (0: no validation)")
    by_class: dict[int, list[Sample]] = {}
    for s in samples:
        by_class.setdefault(s[1], []).append(s)
    rng = random.Random(seed)
    train, val = [], []
    for label in sorted(by_class):
        group = list(by_class[label])
        rng.shuffle(group)
        k = max(1, round(fraction * len(group))) if len(group) > 1 else 0
        val += group[:k]
        train += group[k:]
    return sorted(train), sorted(val)


def food101(root: Path, download: bool = False, val_fraction: float = 0.1, seed: int = 0
            ) -> Splits:
    """torchvision's Food-101 (train/test lists; val = seeded fraction of train). Downloads
    (~5 GB) only with `download=True`."""
    from torchvision.datasets import Food101

    try:
        train, test = (Food101(str(root), split=s, download=download) for s in ("train", "test"))
    except RuntimeError as e:
        raise LayoutError(f"Food-101 not found under {root / 'food-101'} ({e}); set data.root to "
                          "the folder holding food-101/, or data.download=true (~5 GB)") from e
    splits = Splits(list(train.classes))
    for split, ds in (("train", train), ("test", test)):
        splits.samples[split] = food101_samples(ds)
    splits.samples["train"], val = split_fraction(
        splits.samples["train"], val_fraction, seed, where=str(root / "food-101"))
    if val:
        splits.samples["val"] = val
    return splits


def find_splits(root: str | Path, layout: Layout = "auto", val_fraction: float = 0.1,
                seed: int = 0, download: bool = False) -> tuple[str, Splits]:
    """Resolve the layout (detect it when `auto`) and list every split's images."""
    if layout not in LAYOUTS:
        raise ValueError(f"data.layout={layout!r} is not one of {LAYOUTS}")
    root = Path(root).expanduser()
    if layout == "food101":
        return layout, food101(root, download, val_fraction, seed)
    if not root.is_dir():
        raise LayoutError(f"data.root={root} is not a directory: set data.root (or paths.data_dir "
                          "/ the HW2_DATA_DIR environment variable) to your image folder")
    if layout == "auto":
        layout = detect_layout(root)
    if layout == "food11":
        return layout, food11(root)
    if layout == "folders":
        return layout, folders(root, val_fraction, seed)
    return layout, food101(root, download, val_fraction, seed)
