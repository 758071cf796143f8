"""Shared fixtures: compose the real Hydra config the way `train.py` does, into a tmp run dir."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from omegaconf import DictConfig

from hw2.config import CONF_DIR, compose_config

ROOT = Path(__file__).resolve().parents[1]
CONF = CONF_DIR


def compose_train(overrides: Sequence[str], output_dir: Path) -> DictConfig:
    return compose_config(overrides, output_dir)


@pytest.fixture
def compose_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """`compose_cfg([...overrides])` -> config whose run directory is `tmp_path/run`."""

    def _compose(overrides: Sequence[str] = (), output_dir: Path | None = None) -> DictConfig:
        out = output_dir or tmp_path / "run"
        out.mkdir(parents=True, exist_ok=True)
        defaults = [f"paths.root_dir={tmp_path}", f"paths.cache_dir={tmp_path / 'cache'}",
                    "callbacks.progress_bar.refresh_rate=0"]
        return compose_train([*defaults, *overrides], out)

    return _compose


@pytest.fixture
def small_text(tmp_path: Path) -> Path:
    """A small text with Shakespeare's shape (speaker lines, verse), ~20 kB."""
    speakers = ["ROMEO", "JULIET", "MERCUTIO", "NURSE"]
    lines = ["But soft, what light through yonder window breaks?",
             "It is the east, and Juliet is the sun.",
             "A plague o' both your houses!",
             "Parting is such sweet sorrow."]
    parts = [f"{speakers[i % 4]}:\n{lines[i % 4]}\n{lines[(i * 3 + 1) % 4]}\n"
             for i in range(160)]
    path = tmp_path / "small.txt"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
