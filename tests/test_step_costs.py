"""What the per-step code does and no longer does: values are logged only on the logger's
steps, epoch metrics are logged once at their epoch's end as exact weighted means, parameter
histograms are TensorBoard's own record computed without numpy's BLAS, and
`data.val_fraction=0` trains on every photo (as the plain loop of bench/cnn_parity.py)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from hw2.data.image_data import ImageDataModule
from hw2.data.image_folders import find_splits
from hw2.models.classifier import ImageClassifier
from hw2.models.food_cnn import FoodCNN
from hw2.train import run
from tests.helpers.photos import make_photos


def test_charlm_logs_train_values_only_on_logger_steps(tmp_path: Path, compose_cfg: Callable,
                                                       small_text: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, int]] = []
    original = pl.LightningModule.log

    def counting_log(self, name, *args, **kwargs):
        if name.startswith("train/") and self.trainer.training:
            calls.append((name, self.trainer.global_step))
        return original(self, name, *args, **kwargs)

    monkeypatch.setattr(pl.LightningModule, "log", counting_log)
    cfg = compose_cfg(["data=text_file", f"data.corpus.path={small_text}",
                       "model.net.hidden_size=16", "model.net.embedding_dim=8",
                       "model.net.num_layers=1",
                       "data.batch_size=2", "data.seq_len=16", "+trainer.max_steps=12",
                       "trainer.log_every_n_steps=4", "trainer.val_check_interval=1.0",
                       "trainer.num_sanity_val_steps=0", "test=false"])
    metrics = run(cfg)
    per_step = [(n, s) for n, s in calls if n in ("train/loss", "train/bpc")]
    # steps 3, 7, 11 (0-based) are the ones Lightning writes with log_every_n_steps=4
    assert sorted(per_step) == sorted((n, s) for n in ("train/loss", "train/bpc")
                                      for s in (3, 7, 11))
    events = EventAccumulator(str(Path(cfg.paths.output_dir) / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/bpc")] == [3, 7, 11]
    assert metrics["train/bpc"] == pytest.approx(events.Scalars("train/bpc")[-1].value)


def test_classifier_logs_epoch_metrics_at_epoch_end_not_per_step(
        tmp_path: Path, compose_cfg: Callable, monkeypatch: pytest.MonkeyPatch) -> None:
    """No `self.log` inside the training step (each costs ~0.3 ms of Lightning's Python);
    train/acc, train/loss and train/l2_penalty still land in TensorBoard once per epoch, with
    the accuracy of that epoch's own predictions."""
    hooks: list[str] = []
    original = pl.LightningModule.log

    def recording_log(self, name, *args, **kwargs):
        if name.startswith("train/"):
            hooks.append(self._current_fx_name or "")  # the hook Lightning is in
        return original(self, name, *args, **kwargs)

    monkeypatch.setattr(pl.LightningModule, "log", recording_log)
    data = make_photos(tmp_path / "photos")
    cfg = compose_cfg(["task=cnn", f"data.root={data}", "data.image_size=32",
                       "data.batch_size=4", "data.val_fraction=0", "trainer.accelerator=cpu",
                       "trainer.max_epochs=2", "model.l2=1e-3", "test=false",
                       "trainer.enable_model_summary=false"])
    right: list[list[int]] = [[], []]  # per epoch: right predictions so far, after each step

    class Predictions(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            # the step's own logits are gone; the metric's running counts give them back
            acc = pl_module.train_acc
            right[trainer.current_epoch].append(int(acc.tp.sum()))

    run(cfg, extra_callbacks=[Predictions()])
    assert hooks == ["on_train_epoch_end"] * 6  # 3 names x 2 epochs, none per step
    events = EventAccumulator(str(Path(cfg.paths.output_dir) / "tensorboard"))
    events.Reload()
    for key in ("train/acc", "train/loss", "train/l2_penalty"):
        assert [e.step for e in events.Scalars(key)] == [4, 9], key  # each epoch's last step
    for epoch, counts in enumerate(right):
        assert len(counts) == 5  # 18 photos in batches of 4
        assert events.Scalars("train/acc")[epoch].value == pytest.approx(counts[-1] / 18)


def test_classifier_epoch_metrics_are_weighted_over_unequal_batches(tmp_path: Path) -> None:
    data = make_photos(tmp_path / "photos")
    dm = ImageDataModule(str(data), image_size=32, batch_size=4, val_fraction=0.5)
    dm.setup("fit")
    assert len(dm.datasets["val"]) == 9  # batches of 4, 4, 1
    torch.manual_seed(0)
    model = ImageClassifier(functools.partial(FoodCNN), num_classes=3, image_size=32,
                            optimizer=functools.partial(torch.optim.Adam, lr=1e-3))
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False)
    got = trainer.validate(model, datamodule=dm, verbose=False)[0]
    model.eval()
    with torch.no_grad():
        x = torch.stack([dm.datasets["val"][i][0] for i in range(9)])
        y = torch.tensor([dm.datasets["val"][i][1] for i in range(9)])
        logits = model(x)
    assert got["val/loss"] == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-5)
    assert got["val/acc"] == pytest.approx(float((logits.argmax(1) == y).float().mean()))


