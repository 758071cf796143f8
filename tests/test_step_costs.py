"""What the per-step code does and no longer does: values are logged only on the logger's
steps, epoch metrics are logged once at their epoch's end as exact weighted means, parameter
histograms are TensorBoard's own, written with numpy's BLAS on one thread, and
`data.val_fraction=0` trains on every photo (as the plain loop of bench/cnn_parity.py)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from threadpoolctl import threadpool_info, threadpool_limits
from torch.utils.tensorboard import SummaryWriter

from hw2.callbacks.histograms import layer_tag
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
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "a GPU")  # run.json's device
    cfg = compose_cfg([*overrides, "trainer.precision=32", "train=false", "test=false"])
    with pytest.raises(ValueError, match="nothing to do"):
        run(cfg)
    assert calls == (["tuned"] if tuned else [])


def blas_threads() -> int:
    return max(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")


class BlasNotingWriter(SummaryWriter):
    """TensorBoard's writer, noting numpy's BLAS threads at each histogram it writes."""

    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        self.blas_threads: list[int] = []

    def add_histogram(self, *args: Any, **kwargs: Any) -> None:
        self.blas_threads.append(blas_threads())
        super().add_histogram(*args, **kwargs)


class BlasNotingLogger(TensorBoardLogger):
    def __init__(self, save_dir: Path) -> None:
        super().__init__(str(save_dir), name="", version="")
        self.writer = BlasNotingWriter(self.log_dir)

    @property
    def experiment(self) -> BlasNotingWriter:
        return self.writer


def test_parameter_histograms_are_tensorboards_own_with_numpy_blas_on_one_thread(
        tmp_path: Path) -> None:
    """ParamHistograms writes TensorBoard's own histogram of every finite parameter, with numpy's
    BLAS limited to one thread while it does (TensorBoard's sum of squares is a numpy `dot`,
    whose idle OpenBLAS threads would spin on the training's cores) and as it was afterwards."""
    from hw2.callbacks.histograms import ParamHistograms

    class Net(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = FoodCNN(3, 32)

    module = Net()
    with torch.no_grad():
        module.net.fc.bias[0] = float("nan")  # diverged: no histogram
    logger = BlasNotingLogger(tmp_path / "callback")
    trainer = pl.Trainer(logger=logger, accelerator="cpu", enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    with threadpool_limits(limits=2, user_api="blas"):  # numpy's pool on a 2-core machine
        ParamHistograms().on_train_epoch_end(trainer, module)
        assert blas_threads() == 2  # restored
    logger.writer.close()
    finite = {layer_tag(n): p for n, p in module.named_parameters() if p.isfinite().all()}
    assert "fc/bias" not in finite and len(finite) >= 6
    assert logger.writer.blas_threads == [1] * len(finite)

    reference = SummaryWriter(str(tmp_path / "reference"))
    for tag, p in finite.items():
        reference.add_histogram(tag, p.detach(), 0)
    reference.close()
    ours, theirs = (EventAccumulator(str(tmp_path / d), size_guidance={"histograms": 0})
                    for d in ("callback", "reference"))
    ours.Reload()
    theirs.Reload()
    assert sorted(ours.Tags()["histograms"]) == sorted(f"params/{t}" for t in finite)
    for tag in finite:
        (a,), (b,) = theirs.Histograms(tag), ours.Histograms(f"params/{tag}")
        assert b.step == a.step == 0
        a, b = a.histogram_value, b.histogram_value
        assert (b.min, b.max, b.num, b.sum) == (a.min, a.max, a.num, a.sum), tag
        assert list(b.bucket_limit) == list(a.bucket_limit) and list(b.bucket) == list(a.bucket)
        # one BLAS thread sums the squares in another order than two
        assert b.sum_squares == pytest.approx(a.sum_squares, rel=1e-12), tag
