"""Image folders for the CNN task: both layouts, the report's transforms, photos as they come."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from PIL import Image

from hw2.data.image_data import (
    BadImageError,
    ImageDataModule,
    build_transform,
    load_rgb,
    to_rgb,
)
from hw2.data.image_folders import FOOD11_CLASSES, LayoutError, find_splits
from tests.helpers.photos import CLASSES, bad_files, make_folders, photo


def make_food11(root: Path, per_class: int = 1) -> Path:
    for folder in ("training", "validation", "evaluation"):
        for c in range(len(FOOD11_CLASSES)):
            for i in range(per_class):
                photo(root / folder / f"{c}_{i}.jpg", colour=(20 * c, 50, 90))
    return root


# ----- layouts -----------------------------------------------------------------------------

def test_folders_layout_names_and_seeded_val_split(tmp_path: Path) -> None:
    root = make_folders(tmp_path / "d", n_train=10)
    layout, splits = find_splits(root, "auto", val_fraction=0.2, seed=3)
    assert layout == "folders"
    assert splits.class_names == sorted(CLASSES)
    train, val = splits.samples["train"], splits.samples["val"]
    assert len(train) == 24 and len(val) == 6 and len(splits.samples["test"]) == 6
    assert not {p for p, _ in train} & {p for p, _ in val}
    assert sorted(y for _, y in val) == [0, 0, 1, 1, 2, 2]  # stratified per class
    for path, label in train + val:
        assert path.parent.name == splits.class_names[label]
    _, again = find_splits(root, "folders", val_fraction=0.2, seed=3)
    assert again.samples["val"] == val
    _, other = find_splits(root, "folders", val_fraction=0.2, seed=4)
    assert other.samples["val"] != val


def test_folders_layout_uses_val_folder(tmp_path: Path) -> None:
    root = make_folders(tmp_path / "d", n_train=4, val=2)
    _, splits = find_splits(root)
    assert len(splits.samples["train"]) == 12 and len(splits.samples["val"]) == 6


def test_food11_layout_names_and_labels(tmp_path: Path) -> None:
    root = make_food11(tmp_path / "food11", per_class=2)
    (root / "training" / "notes.txt").write_text("not an image, ignored")
    layout, splits = find_splits(root)
    assert layout == "food11"
    assert splits.class_names == list(FOOD11_CLASSES)
    assert splits.class_names[6] == "Noodles/Pasta" and len(splits.class_names) == 11
    for split in ("train", "val", "test"):
        assert sorted({y for _, y in splits.samples[split]}) == list(range(11))
        for path, label in splits.samples[split]:
            assert path.name.startswith(f"{label}_")


def test_datamodule_model_kwargs(tmp_path: Path) -> None:
    dm = ImageDataModule(str(make_folders(tmp_path / "d")), image_size=32, num_workers=0)
    dm.setup("fit")
    assert dm.model_kwargs() == {"num_classes": 3, "class_names": sorted(CLASSES),
                                 "image_size": 32, "resize": None, "eval_resize": None,
                                 "jpeg_draft": False,
                                 "mean": [0.5] * 3,
                                 "std": [0.5] * 3}
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape[1:] == (3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64


# ----- bad layouts -------------------------------------------------------------------------

def test_missing_split_names_path_and_layout(tmp_path: Path) -> None:
    root = make_folders(tmp_path / "d", n_test=0)
    with pytest.raises(LayoutError, match=r"missing split: .*d/test.*train/<class>"):
        find_splits(root)
    food = make_food11(tmp_path / "f")
    for p in (food / "evaluation").iterdir():
        p.unlink()
    (food / "evaluation").rmdir()
    with pytest.raises(LayoutError, match=r"missing split: .*evaluation.*Food-11 layout"):
        find_splits(food)
    with pytest.raises(LayoutError, match=r"neither training/ .* nor train/"):
        find_splits(tmp_path)  # no layout at all
    with pytest.raises(LayoutError, match=r"data.root=.*nowhere is not a directory"):
        find_splits(tmp_path / "nowhere")


def test_empty_class_folder_is_named(tmp_path: Path) -> None:
    root = make_folders(tmp_path / "d")
    (root / "train" / "empty_class").mkdir()
    with pytest.raises(LayoutError, match=r"empty class folder: .*train/empty_class"):
        find_splits(root)


def test_bad_food11_name_and_unknown_test_class(tmp_path: Path) -> None:
    food = make_food11(tmp_path / "f")
    photo(food / "training" / "11_0.jpg")
    with pytest.raises(LayoutError, match=r"11_0.jpg: name is not <class>_<id>"):
        find_splits(food)
    root = make_folders(tmp_path / "d")
    photo(root / "test" / "pizza" / "0.jpg")
    with pytest.raises(LayoutError, match=r"class 'pizza' is not a class"):
        find_splits(root)


# ----- transforms --------------------------------------------------------------------------

def half_black_half_white(size: int = 32) -> Image.Image:
    image = Image.new("RGB", (size, size), (255, 255, 255))
    image.paste((0, 0, 0), (0, 0, size // 2, size))
    return image


def test_eval_transform_shape_normalisation_no_flip() -> None:
    t = build_transform(32, train=False)
    for _ in range(5):
        x = t(half_black_half_white())
        assert x.shape == (3, 32, 32)
        assert torch.all(x[:, :, :16] == -1) and torch.all(x[:, :, 16:] == 1)  # (p-0.5)/0.5


def test_train_transform_flips_sometimes() -> None:
    t = build_transform(32, train=True)
    torch.manual_seed(0)
    left = [float(t(half_black_half_white())[:, :, :16].mean()) for _ in range(40)]
    assert set(left) == {-1.0, 1.0}


def test_centre_crop_and_resize() -> None:
    image = Image.new("RGB", (100, 60), (255, 255, 255))
    padded = build_transform(64, train=False)(image)  # crop larger than the photo: zero padding
    assert padded.shape == (3, 64, 64) and padded[:, 0].eq(-1).all() and padded[:, 32].eq(1).all()
    resized = build_transform(32, train=False, resize=40)(image)
    assert resized.shape == (3, 32, 32) and resized.eq(1).all()
    strong = build_transform(32, train=True, augment="strong")(image)
    assert strong.shape == (3, 32, 32)
    # strong after a resize: random crops of the resized photo at the asked size
    half = half_black_half_white()
    torch.manual_seed(0)
    crops = [build_transform(16, train=True, resize=20, augment="strong")(half)
             for _ in range(20)]
    assert all(c.shape == (3, 16, 16) for c in crops)
    assert len({round(float(c.mean()), 3) for c in crops}) > 5  # random crops, not one
    with pytest.raises(ValueError, match="data.augment"):
        build_transform(32, train=True, augment="heavy")  # type: ignore[arg-type]


def test_crop_scale_sets_how_much_of_the_photo_a_strong_crop_keeps() -> None:
    half = half_black_half_white()  # left half black, right half white

    def two_coloured(crop_scale: tuple[float, float]) -> int:
        """How many of 20 crops still hold both halves (their edge columns differ)."""
        torch.manual_seed(0)
        crops = [build_transform(16, train=True, resize=32, augment="strong",
                                 crop_scale=crop_scale)(half) for _ in range(20)]
        return sum(float((c[:, :, 0].mean() - c[:, :, -1].mean()).abs()) > 0.5 for c in crops)

    assert two_coloured((1.0, 1.0)) == 20   # the whole photo every time
    assert two_coloured((0.02, 0.05)) < 10  # small patches: mostly one colour
    with pytest.raises(ValueError, match="data.crop_scale"):
        build_transform(32, train=True, augment="strong", crop_scale=(0.5, 0.2))


# ----- photos as they come -----------------------------------------------------------------

@pytest.mark.parametrize(("mode", "colour", "fmt"), [
    ("L", 128, "JPEG"), ("CMYK", (0, 255, 255, 0), "JPEG"), ("P", 5, "PNG"),
    ("RGBA", (10, 200, 10, 255), "PNG"), ("LA", (90, 255), "PNG"), ("I;16", 40000, "PNG"),
])
def test_any_mode_becomes_rgb(tmp_path: Path, mode: str, colour, fmt: str) -> None:
    path = photo(tmp_path / f"x.{fmt.lower()}", mode=mode, colour=colour, fmt=fmt)
    image = load_rgb(path)
    assert image.mode == "RGB" and image.size == (48, 40)
    x = build_transform(32, train=False)(image)
    assert x.shape == (3, 32, 32)


def test_cmyk_red_stays_red_and_transparent_goes_white(tmp_path: Path) -> None:
    red = load_rgb(photo(tmp_path / "c.jpg", mode="CMYK", colour=(0, 255, 255, 0)))
    r, g, b = red.getpixel((10, 10))
    assert r > 200 and g < 60 and b < 60
    clear = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    assert to_rgb(clear).getpixel((3, 3)) == (255, 255, 255)


def test_truncated_and_non_image_files_are_named(tmp_path: Path) -> None:
    root = make_folders(tmp_path / "d")
    truncated, text = bad_files(root)
    for path in (truncated, text):
        with pytest.raises(BadImageError, match=rf"{path.name}: cannot decode.*skip_bad_images"):
            load_rgb(path)
    dm = ImageDataModule(str(root), image_size=32, num_workers=0)
    dm.setup("fit")
    dataset = dm.datasets["train"]
    index = [i for i, (p, _) in enumerate(dataset.samples) if p == text]
    with pytest.raises(BadImageError, match="zz_not_an_image.jpg"):
        dataset[index[0]]


def test_skip_bad_images_warns_once_with_count(tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    root = make_folders(tmp_path / "d")
    truncated, text = bad_files(root)
    dm = ImageDataModule(str(root), image_size=32, num_workers=0, skip_bad_images=True)
    with caplog.at_level(logging.WARNING, logger="hw2.data.image_data"):
        dm.setup("fit")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipped 2 unreadable" in warnings[0].getMessage()
    kept = {p for ds in dm.datasets.values() for p, _ in ds.samples}
    assert truncated not in kept and text not in kept and len(kept) == 15 + 6
    for ds in dm.datasets.values():
        for i in range(len(ds)):
            ds[i]


def test_draft_decoding_with_resize(tmp_path: Path) -> None:
    path = photo(tmp_path / "big.jpg", size=(400, 300))
    assert min(load_rgb(path, min_side=64).size) >= 64
    assert load_rgb(path, min_side=64).size[0] < 400  # decoded at a reduced scale
    dm = ImageDataModule(str(make_folders(tmp_path / "d")), image_size=16, resize=16,
                         num_workers=0, jpeg_draft=True)
    dm.setup()
    assert dm.datasets["train"][0][0].shape == (3, 16, 16)
    assert dm.datasets["train"].min_side == 16
    whole = ImageDataModule(str(make_folders(tmp_path / "w")), image_size=16, resize=16)
    whole.setup()  # the default: decoded whole, as torchvision's ImageFolder does
    assert whole.datasets["train"].min_side is None
    assert whole.datasets["train"][0][0].shape == (3, 16, 16)


def framed(path: Path, size: int = 64, border: int = 8) -> Path:
    """A white PNG with a black frame `border` px wide: a centre crop shows the frame or not."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (size, size), (0, 0, 0))
    image.paste((255, 255, 255), (border, border, size - border, size - border))
    image.save(path)
    return path


