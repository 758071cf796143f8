"""Files written whole or not at all: a temporary file beside the target, fsync, rename; and
directories checked for writing before a run depends on them."""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class UnwritablePathError(OSError):
    """A file or directory the run must write cannot be written (read-only, full, a file in
    the way). Its message names the path and what to do; the CLIs print it without a traceback."""

    def __str__(self) -> str:
        return str(self.strerror)


def unwritable_error(path: Path, e: OSError, hint: str) -> UnwritablePathError:
    reason = e.strerror or str(e)
    blocker = next((p for p in (path, *path.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        reason += f" ({blocker} is a file)"
    return UnwritablePathError(e.errno, f"cannot write {path}: {reason}; {hint}")


DIR_HINT = "choose a writable directory with free space (paths.log_dir / paths.cache_dir)"


def writable_dir(path: str | os.PathLike, hint: str = DIR_HINT) -> Path:
    """Create `path` if needed and prove it takes a file (root ignores permission bits, so
    only a real write tells); raises `UnwritablePathError` naming it, leaving nothing behind."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path) as f:
            f.write(b"x")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise unwritable_error(path, e, hint) from e
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` so that readers see the old file or the new one, never a part;
    no temporary file is left behind on any failure."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise unwritable_error(path, e, DIR_HINT) from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # disk full, quota, I/O error
        Path(tmp).unlink(missing_ok=True)
        raise unwritable_error(path, e, DIR_HINT) from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


@contextmanager
def held_lock(directory: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on `directory` (created if missing) for the block: processes that
    start together (the ranks of a torchrun/srun launch) fill a cache one after the other, so
    the first makes a file and the rest find it. The directory itself is locked, so no lock
    file is left behind; the kernel drops the lock if its holder dies."""
    path = writable_dir(directory)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock
