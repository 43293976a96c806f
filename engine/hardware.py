"""What machine this runs on: the CPU model and the SIMD features onnxruntime's int8 kernels dispatch on."""
from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

import numpy as np

CPU_FEATURES = ("AVX2", "FMA3", "AVX512F", "AVX512_SKX", "AVX512VNNI", "AVX512_SPR")


def cpu_features() -> dict[str, bool]:
    """The SIMD features numpy's runtime detection finds (onnxruntime's int8 kernels dispatch on the same
    ones: AVX2, AVX-512, VNNI); AMX from /proc/cpuinfo where there is one."""
    found = np._core._multiarray_umath.__cpu_features__
    out = {name: bool(found.get(name)) for name in CPU_FEATURES}
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        out["AMX_INT8"] = " amx_int8" in cpuinfo.read_text()
    return out


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


@functools.cache
def has_vnni() -> bool:
    """Whether onnxruntime's u8 x s8 kernels on this CPU sum in 32 bits (AVX-512 VNNI) rather than in
    saturating 16-bit pairs (AVX2, AVX-512 without VNNI)."""
    return int8_path(cpu_features()) == "AVX-512 VNNI"


def int8_path(features: dict[str, bool]) -> str:
    """Which int8 kernel family a CPU with ``features`` gets: VNNI, AVX-512 without VNNI, or AVX2."""
    if features.get("AVX512VNNI"):
        return "AVX-512 VNNI"
    return "AVX-512 (no VNNI)" if features.get("AVX512F") else "AVX2" if features.get("AVX2") else "no AVX2"


def machine() -> dict:
    """The machine a benchmark ran on, for its results file and its printed header."""
    features = cpu_features()
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "int8_path": int8_path(features), "features": features}


def describe(info: dict) -> str:
    """One line: CPU, cores, int8 path and the features present."""
    present = " ".join(k for k, v in info["features"].items() if v) or "none"
    return f"{info['cpu']}, {info['cores']} cores, int8 path {info['int8_path']} ({present})"
