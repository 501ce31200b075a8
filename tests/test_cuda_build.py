"""The CUDA backend's build switch and device selection (issue 5). No GPU is needed:
ENGINE_CUDA=AUTO|ON|OFF is checked by configuring (and, where nvcc exists, compiling)
the C core in a scratch build directory, and device="cuda" must fail with a message
that says why, leaving the CPU path usable. The CUDA kernels and their parity tests
come with a machine that has a GPU."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

import engine

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_cmake = pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not on PATH")


def configure(tmp_path, *args, env=None):
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    return subprocess.run(["cmake", "-S", ROOT, "-B", str(tmp_path / "b"), *gen, "-DENGINE_PYTHON=OFF", *args],
                          capture_output=True, text=True, timeout=300, env=env)


def test_device_cuda_says_why(tiny_gguf):
    path = tiny_gguf(weight_type="Q8_0")
    with pytest.raises(engine.EngineError) as e:
        engine.Model(path, device="cuda")
    msg = str(e.value)
    if not engine.has_cuda():
        assert "has no CUDA backend" in msg
    else:  # built with CUDA: either no usable GPU (and why), or the forward pass not written yet
        assert "no CUDA device is usable (" in msg or "not implemented yet" in msg, msg
    with engine.Model(path, device="cpu") as m, m.session(n_ctx=16) as s:
        assert s.eval([1, 2, 3]).shape == (m.n_vocab,)


@needs_cmake
def test_cuda_option_values(tmp_path):
    bad = configure(tmp_path, "-DENGINE_CUDA=maybe")
    assert bad.returncode != 0 and "ENGINE_CUDA must be AUTO, ON or OFF" in bad.stdout + bad.stderr
    off = configure(tmp_path, "-DENGINE_CUDA=OFF")
    assert off.returncode == 0 and "CUDA backend enabled" not in off.stdout


@needs_cmake
def test_cuda_on_without_compiler_fails_clearly(tmp_path):
    env = dict(os.environ, CUDACXX=str(tmp_path / "no-nvcc"), PATH="/usr/bin:/bin")
    on = configure(tmp_path, "-DENGINE_CUDA=ON", env=env)
    assert on.returncode != 0 and "no working CUDA compiler" in on.stdout + on.stderr
    auto = configure(tmp_path / "auto", "-DENGINE_CUDA=AUTO", env=env)
    assert auto.returncode == 0 and "building without the CUDA backend" in auto.stdout


@needs_cmake
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc: the CUDA sources cannot be compiled here")
def test_cuda_sources_compile(tmp_path):
    """where nvcc exists, AUTO turns the backend on and the CUDA sources build (one architecture)"""
    cfg = configure(tmp_path, "-DENGINE_CUDA=AUTO")
    assert cfg.returncode == 0, cfg.stdout + cfg.stderr
    assert "CUDA backend enabled" in cfg.stdout
    build = subprocess.run(["cmake", "--build", str(tmp_path / "b"), "--target", "restkv"], capture_output=True,
                           text=True, timeout=600)
    assert build.returncode == 0, build.stdout + build.stderr
