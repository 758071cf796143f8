"""Where a run directory keeps its checkpoints: paths only, so that reading runs (the report,
a sweep's skip/resume check) needs neither torch nor Lightning."""

from __future__ import annotations

import os
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
