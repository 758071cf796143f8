"""Resume pieces on their own (fast): which checkpoint a run starts from, leftovers of a killed
save, where a resumed epoch starts, random state in checkpoints, the non-finite guard. The
whole drills on real processes are in test_faults.py (slow)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from hw2.callbacks.rng import RngState
from hw2.data.char_data import StreamWindows, make_streams
from hw2.data.resumable import EpochSampler
from hw2.models.base import NonFiniteLossError, TaskModule
from hw2.runs.atomic_io import AtomicCheckpointIO, remove_stale_temps
from hw2.runs.resume import resolve_checkpoint


def test_resume_auto_last_best_hpc_and_paths(compose_cfg: Callable, tmp_path: Path) -> None:
    cfg = compose_cfg([])
    folder = Path(cfg.paths.output_dir) / "checkpoints"
    assert resolve_checkpoint(cfg) is None  # a new run directory: start fresh
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 3}, folder / "epoch000-step3.ckpt")
    io.save_checkpoint({"global_step": 5}, folder / "last.ckpt")
    assert resolve_checkpoint(cfg) == str(folder / "last.ckpt")  # resume=auto
    with open_dict(cfg):
        cfg.resume = "never"
        assert resolve_checkpoint(cfg) is None
        cfg.resume = "auto"
        cfg.ckpt_path = "best"
        assert resolve_checkpoint(cfg) == str(folder / "epoch000-step3.ckpt")
        cfg.ckpt_path = "last"
        assert resolve_checkpoint(cfg) == str(folder / "last.ckpt")
        cfg.ckpt_path = "hpc"
        assert resolve_checkpoint(cfg) == "hpc"  # Lightning's SLURM requeue checkpoint
        cfg.ckpt_path = str(tmp_path / "nope.ckpt")
        with pytest.raises(FileNotFoundError, match=r"nope.ckpt is not a file"):
            resolve_checkpoint(cfg)
        (folder / "last.ckpt").unlink()
        cfg.ckpt_path = None
        cfg.resume = "must"
        with pytest.raises(FileNotFoundError, match=r"resume=must but .*last.ckpt"):
            resolve_checkpoint(cfg)
        cfg.resume = "sometimes"
        with pytest.raises(ValueError, match=r"resume='sometimes' is not one of"):
            resolve_checkpoint(cfg)


def test_default_run_names_differ_within_a_second(compose_cfg: Callable) -> None:
    a, b = compose_cfg([]).run_name, compose_cfg([]).run_name
    assert a != b  # two runs started in the same second still get their own directories
    assert len(a.split("_")[-1]) == 6  # ..._HH-MM-SS_<microseconds>
    assert compose_cfg(["run_name=exp1"]).hydra.run.dir.endswith("/charlm/runs/exp1")


def test_stale_temp_files_of_dead_writers_are_removed(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    stale = tmp_path / f".last.ckpt.pid{int(dead.stdout)}.abc123.tmp"
    live = tmp_path / f".last.ckpt.pid{os.getpid()}.def456.tmp"  # a save in progress
    other = tmp_path / "notes.tmp"
    for p in (stale, live, other):
        p.write_bytes(b"x")
    assert remove_stale_temps(tmp_path) == [stale]
    assert not stale.exists() and live.exists() and other.exists()


def test_stream_windows_skip_the_done_part_once() -> None:
    streams = make_streams(torch.arange(41), 2)  # 2 streams of 20 -> windows of 4: 5 per pass
    windows = StreamWindows(torch.arange(41), 2, seq_len=4, start=3)
    first = [x for x, _ in windows]
    assert len(windows) == 5 and len(first) == 2  # len stays the whole epoch
    assert torch.equal(first[0], streams[:, 12:16])
    assert len(list(windows)) == 5  # the next epoch is whole again


def test_epoch_sampler_order_from_seed_and_epoch_and_skip() -> None:
    a = list(EpochSampler(10, True, seed=1, epoch=0))
    assert [e for e, _ in a] == [0] * 10 and sorted(i for _, i in a) == list(range(10))
    assert a == list(EpochSampler(10, True, seed=1, epoch=0))
    sampler = EpochSampler(10, True, seed=1, epoch=0)
    sampler.set_epoch(1)
    assert [i for _, i in sampler] != [i for _, i in a]  # a new order every epoch
    resumed = EpochSampler(10, True, seed=1, epoch=0, skip=4)
    assert list(resumed) == a[4:] and len(resumed) == 10
    assert list(resumed) == a  # skipping is for the first pass only


def test_rng_state_survives_a_weights_only_checkpoint(tmp_path: Path) -> None:
    callback = RngState()
    torch.manual_seed(7)
    random.seed(7)
    path = tmp_path / "rng.ckpt"
    torch.save({"rng": callback.state_dict()}, path)
    expected = (torch.rand(3), random.random())
    torch.manual_seed(99)
    random.seed(99)
    restored = RngState()
    restored.load_state_dict(torch.load(path, weights_only=True)["rng"])
    restored.on_train_batch_start(None, None, None, 0)  # applied before the first batch
    assert torch.equal(torch.rand(3), expected[0]) and random.random() == expected[1]


class _Task(TaskModule):
    def __init__(self, skip: bool) -> None:
        super().__init__(optimizer=torch.optim.SGD, skip_nonfinite=skip)
        self.w = torch.nn.Parameter(torch.ones(2))


def test_non_finite_loss_stops_or_skips() -> None:
    finite = torch.tensor(1.5)
    assert _Task(skip=False).checked_loss(finite) is finite
    # the stop reads the flag later (no device sync per step): at the next step, or before a
    # validation, a checkpoint or the end of training
    reads = [lambda t: t.checked_loss(finite), lambda t: t.on_validation_start(),
             lambda t: t.on_save_checkpoint({}), lambda t: t.on_train_end()]
    for read in reads:
        task = _Task(skip=False)
        nan = torch.tensor(float("nan"))
        assert task.checked_loss(nan) is nan
        with pytest.raises(NonFiniteLossError, match=r"\(nan\) at step 0 .*last good checkpoint: "
                                                     r"none yet.*model.skip_nonfinite=true"):
            read(task)
        task.raise_if_nonfinite()  # read once: the flag is gone
    task = _Task(skip=True)
    assert task.checked_loss(torch.tensor(float("inf"))) is None and task.skipped_steps == 1
    task.on_save_checkpoint({})  # skip mode leaves nothing to read later


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_non_finite_guard_does_not_sync_the_stream() -> None:
    """The default guard adds no stream or device sync to a training step (it waits only on the
    event after the previous step's flag copy, queued a step earlier; bench/gpu_check.sh runs
    this test on a GPU)."""
    task = _Task(skip=False).cuda()
    loss = task.w.sum() * 2
    torch.cuda.set_sync_debug_mode("error")  # any sync raises
    try:
        for _ in range(3):
            assert task.checked_loss(loss) is loss
    finally:
        torch.cuda.set_sync_debug_mode("default")
    task.checked_loss(loss * float("nan"))
    with pytest.raises(NonFiniteLossError, match=r"\(nan\) at step 0"):
        task.on_train_end()


def test_non_finite_gradient_is_dropped_before_the_step() -> None:
    task = _Task(skip=True)
    optimizer = torch.optim.SGD(task.parameters(), lr=1.0)
    task.w.grad = torch.tensor([1.0, float("inf")])
    task.on_before_optimizer_step(optimizer)
    optimizer.step()
    assert task.w.grad is None and torch.equal(task.w.detach(), torch.ones(2))
    # without skip nothing is read per step: the NaN step is taken, and the next loss stops
    strict = _Task(skip=False)
    optimizer = torch.optim.SGD(strict.parameters(), lr=1.0)
    strict.w.grad = torch.tensor([float("nan"), 0.0])
    strict.on_before_optimizer_step(optimizer)
    optimizer.step()
    strict.checked_loss(strict.w.sum())
    with pytest.raises(NonFiniteLossError, match=r"non-finite training loss \(nan\) at step 0"):
        strict.on_save_checkpoint({})
