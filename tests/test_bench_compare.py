"""bench.compare: its check of the AVX2 int8 path on an AVX-512 machine (an emulated AVX2-only CPU), and the
other runtimes' weights rebuilt whenever the export changes."""
import json
import shutil
import subprocess
import sys

import pytest

from bench import compare
from bench.compare import (ARTIFACTS, EMULATED_AVX2, agreement, avx2_emulator, drop_stale_artifacts,
                           turns_summary)


def test_the_avx2_path_is_emulated_only_where_the_cpu_takes_another_path_and_qemu_is_installed(monkeypatch):
    monkeypatch.setattr(compare.shutil, "which", lambda name: f"/usr/bin/{name}")
    assert avx2_emulator({"int8_path": "AVX-512 VNNI"}) == EMULATED_AVX2
    assert avx2_emulator({"int8_path": "AVX2"}) is None  # already the AVX2 path: nothing to emulate
    monkeypatch.setattr(compare.shutil, "which", lambda name: None)
    assert avx2_emulator({"int8_path": "AVX-512 VNNI"}) is None


def test_the_other_runtimes_weights_are_rebuilt_when_the_export_changes(tmp_path):
    """The PyTorch, fp32 ONNX and CTranslate2 copies are the int8 export dequantized: a copy made from an
    earlier export (or of unknown origin) is removed, one made from these files is kept."""
    model, work = tmp_path / "model", tmp_path / "work"
    model.mkdir()
    (model / "encoder_model.onnx").write_bytes(b"encoder")
    (model / "decoder_model_merged.onnx").write_bytes(b"decoder v1")

    def build() -> None:
        for name in ARTIFACTS:
            (work / name).mkdir(parents=True, exist_ok=True)

    build()
    assert drop_stale_artifacts(model, work)  # unknown origin
    assert not any((work / name).exists() for name in ARTIFACTS)
    build()
    assert not drop_stale_artifacts(model, work)  # built from these files
    (model / "decoder_model_merged.onnx").write_bytes(b"decoder v2")
    assert drop_stale_artifacts(model, work)
    assert not any((work / name).exists() for name in ARTIFACTS)


def test_runs_in_turns_report_the_median_of_each_rounds_ratio():
    """A machine that slows down mid-run moves both runtimes' times; each round's ratio stays."""
    ours, theirs = [0.4, 0.8, 0.5, 1.6, 0.4], [0.5, 1.0, 0.6, 2.0, 0.5]  # the machine 4x slower in round 4
    got = turns_summary(ours, theirs)
    assert got["rapport_ms"] == 500 and got["other_ms"] == 600 and got["rounds"] == 5
    assert got["speedup"] == 1.25  # the rounds' ratios: 1.25, 1.25, 1.2, 1.25, 1.25


def test_agreement_counts_prompts_whose_tokens_are_all_equal():
    native = {"int8_path": "AVX-512 VNNI", "alone": [[1, 2], [3, 4], [5, 6], [7, 8]], "batch_50": [[1], [2]]}
    emulated = {"int8_path": "AVX2", "alone": [[1, 2], [3, 9], [5, 6], [7, 8]], "batch_50": [[1], [3]]}
    got = agreement(emulated, native, reference=[[1, 2], [3, 4], [0, 6], [7, 8]])
    assert got == {"int8_path": "AVX2", "alone_same_as_native": 0.75, "batch_50_same_as_native": 0.5,
                   "alone_same_as_pytorch_fp32": 0.5}
    assert "alone_same_as_pytorch_fp32" not in agreement(emulated, native, reference=None)


@pytest.mark.skipif(shutil.which(EMULATED_AVX2[0]) is None, reason="qemu-x86_64 (Debian's qemu-user) is not installed")
def test_the_emulated_cpu_hides_avx512_from_the_kernel_dispatch():
    """Under the emulator numpy's (and so onnxruntime's) CPU detection finds AVX2 and no AVX-512: the run
    bench.compare makes there takes onnxruntime's AVX2 kernels."""
    code = "import json; from engine.hardware import machine; print(json.dumps(machine()))"
    out = subprocess.run([*EMULATED_AVX2, sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         timeout=300)
    host = json.loads(out.stdout.strip().splitlines()[-1])
    assert host["int8_path"] == "AVX2"
    assert host["features"]["AVX2"] and not host["features"]["AVX512F"]
