"""The operator process's C heap: fewer malloc arenas, and free pages handed back to the OS.

Python frees parsed pods promptly, but glibc keeps the pages: each thread that allocates gets an
arena of its own (up to 8 per CPU), and freed memory in them mostly stays resident. The operator's
API threads parse thousands of pod JSON bodies, so with 10,000 managed pods that was tens of MB
the process held and no longer used (measured with ``benchmarks/scale.py --memory``: 199 MB RSS
with glibc's defaults, 185 MB with two arenas). Both calls are glibc's; with another C library
(musl) they do nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util

# mallopt's parameter number for the arena limit (glibc's malloc.h).
_M_ARENA_MAX = -8

# The API threads mostly wait on sockets: two arenas are contended rarely.
ARENAS = 2


def _load_libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


_LIBC = _load_libc()


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Cap malloc arenas for threads started from now on; True when the C library took it."""
    return _LIBC is not None and _LIBC.mallopt(_M_ARENA_MAX, arenas) == 1


def return_free_memory() -> bool:
    """Give free heap pages back to the OS (milliseconds); True when some were returned."""
    return _LIBC is not None and _LIBC.malloc_trim(0) == 1
