"""`python train.py task=cnn` end to end on a few tiny photos: metrics, checkpoint, and every
TensorBoard summary of the report read back from the event files; then test-only from it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from hw2.config import compose_config
from hw2.train import run
from tests.helpers.photos import CLASSES, make_photos

LAYERS = ("conv1", "conv2", "conv3", "fc")


def read_tags(run_dir: Path) -> dict[str, set[str]]:
    tags: dict[str, set[str]] = {"scalars": set(), "histograms": set(), "images": set()}
    files = sorted((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert files, f"no event file under {run_dir}"
    for f in files:
        acc = EventAccumulator(str(f), size_guidance={k: 0 for k in
                                                      ("scalars", "histograms", "images")})
        acc.Reload()
        for kind in tags:
            tags[kind] |= set(acc.Tags()[kind])
    return tags


COMMON = ["task=cnn", "data.image_size=32", "data.num_workers=0", "data.batch_size=4",
          "trainer.accelerator=cpu", "trainer.max_epochs=2", "trainer.log_every_n_steps=1",
          "++trainer.limit_train_batches=2", "++trainer.limit_val_batches=1",
          "trainer.num_sanity_val_steps=0", "trainer.enable_model_summary=false"]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_cnn_trains_logs_report_figures_and_tests_from_checkpoint(
        tmp_path: Path, compose_cfg: Callable) -> None:
    data = make_photos(tmp_path / "photos")
    cfg = compose_cfg([*COMMON, f"data.root={data}", "model.l2=1e-3"])
    assert cfg.callbacks.model_checkpoint.monitor == "val/acc"
    metrics = run(cfg)
    for key in ("train/loss", "train/acc", "val/loss", "val/acc", "test/loss", "test/acc"):
        assert key in metrics, key

    run_dir = Path(cfg.paths.output_dir)
    tags = read_tags(run_dir)
    for key in ("train/loss", "train/acc", "val/loss", "val/acc", "test/loss", "test/acc",
                "train/l2_penalty"):
        assert key in tags["scalars"], key
    assert {f"test_per_class/{c}" for c in CLASSES} <= tags["scalars"]
    assert {f"params/{layer}/{p}" for layer in LAYERS for p in ("weight", "bias")} \
        <= tags["histograms"]
    assert {"test/misclassified", "test/confusion_matrix", "test/per_class_accuracy",
            "feature_maps/input/0", "feature_maps/conv1/0", "feature_maps/conv2/0",
            "feature_maps/conv3/0", "feature_maps/conv1/1"} <= tags["images"]

    # per-epoch curves: one point per epoch, so runs with/without L2 overlay
    # every event file of the run: their names end in a per-process counter (".9" sorts after
    # ".10"), so "the first file by name" is not always the training one
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    assert len(acc.Scalars("train/loss")) == 2 and len(acc.Scalars("val/acc")) == 2

    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    best = [p for p in (run_dir / "checkpoints").iterdir() if p.name != "last.ckpt"]
    assert len(best) == 1
    # test-only rebuilds the network from the checkpoint alone (model.net here differs)
    test_only = compose_cfg([*COMMON, f"data.root={data}", "train=false", f"ckpt_path={best[0]}",
                             "model.net.channels=[4,4,4]"], output_dir=tmp_path / "test_only")
    again = run(test_only)
    assert again["test/acc"] == metrics["test/acc"] and "train/loss" not in again
    # hw2.predict preprocesses as the checkpoint says: its top-1 matches the test accuracy
    from hw2.inference import predict

    results = dict(predict(best[0], data / "test", top_k=3))
    assert len(results) == 6 and all(len(r) == 3 for r in results.values())
    hits = [r[0][0] == path.parent.name for path, r in results.items()]
    assert sum(hits) / len(hits) == pytest.approx(metrics["test/acc"])
    assert "test/confusion_matrix" in read_tags(tmp_path / "test_only")["images"]


@pytest.mark.parametrize("model", ["food_cnn", "food_cnn_bn", "resnet18"])
def test_model_configs_build_from_data_kwargs(compose_cfg: Callable, model: str) -> None:
    from hydra.utils import instantiate

    from hw2.callbacks.image_figures import default_layers

    cfg = compose_cfg(["task=cnn", f"model={model}"])
    assert cfg.model.optimizer.weight_decay == 0 and cfg.model.l2 == 0
    net = instantiate(cfg.model, num_classes=11, class_names=[str(i) for i in range(11)],
                      image_size=64, _convert_="all")
    out = net(torch.zeros(2, 3, 64, 64))
    assert out.shape == (2, 11)
    layers = default_layers(net.net)
    assert layers[:1] == ["conv1"] and (model != "resnet18" or "layer4" in layers)


def test_data_configs_and_experiment(compose_cfg: Callable, monkeypatch) -> None:
    monkeypatch.setenv("HW2_DATA_DIR", "/somewhere/data")
    for name, root, layout in (("food10_small", "/somewhere/data/food10_small", "folders"),
                               ("food11", "/somewhere/data/food11", "food11"),
                               ("food101", "/somewhere/data", "food101")):
        cfg = compose_cfg(["task=cnn", f"data={name}"])
        assert (cfg.data.root, cfg.data.layout, cfg.data.download) == (root, layout, False)
    cfg = compose_cfg(["experiment=cnn_l2"])
    assert cfg.task_name == "cnn" and cfg.model.l2 > 0
    assert cfg.callbacks.model_checkpoint.mode == "max"


def test_food101_is_never_downloaded_unless_asked(tmp_path: Path) -> None:
    from hw2.data.image_data import ImageDataModule
    from hw2.data.image_folders import LayoutError

    dm = ImageDataModule(str(tmp_path), layout="food101", num_workers=0)
    dm.prepare_data()  # download: false -> nothing fetched
    with pytest.raises(LayoutError, match=r"Food-101 not found .*data.download=true"):
        dm.setup("fit")
    assert not any(tmp_path.iterdir())


def make_separable(root: Path, n: int = 8) -> Path:
    """3 classes told apart by colour alone (red, green, blue 16x16 photos, a little noise)."""
    gen = torch.Generator().manual_seed(0)
    for c, name in enumerate(CLASSES):
        for split, count in (("train", n), ("val", 2), ("test", 4)):
            for i in range(count):
                pixels = torch.randint(0, 60, (16, 16, 3), generator=gen, dtype=torch.uint8)
                pixels[..., c] += 180
                path = root / split / name / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels.numpy()).save(path)
    return root


@pytest.mark.slow
def test_cnn_learns_a_separable_task(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Through train.py's whole path: a colour-coded task must be learned (chance is 1/3)."""
    data = make_separable(tmp_path / "photos")
    cfg = compose_config(["task=cnn", f"data.root={data}", "data.image_size=16",
                          "data.batch_size=8", "trainer.accelerator=cpu", "trainer.max_epochs=10",
                          "trainer.num_sanity_val_steps=0", "trainer.enable_model_summary=false",
                          "trainer.precision=32", "model.channels_last=false",
                          "model.optimizer.lr=1e-2", "model.net.channels=[8,8,8]",
                          "callbacks=none", "logger=csv", "+trainer.enable_progress_bar=false",
                          f"paths.root_dir={tmp_path}"], tmp_path / "run")
    with caplog.at_level(logging.INFO, logger="hw2.train"):
        metrics = run(cfg)
    assert metrics["test/acc"] >= 0.9, metrics
    assert not (tmp_path / "run" / "checkpoints").exists()  # callbacks=none: no checkpoints
    assert "testing the last weights" in caplog.text  # test-after-fit says what it tests
    # callbacks=none is asked for: said at info level, not as a warning
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def test_no_validation_keeps_last_checkpoint_and_tests_last_weights(
        tmp_path: Path, caplog: pytest.LogCaptureFixture,
        recwarn: pytest.WarningsRecorder) -> None:
    """`data.val_fraction=0` (every photo trains): no best checkpoint and no per-epoch
    'monitored key' warning; last.ckpt is kept and the final weights are tested."""
    data = make_photos(tmp_path / "photos")
    cfg = compose_config([*COMMON, f"data.root={data}", "data.val_fraction=0", "logger=csv",
                          "trainer.precision=32", f"paths.root_dir={tmp_path}"], tmp_path / "run")
    with caplog.at_level(logging.INFO):
        metrics = run(cfg)
    assert "test/acc" in metrics and "val/acc" not in metrics
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["last.ckpt"]
    assert caplog.text.count("no validation data: no best checkpoint by val/acc") == 1
    assert "testing the last weights" in caplog.text
    assert not [w for w in recwarn if "could not find the monitored key" in str(w.message)]
    # no validation is asked for (val_fraction=0, as experiment=cnn_recipe): nothing warns
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING
                and r.name.startswith("hw2")], caplog.text


