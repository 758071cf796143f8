"""The photo cache (`data.cache=true`): built once and rebuilt on any change of photos or
decoding, never used half-written, and its augmentation on tensors draws crops, flips and
colour jitter from the same distributions as the PIL path."""

from __future__ import annotations

import colorsys
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import default_collate
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from hw2.data.batch_augment import finish_batch
from hw2.data.image_data import BadImageError, ImageDataModule
from hw2.data.photo_cache import CacheSpaceError, PhotoCache, open_or_build, temp_files
from tests.test_cnn_data import bad_files, make_folders, photo

ROOT = Path(__file__).resolve().parents[1]
HALF = (0.5, 0.5, 0.5)


def cached_module(root: Path, cache: Path, **kw) -> ImageDataModule:
    args = {"image_size": 32, "resize": 36, "num_workers": 0, "val_fraction": 0,
            "cache": True, "cache_dir": str(cache), **kw}
    dm = ImageDataModule(str(root), **args)
    dm.setup("fit")
    return dm


def cache_files(cache: Path) -> set[str]:
    return {p.name for p in cache.glob("*.photos")}


def finished(dm: ImageDataModule, items: list) -> torch.Tensor:
    return dm.on_after_batch_transfer(default_collate(items), 0)[0]


# ----- building, reuse, invalidation -------------------------------------------------------

def test_cache_is_reused_and_rebuilt_on_any_change(tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    root, cache = make_folders(tmp_path / "d"), tmp_path / "cache"
    with caplog.at_level(logging.INFO, logger="hw2.data.photo_cache"):
        cached_module(root, cache)
        first = cache_files(cache)
        assert len(first) == 2  # train, test
        caplog.clear()
        cached_module(root, cache)  # the same photos and settings: read, not built
    assert cache_files(cache) == first
    assert not any("building" in r.getMessage() for r in caplog.records)

    cached_module(root, cache, resize=40)  # another resize (and eval resize): both rebuilt
    assert len(cache_files(cache)) == 4
    changed = root / "train" / "ramen" / "0.jpg"
    photo(changed, size=(50, 40), colour=(0, 0, 0))  # the same name, other pixels
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))
    dm = cached_module(root, cache)
    assert len(cache_files(cache)) == 5  # the training cache only
    i = [p for p, _ in dm.datasets["train"].samples].index(changed)
    assert dm.datasets["train"].cache[i].max() < 10  # the new, black photo
    photo(root / "test" / "sushi" / "9.jpg")  # one more test photo: the list changed
    cached_module(root, cache)
    assert len(cache_files(cache)) == 6


def test_records_are_the_resized_photos_and_eval_views(tmp_path: Path) -> None:
    root = make_folders(tmp_path / "d")
    dm = cached_module(root, tmp_path / "cache", resize=36, eval_resize=[32, 40])
    train, test = dm.datasets["train"].cache, dm.datasets["test"].cache
    assert train[0].shape == (36, 43, 3) and train[0].dtype == np.uint8  # 48x40 -> 43x36, whole
    assert test[0].shape == (2, 3, 32, 32)  # one centre crop per eval resize
    assert PhotoCache(train.path).shapes == train.shapes  # read back from the file's index


def test_eval_and_report_training_batches_equal_the_pil_path(tmp_path: Path) -> None:
    """Eval views (several resizes) are bit for bit today's; `report` training (centre crop +
    flip) too, photo by photo under the same (epoch, index) seed."""
    root = tmp_path / "d"
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        for split in ("train", "test"):
            for i in range(3):
                path = root / split / name / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 255, (40 + 7 * i, 52, 3), np.uint8)).save(path)
    kw = {"image_size": 32, "resize": 36, "eval_resize": [32, 44], "num_workers": 0,
          "val_fraction": 0}
    pil = ImageDataModule(str(root), **kw)
    pil.setup("fit")
    dm = cached_module(root, tmp_path / "cache", **kw)
    n = len(pil.datasets["test"])
    views = finished(dm, [dm.datasets["test"][i] for i in range(n)])
    assert views.shape == (n, 2, 3, 32, 32)
    assert torch.equal(views, torch.stack([pil.datasets["test"][i][0] for i in range(n)]))
    keys = [(epoch, i) for epoch in range(4) for i in range(len(pil.datasets["train"]))]
    train = finished(dm, [dm.datasets["train"][k] for k in keys])
    assert torch.equal(train, torch.stack([pil.datasets["train"][k][0] for k in keys]))


def test_corrupt_photo_is_named_or_skipped(tmp_path: Path) -> None:
    root = make_folders(tmp_path / "d")
    bad_files(root)
    cache = tmp_path / "cache"
    with pytest.raises(BadImageError, match=r"cannot decode.*skip_bad_images"):
        cached_module(root, cache)
    assert not cache_files(cache) and not list(cache.glob(".*.tmp"))  # nothing half-written
    dm = cached_module(root, cache, skip_bad_images=True)
    assert len(dm.datasets["train"]) == 15


