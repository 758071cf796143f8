"""One live owner per run directory: an exclusive `flock` on `<run dir>/.lock`, held for the
life of the process that trains into it.

Two processes training into one directory would interleave their checkpoints, events and
`run.json`; the second one must stop before it touches any of them. The kernel releases a
`flock` when the last descriptor of its open file closes, so a holder killed outright (SIGKILL,
out of memory, a lost node) frees the directory at once: no stale lock to clean up, and a
re-run, a restarted sweep or a requeued SLURM job takes it over. The file keeps the holder's
pid, host and start time, for the message the second process prints.

A parent that trains in a child (`launcher=local_gpus`) hands its lock down: the child inherits
the descriptor (the same open file, so the same lock) and adopts it instead of locking again,
which would conflict with its own parent. Under DDP only rank 0 locks: the other ranks of the
same run share the directory by design. The file is never deleted: unlinking a lock file lets
a third process lock a new file of the same name while the old one is still held.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from hw2.utils.fileio import DIR_HINT, unwritable_error
from hw2.utils.ranks import global_rank

LOCK_NAME = ".lock"
INHERITED_ENV = "HW2_RUN_LOCK"  # "<fd>:<run dir>": a lock a parent process handed down


class RunDirBusy(RuntimeError):
    """Another live process holds the run directory."""


_held: dict[Path, IO[str]] = {}  # run dirs this process holds, by resolved path


def _key(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir).resolve()


def holder(run_dir: str | os.PathLike) -> dict[str, Any]:
    """What the lock file says about its holder (pid, host, started); {} when unreadable."""
    try:
        data = json.loads((Path(run_dir) / LOCK_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def busy_message(run_dir: str | os.PathLike) -> str:
    info = holder(run_dir)
    who = f"pid {info.get('pid', '?')} on host {info.get('host', '?')}"
    started = info.get("started")
    if isinstance(started, (int, float)):
        who += f" (started {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(started))})"
    return (f"{run_dir} is in use by {who}: wait for it to end, or give this run another "
            "run_name (or hydra.sweep.dir for a sweep)")


def _write_holder(handle: IO[str], **extra: Any) -> None:
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "started": time.time(), **extra}) + "\n")
    handle.flush()


def _adopt_inherited(key: Path) -> IO[str] | None:
    """The lock this process's parent handed down for `key`, if it is really that file."""
    value = os.environ.get(INHERITED_ENV, "")
    fd_text, _, path = value.partition(":")
    if not fd_text.isdigit() or Path(path) != key:
        return None
    fd = int(fd_text)
    try:
        mine, theirs = os.fstat(fd), os.stat(key / LOCK_NAME)
    except OSError:
        return None
    if (mine.st_dev, mine.st_ino) != (theirs.st_dev, theirs.st_ino):
        return None
    handle = os.fdopen(fd, "a+", encoding="utf-8")
    _write_holder(handle, parent=os.getppid())  # the process that trains is the one to name
    return handle


def acquire(run_dir: str | os.PathLike) -> bool:
    """Lock `run_dir` for this process (creating it); True when this call took the lock,
    False when this process already held it (or is a DDP rank > 0, which never locks).
    Raises `RunDirBusy` naming the holder, without writing anything, when another live
    process holds it; `UnwritablePathError` when the directory cannot be made or written."""
    if global_rank() != 0:
        return False
    key = _key(run_dir)
    if key in _held:
        return False
    adopted = _adopt_inherited(key)
    if adopted is not None:
        _held[key] = adopted
        return True
    try:
        key.mkdir(parents=True, exist_ok=True)
        handle = open(key / LOCK_NAME, "a+", encoding="utf-8")  # noqa: SIM115 - the handle is the lock
    except OSError as e:  # a file in the way, a read-only or full disk
        raise unwritable_error(Path(run_dir), e, DIR_HINT) from e
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise RunDirBusy(busy_message(run_dir)) from None
    except BaseException:
        handle.close()
        raise
    _write_holder(handle)
    _held[key] = handle
    return True


def release(run_dir: str | os.PathLike) -> None:
    """Give the lock up (a no-op when this process does not hold it). A child that inherited
    the lock keeps it until it ends too."""
    handle = _held.pop(_key(run_dir), None)
    if handle is not None:
        handle.close()  # the lock goes with the last descriptor of the open file


def holds(run_dir: str | os.PathLike) -> bool:
    return _key(run_dir) in _held


@contextmanager
def run_dir_lock(run_dir: str | os.PathLike) -> Iterator[None]:
    """Hold `run_dir` for the block; released at its end only when this block took it."""
    took = acquire(run_dir)
    try:
        yield
    finally:
        if took:
            release(run_dir)


def inheritable(run_dir: str | os.PathLike) -> tuple[tuple[int, ...], dict[str, str]]:
    """(pass_fds, env) for a child process that trains into `run_dir` under this process's
    lock: `subprocess.Popen(..., pass_fds=fds, env={**os.environ, **env})`. Empty when this
    process holds no lock on it."""
    handle = _held.get(_key(run_dir))
    if handle is None:
        return (), {}
    fd = handle.fileno()
    return (fd,), {INHERITED_ENV: f"{fd}:{_key(run_dir)}"}
