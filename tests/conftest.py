"""Shared fixtures: compose the real Hydra config the way `train.py` does, into a tmp run dir;
small texts; the SLURM test cluster. Plain helpers live in tests/helpers/."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from omegaconf import DictConfig

from hw2.config import compose_config
from tests.helpers import slurm_cluster as slurm
from tests.helpers.texts import write_plays


@pytest.fixture
def compose_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """`compose_cfg([...overrides])` -> config whose run directory is `tmp_path/run`."""

    def _compose(overrides: Sequence[str] = (), output_dir: Path | None = None) -> DictConfig:
        out = output_dir or tmp_path / "run"
        out.mkdir(parents=True, exist_ok=True)
        defaults = [f"paths.root_dir={tmp_path}", f"paths.cache_dir={tmp_path / 'cache'}",
                    "callbacks.progress_bar.refresh_rate=0"]
        return compose_config([*defaults, *overrides], out)

    return _compose


@pytest.fixture
def small_text(tmp_path: Path) -> Path:
    """A small text with Shakespeare's shape (speaker lines, verse), ~20 kB."""
    return write_plays(tmp_path / "small.txt", 160)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[slurm.SlurmCluster]:
    """A one-node SLURM cluster on this machine for the whole session (tests/helpers)."""
    with slurm.slurm_cluster(tmp_path_factory.mktemp("slurm")) as cluster:
        yield cluster
