"""Where the repository and its Hydra configs are (tests run `python train.py` from the root)."""

from __future__ import annotations

from pathlib import Path

from hw2.config import CONF_DIR

ROOT = Path(__file__).resolve().parents[2]
CONF = CONF_DIR
