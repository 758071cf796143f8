"""Food photos for the CNN task: one LightningDataModule for Food-11, class-per-folder trees and
torchvision's Food-101, with the report's preprocessing and photos as they come (any mode)."""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import PIL
import torch
import torchvision
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from hw2.data.batch_augment import CropFlip, finish_batch
from hw2.data.image_folders import Layout, Sample, Splits, find_splits
from hw2.data.photo_cache import PhotoCache, open_or_build
from hw2.data.resumable import EpochSampler, ResumableLoader, ResumableTrainData, run_seed

log = logging.getLogger(__name__)

# the report's Normalize(0.5, 0.5, 0.5): pixels in [-1, 1]; callbacks undo it for display
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
AUGMENTS = ("report", "strong")
# `data.eval_resize`: one shorter side, or several (one view of the photo per size)
EvalResize = int | Sequence[int] | None


class BadImageError(OSError):
    """A file that PIL cannot decode (truncated, not an image)."""


DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode as RGB; transparent pixels go on white (not on whatever colour they hide)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit greyscale: scale to 8 bits
        image = image.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    return image.convert("RGB")


def load_rgb(path: str | Path, min_side: int | None = None) -> Image.Image:
    """Decode (libjpeg-turbo through PIL) to RGB. With `min_side`, JPEGs are decoded at the
    smallest 1/2, 1/4, 1/8 scale that keeps both sides >= min_side: much less work when the
    photo is resized down afterwards anyway."""
    try:
        with Image.open(path) as image:
            if min_side is not None and image.format == "JPEG":
                image.draft("RGB", (min_side, min_side))
            image.load()
            return to_rgb(image)
    except DECODE_ERRORS as e:
        raise bad_image(path, e) from e


def bad_image(path: str | Path, e: Exception) -> BadImageError:
    return BadImageError(f"{path}: cannot decode this image ({type(e).__name__}: {e}); "
                         "replace or remove the file, or set data.skip_bad_images=true")


def check_image(path: Path) -> str | None:
    """None if the file decodes completely (at 1/8 scale for JPEG: fast), else the reason."""
    try:
        with Image.open(path) as image:
            image.draft(image.mode, (1, 1))
            image.load()
    except DECODE_ERRORS as e:
        return f"{type(e).__name__}: {e}"
    return None


def resize_steps(resize: int | None) -> list[Callable[..., Any]]:
    """The shorter side resized to `resize` (nothing for None), as every path does it."""
    return [] if resize is None else [v2.Resize(resize, antialias=True)]


def build_transform(image_size: int, train: bool, resize: int | None = None,
                    augment: Literal["report", "strong"] = "report",
                    mean: Sequence[float] = MEAN, std: Sequence[float] = STD,
                    crop_scale: Sequence[float] = (0.35, 1.0)) -> v2.Compose:
    """The report's preprocessing: [Resize(shorter side)] -> CenterCrop -> RandomHorizontalFlip
    (training only) -> tensor in [0, 1] -> Normalize(0.5, 0.5). `strong` training adds a random
    resized crop (a `crop_scale` share of the area) and colour jitter instead of the centre crop."""
    if image_size < 1:
        raise ValueError(f"data.image_size must be >= 1, got {image_size}")
    if resize is not None and resize < 1:
        raise ValueError(f"data.resize must be >= 1 or null, got {resize}")
    if augment not in AUGMENTS:
        raise ValueError(f"data.augment={augment!r} is not one of {AUGMENTS}")
    if len(crop_scale) != 2 or not 0 < crop_scale[0] <= crop_scale[1] <= 1:
        raise ValueError(f"data.crop_scale must be [low, high] with 0 < low <= high <= 1, "
                         f"got {list(crop_scale)}")
    steps: list[Callable[..., Any]] = resize_steps(resize)
    if train and augment == "strong":  # crops of the (resized) photo that eval sees whole
        steps += [v2.RandomResizedCrop(image_size, scale=tuple(crop_scale), antialias=True),
                  v2.RandomHorizontalFlip(),
                  v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.03)]
    else:
        steps.append(v2.CenterCrop(image_size))
        if train:
            steps.append(v2.RandomHorizontalFlip())
    steps += [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True),
              v2.Normalize(list(mean), list(std))]
    return v2.Compose(steps)