def test_val_fraction_zero_trains_on_every_photo(tmp_path: Path, compose_cfg: Callable) -> None:
    data = make_photos(tmp_path / "photos")
    _, splits = find_splits(data, "folders", val_fraction=0.0)
    assert "val" not in splits.samples and len(splits.samples["train"]) == 18
    with pytest.raises(ValueError, match=r"data.val_fraction=1.0 must be in \[0, 1\)"):
        find_splits(data, "folders", val_fraction=1.0)
    cfg = compose_cfg(["task=cnn", f"data.root={data}", "data.image_size=32",
                       "data.batch_size=4", "data.val_fraction=0", "trainer.accelerator=cpu",
                       "trainer.max_epochs=1", "trainer.enable_model_summary=false"])
    seen: list[int] = []

    class Count(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append(len(batch[1]))

    metrics = run(cfg, extra_callbacks=[Count()])
    assert seen == [4, 4, 4, 4, 2]  # all 18 photos, the last partial batch kept
    assert "test/acc" in metrics and not any(k.startswith("val/") for k in metrics)


def test_weighted_mean_keeps_weights_without_nan_checks() -> None:
    from hw2.models.base import WeightedMean

    m = WeightedMean()
    m.update(torch.tensor(1.0), weight=4)
    m.update(torch.tensor(2.0), weight=torch.tensor(1.0))
    m.update(torch.tensor([3.0, 5.0]))  # elementwise, weight 1 each
    assert float(m.compute()) == pytest.approx((4 + 2 + 3 + 5) / 7)
    m.update(torch.tensor(float("nan")), weight=1)
    assert torch.isnan(m.compute())  # a diverged run shows, it is not silently dropped


def test_malloc_tuning_is_for_cpu_runs_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from hw2.utils.runtime import uses_cuda

    assert uses_cuda("gpu") and uses_cuda("cuda") and not uses_cuda("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert uses_cuda("auto")  # auto picks the GPU when there is one: no malloc tuning
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not uses_cuda("auto")


@pytest.mark.parametrize(("overrides", "has_gpu", "tuned"), [
    (["trainer.accelerator=cpu"], False, True),
    (["trainer.accelerator=cpu", "tune_malloc=false"], False, False),
    (["trainer.accelerator=gpu"], False, False),
    (["trainer.accelerator=cuda"], True, False),
    (["trainer.accelerator=auto"], True, False),
    (["trainer.accelerator=auto"], False, True),
], ids=["cpu", "cpu-off", "gpu", "cuda", "auto-with-gpu", "auto-without-gpu"])
def test_run_tunes_malloc_only_for_a_cpu_run(overrides: list[str], has_gpu: bool, tuned: bool,
                                            compose_cfg: Callable,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """`run` calls tune_malloc for a CPU run and never for one that will use a GPU (the
    process-wide malloc setting is a CPU measure). The run stops right after that decision:
    train=false test=false is refused before any data loads."""
    import hw2.train

    calls: list[str] = []
    monkeypatch.setattr(hw2.train, "tune_malloc", lambda: bool(calls.append("tuned")))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: has_gpu)  # the machine's GPU
    cfg = compose_cfg([*overrides, "trainer.precision=32", "train=false", "test=false"])
    with pytest.raises(ValueError, match="nothing to do"):
        run(cfg)
    assert calls == (["tuned"] if tuned else [])


def test_parameter_histograms_match_tensorboards_without_numpy_blas(tmp_path: Path) -> None:
    """hw2's histogram record is TensorBoard's `add_histogram` (default buckets) computed in
    torch (so without numpy's `dot`, whose OpenBLAS threads spin: see add_histogram): the same
    buckets, counts, min, max, count and sums as TensorBoard's own, so its dashboards and
    hw2.report read them alike."""
    from torch.utils.tensorboard import SummaryWriter

    from hw2.callbacks.histograms import add_histogram

    g = torch.Generator().manual_seed(0)
    cases = {"conv": torch.randn(32, 16, 5, 5, generator=g) * 0.05,
             "positive": torch.rand(100, generator=g) + 3, "zeros": torch.zeros(7),
             "single": torch.tensor([-2.5]), "tiny": torch.tensor([0.0, 1e-13, -1e-13, 5.0])}
    writer = SummaryWriter(str(tmp_path))
    for name, values in cases.items():
        writer.add_histogram(f"tensorboard/{name}", values, 3)
        add_histogram(writer, f"hw2/{name}", values, 3)
    writer.close()
    events = EventAccumulator(str(tmp_path), size_guidance={"histograms": 0})
    events.Reload()
    for name in cases:
        (theirs,), (ours,) = (events.Histograms(f"{who}/{name}") for who in ("tensorboard", "hw2"))
        assert ours.step == theirs.step == 3
        a, b = theirs.histogram_value, ours.histogram_value
        assert (b.min, b.max, b.num, b.sum) == (a.min, a.max, a.num, a.sum), name
        assert b.sum_squares == pytest.approx(a.sum_squares, rel=1e-12), name
        assert list(b.bucket_limit) == list(a.bucket_limit), name
        assert list(b.bucket) == list(a.bucket), name
