"""Sample text from a trained CharLM checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch

from hw2.models.charlm import CharLM


def load_charlm(ckpt: str | Path, device: str = "cpu") -> CharLM:
    """Load a CharLM checkpoint, with errors that say what is wrong with the file."""
    path = Path(ckpt)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path} (runs write them to "
                                "logs/charlm/runs/<time>/checkpoints/)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # pickle/zip errors vary by corruption
        raise ValueError(f"{path} is not a readable checkpoint ({type(e).__name__}: {e})") from e
    hp = state.get("hyper_parameters", {}) if isinstance(state, dict) else {}
    if "vocab" not in hp or "state_dict" not in state:
        raise ValueError(f"{path} is not a CharLM checkpoint (no vocabulary in it): "
                         "train one with `python train.py task=charlm`")
    model = CharLM(**hp)
    model.load_state_dict(state["state_dict"])
    return model.to(device).eval()


def generate(ckpt: str | Path, prime: str = "ROMEO", length: int = 500, temperature: float = 0.8,
             top_k: int | None = None, seed: int | None = None, device: str = "cpu") -> str:
    model = load_charlm(ckpt, device)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return model.sample(prime, length, temperature, top_k, generator)
