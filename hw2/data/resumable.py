"""Mid-epoch resume for the training loader: where in the epoch a checkpoint was taken, and a
sampler that continues from there with the epoch's own order.

Lightning 2.x restores the loop counters (epoch, batches done) but replays a plain loader from
its first batch, and its own hook for resumable loaders (`state_dict` on the DataLoader) is read
after its fetcher has already pre-fetched one batch, so a loader that counts what it handed
out is one batch ahead at every checkpoint. The number of batches the loop has *completed* is
exact, so the data module stores that (`LightningDataModule.state_dict`, saved in every
checkpoint) and the next run's training loader skips as many batches of the same epoch.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn
from torch.utils.data import DataLoader, Sampler

from hw2.utils.compat import completed_batches


def run_seed() -> int:
    """The run's seed (`seed_everything` sets PL_GLOBAL_SEED), 0 without one."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


class ResumableTrainData(pl.LightningDataModule):
    """Base of the data modules: `state_dict` records (epoch, completed training batches);
    `resume_point()` gives where the first training iteration after a resume starts."""

    def __init__(self) -> None:
        super().__init__()
        self._resume_at: dict[str, int] | None = None

    def state_dict(self) -> dict[str, Any]:
        trainer = self.trainer
        if trainer is None or trainer.state.fn != TrainerFn.FITTING:
            return {}
        return {"epoch": int(trainer.current_epoch), "batches": completed_batches(trainer)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume_at = dict(state_dict) if state_dict else None

    def resume_point(self, num_batches: int) -> tuple[int, int]:
        """(epoch, batches to skip) for the training loader being made: after a resume the
        checkpoint's epoch and the batches it had done (the next epoch from 0 when it had done
        them all), else the trainer's epoch and 0. Taken from the saved state alone: Lightning
        may build the training loader before it restores its loops (`configure_optimizers`
        asking for `estimated_stepping_batches`), when `current_epoch` still reads 0."""
        at, self._resume_at = self._resume_at, None
        if not at or "epoch" not in at:
            return self.current_epoch(), 0
        epoch, done = int(at["epoch"]), int(at.get("batches", 0))
        if done >= num_batches:
            return epoch + 1, 0
        return epoch, done

    def current_epoch(self) -> int:
        return int(self.trainer.current_epoch) if self.trainer is not None else 0


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A generator seeded by (run seed, epoch) alone, not the global RNG: what an epoch draws
    is the same in every DDP rank and after a resume."""
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


class EpochSampler(Sampler):
    """Indices `0..n-1`, shuffled by `(seed, epoch)` alone (not the global RNG), yielded as
    `(epoch, index)` so a dataset can seed its augmentation per sample; after a resume the first
    `skip` samples of the epoch are left out. Lightning calls `set_epoch` every epoch."""

    def __init__(self, n: int, shuffle: bool, seed: int, epoch: int = 0, skip: int = 0) -> None:
        self.n, self.shuffle, self.seed, self.epoch, self.skip = n, shuffle, seed, epoch, skip

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n  # the loop counts the skipped batches as done already

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            order = torch.randperm(self.n, generator=epoch_generator(self.seed, self.epoch)
                                   ).tolist()
        else:
            order = list(range(self.n))
        skip, self.skip = self.skip, 0
        for i in order[skip:]:
            yield self.epoch, i


class ResumableLoader(DataLoader):
    """A DataLoader that Lightning's fit loop counts as resumable (it has `state_dict` /
    `load_state_dict`), so it does not warn that a mid-epoch resume replays the epoch. Its own
    state is empty: the position is kept by the data module, see above."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass
