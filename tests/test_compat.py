"""Each private library internal of `hw2.utils.compat`, exercised against the installed
libraries: an upgrade that moves one fails here."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from hw2.utils import compat


class Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", torch.nn.functional.mse_loss(self.layer(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader(n: int = 8) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(n, 2, generator=g), torch.randn(n, 1,
                                                                               generator=g)),
                      batch_size=2)


class Probe(pl.Callback):
    """Records what compat reads at each training batch."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int, int, bool]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.seen.append((batch_idx, compat.batch_index(trainer),
                          compat.completed_batches(trainer), compat.validation_has_run(trainer)))


class Veto(compat.CheckpointHooks):
    def __init__(self, allow: bool, **kwargs) -> None:
        super().__init__(**kwargs)
        self.allow, self.asked, self.topk_asked = allow, [], 0

    def skip_topk(self, trainer, monitor_candidates) -> bool:
        self.topk_asked += 1
        return False

    def may_save(self, trainer, filepath) -> bool:
        self.asked.append(filepath)
        return self.allow


def fit(tmp_path: Path, callbacks: list, **kwargs) -> pl.Trainer:
    trainer = pl.Trainer(default_root_dir=tmp_path, max_epochs=2, logger=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=callbacks, num_sanity_val_steps=0, **kwargs)
    trainer.fit(Tiny(), train_dataloaders=loader(), val_dataloaders=loader(4))
    return trainer


def test_loop_counters_and_validation_flag(tmp_path: Path) -> None:
    probe = Probe()
    fit(tmp_path, [probe], enable_checkpointing=False)
    # 4 batches per epoch: the index, and the batches completed before this one ends (a
    # checkpoint taken here resumes after them); validation only after the first epoch's end
    assert [s[:3] for s in probe.seen] == [(i, i, i) for i in range(4)] * 2
    assert [s[3] for s in probe.seen] == [False] * 4 + [True] * 4


def test_checkpoint_hooks_veto_and_allow_saving(tmp_path: Path) -> None:
    vetoed = Veto(allow=False, dirpath=tmp_path / "no", monitor="val/loss", save_last=True)
    fit(tmp_path / "a", [vetoed])
    assert vetoed.asked and vetoed.topk_asked  # both private methods still route through
    assert not list((tmp_path / "no").glob("*.ckpt"))
    allowed = Veto(allow=True, dirpath=tmp_path / "yes", monitor="val/loss", save_last=True)
    fit(tmp_path / "b", [allowed])
    assert (tmp_path / "yes" / "last.ckpt").is_file()
    asked = {Path(p).name for p in allowed.asked}
    assert {p.name for p in (tmp_path / "yes").glob("*.ckpt")} <= asked


class StopAtFirstValidation(pl.Callback):
    def __init__(self, stop: Callable[[pl.Trainer], None]) -> None:
        self.stop = stop

    def on_validation_end(self, trainer, pl_module) -> None:
        self.stop(trainer)


def test_stop_fit_now_stops_before_min_epochs(tmp_path: Path) -> None:
    """With min_epochs=2 Lightning ignores a plain should_stop mid-epoch (8 steps run);
    stop_fit_now ends the fit after the first validation (at step 2)."""
    def plain(trainer: pl.Trainer) -> None:
        trainer.should_stop = True

    kwargs = {"min_epochs": 2, "val_check_interval": 2, "enable_checkpointing": False}
    assert fit(tmp_path / "a", [StopAtFirstValidation(plain)], **kwargs).global_step == 8
    assert fit(tmp_path / "b", [StopAtFirstValidation(compat.stop_fit_now)],
               **kwargs).global_step == 2


def test_batches_that_stepped_is_the_logger_step(tmp_path: Path) -> None:
    cb = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True)
    trainer = fit(tmp_path, [cb])
    state = torch.load(tmp_path / "ck" / "last.ckpt", weights_only=True)
    assert compat.batches_that_stepped(state) == trainer.global_step == 8
    assert compat.batches_that_stepped({}) is None


def test_keep_csv_rows_puts_old_rows_back(tmp_path: Path) -> None:
    from pytorch_lightning.loggers import CSVLogger

    logger = CSVLogger(tmp_path, name="", version="v")
    writer = logger.experiment
    compat.keep_csv_rows(writer, [{"step": "0", "a": "1.0", "b": ""}])
    writer.log_metrics({"a": 2.0}, step=1)
    writer.save()
    with (Path(logger.log_dir) / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["step"], r["a"]) for r in rows] == [("0", "1.0"), ("1", "2.0")]


def test_tensorboard_checksum_is_replaceable(tmp_path: Path) -> None:
    from tensorboard.summary.writer import record_writer
    from torch.utils.tensorboard import SummaryWriter

    original = record_writer.masked_crc32c
    calls = []

    def counting(data: bytes) -> int:
        calls.append(len(data))
        return original(data)

    compat.set_tensorboard_checksum(counting)
    try:
        with SummaryWriter(tmp_path) as w:
            w.add_scalar("x", 1.0, 0)
    finally:
        compat.set_tensorboard_checksum(original)
    assert calls  # RecordWriter.write looked the function up per record


def test_cpu_bf16_check_matches_the_cpu_flags() -> None:
    flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").exists() else []
    expected = "avx512_bf16" in flags or "amx_bf16" in flags
    assert compat.cpu_has_native_bf16() == expected


def test_food101_samples_lists_the_split(tmp_path: Path) -> None:
    from torchvision.datasets import Food101

    base = tmp_path / "food-101"
    (base / "meta").mkdir(parents=True)
    meta = {"apple_pie": ["apple_pie/1", "apple_pie/2"], "ramen": ["ramen/3"]}
    (base / "meta" / "train.json").write_text(json.dumps(meta))
    for cls, items in meta.items():
        (base / "images" / cls).mkdir(parents=True)
        for item in items:
            (base / "images" / f"{item}.jpg").write_bytes(b"")
    samples = compat.food101_samples(Food101(str(tmp_path), split="train"))
    assert samples == [(base / "images" / "apple_pie" / "1.jpg", 0),
                       (base / "images" / "apple_pie" / "2.jpg", 0),
                       (base / "images" / "ramen" / "3.jpg", 1)]


def test_plain_hydra_config_serves_hydra_config_get() -> None:
    from hydra.core.hydra_config import HydraConfig

    before = HydraConfig.instance().cfg
    try:
        compat.set_hydra_config_plain({"job": {"name": "train", "num": 3}, "verbose": False})
        assert HydraConfig.get().job.name == "train"
        assert HydraConfig.get().job.num == 3
    finally:
        HydraConfig.instance().cfg = before
