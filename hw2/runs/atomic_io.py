"""Checkpoints written atomically: a crash mid-save never leaves a truncated file behind.

Why not Lightning's own `TorchCheckpointIO` (2.6)? It serialises to memory, then writes through
an fsspec transaction, whose local implementation writes a temporary file made by
`tempfile.mkstemp()` in the system temp directory and `shutil.move`s it onto the target at
commit. That is not atomic where it matters: /tmp is usually another file system than the run
directory, so the move is a copy into the target (a crash mid-copy leaves a truncated
`last.ckpt`, the very file a resume reads); nothing is fsync'ed (after a power loss the renamed
file can be empty); and a process killed mid-save leaves its temporary file in /tmp for ever.
`AtomicCheckpointIO` keeps the temporary file beside the target (same file system, so
`os.replace` is one atomic rename), fsyncs it and the directory, removes it on any error, and
names it with the writer's pid so the next run removes what a SIGKILLed writer left
(`remove_stale_temps`).
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from hw2.utils.process import pid_alive

log = logging.getLogger(__name__)

TEMP_RE = re.compile(r"^\..+\.pid(\d+)\.[^.]+\.tmp$")


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete temporary checkpoint files in `folder` whose writer process is gone (a save
    killed mid-way); returns what was removed."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for path in folder.iterdir():
        match = TEMP_RE.match(path.name)
        if match and not pid_alive(int(match.group(1))):
            path.unlink(missing_ok=True)
            removed.append(path)
    if removed:
        log.info("removed %d unfinished checkpoint file(s) of a killed run: %s", len(removed),
                 ", ".join(p.name for p in removed))
    return removed


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # not possible on every platform; the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Save to a temporary file in the same folder, fsync, then rename over the target."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None
    ) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.pid{os.getpid()}.", suffix=".tmp",
                                   dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)
