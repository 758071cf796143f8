"""Every private or undocumented library internal hw2 relies on, in one place.

Each function names the internal it touches and why no public API does the job;
`tests/test_compat.py` exercises each one against the installed libraries, so an upgrade that
moves an internal fails there, not in the middle of a run. Lightning is pinned to the minor
versions those tests ran on (pyproject.toml).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint

# --- Lightning ---------------------------------------------------------------------------------


def validation_has_run(trainer: pl.Trainer) -> bool:
    """Whether the fit loop has validated yet (`fit_loop.epoch_loop.val_loop._has_run`): before
    the first validation a monitored metric is missing for a reason, not by mistake."""
    return bool(trainer.fit_loop.epoch_loop.val_loop._has_run)


def completed_batches(trainer: pl.Trainer) -> int:
    """Training batches the current epoch has completed
    (`fit_loop.epoch_loop.batch_progress.current.completed`): the exact mid-epoch position a
    checkpoint records for resuming a loader."""
    return int(trainer.fit_loop.epoch_loop.batch_progress.current.completed)


def batch_index(trainer: pl.Trainer) -> int:
    """The index of the training batch being run (`fit_loop.epoch_loop.batch_idx`)."""
    return int(trainer.fit_loop.epoch_loop.batch_idx)


def batches_that_stepped(checkpoint: Mapping[str, Any]) -> int | None:
    """The logger step a checkpoint was taken at (`_batches_that_stepped` of the fit loop's
    epoch loop state), for TensorBoard's `purge_step` on resume; None when absent."""
    loop = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.state_dict", {})
    stepped = loop.get("_batches_that_stepped")
    return None if stepped is None else int(stepped)


class CheckpointHooks(ModelCheckpoint):
    """`ModelCheckpoint` with two public hooks over its private save methods
    (`_save_topk_checkpoint`, `_save_checkpoint`), which Lightning offers no other way to veto:
    `skip_topk` (return True to rank nothing this time) and `may_save` (return False to write
    nothing to `filepath`)."""

    def skip_topk(self, trainer: pl.Trainer, monitor_candidates: dict[str, Any]) -> bool:
        return False

    def may_save(self, trainer: pl.Trainer, filepath: str) -> bool:
        return True

    def _save_topk_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict) -> None:
        if not self.skip_topk(trainer, monitor_candidates):
            super()._save_topk_checkpoint(trainer, monitor_candidates)

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        if self.may_save(trainer, filepath):
            super()._save_checkpoint(trainer, filepath)


def stop_fit_now(trainer: pl.Trainer) -> None:
    """Make `trainer.should_stop` end the fit at once even before `min_epochs`/`min_steps`
    (`fit_loop.min_epochs`, `fit_loop.epoch_loop.min_steps`, which Lightning checks before it
    honours `should_stop`): an Optuna-pruned run is not to train its minimum first."""
    trainer.fit_loop.min_epochs = 0
    trainer.fit_loop.epoch_loop.min_steps = None
    trainer.should_stop = True


def keep_csv_rows(writer: Any, rows: list[dict[str, str]]) -> None:
    """Put `rows` back in front of a fresh CSV `ExperimentWriter` (its `metrics` and
    `metrics_keys` attributes): Lightning's CSV logger deletes metrics.csv when it starts, and
    a resumed run keeps the rows logged before its checkpoint."""
    if rows:
        writer.metrics_keys = sorted(rows[0].keys())
        writer.metrics = [{k: v for k, v in r.items() if v != ""} for r in rows] + writer.metrics


# --- TensorBoard -------------------------------------------------------------------------------


def set_tensorboard_checksum(masked_crc32c: Callable[[bytes], int]) -> None:
    """Replace the masked CRC32C TensorBoard's `RecordWriter.write` looks up per record
    (`tensorboard.summary.writer.record_writer.masked_crc32c`): without TensorFlow it is pure
    Python, holding the GIL on the writer thread."""
    from tensorboard.summary.writer import record_writer

    if not callable(getattr(record_writer, "masked_crc32c", None)):
        raise AttributeError("tensorboard.summary.writer.record_writer.masked_crc32c is gone")
    record_writer.masked_crc32c = masked_crc32c


# --- torch / torchvision -----------------------------------------------------------------------


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (AVX512-BF16 or AMX):
    `torch.ops.mkldnn._is_mkldnn_bf16_supported`, the check torch's own tests use."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def food101_samples(dataset: Any) -> list[tuple[Path, int]]:
    """(photo path, label) pairs of a torchvision `Food101` split (`_image_files`, `_labels`),
    without opening every photo as `dataset[i]` would."""
    return [(Path(p), int(y)) for p, y in zip(dataset._image_files, dataset._labels, strict=True)]


# --- Hydra -------------------------------------------------------------------------------------


def set_hydra_config_plain(hydra_cfg: Mapping[str, Any]) -> None:
    """Make `HydraConfig.get()` serve a plain (pickled, resolved) copy of a job's `hydra`
    node in a child process: `HydraConfig.set_config` wants Hydra's typed node, which does not
    survive pickling, so the singleton's `cfg` attribute is set directly."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    HydraConfig.instance().cfg = OmegaConf.create({"hydra": dict(hydra_cfg)})
