"""Keep freed tensor memory for reuse instead of returning it to the OS.

A merge allocates and frees many same-sized float32 buffers. glibc serves blocks above its
mmap threshold with fresh mappings, so every such tensor pays for page faults on first touch:
elementwise ops ran ~5x slower here for that alone. Raising the mmap and trim thresholds lets
freed blocks be reused; peak memory is unchanged (it is still the tensors in flight).
"""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_MAX = 32 * 1024 * 1024  # glibc's upper limit for the mmap threshold on 64-bit


def reuse_freed_memory() -> bool:
    """Tune glibc malloc for a merge; returns False where that is not possible (not glibc)."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, _MMAP_MAX) == 1
    return mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1 and ok
