"""The per-operation parity harness of the backends (tests/backend_ops/backend_ops.c, the shape of
ggml's test-backend-ops): every operation of src/backend/backend.h on the backend under test against
the CPU reference (portable kernels, weights as stored), by normalised mean squared error.

Here the backend under test is the CPU backend with its AVX2 kernels and repacked weights (on a
machine without AVX2 both sides run the portable kernels: the cases still run, and must agree). A CUDA
build runs the same harness with -b cuda on a machine with a GPU. Beside it, tests/kernel_twins/
kernel_twins.c compares the AVX-512 kernels of the VNNI tier with their AVX2 twins bit for bit."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    if shutil.which("cmake") is None:
        pytest.skip("cmake not found")
    build = tmp_path_factory.mktemp("backend_ops")
    cfg = subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build), "-DENGINE_BACKEND_OPS=ON", "-DENGINE_PYTHON=OFF",
                          "-DENGINE_CUDA=OFF", "-DCMAKE_BUILD_TYPE=Release"], capture_output=True, text=True, timeout=300)
    assert cfg.returncode == 0, cfg.stdout + cfg.stderr
    bld = subprocess.run(["cmake", "--build", str(build), "--target", "restkv-backend-ops", "restkv-kernel-twins", "-j2"],
                         capture_output=True, text=True, timeout=900)
    assert bld.returncode == 0, bld.stdout + bld.stderr
    return build / "restkv-backend-ops"


def run(exe, *args):
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=300)


def cases(out: str):
    return re.findall(r"^  (\S+)\s+(.*?)\s+(OK|FAIL)\s+\(nmse (\S+), limit (\S+)\)$", out, re.M)


def test_every_operation_matches_the_reference(harness):
    r = run(harness)
    assert r.returncode == 0, r.stdout + r.stderr
    found = cases(r.stdout)
    ops = {c[0] for c in found}
    # every operation of the interface that computes something is covered
    assert ops >= {"matmul", "matmul_swiglu", "embed", "rmsnorm", "add", "swiglu", "geglu", "softcap", "rope", "attention",
                   "attention.stats", "kv_gather+copy", "kv_reposition", "window_attention"}, ops
    assert len(found) >= 100 and all(c[2] == "OK" for c in found)
    assert re.search(rf"^{len(found)}/{len(found)} cases passed$", r.stdout, re.M)


def test_the_harness_fails_a_backend_that_is_off(harness):
    # 5% relative noise on every output of the backend under test: every case must fail
    r = run(harness, "--perturb")
    assert r.returncode == 1, r.stdout
    found = cases(r.stdout)
    assert found and all(c[2] == "FAIL" for c in found), [c for c in found if c[2] == "OK"]


def test_one_operation_and_an_absent_backend(harness):
    r = run(harness, "-o", "rope")
    assert r.returncode == 0 and [c[0] for c in cases(r.stdout)] == ["rope", "rope"], r.stdout  # normal and NEOX
    r = run(harness, "-b", "cuda")  # this build has no CUDA backend: exit 77 with the reason
    assert r.returncode == 77 and "no CUDA backend" in r.stdout, r.stdout
    r = run(harness, "-b", "tpu")
    assert r.returncode == 77 and "unknown backend 'tpu'" in r.stdout, r.stdout


def test_avx512_kernels_agree_with_their_avx2_twins_bit_for_bit(harness):
    """tests/kernel_twins/kernel_twins.c, built beside the harness: the VNNI tier's 512-bit attention
    scores, value sums, softmax exponentials and SwiGLU against the AVX2 kernels on random inputs"""
    exe = harness.parent / "restkv-kernel-twins"
    r = run(exe)
    if r.returncode == 77:
        pytest.skip(r.stdout.strip())
    assert r.returncode == 0, r.stdout + r.stderr
    found = re.findall(r"^  (\S+)\s+(.*?)\s+(OK|FAIL)$", r.stdout, re.M)
    assert {c[0] for c in found} == {"att_scores", "att_values", "softmax_exp", "swiglu"}
    assert len(found) >= 200 and all(c[2] == "OK" for c in found)
    # and it can fail: one ulp on every output of the AVX-512 side fails every case
    r = run(exe, "--perturb")
    assert r.returncode == 1 and "OK" not in re.findall(r"(OK|FAIL)$", r.stdout, re.M), r.stdout