def eval_sizes(eval_resize: EvalResize, key: str = "data.eval_resize") -> list[int | None]:
    """`eval_resize` as a list of shorter sides ([None]: no resize); bad values named."""
    if eval_resize is None:
        return [None]
    sizes = [eval_resize] if isinstance(eval_resize, int) else list(eval_resize)
    if not sizes or not all(isinstance(s, int) and s >= 1 for s in sizes):
        raise ValueError(f"{key} must be a size >= 1, a non-empty list of them or null, "
                         f"got {eval_resize!r}")
    return sizes


class Views:
    """Several eval transforms of one photo stacked as `(V, 3, H, W)`: the classifier
    averages their probabilities (multi-scale test-time augmentation)."""

    def __init__(self, transforms: Sequence[Callable[[Image.Image], torch.Tensor]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return torch.stack([t(image) for t in self.transforms])


def build_eval_transform(image_size: int, eval_resize: EvalResize,
                         mean: Sequence[float] = MEAN, std: Sequence[float] = STD
                         ) -> Callable[[Image.Image], torch.Tensor]:
    """The evaluation preprocessing: one view `(3, H, W)` per photo, or `(V, 3, H, W)` for a
    list of resizes (the same centre crop of the photo resized to each)."""
    views = [build_transform(image_size, False, size, mean=mean, std=std)
             for size in eval_sizes(eval_resize)]
    return views[0] if len(views) == 1 else Views(views)


def draft_side(eval_resize: EvalResize) -> int | None:
    """The smallest side a JPEG may be draft-decoded to for these eval resizes (the largest)."""
    sizes = eval_sizes(eval_resize)
    return None if sizes == [None] else max(sizes)  # type: ignore[type-var]


@contextlib.contextmanager
def sample_rng(epoch: int, i: int) -> Iterator[None]:
    """The global CPU generator seeded by (run seed, epoch, photo) inside the block: the random
    augmentation of a photo is the same whatever the loading order, workers or a resume."""
    with torch.random.fork_rng(devices=[]):
        # the CPU generator only: torch.manual_seed also queues a CUDA seed, and on a CUDA
        # build without an initialised GPU that records a stack trace (~0.3 ms per photo)
        torch.default_generator.manual_seed((run_seed() * 1_000_003 + epoch) * 1_000_003 + i)
        yield


class ImageSamples(Dataset):
    """`(path, label)` pairs decoded to RGB and transformed: `(3, s, s)` float tensor, label."""

    def __init__(self, samples: list[Sample], transform: Callable[[Image.Image], torch.Tensor],
                 min_side: int | None = None) -> None:
        self.samples, self.transform, self.min_side = samples, transform, min_side

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        if isinstance(key, int):
            path, label = self.samples[key]
            return self.transform(load_rgb(path, self.min_side)), label
        # (epoch, index) from EpochSampler: the random augmentation is seeded per sample and
        # epoch, so it is the same whatever the loading order, workers or a resume
        epoch, i = key
        path, label = self.samples[i]
        image = load_rgb(path, self.min_side)
        with sample_rng(epoch, i):
            return self.transform(image), label


def train_record(path: Path, resize: int | None, draft: bool) -> np.ndarray:
    """A training photo for the cache: decoded and resized as the PIL path's first step does,
    whole (random crops are drawn from all of it), `(H, W, 3)` uint8."""
    image = load_rgb(path, resize if draft else None)
    for step in resize_steps(resize):
        image = step(image)
    return np.asarray(image)


def eval_record(path: Path, image_size: int, sizes: Sequence[int | None], draft: int | None
                ) -> np.ndarray:
    """An evaluation photo for the cache: its views `(V, 3, S, S)` uint8, cropped exactly as
    `build_eval_transform` crops them (only the float conversion is left to do)."""
    image = load_rgb(path, draft)
    return np.stack([np.asarray(v2.Compose([*resize_steps(size), v2.CenterCrop(image_size)])(
        image)) for size in sizes]).transpose(0, 3, 1, 2)


def resized_bytes(path: Path, resize: int | None) -> int:
    """Upper bound of `train_record`'s size from the file header alone (no decoding)."""
    try:
        with Image.open(path) as image:
            w, h = image.size
    except DECODE_ERRORS as e:
        raise bad_image(path, e) from e
    if resize is not None:
        short, long = sorted((w, h))
        w, h = resize, int(resize * long / short) + 1
    return w * h * 3


DECODER = "".join(inspect.getsource(f) for f in (to_rgb, load_rgb, resize_steps, train_record,
                                                   eval_record))
VERSIONS = {"pillow": PIL.__version__, "torchvision": torchvision.__version__}


class CachedSamples(Dataset):
    """Photos from the photo cache as uint8 `(3, H, W)` (evaluation: `(V, 3, H, W)` views, V=1
    squeezed); training photos cropped and flipped by `augment`, with their jitter factors
    when it draws any. `ImageDataModule.on_after_batch_transfer` finishes the batches."""

    def __init__(self, samples: list[Sample], cache: PhotoCache,
                 augment: CropFlip | None = None) -> None:
        if len(cache) != len(samples):
            raise ValueError(f"{cache.path} holds {len(cache)} photos, not {len(samples)}")
        self.samples, self.cache, self.augment = samples, cache, augment

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, ...]:
        if isinstance(key, int):
            return self._item(key)
        epoch, i = key
        with sample_rng(epoch, i):
            return self._item(i)

    def _item(self, i: int) -> tuple[torch.Tensor, ...]:
        x, label = torch.from_numpy(self.cache[i]), self.samples[i][1]
        if self.augment is None:
            return (x[0] if len(x) == 1 else x), label
        x, factors = self.augment(x)
        return (x, label) if factors is None else (x, factors, label)


class ImageDataModule(ResumableTrainData):
    """Image folders (`layout: auto|food11|folders|food101`) -> train/val/test loaders."""

    def __init__(
        self,
        root: str,
        layout: Layout = "auto",
        image_size: int = 512,
        resize: int | None = None,
        eval_resize: EvalResize = None,
        augment: Literal["report", "strong"] = "report",
        crop_scale: Sequence[float] = (0.35, 1.0),
        val_fraction: float = 0.1,
        split_seed: int = 0,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        skip_bad_images: bool = False,
        jpeg_draft: bool = False,
        cache: bool = False,
        cache_dir: str | None = None,
        download: bool = False,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {num_workers}")
        if eval_resize is not None:  # plain ints: they go into the checkpoint
            sizes = eval_sizes(eval_resize)
            eval_resize = sizes[0] if len(sizes) == 1 else sizes
        self.root = Path(root).expanduser()
        self.layout = layout
        self.image_size, self.resize, self.augment = image_size, resize, augment
        # random resized crops show objects larger than a centre crop of the same photo does;
        # a larger eval resize before the same centre crop matches them (FixRes, Touvron 2019);
        # several sizes: each photo is evaluated at each, probabilities averaged (multi-scale)
        self.eval_resize: int | list[int] | None = resize if eval_resize is None else eval_resize
        self.crop_scale = tuple(crop_scale)
        self.transforms = {"train": build_transform(image_size, True, resize, augment,
                                                    crop_scale=crop_scale),
                           "eval": build_eval_transform(image_size, self.eval_resize)}
        self.val_fraction, self.split_seed = val_fraction, split_seed
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.skip_bad_images, self.download = skip_bad_images, download
        self.jpeg_draft = jpeg_draft
        if cache and not cache_dir:
            raise ValueError("data.cache=true needs data.cache_dir (paths.cache_dir): the folder "
                             "that keeps the decoded photos")
        self.cache, self.cache_dir = cache, cache_dir
        self.splits: Splits | None = None
        self.datasets: dict[str, ImageSamples | CachedSamples] = {}

    def prepare_data(self) -> None:
        if self.layout == "food101" and self.download:
            find_splits(self.root, "food101", download=True)  # once, on the main process

    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:
            return
        layout, splits = find_splits(self.root, self.layout, self.val_fraction, self.split_seed,
                                     download=False)
        if self.skip_bad_images:
            self._drop_bad(splits)
        self.splits = splits
        # jpeg_draft: decode JPEGs no larger than needed when the shorter side is resized anyway.
        # Off by default: the pixels then differ from a whole decode + resize (torchvision's
        # ImageFolder), which changed training accuracy (bench/cnn_parity.py seed 0: 46.2 vs
        # 51.1 %); a speed knob for recipes that were measured with it
        min_sides = {"train": self.resize, "eval": draft_side(self.eval_resize)}
        for split, samples in splits.samples.items():
            kind = "train" if split == "train" else "eval"
            if self.cache:
                self.datasets[split] = self._cached(split, samples)
            else:
                self.datasets[split] = ImageSamples(samples, self.transforms[kind],
                                                    min_sides[kind] if self.jpeg_draft else None)
        counts = ", ".join(f"{k} {len(v)}" for k, v in splits.samples.items())
        log.info("%s: %s layout, %d classes, %s images", self.root, layout,
                 len(splits.class_names), counts)

    def _cached(self, split: str, samples: list[Sample]) -> CachedSamples:
        """A split from the photo cache (built on first use): training photos decoded and
        resized whole, evaluation photos as their finished crops."""
        files = [path for path, _ in samples]
        spec: dict[str, Any] = {"decoder": DECODER, **VERSIONS}
        if split == "train":
            spec.update(kind="train", resize=self.resize, draft=self.jpeg_draft)
            record = functools.partial(train_record, resize=self.resize, draft=self.jpeg_draft)
            estimate = functools.partial(resized_bytes, resize=self.resize)
            augment = CropFlip(self.image_size, self.augment == "strong", self.crop_scale)
        else:
            sizes = eval_sizes(self.eval_resize)
            draft = draft_side(self.eval_resize) if self.jpeg_draft else None
            spec.update(kind="eval", image_size=self.image_size, sizes=sizes, draft=draft)
            record = functools.partial(eval_record, image_size=self.image_size, sizes=sizes,
                                       draft=draft)
            view_bytes = len(sizes) * self.image_size ** 2 * 3
            estimate, augment = (lambda _: view_bytes), None
        assert self.cache_dir is not None
        cache = open_or_build(self.cache_dir, f"{self.root.name}-{split}", files, spec, record,
                              estimate)
        return CachedSamples(samples, cache, augment)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Cached batches (uint8) to normalised float on the model's device,
        jittered when the training loader drew jitter factors; others pass unchanged."""
        if not self.cache or not torch.is_tensor(batch[0]) or batch[0].dtype != torch.uint8:
            return batch
        if len(batch) == 3:
            x, factors, y = batch
            return finish_batch(x, factors, MEAN, STD), y
        x, y = batch
        return finish_batch(x, None, MEAN, STD), y

    def _drop_bad(self, splits: Splits) -> None:
        """Decode every file once; drop the broken ones with one warning that counts them."""
        bad: list[str] = []
        for split, samples in splits.samples.items():
            keep = []
            for path, label in samples:
                reason = check_image(path)
                if reason is None:
                    keep.append((path, label))
                else:
                    bad.append(f"{path} ({reason})")
            if not keep:
                raise ValueError(f"every image of the {split} split under {self.root} is "
                                 "unreadable")
            splits.samples[split] = keep
        if bad:
            shown = "; ".join(bad[:5]) + ("; ..." if len(bad) > 5 else "")
            log.warning("skipped %d unreadable image file(s) (data.skip_bad_images=true): %s",
                        len(bad), shown)

    @property
    def class_names(self) -> list[str]:
        assert self.splits is not None, "call setup() first"
        return list(self.splits.class_names)

    def model_kwargs(self) -> dict[str, Any]:
        """What the model needs from the data, and the evaluation preprocessing that its
        checkpoint keeps for `hw2.predict`."""
        names = self.class_names
        return {"num_classes": len(names), "class_names": names, "image_size": self.image_size,
                "resize": self.resize, "eval_resize": self.eval_resize,
                "jpeg_draft": self.jpeg_draft, "mean": list(MEAN), "std": list(STD)}

    def _loader(self, split: str, train: bool) -> DataLoader:
        if not self.datasets:
            self.setup()
        dataset = self.datasets[split]
        sampler = None
        if train:  # shuffled by (seed, epoch): a run resumed mid-epoch sees the same order
            epoch, skip = self.resume_point(len(dataset) // self.batch_size or 1)
            sampler = EpochSampler(len(dataset), True, run_seed(), epoch, skip * self.batch_size)
        return (ResumableLoader if train else DataLoader)(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            sampler=sampler,
            # as a plain loop: every photo every epoch; only a last batch of one photo is
            # dropped (batch norm cannot train on it)
            drop_last=(train and len(dataset) > self.batch_size
                       and len(dataset) % self.batch_size == 1),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader | list:
        if not self.datasets:
            self.setup()
        if "val" not in self.datasets:  # data.val_fraction=0: no validation, last weights tested
            return []
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)
