"""Decoded photos kept on disk: every photo of a split decoded once (as uint8 arrays of any
shape) into one memory-mapped file that every later run and sweep job with the same photos reads
instead of decoding JPEGs again.

The file is named by a key over the photo list (paths, sizes, modification times, in order) and
the caller's description of the decoding (`spec`: sizes, decoder source, library versions), so
any change makes another file. It is built by a thread pool (PIL's decoding and resizing release
the GIL), written to a temporary file beside it and renamed when whole, under an exclusive lock:
a concurrent run waits for the builder and reuses its file, and a killed build leaves only a
temporary file that the next builder removes. Layout: the records back to back, a JSON index
(shapes), then a fixed footer (index offset, index length, magic).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from hw2.utils.fileio import unwritable_error, writable_dir

log = logging.getLogger(__name__)

FORMAT = 1
MAGIC = b"HW2PHOTO"
FOOTER = struct.Struct("<QQ8s")  # index offset, index length, magic
SUFFIX = ".photos"
HINT = ("set paths.cache_dir (or HW2_CACHE_DIR) to a folder with room for it, or run with "
        "data.cache=false (decode every photo every epoch)")


class CacheSpaceError(OSError):
    """The cache does not fit on its disk; the message names the path, the size and what to do."""

    def __str__(self) -> str:
        return str(self.strerror)


def cache_key(files: Sequence[Path], spec: Mapping[str, Any]) -> str:
    """Hash of the photo list (path, size, mtime, in order) and the decoding spec."""
    stats = []
    for path in files:
        st = os.stat(path)
        stats.append([str(path), st.st_size, st.st_mtime_ns])
    blob = json.dumps({"format": FORMAT, "spec": spec, "files": stats}, sort_keys=True,
                      default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def cache_path(cache_dir: str | os.PathLike, name: str, files: Sequence[Path],
               spec: Mapping[str, Any]) -> Path:
    return Path(cache_dir) / f"{name}-{cache_key(files, spec)}{SUFFIX}"


class PhotoCache:
    """Records of a finished cache file as numpy views of a private (copy-on-write) memory map:
    pages are read on demand and shared through the page cache by every process reading it.
    Opened lazily per process, so a DataLoader worker maps the file itself (nothing copied)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.shapes, self.data_bytes = read_index(self.path)
        sizes = [int(np.prod(s)) for s in self.shapes]
        self.offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        self._data: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.shapes)

    @property
    def nbytes(self) -> int:
        return self.data_bytes

    def __getitem__(self, i: int) -> np.ndarray:
        if self._data is None:
            self._data = np.memmap(self.path, dtype=np.uint8, mode="c", shape=(self.data_bytes,))
        start, end = int(self.offsets[i]), int(self.offsets[i + 1])
        return self._data[start:end].reshape(self.shapes[i])

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_data": None}


def read_index(path: Path) -> tuple[list[tuple[int, ...]], int]:
    """(record shapes, bytes of records) from the footer and index; ValueError if the file is
    not a whole cache file."""
    size = path.stat().st_size
    if size < FOOTER.size:
        raise ValueError(f"{path}: {size} bytes, too short for a photo cache")
    with open(path, "rb") as f:
        f.seek(size - FOOTER.size)
        offset, length, magic = FOOTER.unpack(f.read(FOOTER.size))
        if magic != MAGIC or offset + length + FOOTER.size != size:
            raise ValueError(f"{path}: not a whole photo cache file (bad footer)")
        f.seek(offset)
        index = json.loads(f.read(length))
    shapes = [tuple(s) for s in index["shapes"]]
    if sum(int(np.prod(s)) for s in shapes) != offset:
        raise ValueError(f"{path}: index does not match the records")
    return shapes, offset


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive flock on `<path>.lock`: released by the kernel if the holder dies, so a
    killed builder never blocks the next one."""
    lock = path.with_name(path.name + ".lock")
    with open(lock, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another process is building %s: waiting for it", path)
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def temp_files(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f".{path.name}.pid*.tmp"))


def check_room(path: Path, needed: int, margin: float = 1.05) -> None:
    """Raise CacheSpaceError naming the folder, the size needed and what to do when the disk
    cannot hold the cache; warn when it is larger than the memory available to keep it cached."""
    free = shutil.disk_usage(path.parent).free
    if needed * margin > free:
        raise CacheSpaceError(28, f"the photo cache {path} needs {needed / 1e9:.2f} GB but "
                                  f"{path.parent} has {free / 1e9:.2f} GB free; {HINT}")
    available = available_memory()
    if available is not None and needed > available:
        log.warning("the photo cache %s (%.2f GB) is larger than the available memory (%.2f GB):"
                    " it works, but pages are read from disk again every epoch", path,
                    needed / 1e9, available / 1e9)


def available_memory() -> int | None:
    """MemAvailable of /proc/meminfo in bytes (None where there is none)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def build(path: Path, files: Sequence[Path], record: Callable[[Path], np.ndarray],
          needed: int, workers: int | None = None) -> None:
    """Decode `record(file)` for every file with a thread pool, in order, into a temporary file
    beside `path`, then rename it into place; nothing is left behind on any error."""
    check_room(path, needed)
    tmp = path.with_name(f".{path.name}.pid{os.getpid()}.tmp")
    pool = ThreadPoolExecutor(max_workers=workers or default_workers())
    try:
        shapes: list[list[int]] = []
        with open(tmp, "wb") as f:
            bar = tqdm(pool.map(record, files), total=len(files), unit="photo", mininterval=1.0,
                       desc=f"decoding {len(files)} photos into {path.name}")
            for array in bar:
                array = np.ascontiguousarray(array, dtype=np.uint8)
                f.write(memoryview(array).cast("B"))
                shapes.append(list(array.shape))
            offset = f.tell()
            index = json.dumps({"format": FORMAT, "shapes": shapes}).encode()
            f.write(index)
            f.write(FOOTER.pack(offset, len(index), MAGIC))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.filename is None and e.errno is not None:  # disk full, quota: the file named
            raise unwritable_error(tmp, e, HINT) from e
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def open_or_build(cache_dir: str | os.PathLike, name: str, files: Sequence[Path],
                  spec: Mapping[str, Any], record: Callable[[Path], np.ndarray],
                  estimate: Callable[[Path], int], workers: int | None = None) -> PhotoCache:
    """The cache of `files` decoded by `record` under this `spec`: the existing file, or a new
    one built once (other processes wait on the lock, then read it). `estimate(file)`: the
    bytes its record will take, for the disk-space check before decoding."""
    path = cache_path(writable_dir(cache_dir), name, files, spec)
    if path.is_file():
        try:
            return PhotoCache(path)
        except ValueError as e:
            log.warning("%s; building it again", e)
    with locked(path):
        if path.is_file():  # another process built it while this one waited
            try:
                return PhotoCache(path)
            except ValueError as e:
                log.warning("%s; building it again", e)
        stale = temp_files(path)  # the lock is held: any temporary file is a killed build's
        for tmp in stale:
            tmp.unlink(missing_ok=True)
        if stale:
            log.info("removed %d unfinished photo cache file(s) of a killed build", len(stale))
        needed = sum(estimate(f) for f in files)
        log.info("building the photo cache %s (%d photos, ~%.0f MB)", path, len(files),
                 needed / 1e6)
        build(path, files, record, needed, workers)
    cache = PhotoCache(path)
    log.info("photo cache %s: %d photos, %.0f MB", path, len(cache), cache.nbytes / 1e6)
    return cache
