"""Character vocabulary: built from the training text, saved with the model."""

from __future__ import annotations

from collections.abc import Sequence

import torch

UNK = "\ufffd"  # shown for the unknown token; never sampled


class Vocab:
    """Sorted characters of the training text, plus an optional unknown token at the end."""

    def __init__(self, chars: Sequence[str], unk: bool = False) -> None:
        chars = list(chars)
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise ValueError("vocabulary must be distinct single characters")
        if unk and UNK in chars:
            raise ValueError("the unknown marker U+FFFD is already a character of the text")
        self.chars = chars
        self.unk = unk
        self.index = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str, unk: bool = False) -> Vocab:
        return cls(sorted(set(text)), unk=unk)

    def extended(self, text: str, unk: bool | None = None) -> Vocab:
        """This vocabulary with the characters of `text` it lacks appended (sorted), so every
        known character keeps its index (fine-tuning keeps its embedding row)."""
        return Vocab(self.chars + self.missing(text), unk=self.unk if unk is None else unk)

    def __len__(self) -> int:
        return len(self.chars) + int(self.unk)

    @property
    def unk_index(self) -> int | None:
        return len(self.chars) if self.unk else None

    def missing(self, text: str) -> list[str]:
        """Characters of `text` that are not in the vocabulary, sorted."""
        return sorted(set(text) - self.index.keys())

    def encode(self, text: str, what: str = "text", strict: bool = False) -> torch.Tensor:
        """Indices of `text` (int64). Unknown characters map to <unk>, or raise naming them."""
        missing = self.missing(text)
        if missing and (strict or not self.unk):
            shown = ", ".join(repr(c) for c in missing[:20])
            more = f" and {len(missing) - 20} more" if len(missing) > 20 else ""
            raise ValueError(
                f"{what} has {len(missing)} character(s) not in the vocabulary: {shown}{more}. "
                "Use characters of the training text"
                + ("" if strict else ", or set data.unknown_chars=map")
            )
        if not missing:
            buf = text.encode("utf-32-le")
            lut = torch.full((max(map(ord, self.chars)) + 1,), -1, dtype=torch.int64)
            lut[torch.tensor([ord(c) for c in self.chars])] = torch.arange(len(self.chars))
            codes = torch.frombuffer(bytearray(buf), dtype=torch.int32).long()
            return lut[codes]
        unk = self.unk_index
        return torch.tensor([self.index.get(c, unk) for c in text], dtype=torch.int64)

    def decode(self, indices: Sequence[int] | torch.Tensor) -> str:
        if isinstance(indices, torch.Tensor):
            indices = indices.tolist()
        return "".join(self.chars[i] if i < len(self.chars) else UNK for i in indices)

    def state_dict(self) -> dict:
        return {"chars": "".join(self.chars), "unk": self.unk}

    @classmethod
    def from_state_dict(cls, state: dict) -> Vocab:
        return cls(list(state["chars"]), unk=bool(state["unk"]))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.state_dict() == other.state_dict()

    def __repr__(self) -> str:
        return f"Vocab({len(self)} tokens, unk={self.unk})"
