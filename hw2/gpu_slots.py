"""One GPU per sweep job on a machine: each job locks a free GPU index for its lifetime.

Hydra's joblib launcher runs `n_jobs` jobs at once in worker processes that it reuses, so a
job cannot know its GPU from its number; a lock file per GPU (released when the job's process
ends or the job returns) hands out the indices without any shared state in memory.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


def _try_lock(path: Path) -> IO | None:
    handle = open(path, "a+")  # noqa: SIM115 - the handle is the lock, kept open
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


@contextmanager
def claim_gpu(lock_dir: str | os.PathLike, n_gpus: int, poll_s: float = 5.0) -> Iterator[int]:
    """Yield the index of a GPU no other job holds, waiting until one is free."""
    if n_gpus < 1:
        raise ValueError("spread_gpus=true needs at least one visible GPU")
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    while True:
        for index in range(n_gpus):
            handle = _try_lock(lock_dir / f"gpu{index}.lock")
            if handle is not None:
                try:
                    yield index
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)
                    handle.close()
                return
        time.sleep(poll_s)
