"""Keep one bot process's memory small: fewer glibc malloc arenas.

glibc gives every thread that allocates its own arena (up to 8 per core) and keeps freed memory in each.
The engine's threads (the inference thread, the output-filter threads, the safety checks' worker threads)
each kept a few tens of MB that way: at 50 concurrent users a process peaked at about 440 MB with the
default and about 410 MB with two arenas (issue 24; ``python -m bench.latency``). ``MALLOC_ARENA_MAX`` in
the environment has the same effect and wins when set."""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_ARENA_MAX = -8  # glibc's mallopt parameter number
ARENAS = 2


def limit_malloc_arenas(arenas: int = ARENAS) -> bool:
    """Ask glibc for at most ``arenas`` malloc arenas (before threads start); False where there is no
    glibc (macOS, musl) or the environment sets MALLOC_ARENA_MAX."""
    if not sys.platform.startswith("linux") or "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_ARENA_MAX, arenas))
    except (OSError, AttributeError):
        return False