def test_no_room_on_disk_is_a_clear_error(tmp_path: Path) -> None:
    files = [photo(tmp_path / "p" / "0.jpg")]
    with pytest.raises(CacheSpaceError, match=r"photo cache .*\.photos needs .* GB but .* GB "
                                              r"free; set paths.cache_dir.*data.cache=false"):
        open_or_build(tmp_path / "cache", "x", files, {}, lambda p: np.zeros(3, np.uint8),
                      lambda p: 10**18)
    assert not list((tmp_path / "cache").glob("*.photos"))


def test_cache_needs_a_folder() -> None:
    with pytest.raises(ValueError, match=r"data.cache=true needs data.cache_dir"):
        ImageDataModule("/nowhere", cache=True, cache_dir=None)


BUILDER = textwrap.dedent("""
    import logging, sys, time
    from pathlib import Path
    import numpy as np
    from hw2.data.photo_cache import open_or_build
    logging.basicConfig(level=logging.INFO, stream=sys.stdout)
    files = sorted(Path(sys.argv[1]).glob("*.png"))
    def slow(path):
        time.sleep(float(sys.argv[3]))
        return np.full((32, 64, 3), int(path.stem), np.uint8)  # 6 kB: flushed every 2
    cache = open_or_build(sys.argv[2], "slow", files, {"v": 1}, slow, lambda p: 6144, workers=1)
    print("records", [int(cache[i][0, 0, 0]) for i in range(len(cache))], flush=True)
""")


def builder(photos: Path, cache: Path, delay: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", BUILDER, str(photos), str(cache), str(delay)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def test_killed_build_leaves_nothing_used_and_concurrent_builders_share(tmp_path: Path) -> None:
    photos, cache = tmp_path / "p", tmp_path / "cache"
    for i in range(20):
        photo(photos / f"{i}.png", fmt="PNG")
    killed = builder(photos, cache, 0.1)
    deadline = time.monotonic() + 30
    while not any(p.stat().st_size for p in cache.glob(".*.tmp")):  # a few records written
        assert time.monotonic() < deadline and killed.poll() is None, killed.stdout.read()
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not list(cache.glob("*.photos")) and len(list(cache.glob(".*.tmp"))) == 1
    # two builders at once: one removes the killed build's file and builds, one waits, reads
    a, b = builder(photos, cache, 0.02), builder(photos, cache, 0.02)
    out = a.communicate(timeout=60)[0] + b.communicate(timeout=60)[0]
    assert a.returncode == b.returncode == 0, out
    assert out.count("building the photo cache") == 1, out
    assert "removed 1 unfinished photo cache file" in out
    assert "another process is building" in out
    names = sorted(f"{i}.png" for i in range(20))  # the files' order
    assert out.count(f"records {[int(n[:-4]) for n in names]}") == 2
    (path,) = cache.glob("*.photos")
    assert not temp_files(path) and len(PhotoCache(path)) == 20


# ----- augmentation distributions ----------------------------------------------------------

def coordinate_photo(path: Path, w: int = 200, h: int = 150) -> Path:
    """Red = column, green = row, scaled to 0..255: a crop's box can be read off its pixels."""
    ys, xs = np.mgrid[0:h, 0:w]
    pixels = np.stack([xs * 255 / (w - 1), ys * 255 / (h - 1), np.zeros_like(xs)], -1)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(pixels).astype(np.uint8)).save(path)
    return path


def test_crops_flips_and_jitter_follow_the_pil_paths_distributions(tmp_path: Path) -> None:
    w, h, size, n = 200, 150, 64, 2000
    root = tmp_path / "d"
    coordinate_photo(root / "train" / "a" / "0.png", w, h)
    coordinate_photo(root / "test" / "a" / "0.png", w, h)
    dm = cached_module(root, tmp_path / "cache", image_size=size, resize=None,
                       augment="strong", crop_scale=[0.35, 1.0])
    items = [dm.datasets["train"][(epoch, 0)] for epoch in range(n)]
    x = torch.stack([item[0] for item in items])  # (n, 3, size, size) uint8
    factors = torch.stack([item[1] for item in items])
    left, right = (x[:, 0, :, col].float().mean(1) for col in (0, -1))  # red: the column
    top, bottom = (x[:, 1, row, :].float().mean(1) for row in (0, -1))  # green: the row
    flipped = left > right
    # pixel centres span (size - 1) / size of the crop
    crop_w = (left - right).abs() / 255 * (w - 1) * size / (size - 1)
    crop_h = (bottom - top) / 255 * (h - 1) * size / (size - 1)
    area = crop_w * crop_h / (w * h)
    reference = v2.RandomResizedCrop(size, scale=(0.35, 1.0))
    blank = torch.zeros(3, h, w)  # its size is all make_params reads
    boxes = [reference.make_params([blank]) for _ in range(n)]
    ref_area = torch.tensor([b["height"] * b["width"] / (w * h) for b in boxes])
    ref_ratio = torch.tensor([b["width"] / b["height"] for b in boxes])
    q = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9])
    assert abs(area.mean() - ref_area.mean()) < 0.015
    assert torch.allclose(area.quantile(q), ref_area.quantile(q), atol=0.03)
    assert torch.allclose((crop_w / crop_h).quantile(q), ref_ratio.quantile(q), atol=0.04)
    assert area.min() > 0.33 and area.max() < 1.02
    assert abs(flipped.float().mean() - 0.5) < 4 * (0.25 / n) ** 0.5  # binomial, 4 sigma
    uniform = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9])
    for k, (low, high) in enumerate([(0.7, 1.3)] * 3 + [(-0.03, 0.03)]):
        f = factors[:, k]
        assert f.min() >= low and f.max() <= high
        assert torch.allclose(f.quantile(q), low + (high - low) * uniform, atol=0.03 * (high - low))
    again = dm.datasets["train"][(7, 0)]  # a photo's draw is fixed by (seed, epoch, index)
    assert torch.equal(again[0], items[7][0]) and torch.equal(again[1], items[7][1])


