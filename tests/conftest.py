"""Shared fixtures: compose the real Hydra config the way `train.py` does, into a tmp run dir."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def compose_train(overrides: Sequence[str], output_dir: Path, config_name: str = "train"
                  ) -> DictConfig:
    """The composed config with `hydra.runtime.output_dir` set, as inside a Hydra job."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig().set_config(cfg)
    return cfg


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
