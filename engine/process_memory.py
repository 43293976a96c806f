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

``MALLOC_ARENA_MAX`` / ``MALLOC_MMAP_THRESHOLD_`` in the environment have the same effects and win when set.

Freed blocks below the threshold stay in the heap, and glibc gives a heap's pages back only from its top.
:func:`release_free_memory` (``malloc_trim``) gives back every free page: after each model loads (its
file's parse buffers: the chat model's decoder took 92 MB, 70 MB after it), whenever the engine's batcher
runs out of work (after a burst of 50 users with a history the process held 483 MB; 262 MB after it),
between encoding a large group of prompts and decoding it (the heap did not reuse the encoder's freed
activations for the decoder's cache, so both counted at the peak), and after that group's first decoder
step (whose freed activations lay between the cross-attention cache's arrays: 76 MB held, 38 MB after).
Peak RSS of ``python -m bench.latency`` went from 441-447 MB to 422-439 MB with the first two; with the
last, finished rows' old cache freed a layer at a time (``seq2seq._keep_rows``) and prompts encoded in runs
of 256 tokens (``seq2seq.ENCODE_TOKENS``), to 386-392 MB in seven runs (418-421 MB before, five runs; with
runs of 1,024 tokens 385-424 MB, the encoder then the peak); runs of the same code differ by 15-20 MB
(issue 24)."""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter numbers
M_ARENA_MAX = -8
ARENAS = 2
MMAP_THRESHOLD = 8 * 1024 * 1024


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """glibc, or None elsewhere (macOS; musl, which has neither ``mallopt`` nor ``malloc_trim``)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def tune_malloc(arenas: int = ARENAS, mmap_threshold: int = MMAP_THRESHOLD) -> dict[str, bool]:
    """Ask glibc for at most ``arenas`` malloc arenas and a fixed mmap threshold (call before threads
    start); says which of the two were applied: neither where there is no glibc (macOS, musl), and not
    one that the environment sets."""
    wanted = {"MALLOC_ARENA_MAX": (M_ARENA_MAX, arenas), "MALLOC_MMAP_THRESHOLD_": (M_MMAP_THRESHOLD, mmap_threshold)}
    applied = dict.fromkeys(wanted, False)
    libc = _glibc()
    if libc is not None:
        for env, (param, value) in wanted.items():
            applied[env] = env not in os.environ and bool(libc.mallopt(param, value))
    return applied


def release_free_memory() -> bool:
    """Give the free pages of every malloc heap back to the system (glibc's ``malloc_trim(0)``: 1-10 ms
    for this process); says whether any page went back (False where there is no glibc)."""
    libc = _glibc()
    return bool(libc.malloc_trim(0)) if libc is not None else False
