"""Tests on the real data ($HW2_DATA_DIR, default ../shared/data), skipped where absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from hw2.data.corpus import TINY_SHA256, TinyShakespeare, sha256_file

DATA = Path(os.environ.get("HW2_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" /
                           "data"))


@pytest.mark.skipif(not (DATA / "tinyshakespeare.txt").is_file(), reason=f"no {DATA}")
def test_tinyshakespeare_from_data_dir(tmp_path: Path) -> None:
    corpus = TinyShakespeare(str(DATA), str(tmp_path))
    assert corpus.locate() == DATA / "tinyshakespeare.txt"
    assert sha256_file(corpus.locate()) == TINY_SHA256
    splits = corpus.load()
    assert set(splits) == {"train", "val"}  # nanoGPT/char-rnn split: no test text
    assert len(splits["train"]) + len(splits["val"]) == 1_115_394
    assert len(splits["train"]) == int(1_115_394 * 0.9)
    assert not any(tmp_path.iterdir())  # nothing downloaded or copied


@pytest.mark.skipif(not (DATA / "food10_small" / "train").is_dir(), reason=f"no {DATA}")
def test_food10_small_layout_and_batches() -> None:
    from hw2.data.image_data import ImageDataModule

    dm = ImageDataModule(str(DATA / "food10_small"), layout="auto", image_size=64, resize=64,
                         batch_size=50, num_workers=0)
    dm.setup("fit")
    assert len(dm.class_names) == 10
    sizes = {split: len(ds) for split, ds in dm.datasets.items()}
    assert sizes["train"] + sizes["val"] == 400 and sizes["test"] == 100
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (50, 3, 64, 64) and x.dtype == torch.float32
    # labels are the photos' class folders, and every photo decoded to a real picture
    files = [path for path, _ in dm.datasets["test"].samples[:50]]
    assert [dm.class_names[i] for i in y.tolist()] == [f.parent.name for f in files]
    assert bool((x.flatten(1).std(dim=1) > 0.05).all())
