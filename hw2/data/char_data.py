"""Character corpora cut into batches: the report's streams, or shuffled sliding windows."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from hw2.data.resumable import (
    EpochSampler,
    ResumableLoader,
    ResumableTrainData,
    epoch_generator,
    run_seed,
)
from hw2.data.vocab import Vocab

log = logging.getLogger(__name__)

MODES = ("stream", "window")


def make_streams(ids: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Split the text into `batch_size` contiguous rows (the tail that does not fit is dropped)."""
    length = ids.numel() // batch_size
    return ids[: batch_size * length].view(batch_size, length)


def stream_offset(seed: int, epoch: int, n: int) -> int:
    """Where epoch `epoch` of run `seed` starts cutting a text of `n` characters into streams:
    a function of both alone, so every DDP rank and a resumed run cut the same streams."""
    return int(torch.randint(n, (1,), generator=epoch_generator(seed, epoch)))


class StreamWindows(IterableDataset):
    """The report's mini-batches: window i is columns [i*T, (i+1)*T) of every stream, targets
    shifted by one; the last window may be shorter. Consecutive windows continue each stream, so
    the model carries its hidden state from one to the next (truncated BPTT). Iterable, so that
    no sampler reorders or shards the windows. `start` windows are skipped by the first pass
    only (a run resumed mid-epoch); `len` stays the whole epoch, as Lightning counts the skipped
    windows as done.

    `offset` (called once per pass) rotates the text before it is cut: with a new offset each
    epoch, streams and windows begin at new characters, so an epoch is not a replay of the last
    one. Rank `rank` of `world` takes its own `batch_size` of the `batch_size * world` streams."""

    def __init__(self, ids: torch.Tensor, batch_size: int, seq_len: int, start: int = 0,
                 offset: Callable[[], int] | None = None, rank: int = 0, world: int = 1
                 ) -> None:
        self.ids, self.batch_size, self.seq_len, self.start = ids, batch_size, seq_len, start
        self.offset, self.rank, self.world = offset, rank, world

    def streams(self) -> torch.Tensor:
        ids = self.ids
        if self.offset is not None:
            ids = ids.roll(-self.offset())
        streams = make_streams(ids, self.batch_size * self.world)
        return streams[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]

    def __len__(self) -> int:
        length = self.ids.numel() // (self.batch_size * self.world)
        return math.ceil((length - 1) / self.seq_len)

    def __iter__(self):
        streams = self.streams()
        last = streams.shape[1] - 1  # the final column is only ever a target
        skip, self.start = self.start, 0
        for start in range(skip * self.seq_len, last, self.seq_len):
            end = min(start + self.seq_len, last)
            yield streams[:, start:end], streams[:, start + 1 : end + 1]


class SlidingWindows(Dataset):
    """Windows of `seq_len` + 1 characters starting every `stride` characters."""

    def __init__(self, ids: torch.Tensor, seq_len: int, stride: int) -> None:
        self.ids, self.seq_len, self.stride = ids, seq_len, stride
        self.count = (ids.numel() - seq_len - 1) // stride + 1

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        i = key[1] if isinstance(key, tuple) else key  # (epoch, index) from EpochSampler
        chunk = self.ids[i * self.stride : i * self.stride + self.seq_len + 1]
        return chunk[:-1], chunk[1:]


