"""Inference from a self-describing checkpoint: sample text from a CharLM, classify photos with
a FoodCNN. The network, vocabulary or class names and the evaluation preprocessing all come from
the checkpoint (read with weights_only=True); nothing else is needed."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.datasets.folder import IMG_EXTENSIONS

from hw2.data.char_data import StreamWindows
from hw2.data.image_data import (
    BadImageError,
    EvalResize,
    build_eval_transform,
    draft_side,
    eval_sizes,
    load_rgb,
)
from hw2.models.charlm import CharLM
from hw2.models.classifier import ImageClassifier
from hw2.runs.checkpoints import load_module


def generate(ckpt: str | Path, prime: str = "ROMEO", length: int = 500, temperature: float = 0.8,
             top_k: int | None = None, seed: int | None = None, device: str = "cpu",
             top_p: float | None = None) -> str:
    """The checkpoint's own network and vocabulary continue `prime` by `length` characters."""
    return generate_samples(ckpt, prime, length, temperature, top_k, seed, device, top_p)[0]


def generate_samples(ckpt: str | Path, prime: str = "ROMEO", length: int = 500,
                     temperature: float = 0.8, top_k: int | None = None,
                     seed: int | None = None, device: str = "cpu", top_p: float | None = None,
                     num_samples: int = 1) -> list[str]:
    """`num_samples` continuations of `prime` by `length` characters, from the checkpoint's own
    network and vocabulary; one seeded generator draws them all, so `seed` reproduces the set."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    model = load_module(ckpt, CharLM, map_location=device)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return [model.sample(prime, length, temperature, top_k=top_k, generator=generator, top_p=top_p)
            for _ in range(num_samples)]


def read_text(path: str | Path, what: str) -> str:
    """A UTF-8 text file, or an error naming it and what is wrong."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{what}: {path} is not a file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{what}: {path} is not UTF-8 text ({e.reason} at byte {e.start})") from e


def evaluate(ckpt: str | Path, text: str, streams: int = 1, seq_len: int = 256,
             device: str = "cpu") -> tuple[float, int, list[str]]:
    """(bits per character, characters scored, characters the checkpoint has never seen) of
    the checkpoint on `text`, read as validation reads a split: `streams` contiguous streams
    in windows of `seq_len`, the hidden state carried from window to window, every character
    after each stream's first scored once. Unseen characters score as the <unk> token when the
    checkpoint has one; without one they cannot be scored (an error names them)."""
    model = load_module(ckpt, CharLM, map_location=device)
    unseen = model.vocab.missing(text)
    if unseen and not model.vocab.unk:
        shown = ", ".join(repr(c) for c in unseen[:20])
        raise ValueError(f"the text has {len(unseen)} character(s) the checkpoint has never seen "
                         f"({shown}) and the checkpoint has no <unk> token to score them: "
                         "remove them from the text")
    ids = model.vocab.encode(text, "the text")
    windows = StreamWindows(ids, streams, seq_len)
    if len(windows) == 0:
        raise ValueError(f"the text has {len(text)} characters: too short for {streams} "
                         f"stream(s) of windows of {seq_len}; lower seq_len or streams")
    nll, count, hidden = 0.0, 0, None
    with torch.no_grad():
        for x, y in windows:
            logits, hidden = model(x.to(device), hidden)
            nll += float(F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                                         y.to(device).reshape(-1), reduction="sum"))
            count += y.numel()
    return nll / count / math.log(2), count, unseen


def image_files(items: str | Path | Iterable[str | Path]) -> list[Path]:
    """Files as given, and every image under each folder (sorted, hidden files skipped)."""
    if isinstance(items, (str, Path)):
        items = [items]
    out: list[Path] = []
    for item in items:
        path = Path(item).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file()
                           and p.suffix.lower() in IMG_EXTENSIONS and not p.name.startswith("."))
            if not found:
                raise FileNotFoundError(f"no images ({', '.join(IMG_EXTENSIONS)}) under {path}")
            out += found
        elif path.is_file():
            out.append(path)
        else:
            raise FileNotFoundError(f"images: {path} is neither a file nor a folder")
    return out


def predict(ckpt: str | Path, images: str | Path | Iterable[str | Path], top_k: int = 3,
            batch_size: int = 16, device: str = "cpu", eval_resize: EvalResize = None
            ) -> Iterator[tuple[Path, list[tuple[str, float]] | str]]:
    """(photo, [(class name, probability)] best first) per photo, or (photo, reason) for a
    file that does not decode. `eval_resize` (a size or a list: the probabilities of the
    views averaged) replaces the checkpoint's (None: keep it)."""
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if eval_resize is not None:
        eval_sizes(eval_resize, key="eval_resize")  # a bad value fails before loading
    model = load_module(ckpt, ImageClassifier, map_location=device)
    hp = model.hparams
    # eval_resize null means "as in training" (data.eval_resize's rule)
    resize = next((r for r in (eval_resize, hp.eval_resize, hp.resize) if r is not None), None)
    transform = build_eval_transform(hp.image_size, resize, mean=hp.mean, std=hp.std)
    min_side = draft_side(resize) if hp.jpeg_draft else None  # decoded as the data module did
    names: Sequence[str] = model.class_names
    k = min(top_k, len(names))
    files = image_files(images)
    for start in range(0, len(files), batch_size):
        batch, good = [], []
        for path in files[start:start + batch_size]:
            try:
                batch.append(transform(load_rgb(path, min_side)))
                good.append(path)
            except BadImageError as e:
                yield path, str(e)
        if not batch:
            continue
        with torch.no_grad():
            probs = torch.softmax(model(torch.stack(batch).to(device)).float(), dim=1).cpu()
        top = probs.topk(k, dim=1)
        for path, p, i in zip(good, top.values.tolist(), top.indices.tolist(), strict=True):
            yield path, [(names[j], q) for j, q in zip(i, p, strict=True)]