@pytest.mark.parametrize("factors, reference", [
    ((1.25, 1, 1, 0), lambda x: TF.adjust_brightness(x, 1.25)),
    ((0.8, 1, 1, 0), lambda x: TF.adjust_brightness(x, 0.8)),
    ((1, 0.75, 1, 0), lambda x: TF.adjust_contrast(x, 0.75)),
    ((1, 1.3, 1, 0), lambda x: TF.adjust_contrast(x, 1.3)),
    ((1, 1, 1.3, 0), lambda x: TF.adjust_saturation(x, 1.3)),
    ((1, 1, 0.7, 0), lambda x: TF.adjust_saturation(x, 0.7)),
    ((1, 1, 1, 0), lambda x: x),
])
def test_batched_jitter_is_torchvisions_single_ops(factors, reference) -> None:
    x = torch.randint(0, 256, (4, 3, 16, 20), dtype=torch.uint8)
    got = finish_batch(x, torch.tensor([factors] * 4), HALF, HALF)
    want = TF.normalize(reference(x.float() / 255), HALF, HALF)
    assert got.shape == (4, 3, 16, 20)
    assert torch.allclose(got, want, atol=2e-5)


def test_batched_hue_turns_colours_by_the_hue_factor_and_keeps_grey_levels() -> None:
    """Hue as a rotation of the chroma plane: grey levels stay, and the HSV hue of coloured
    pixels turns by the factor on average (torchvision shifts HSV hue by exactly that)."""
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(8, 3, 24, 24, generator=g) * 180 + 40).to(torch.uint8)
    chw = x.float() / 255
    gray = torch.tensor([0.2989, 0.587, 0.114]).view(1, 3, 1, 1)

    def hue_of(img: torch.Tensor) -> torch.Tensor:
        rgb = img.permute(0, 2, 3, 1).reshape(-1, 3).tolist()
        return torch.tensor([colorsys.rgb_to_hsv(*p)[0] for p in rgb])

    for h in (0.03, -0.03, 0.01):
        got = finish_batch(x, torch.tensor([(1, 1, 1, h)] * 8), HALF, HALF) * 0.5 + 0.5
        turned = (hue_of(got) - hue_of(chw) + 0.5) % 1 - 0.5
        reference = (hue_of(TF.adjust_hue(chw, h)) - hue_of(chw) + 0.5) % 1 - 0.5
        assert abs(turned.median() - h) < 0.25 * abs(h), (h, turned.median())
        assert abs(reference.median() - h) < 0.25 * abs(h)  # what torchvision does
        inside = ((got > 0.001) & (got < 0.999)).all(1)  # pixels the final clamp left alone
        assert torch.allclose(((got - chw) * gray).sum(1)[inside], torch.tensor(0.0), atol=1e-5)


def test_batched_jitter_of_all_ops_but_hue_is_close_to_torchvisions_chain() -> None:
    """Clamped once at the end instead of after each op: close to torchvision's chain."""
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(8, 3, 24, 24, generator=g) * 255).to(torch.uint8)
    chw = x.float() / 255
    got = finish_batch(x, torch.tensor([(1.2, 0.8, 1.25, 0)] * 8), HALF, HALF) * 0.5 + 0.5
    want = TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(chw, 1.2), 0.8), 1.25)
    assert (got - want).abs().mean() < 0.01


def test_batched_jitter_clamps_per_channel_with_imagenet_statistics() -> None:
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    x = torch.randint(0, 256, (4, 3, 16, 20), dtype=torch.uint8)
    got = finish_batch(x, torch.tensor([(1.3, 1, 1, 0)] * 4), mean, std)
    want = TF.normalize(TF.adjust_brightness(x.float() / 255, 1.3), mean, std)
    assert torch.allclose(got, want, atol=2e-5)
