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
