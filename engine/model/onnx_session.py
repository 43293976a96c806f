"""The one way Rapport opens an ONNX model: CPU provider, all graph optimisations, a fixed thread count,
and spinning only where runs follow each other closely.

onnxruntime's intra-op threads spin (busy-wait) after each run by default, to pick up the next run
quickly. The engine runs several sessions one after another (the chat model's encoder and decoder, the
ranker, the safety classifier), and each session's spinning threads took the cores from the next one: on
2 cores a one-user reply took 1.5-2x as long with every session spinning (issue 24's notes). Only the
decoder, which runs once per token in a tight loop, keeps spinning.

Integer products of 8-bit weights are exact on every x86-64 CPU (``exact_int8``): without VNNI (AVX2, and
AVX-512 without VNNI) onnxruntime's u8 x s8 kernel adds pairs of products in 16 bits, which saturate with
the 8-bit weights of the sentence encoder and the safety classifier (``quantize_dynamic``). On an emulated
AVX2-only CPU (``qemu-x86_64 -cpu Haswell``) the safety classifier then missed a crisis built over two
messages (4 of 19 of its tests failed). ``session.x64quantprecision`` makes that kernel widen to 32 bits
first. It is set only on CPUs without VNNI: the VNNI kernel sums in 32 bits anyway, and on an AMD EPYC with
VNNI the setting gave the same outputs and made the classifier 1.7-1.9x slower. The chat model's integer
products have 7-bit weights (``rapport-train rows-int8``), exact without it.

The memory arena is off: onnxruntime's arena keeps the largest buffers a run ever needed (a 50-user batch),
and a process peaked about 45 MB higher with it, no faster. Once a session is built, the memory that
parsing its file took goes back to the system (:func:`release_free_memory`)."""
from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from ..hardware import has_vnni
from ..process_memory import release_free_memory


def onnx_session(path: Path, threads: int, spin: bool = False, exact_int8: bool = False) -> ort.InferenceSession:
    """An inference session on ``path`` using ``threads`` intra-op threads (one inter-op thread); they
    sleep between runs unless ``spin``. With ``exact_int8`` (a model with 8-bit integer weights) its integer
    sums do not saturate on CPUs without VNNI."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.enable_cpu_mem_arena = False
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    if exact_int8 and not has_vnni():
        opts.add_session_config_entry("session.x64quantprecision", "1")
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    release_free_memory()  # the file's parse buffers, freed inside the heap
    return session