class CharDataModule(ResumableTrainData):
    """Text from a corpus object (`load() -> {"train", "val"[, "test"]}`), a vocabulary built
    from the training text, and loaders in `stream` or `window` mode."""

    def __init__(
        self,
        corpus: Any,
        mode: Literal["stream", "window"] = "stream",
        batch_size: int = 64,
        seq_len: int = 128,
        eval_batch_size: int | None = None,
        stride: int | None = None,
        unknown_chars: Literal["map", "error"] = "map",
        num_workers: int = 0,
        pin_memory: bool = False,
        shift_streams: bool = False,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"data.mode={mode!r} is not one of {MODES}")
        if unknown_chars not in ("map", "error"):
            raise ValueError(f"data.unknown_chars={unknown_chars!r} must be 'map' or 'error'")
        for key, value in (("batch_size", batch_size), ("seq_len", seq_len),
                           ("eval_batch_size", eval_batch_size or 1)):
            if value < 1:
                raise ValueError(f"data.{key} must be >= 1, got {value}")
        if shift_streams and mode != "stream":
            raise ValueError("data.shift_streams=true needs data.mode=stream (window mode "
                             "already shuffles its windows every epoch)")
        if stride is not None and stride < 1:
            raise ValueError(f"data.stride must be >= 1 or null, got {stride}")
        self.corpus = corpus
        self.mode, self.batch_size, self.seq_len = mode, batch_size, seq_len
        self.stride = stride or seq_len
        self.eval_batch_size = eval_batch_size or batch_size
        self.unknown_chars = unknown_chars
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.shift_streams = shift_streams
        self.vocab: Vocab | None = None
        self.base_vocab: Vocab | None = None
        self.ids: dict[str, torch.Tensor] = {}

    def start_vocab_from(self, vocab: dict) -> None:
        """Fine-tuning (`init_from`): the vocabulary is this one (a checkpoint's), with the
        training text's new characters appended, instead of one built from scratch."""
        self.base_vocab = Vocab.from_state_dict(vocab)

    def prepare_data(self) -> None:
        prepare = getattr(self.corpus, "prepare", None)
        if prepare is not None:
            prepare()

    def setup(self, stage: str | None = None) -> None:
        if self.vocab is not None:
            return
        texts = self.corpus.load()  # no "test": no test metric (never the val text renamed)
        known = set(texts["train"]) | set(self.base_vocab.chars if self.base_vocab else ())
        missing = sorted(set("".join(t for k, t in texts.items() if k != "train")) - known)
        if self.base_vocab is None:
            self.vocab = Vocab.from_text(texts["train"], unk=bool(missing))
        else:
            new = self.base_vocab.missing(texts["train"])
            if new:
                log.warning("init_from: %d character(s) of the training text are new to the "
                            "checkpoint and get new embedding rows: %s", len(new),
                            "".join(new[:40]).encode("unicode_escape").decode())
            self.vocab = self.base_vocab.extended(texts["train"],
                                                  unk=self.base_vocab.unk or bool(missing))
        if missing and self.unknown_chars == "map":
            log.warning("%d character(s) of val/test are not in the training text and map to "
                        "<unk>: %s", len(missing), "".join(missing[:40]))
        strict = self.unknown_chars == "error"
        self.ids = {split: self.vocab.encode(text, f"the {split} text", strict=strict)
                    for split, text in texts.items()}
        for split, ids in self.ids.items():
            self._check_length(split, ids.numel())

    def _batch(self, split: str) -> tuple[int, str]:
        """Streams (or windows) per batch of a split, and the key that sets it."""
        if split == "train":
            return self.batch_size, "data.batch_size"
        return self.eval_batch_size, "data.eval_batch_size"

    def _check_length(self, split: str, n: int) -> None:
        if self.mode == "stream":
            batch, key = self._batch(split)
            per_stream = n // batch
            if per_stream - 1 < self.seq_len:
                raise ValueError(
                    f"data.seq_len={self.seq_len} is too long for the {split} split: {n} chars "
                    f"in {key}={batch} streams leave {per_stream} per stream;"
                    f" lower data.seq_len or {key}")
        elif n < self.seq_len + 1:
            raise ValueError(f"data.seq_len={self.seq_len} is longer than the {split} split "
                             f"({n} chars); lower data.seq_len")

    def model_kwargs(self) -> dict[str, Any]:
        """What the model needs from the data: its vocabulary and whether to carry state."""
        assert self.vocab is not None, "call setup() first"
        return {"vocab": self.vocab.state_dict(), "carry_hidden": self.mode == "stream"}

    def _train_offset(self) -> int:
        """The offset of the epoch being run, read when its pass starts (after a resume that is
        the restored epoch, not the one the loader was built in)."""
        return stream_offset(run_seed(), self.current_epoch(), self.ids["train"].numel())

    def _loader(self, split: str, train: bool) -> DataLoader:
        ids = self.ids[split]
        batch = self._batch(split)[0]
        if self.mode == "stream":
            world, rank = 1, 0
            if self.trainer is not None:
                world, rank = self.trainer.world_size, self.trainer.global_rank
            offset = self._train_offset if train and self.shift_streams else None
            windows = StreamWindows(ids, batch, self.seq_len, offset=offset, rank=rank,
                                    world=world)
            if train:
                windows.start = self.resume_point(len(windows))[1]
                return ResumableLoader(windows, batch_size=None)
            return DataLoader(windows, batch_size=None)
        stride = self.stride if train else self.seq_len  # evaluate each character once
        windows = SlidingWindows(ids, self.seq_len, stride)
        sampler = None
        if train:  # shuffled by (seed, epoch), so a resumed epoch has the same order
            epoch, skip = self.resume_point(max(len(windows) // self.batch_size, 1))
            sampler = EpochSampler(len(windows), True, run_seed(), epoch, skip * self.batch_size)
        return (ResumableLoader if train else DataLoader)(
            windows,
            batch_size=batch,
            sampler=sampler,
            drop_last=train and len(windows) > self.batch_size,  # never an empty epoch
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    @property
    def has_test(self) -> bool:
        """Whether the corpus has a test split (a test file or `test_fraction`)."""
        assert self.vocab is not None, "call setup() first"
        return "test" in self.ids

    def test_dataloader(self) -> DataLoader | list:
        if not self.has_test:
            log.warning("%s has no test split, so no test metric is reported (compare val/bpc;"
                        " data=text_file takes data.corpus.test_fraction or test_path)",
                        type(self.corpus).__name__)
            return []  # Lightning then runs no test batches
        return self._loader("test", train=False)
