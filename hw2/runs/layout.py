"""Where a run directory keeps its checkpoints, and which of them is the best. Without
Lightning (torch only to read last.ckpt), so that reading runs (the report, its samples, a
sweep's skip/resume check) does not import the training stack."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

# conf/callbacks/default.yaml writes a run's checkpoints to <run dir>/checkpoints/, the latest
# state as last.ckpt (what resume=auto continues from)
CHECKPOINT_DIR = "checkpoints"
LAST_CKPT = "last.ckpt"


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR


def last_checkpoint(run_dir: str | os.PathLike) -> Path:
    """`<run dir>/checkpoints/last.ckpt` (it may not exist yet)."""
    return checkpoint_dir(run_dir) / LAST_CKPT


@dataclass(frozen=True)
class BestCheckpoint:
    path: Path
    monitor: str  # the metric it is best by, e.g. val/bpc


def _field(callback: object, key: str) -> object:
    return callback.get(key) if isinstance(callback, Mapping) else getattr(callback, key, None)


def monitored_best(callbacks: Iterable[object]) -> BestCheckpoint | None:
    """The rule for "the best checkpoint" of a run: the `best_model_path` of the first
    checkpoint callback that ranks by a metric (`monitor` set), when that file exists. A
    callback without a monitor (the one writing last.ckpt) keeps the latest state, not the
    best. `callbacks` are live ModelCheckpoints (`trainer.checkpoint_callbacks`) or their
    saved states (a checkpoint's `callbacks` entries), so a live run and a finished one on
    disk answer alike."""
    for cb in callbacks:
        monitor, best = _field(cb, "monitor"), _field(cb, "best_model_path")
        if monitor and best and Path(str(best)).is_file():
            return BestCheckpoint(Path(str(best)), str(monitor))
    return None


def best_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The best checkpoint of a run directory on disk, by `monitored_best` over the callback
    states saved in its last.ckpt; without a last.ckpt that says, the one checkpoint other than
    last.ckpt if there is exactly one. None when there is none (e.g. no validation)."""
    folder = checkpoint_dir(run_dir)
    last = folder / LAST_CKPT
    if last.is_file():
        import torch  # here: reading records and paths needs no torch

        state = torch.load(last, map_location="cpu", weights_only=True, mmap=True)
        saved = [cb for cb in state.get("callbacks", {}).values()
                 if isinstance(cb, Mapping) and "best_model_path" in cb]
        found = monitored_best(saved)
        if found is not None:
            return found.path
    others = [p for p in folder.glob("*.ckpt") if not p.name.startswith(Path(LAST_CKPT).stem)]
    return others[0] if len(others) == 1 else None
