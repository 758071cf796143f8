"""Process-level pieces: atomic checkpoints, GPU slots for sweeps, malloc tuning."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch

from hw2.checkpoint_io import AtomicCheckpointIO
from hw2.gpu_slots import claim_gpu
from hw2.runtime import tune_malloc


def test_gpu_slots_hand_out_distinct_indices_and_wait(tmp_path: Path) -> None:
    with claim_gpu(tmp_path, 2) as a, claim_gpu(tmp_path, 2) as b:
        assert {a, b} == {0, 1}
        got: list[int] = []

        def third() -> None:
            with claim_gpu(tmp_path, 2, poll_s=0.05) as c:
                got.append(c)

        t = threading.Thread(target=third)
        t.start()
        time.sleep(0.3)
        assert got == []  # both GPUs busy: the third job waits
    t.join(timeout=5)
    assert got in ([0], [1])
    with pytest.raises(ValueError, match="at least one visible GPU"), claim_gpu(tmp_path, 0):
        pass


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("disk full")


def test_atomic_checkpoint_keeps_the_old_file_when_a_save_fails(tmp_path: Path) -> None:
    io = AtomicCheckpointIO()
    path = tmp_path / "ckpts" / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)
    assert io.load_checkpoint(path, weights_only=False)["step"] == 1
    with pytest.raises(RuntimeError, match="disk full"):
        io.save_checkpoint({"step": 2, "bad": _Unpicklable()}, path)
    assert io.load_checkpoint(path, weights_only=False)["step"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temp file left


def test_tune_malloc_applies_on_glibc() -> None:
    assert tune_malloc() is True
    torch.ones(64, 1024, 1024).sum()  # big allocations still work


def test_fast_precision_follows_the_cpu(monkeypatch) -> None:
    import torch

    from hw2.runtime import fast_precision

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert fast_precision("cpu") == "32-true"
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert fast_precision("cpu") == "bf16-mixed"
