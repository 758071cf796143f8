"""Process-level settings that make CPU training fast, applied once at start-up."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

from hw2.utils.compat import cpu_has_native_bf16, set_tensorboard_checksum

log = logging.getLogger(__name__)

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4


def tune_malloc() -> bool:
    """Keep large tensors in the heap instead of fresh mmap pages.

    glibc serves big activations by mmap and returns them on free, so every step page-faults
    them in again (docs/benchmarks.md measures the cost). Same as MALLOC_MMAP_MAX_=0,
    MALLOC_TRIM_THRESHOLD_ and MALLOC_TOP_PAD_ in the environment; a no-op off glibc.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(_M_MMAP_MAX, 0) and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    ok = ok and mallopt(_M_TOP_PAD, 1 << 30)
    log.debug("glibc malloc tuned: %s", bool(ok))
    return bool(ok)


def fast_event_checksums() -> bool:
    """Checksum TensorBoard's event records in C.

    Without TensorFlow, TensorBoard computes each record's masked CRC32C in pure Python on its
    writer thread, holding the GIL while the training steps run; google-crc32c's C code gives
    the same checksum (the files are byte-identical) at a small fraction of the cost. A no-op
    (False) where either package or the C build is missing.
    """
    try:
        import google_crc32c
    except ImportError:
        return False
    if google_crc32c.implementation != "c":
        return False

    def masked_crc32c(data: bytes) -> int:
        x = google_crc32c.value(bytes(data))
        return (((x >> 15) | (x << 17)) + 0xA282EAD8) & 0xFFFFFFFF  # TFRecord's CRC mask

    try:
        set_tensorboard_checksum(masked_crc32c)
    except ImportError:
        return False
    return True


def uses_cuda(accelerator: str = "auto") -> bool:
    """Whether a trainer with this `trainer.accelerator` runs on a CUDA GPU."""
    import torch

    return accelerator in ("gpu", "cuda") or (accelerator == "auto"
                                              and torch.cuda.is_available())


def fast_precision(accelerator: str = "auto") -> str:
    """The fastest precision that works on the device the run will use.

    bf16 autocast is the fast path on CPUs with native bf16 (AVX512-BF16/AMX) and on Ampere+
    GPUs, but on an AVX2-only CPU oneDNN has no bf16 LSTM and its bf16 convolutions are slower
    than fp32, so there the answer is `32-true`.
    """
    import torch

    if uses_cuda(accelerator):
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return "bf16-mixed"
        return "16-mixed"
    return "bf16-mixed" if cpu_has_native_bf16() else "32-true"
