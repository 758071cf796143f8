"""Hydra creates the run directory before any of our code runs, so an unwritable `paths.log_dir`
would end in a raw mkdir traceback; this Hydra callback checks it first and says what to do."""

from __future__ import annotations

import sys
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from hw2.fileio import UnwritablePathError, writable_dir


class CheckRunDir(Callback):
    """Stop with one line naming the directory when the run (or sweep) directory cannot be
    written: a file in the way, a read-only or full disk."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.sweep.dir")

    @staticmethod
    def _check(config: DictConfig, key: str) -> None:
        HydraConfig.instance().set_config(config)  # ${hydra:...} in the path resolves
        path = OmegaConf.select(config, key)
        try:
            writable_dir(path, hint="set paths.log_dir (or hydra.run.dir) to a writable "
                                    "directory with free space")
        except UnwritablePathError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from e
