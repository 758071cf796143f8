"""The random generators' state in every checkpoint, so a resumed run draws the same numbers
(dropout masks, ...) as one that never stopped. Lightning seeds once at start but does not save
the generators in its checkpoints."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch


class RngState(pl.Callback):
    """Saves python, numpy, torch CPU and CUDA generator states; restores them on resume just
    before the first training batch: between loading the checkpoint and that batch Lightning
    makes loader iterators (the sanity check's and the training one's), and each draws a seed
    from the global generator, which the uninterrupted run did before its checkpoint."""

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        # tensors and plain numbers only: loadable with torch.load(weights_only=True)
        state: dict[str, Any] = {"python": random.getstate(),
                                 "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos,
                                           has_gauss, gauss],
                                 "torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                             batch: Any, batch_idx: int) -> None:
        if self._pending is not None:
            state, self._pending = self._pending, None
            self._apply(state)

    @staticmethod
    def _apply(state_dict: dict[str, Any]) -> None:
        random.setstate(state_dict["python"])
        kind, keys, pos, has_gauss, gauss = state_dict["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        torch.set_rng_state(state_dict["torch"])
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])