def test_eval_resize_zooms_the_eval_crop_and_travels_with_the_checkpoint(tmp_path: Path) -> None:
    root = make_folders(tmp_path / "d")
    framed(root / "test" / CLASSES[0] / "framed.png")
    same = ImageDataModule(str(root), image_size=32, resize=32, jpeg_draft=True)
    same.setup()  # eval_resize null: evaluated as resized for training (the whole frame)
    assert same.model_kwargs()["eval_resize"] == 32 and same.datasets["test"].min_side == 32
    zoom = ImageDataModule(str(root), image_size=32, resize=32, eval_resize=64, jpeg_draft=True)
    zoom.setup()
    assert zoom.model_kwargs()["eval_resize"] == 64
    assert zoom.datasets["train"].min_side == 32 and zoom.datasets["test"].min_side == 64
    index = [p.name for p, _ in zoom.datasets["test"].samples].index("framed.png")
    whole, centre = same.datasets["test"][index][0], zoom.datasets["test"][index][0]
    assert whole[:, 0].eq(-1).all() and whole[:, 16, 16].eq(1).all()  # frame at the edge
    assert centre.eq(1).all()  # 64 px resize, central 32: inside the frame
    assert zoom.datasets["train"][0][0].shape == (3, 32, 32)
    with pytest.raises(ValueError, match="data.eval_resize"):
        ImageDataModule(str(root), image_size=32, resize=32, eval_resize=0)

    # hw2.predict preprocesses as the checkpoint's eval_resize says
    import functools

    from hw2.inference import predict
    from hw2.models.classifier import ImageClassifier
    from hw2.models.food_cnn import FoodCNN

    torch.manual_seed(0)
    model = ImageClassifier(functools.partial(FoodCNN, channels=[4, 4, 4], kernel_size=3),
                            **zoom.model_kwargs(), channels_last=False).eval()
    ckpt = tmp_path / "zoom.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "pytorch-lightning_version": pl.__version__}, ckpt)
    [(_, top)] = list(predict(ckpt, root / "test" / CLASSES[0] / "framed.png", top_k=3))
    with torch.no_grad():
        expected = model(centre[None]).softmax(-1)[0]
    assert [name for name, _ in top] == [model.class_names[i] for i in expected.argsort(
        descending=True).tolist()]
    assert [p for _, p in top] == pytest.approx(expected.sort(descending=True).values.tolist(),
                                               abs=1e-5)
    # a checkpoint from before eval_resize: tested as resized for training (32 px, whole frame)
    hparams = {k: v for k, v in model.hparams.items() if k != "eval_resize"}
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": hparams,
                "pytorch-lightning_version": pl.__version__}, ckpt)
    [(_, top)] = list(predict(ckpt, root / "test" / CLASSES[0] / "framed.png", top_k=3))
    with torch.no_grad():
        expected = model(whole[None]).softmax(-1)[0]
    assert [p for _, p in top] == pytest.approx(expected.sort(descending=True).values.tolist(),
                                               abs=1e-5)
    # predict's eval_resize replaces the checkpoint's: the zoomed crop again
    [(_, top)] = list(predict(ckpt, root / "test" / CLASSES[0] / "framed.png", top_k=3,
                              eval_resize=64))
    with torch.no_grad():
        expected = model(centre[None]).softmax(-1)[0]
    assert [p for _, p in top] == pytest.approx(expected.sort(descending=True).values.tolist(),
                                               abs=1e-5)
    with pytest.raises(ValueError, match="eval_resize"):
        list(predict(ckpt, root / "test", eval_resize=0))


