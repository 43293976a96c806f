"""Keep one bot process's memory small: fewer glibc malloc arenas, and large arrays given back at once.

glibc gives every thread that allocates its own arena (up to 8 per core) and keeps freed memory in each.
The engine's threads (the inference thread, the output-filter threads, the safety checks' worker threads)
each kept a few tens of MB that way: at 50 concurrent users a process peaked at about 440 MB with the
default and about 410 MB with two arenas (issue 24; ``python -m bench.latency``).

glibc also raises its mmap threshold each time a large block is freed, up to 32 MB, so the arrays of a
batch (encoder states, cross-attention caches of several MB) end up inside the heap, which seldom shrinks.
A fixed threshold of 8 MB sends blocks that large to mmap, given back when freed: peak RSS with 50 users
who have a history fell from 507-573 to 438-442 MB on an AMD EPYC, with no measurable slowdown (issue 24;
1 MB and 128 KB were 2x slower: every batch's arrays were mapped and zeroed again).

``MALLOC_ARENA_MAX`` / ``MALLOC_MMAP_THRESHOLD_`` in the environment have the same effects and win when set."""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter numbers
M_ARENA_MAX = -8
ARENAS = 2
MMAP_THRESHOLD = 8 * 1024 * 1024


def tune_malloc(arenas: int = ARENAS, mmap_threshold: int = MMAP_THRESHOLD) -> dict[str, bool]:
    """Ask glibc for at most ``arenas`` malloc arenas and a fixed mmap threshold (call before threads
    start); says which of the two were applied: neither where there is no glibc (macOS, musl), and not
    one that the environment sets."""
    wanted = {"MALLOC_ARENA_MAX": (M_ARENA_MAX, arenas), "MALLOC_MMAP_THRESHOLD_": (M_MMAP_THRESHOLD, mmap_threshold)}
    applied = dict.fromkeys(wanted, False)
    if not sys.platform.startswith("linux"):
        return applied
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        for env, (param, value) in wanted.items():
            applied[env] = env not in os.environ and bool(libc.mallopt(param, value))
    except (OSError, AttributeError):
        pass
    return applied
