"""An install that works anywhere: the wheel carries the models; `rapport doctor`; clean errors."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def rapport(*args: str, env: dict | None = None, stdin: str = "", cwd: Path | None = None,
            python: str = sys.executable) -> subprocess.CompletedProcess:
    return subprocess.run([python, "-m", "bots.cli", "--env-file", "/nonexistent", *args], input=stdin,
                          capture_output=True, text=True, timeout=600, cwd=cwd or ROOT,
                          env={**os.environ, **(env or {})})


@pytest.mark.slow  # loads the shipped model
def test_doctor_reports_every_part_and_fails_on_a_missing_model(tmp_path):
    ok = rapport("doctor", cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    for part in ("ok    model", "ok    encoder+index", "ok    safety", "ok    redis", "AVX2", "onnxruntime", "all parts work"):
        assert part in ok.stdout
    bad = rapport("doctor", env={"RAPPORT_MODEL_DIR": str(tmp_path / "nowhere")}, cwd=tmp_path)
    assert bad.returncode == 1 and "FAIL  model" in bad.stdout and "1 part(s) failed" in bad.stdout


def test_a_missing_model_or_a_mismatched_index_is_one_error_line(tmp_path):
    for command in ("worker", "bots", "chat"):
        env = {"RAPPORT_MODEL_DIR": str(tmp_path / "nowhere"), "REDIS_URL": "redis://127.0.0.1:1/0",
               "TELEGRAM_BOT_TOKEN": "123456:not-used"}
        done = rapport(command, env=env)
        assert done.returncode in (1, 2) and "Traceback" not in done.stderr, done.stderr
        assert done.stderr.strip().splitlines()[-1].startswith("error: no model at"), (command, done.stderr)
    index = tmp_path / "index"
    index.mkdir()
    (index / "index_meta.json").write_text('{"encoder_sha256": "0000"}')
    done = rapport("chat", env={"RAPPORT_INDEX_DIR": str(index)}, stdin="hello\n")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "was built with encoder 0000" in done.stderr.strip().splitlines()[-1]


@pytest.mark.slow  # builds the wheel (with the models) and installs it into a fresh virtual environment
def test_the_wheel_installed_anywhere_finds_its_models_and_replies(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)],
                   check=True, timeout=900)
    wheel = next(wheels.glob("rapport-*.whl"))
    assert wheel.stat().st_size <= 100e6  # issue 24: one chat model, under PyPI's 100 MB file limit
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], check=True, timeout=1800)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAPPORT_", "REDIS_URL", "PYTHON"))}
    env["RAPPORT_DATA_DIR"] = str(tmp_path / "data")
    chat = subprocess.run([str(venv / "bin" / "rapport"), "chat"], input="my name is Ines\nwhat is my name?\n",
                          capture_output=True, text=True, timeout=600, cwd=elsewhere, env=env)
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout.strip().splitlines()[-1] == "Your name is Ines."
    doctor = subprocess.run([str(venv / "bin" / "rapport"), "doctor"], capture_output=True, text=True,
                            timeout=600, cwd=elsewhere, env=env)
    assert doctor.returncode == 0 and str(venv) in doctor.stdout, doctor.stdout


def test_the_int8_path_is_named_from_the_cpu_features():
    from engine.hardware import describe, int8_path, machine
    assert int8_path({"AVX2": True, "AVX512F": True, "AVX512VNNI": True}) == "AVX-512 VNNI"
    assert int8_path({"AVX2": True, "AVX512F": True, "AVX512VNNI": False}) == "AVX-512 (no VNNI)"
    assert int8_path({"AVX2": True}) == "AVX2"
    info = machine()
    assert info["cores"] >= 1 and info["cpu"] and info["int8_path"] in describe(info)