def test_eval_resize_list_tests_each_photo_at_each_size_and_averages_probabilities(
        tmp_path: Path) -> None:
    """`data.eval_resize=[32, 64]`: a (2, 3, 32, 32) sample per eval photo (the single-size
    crops, in order), the classifier's prediction is the mean of their probabilities, and the
    list travels with the checkpoint to hw2.predict; bad lists are named."""
    import functools

    from hw2.inference import predict
    from hw2.models.classifier import ImageClassifier
    from hw2.models.food_cnn import FoodCNN

    root = make_folders(tmp_path / "d")
    photo_path = framed(root / "test" / CLASSES[0] / "framed.png")
    kw = {"image_size": 32, "resize": 32, "jpeg_draft": True}
    both = ImageDataModule(str(root), eval_resize=[32, 64], **kw)
    both.setup()
    assert both.model_kwargs()["eval_resize"] == [32, 64]
    # decoded once, at a scale fit for the largest view; training photos as before
    assert both.datasets["test"].min_side == 64 and both.datasets["train"].min_side == 32
    assert both.datasets["train"][0][0].shape == (3, 32, 32)
    index = [p for p, _ in both.datasets["test"].samples].index(photo_path)
    views = both.datasets["test"][index][0]
    assert views.shape == (2, 3, 32, 32)
    for view, size in zip(views, (32, 64), strict=True):
        single = ImageDataModule(str(root), eval_resize=size, **kw)
        single.setup()
        assert torch.equal(view, single.datasets["test"][index][0])
    assert views[0][:, 0].eq(-1).all() and views[1].eq(1).all()  # frame seen, then not

    torch.manual_seed(0)
    model = ImageClassifier(functools.partial(FoodCNN, channels=[4, 4, 4], kernel_size=3),
                            **both.model_kwargs(), channels_last=False).eval()
    with torch.no_grad():
        per_view = model(views).softmax(-1)  # (2, C): each view alone
        assert not torch.allclose(per_view[0], per_view[1])
        averaged = model(views[None])[0]  # (1, 2, 3, H, W): log of the mean probability
    assert averaged.exp() == pytest.approx(per_view.mean(0), abs=1e-6)
    ckpt = tmp_path / "views.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "pytorch-lightning_version": pl.__version__}, ckpt)
    [(_, top)] = list(predict(ckpt, photo_path, top_k=3))
    assert [p for _, p in top] == pytest.approx(
        per_view.mean(0).sort(descending=True).values.tolist(), abs=1e-5)
    # predict's list override on a checkpoint tested at one size
    [(_, top)] = list(predict(ckpt, photo_path, top_k=3, eval_resize=[64, 64]))
    assert [p for _, p in top] == pytest.approx(
        per_view[1].sort(descending=True).values.tolist(), abs=1e-5)
    for bad in ([], [32, 0], [32, None]):
        with pytest.raises(ValueError, match=r"data.eval_resize must be .*list"):
            ImageDataModule(str(root), eval_resize=bad, **kw)
    with pytest.raises(ValueError, match="eval_resize"):
        list(predict(ckpt, photo_path, eval_resize=[0]))
