"""The C side of the public API: src/examples/generate.c built with CMake, and src/restkv.h
compiled as C99 and as C++ (it must stay valid for both)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from engine import Model
from engine._native import ffi, lib

ROOT = Path(__file__).resolve().parent.parent
HEADER_DIR = ROOT / "src"


def _cc():
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cxx():
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


@pytest.fixture(scope="module")
def generate_exe(tmp_path_factory):
    if shutil.which("cmake") is None:
        pytest.skip("cmake not found")
    if _cc() is None:
        pytest.skip("no C compiler (cc, gcc or clang) found")
    build = tmp_path_factory.mktemp("c_example")
    cfg = subprocess.run(
        ["cmake", "-S", str(ROOT), "-B", str(build), "-DENGINE_EXAMPLES=ON", "-DENGINE_PYTHON=OFF",
         "-DCMAKE_BUILD_TYPE=Release"], capture_output=True, text=True, timeout=300)
    assert cfg.returncode == 0, cfg.stdout + cfg.stderr
    bld = subprocess.run(["cmake", "--build", str(build), "--target", "restkv-generate", "-j2"],
                         capture_output=True, text=True, timeout=600)
    assert bld.returncode == 0, bld.stdout + bld.stderr
    exe = build / "restkv-generate"
    assert exe.exists(), f"{exe} was not built"
    return exe


def run(exe, *args, timeout=120):
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, timeout=timeout)


def piece(model, t):
    """rk_model_token_piece(t, special=0): the bytes the example prints for token t."""
    buf = ffi.new("char[]", 256)
    n = lib.rk_model_token_piece(model._handle(), t, buf, 256, 0)
    return ffi.buffer(buf, min(n, 256))[:] if n > 0 else b""


def greedy_bytes(model, prompt, n):
    """What the example prints at temperature 0: prompt pieces, greedy pieces until EOS, newline."""
    out = b"".join(piece(model, t) for t in prompt)
    with model.session(n_ctx=len(prompt) + n) as s:
        logits = s.eval(prompt)
        for i in range(n):
            t = int(np.argmax(logits))
            if t == model.tokenizer.eos_id:
                break
            out += piece(model, t)
            if i + 1 < n:
                logits = s.eval([t])
    return out + b"\n"


def test_tiny_runs(generate_exe, tiny_gguf):
    path = tiny_gguf()
    r = run(generate_exe, path, "-n", 8, 1, 2, 3)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert r.stderr == b""
    assert len(r.stdout) > 1  # something besides the final newline
    with Model(path) as m:
        assert r.stdout == greedy_bytes(m, [1, 2, 3], 8)


def test_tiny_sampling_and_default_prompt(generate_exe, tiny_gguf):
    path = tiny_gguf()
    a = run(generate_exe, path, "-n", 6, "--temp", "1.0", "--seed", 5, "-t", 1)
    b = run(generate_exe, path, "-n", 6, "--temp", "1.0", "--seed", 5, "-t", 2)
    assert a.returncode == 0 and b.returncode == 0
    assert a.stdout == b.stdout  # same seed, same text (thread count does not change results)


def test_smollm2_paris(generate_exe, smollm2):
    with Model(smollm2) as m:
        ids = m.tokenize("The capital of France is")
    r = run(generate_exe, smollm2, "-n", 8, *ids)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    text = r.stdout.decode("utf-8", "replace")
    assert text.startswith("The capital of France is")
    assert "Paris" in text


def test_bad_path(generate_exe, tmp_path):
    r = run(generate_exe, tmp_path / "nope.gguf", "-n", 4)
    assert r.returncode == 1
    err = r.stderr.decode()
    assert err.startswith("error: ") and "nope.gguf" in err and "cannot open" in err


def test_not_a_gguf(generate_exe, tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"this is not a gguf file at all" * 10)
    r = run(generate_exe, bad)
    assert r.returncode == 1
    assert r.stderr.decode().startswith("error: ")


def test_bad_token_id(generate_exe, tiny_gguf):
    r = run(generate_exe, tiny_gguf(), "-n", 4, 1, 99999)
    assert r.returncode == 1
    err = r.stderr.decode()
    assert "error: " in err and "99999" in err


@pytest.mark.parametrize("args", [["-n", "abc"], ["-n"], ["-n", "-3"], ["--temp", "x"], ["--temp", "-1"],
                                  ["--seed"], ["1", "2x"], ["1.5"]])
def test_bad_command_line(generate_exe, tiny_gguf, args):
    r = run(generate_exe, tiny_gguf(), *args)
    assert r.returncode == 2
    assert r.stderr.decode().startswith("error: bad argument")
    assert r.stdout == b""


def test_library_errors_reported(generate_exe, tiny_gguf):
    r = run(generate_exe, tiny_gguf(), "-t", 100000, 1)
    assert r.returncode == 1 and "error: n_threads 100000" in r.stderr.decode()
    r = run(generate_exe, tiny_gguf(), "-n", 2, -1)  # a token id only the library rejects
    assert r.returncode == 1 and "token id -1" in r.stderr.decode()


def test_usage(generate_exe):
    r = run(generate_exe)
    assert r.returncode == 2 and b"usage" in r.stderr


# ---------------------------------------------------------------- the header

HEADER_USE = """#include "restkv.h"
static int use(void) {
    rk_model_params mp = rk_model_default_params();
    rk_session_params sp = rk_session_default_params();
    rk_model *m = 0;
    rk_status st = rk_model_load(&m, "x.gguf", &mp);
    (void)sp;
    return st == RK_OK ? (int)RK_LOGITS_LAST + (int)RK_TYPE_Q4_K + (int)RK_DEVICE_CUDA : 0;
}
int main(void) { return use(); }
"""


def test_header_is_c99(tmp_path):
    cc = _cc()
    if cc is None:
        pytest.skip("no C compiler found")
    src = tmp_path / "use.c"
    src.write_text(HEADER_USE)
    r = subprocess.run([cc, "-std=c99", "-pedantic-errors", "-Wall", "-Wextra", "-Werror", "-fsyntax-only",
                        f"-I{HEADER_DIR}", str(src)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_header_is_cxx(tmp_path):
    cxx = _cxx()
    if cxx is None:
        pytest.skip("no C++ compiler (g++) found")
    src = tmp_path / "use.cpp"
    src.write_text(HEADER_USE.replace("(void)sp;", "(void)sp; static_assert(sizeof(rk_model_params) == 8, \"\");"))
    r = subprocess.run([cxx, "-std=c++11", "-pedantic-errors", "-Wall", "-Wextra", "-Werror", "-fsyntax-only",
                        f"-I{HEADER_DIR}", str(src)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
