"""Process-level settings that make CPU training fast, applied once at start-up."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4


def tune_malloc() -> bool:
    """Keep large tensors in the heap instead of fresh mmap pages.

    glibc serves big activations by mmap and returns them on free, so every step page-faults
    them in again (37 % of a FoodCNN epoch here). Same as MALLOC_MMAP_MAX_=0,
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
