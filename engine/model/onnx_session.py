"""The one way Rapport opens an ONNX model: CPU provider, all graph optimisations, a fixed thread count."""
from __future__ import annotations

from pathlib import Path

import onnxruntime as ort


def onnx_session(path: Path, threads: int) -> ort.InferenceSession:
    """An inference session on ``path`` using ``threads`` intra-op threads (one inter-op thread)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
