"""Process-level pieces: atomic checkpoints, GPU slots for sweeps, malloc tuning."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from hw2.runs.atomic_io import AtomicCheckpointIO
from hw2.sweeps.gpu_slots import claim_gpu


def test_gpu_slots_hand_out_distinct_indices_and_wait(tmp_path: Path, monkeypatch) -> None:
    import hw2.sweeps.gpu_slots

    polled = threading.Event()
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:  # the waiting job found every GPU taken
        polled.set()
        real_sleep(seconds)

    monkeypatch.setattr(hw2.sweeps.gpu_slots.time, "sleep", sleep)
    with claim_gpu(tmp_path, 2) as a, claim_gpu(tmp_path, 2) as b:
        assert {a, b} == {0, 1}
        got: list[int] = []

        def third() -> None:
            with claim_gpu(tmp_path, 2, poll_s=0.05) as c:
                got.append(c)

        t = threading.Thread(target=third)
        t.start()
        assert polled.wait(timeout=30)  # it tried both GPUs and went to wait ...
        assert got == []  # ... without getting one while both are held
    t.join(timeout=30)
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


MALLOC_PROBE = """
import ctypes
from hw2.utils.runtime import tune_malloc

class Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                               "usmblks", "fsmblks", "uordblks", "fordblks",
                                               "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Mallinfo2
libc.malloc.restype = ctypes.c_void_p

def mmapped_while_allocated(size):
    block = libc.malloc(ctypes.c_size_t(size))
    try:
        return libc.mallinfo2().hblkhd
    finally:
        libc.free(ctypes.c_void_p(block))

size = 64 << 20
print(mmapped_while_allocated(size) - libc.mallinfo2().hblkhd, tune_malloc(),
      mmapped_while_allocated(size) - libc.mallinfo2().hblkhd)
"""


@pytest.mark.slow  # subprocesses of train.py / the CLI: ~10 s each
def test_tune_malloc_keeps_big_blocks_off_mmap() -> None:
    """In a fresh process (the setting is process-wide): glibc mmaps a 64 MiB block by
    default and serves it from the heap once tuned (mallinfo2's mmapped bytes)."""
    out = subprocess.run([sys.executable, "-c", MALLOC_PROBE], capture_output=True, text=True,
                         timeout=60, check=True)
    before, tuned, after = out.stdout.split()
    assert int(before) >= 64 << 20 and tuned == "True" and int(after) == 0


def test_fast_precision_follows_the_cpu(monkeypatch) -> None:
    import torch

    from hw2.utils.runtime import fast_precision

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert fast_precision("cpu") == "32-true"
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert fast_precision("cpu") == "bf16-mixed"


def test_fast_event_checksums_write_the_same_files_tensorboard_reads(tmp_path: Path,
                                                                     monkeypatch) -> None:
    """The C checksum is TensorBoard's own masked CRC32C (same value on any bytes), and an
    event file written with it reads back through TensorBoard's reader, which checks every
    record's checksum (a wrong one raises DataLossError)."""
    import os

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c
    from tensorboard.summary.writer import record_writer
    from torch.utils.tensorboard import SummaryWriter

    from hw2.utils.runtime import fast_event_checksums

    monkeypatch.setattr(record_writer, "masked_crc32c", record_writer.masked_crc32c)  # restored
    assert fast_event_checksums()
    fast = record_writer.masked_crc32c
    assert fast is not masked_crc32c
    for data in (b"", b"hw2", os.urandom(100_003), bytearray(os.urandom(7))):
        assert fast(data) == masked_crc32c(data)
    writer = SummaryWriter(str(tmp_path))
    writer.add_scalar("train/loss", 1.5, global_step=3)
    writer.add_image("feature_maps/conv1/0", torch.rand(1, 64, 64), global_step=3)
    writer.close()
    acc = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    assert [e.value for e in acc.Scalars("train/loss")] == [1.5]
    assert len(acc.Images("feature_maps/conv1/0")) == 1
