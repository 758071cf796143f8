"""Sample text from a trained CharLM checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch

from hw2.checkpoints import load_module
from hw2.models.charlm import CharLM


def generate(ckpt: str | Path, prime: str = "ROMEO", length: int = 500, temperature: float = 0.8,
             top_k: int | None = None, seed: int | None = None, device: str = "cpu") -> str:
    """The checkpoint's own network and vocabulary (read with weights_only=True) continue
    `prime` by `length` characters."""
    model = load_module(ckpt, CharLM, map_location=device)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return model.sample(prime, length, temperature, top_k, generator)