def test_train_py_takes_the_plain_loops_steps(tmp_path: Path, compose_cfg: Callable) -> None:
    """No learning tax: from the same initial weights and on the same batches (hw2's own
    loader), train.py with the default callbacks and loggers ends with the weights that a
    plain loop (forward, cross-entropy, backward, Adam step) reaches."""
    import pytorch_lightning as pl
    import torch.nn.functional as F

    from hw2.data.image_data import ImageDataModule
    from hw2.models.food_cnn import FoodCNN

    class Weights(pl.Callback):
        def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            self.first = {k: v.clone() for k, v in pl_module.net.state_dict().items()}

        def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            self.last = {k: v.clone() for k, v in pl_module.net.state_dict().items()}

    data = make_photos(tmp_path / "photos")
    cfg = compose_cfg(["task=cnn", f"data.root={data}", "data.image_size=32",
                       "data.batch_size=4", "data.val_fraction=0", "trainer.accelerator=cpu",
                       "trainer.max_epochs=3", "trainer.precision=32", "seed=7", "test=false",
                       "trainer.log_every_n_steps=1"])
    weights = Weights()
    run(cfg, extra_callbacks=[weights])

    net = FoodCNN(len(CLASSES), 32).to(memory_format=torch.channels_last)
    net.load_state_dict(weights.first)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    dm = ImageDataModule(str(data), image_size=32, val_fraction=0, batch_size=4)
    dm.setup("fit")  # PL_GLOBAL_SEED is still the run's: the same order and flips
    loader = dm.train_dataloader()
    steps = 0
    for epoch in range(3):
        loader.sampler.set_epoch(epoch)
        for x, y in loader:
            loss = F.cross_entropy(net(x.contiguous(memory_format=torch.channels_last)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
    assert steps == 3 * 5  # 18 photos in batches of 4: nothing dropped
    assert not torch.equal(weights.first["fc.weight"], weights.last["fc.weight"])
    for name, value in net.state_dict().items():
        torch.testing.assert_close(weights.last[name], value, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_multi_scale_eval_through_train_py(tmp_path: Path, compose_cfg: Callable) -> None:
    """`data.eval_resize=[32,48]`: validation and test see each photo at both sizes (averaged
    probabilities), the figures show single photos, and hw2.predict, reading the list from the
    checkpoint, scores what the test did."""
    data = make_photos(tmp_path / "photos")
    cfg = compose_cfg([*COMMON, f"data.root={data}", "data.resize=32",
                       "data.eval_resize=[32,48]"])
    metrics = run(cfg)
    assert {"val/acc", "test/acc", "test/loss"} <= set(metrics)
    run_dir = Path(cfg.paths.output_dir)
    assert {"test/confusion_matrix", "feature_maps/input/0",
            "feature_maps/conv1/0"} <= read_tags(run_dir)["images"]
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=True)["hyper_parameters"]["eval_resize"] == [32, 48]
    from hw2.inference import predict

    results = dict(predict(ckpt, data / "test", top_k=1))
    hits = [r[0][0] == path.parent.name for path, r in results.items()]
    test_only = compose_cfg([*COMMON, f"data.root={data}", "data.resize=32",
                             "data.eval_resize=[32,48]", "train=false", f"ckpt_path={ckpt}"],
                            output_dir=tmp_path / "test_only")
    assert sum(hits) / len(hits) == pytest.approx(run(test_only)["test/acc"])
