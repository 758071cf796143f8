"""Tiny photo folders for training the FoodCNN end to end in a few seconds."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

CLASSES = ["bread", "egg", "soup"]


def make_photos(root: Path) -> Path:
    """3 classes x (6 train, 2 test) coloured 40x36 JPEGs, one greyscale."""
    for c, name in enumerate(CLASSES):
        for split, n in (("train", 6), ("test", 2)):
            for i in range(n):
                path = root / split / name / f"{i}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                mode, colour = ("L", 90) if (c, i) == (0, 0) else ("RGB", (80 * c, 60 + 20 * i, 40))
                Image.new(mode, (40, 36), colour).save(path)
    return root


CLASSES = ["ramen", "apple_pie", "sushi"]


def photo(path: Path, size: tuple[int, int] = (48, 40), colour: tuple[int, ...] = (200, 30, 30),
          mode: str = "RGB", fmt: str = "JPEG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path, fmt)
    return path


def make_folders(root: Path, n_train: int = 5, n_test: int = 2, val: int = 0,
                 classes: list[str] = CLASSES) -> Path:
    for c, name in enumerate(classes):
        for split, n in (("train", n_train), ("test", n_test), ("val", val)):
            for i in range(n):
                photo(root / split / name / f"{i}.jpg", colour=(40 * c, 100, 200 - 40 * c))
    return root


def bad_files(root: Path) -> tuple[Path, Path]:
    good = photo(root / "train" / CLASSES[0] / "zz_truncated.jpg", size=(64, 64))
    data = good.read_bytes()
    good.write_bytes(data[: len(data) // 2])
    text = root / "train" / CLASSES[1] / "zz_not_an_image.jpg"
    text.write_text("this is not a jpeg")
    return good, text
