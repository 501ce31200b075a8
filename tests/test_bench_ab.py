"""engine.bench --vs-build: another build of the engine measured alongside this one, each in a worker
process of its own; ratios new/old with their per-round spread in the table and the JSON; a folder
that is no importable build, or a worker that dies, as one line 'error: ...'.
(Here the 'other' build is this one, reached through a folder of links or its BUILD:CHECKOUT paths.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import engine
import subproc
from engine import bench

ARGS = ["--threads", "1", "--reps", "2", "--prefill", "16", "--depths", "0,32", "--gen", "4"]
CASES = ["prefill 16", "decode 4 @ depth 0", "decode 4 @ depth 32", "decode 4 @ depth 32, restkv 0.1"]


def run_bench(*args, cwd) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=subproc.pythonpath())
    return subprocess.run([sys.executable, "-m", "engine.bench", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def one_error_line(r) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith(("warning: ", "bench: "))]
    assert "Traceback" not in r.stderr and len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


@pytest.fixture(scope="module")
def linked_build(tmp_path_factory):
    """A folder laid out as `pip install --target` leaves it (engine/ and _restkv_ffi*.so), of links to the
    build under test."""
    import _restkv_ffi

    d = tmp_path_factory.mktemp("linked_build")
    os.symlink(os.path.dirname(os.path.abspath(engine.__file__)), d / "engine")
    core = os.path.abspath(_restkv_ffi.__file__)
    os.symlink(core, d / os.path.basename(core))
    return str(d)


def check_ab(res: dict, other: str, reps: int = 2) -> None:
    assert res["vs_build"] == other and [r["case"] for r in res["rows"]] == CASES
    assert set(res["builds"]) == {"new", "old"}
    assert res["builds"]["new"]["core_sha256"] == res["builds"]["old"]["core_sha256"]  # the same build twice
    for r in res["rows"]:
        new, old = r["ours_samples"], r["old_samples"]
        assert len(new) == len(old) == reps and min(new + old) > 0, r
        assert r["ours_tok_s"] > 0 and r["old_tok_s"] > 0
        assert r["round_ratios_vs_old"] == [round(a / b, 3) for a, b in zip(new, old)]
        assert r["ratio_vs_old_spread"] == [min(r["round_ratios_vs_old"]), max(r["round_ratios_vs_old"])]
        assert r["ratio_vs_old"] == pytest.approx(r["ours_tok_s"] / r["old_tok_s"], rel=0.01)
        assert r["old_kv_bytes"] == r["kv_bytes"]


def test_vs_build_json_and_table(tiny_gguf, linked_build, tmp_path):
    out = tmp_path / "ab.json"
    r = run_bench("--gguf", tiny_gguf(weight_type="Q4_0"), *ARGS, "--no-rss", "--vs-build", linked_build,
                  "--json", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    check_ab(res, linked_build)
    assert res["builds"]["old"]["path"] == [linked_build]
    assert res["builds"]["old"]["engine"] == os.path.join(linked_build, "engine")
    assert not res["vs_llama_cpp"] and all(r["llama_cpp_samples"] == [] for r in res["rows"])
    assert "| case | new tok/s | old tok/s | new/old | per round | KV in use |" in r.stdout
    assert "| prefill 16 |" in r.stdout and "round 0/2 (warm-up) done" in r.stderr


def test_vs_build_checkout_paths_with_llama_cpp_and_rss(tiny_gguf, tmp_path):
    """BUILD:CHECKOUT as in PYTHONPATH; all three engines; peak RSS of both builds, a fresh worker each."""
    pytest.importorskip("llama_cpp")
    other = os.pathsep.join(bench.this_build()[0])
    out = tmp_path / "ab3.json"
    r = run_bench("--gguf", tiny_gguf(weight_type="Q4_0"), *ARGS, "--vs-build", other, "--vs-llama-cpp",
                  "--json", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    check_ab(res, other)
    for row in res["rows"]:  # (a compressed decode: against llama.cpp's full-cache one, as without --vs-build)
        assert len(row["llama_cpp_samples"]) == (0 if row["case"].endswith("restkv 0.1") else 2)
        assert row["ratio"] > 0 and len(row["round_ratios"]) == 2
        assert row["ratio_spread"] == [min(row["round_ratios"]), max(row["round_ratios"])]
    for who in ("ours", "old", "llama.cpp"):
        assert 0 < res["rss"][who]["peak_rss_bytes"] < 300 * 2**20, who
    assert "| new/llama.cpp | per round |" in r.stdout and "peak RSS" in r.stdout


def fake_build(root, init: str) -> str:
    (root / "engine").mkdir(parents=True)
    (root / "engine" / "__init__.py").write_text(init)
    (root / "_restkv_ffi.py").write_text("")
    return str(root)


@pytest.mark.parametrize("kind", ["missing", "file", "empty", "no_core", "import_fails", "many_builds"])
def test_vs_build_not_a_build(tiny_gguf, tmp_path, kind):
    d = tmp_path / "other"
    if kind == "file":
        d.write_text("x")
    elif kind == "empty":
        d.mkdir()
    elif kind == "no_core":
        (d / "engine").mkdir(parents=True)
        (d / "engine" / "__init__.py").write_text("")
    elif kind == "import_fails":
        fake_build(d, "raise RuntimeError('not importable on purpose')\n")
    elif kind == "many_builds":  # a checkout with two cmake builds: which one is ambiguous
        (d / "engine").mkdir(parents=True)
        (d / "engine" / "__init__.py").write_text("")
        import importlib.machinery

        for b in ("a", "b"):
            (d / "build" / b).mkdir(parents=True)
            (d / "build" / b / ("_restkv_ffi" + importlib.machinery.EXTENSION_SUFFIXES[0])).write_text("")
    r = run_bench("--gguf", tiny_gguf(weight_type="Q4_0"), *ARGS, "--no-rss", "--vs-build", str(d), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    line = one_error_line(r)
    assert "--vs-build" in line
    want = {"missing": "no such folder", "file": "is not a folder", "empty": "no engine package",
            "no_core": "no compiled core", "import_fails": "not importable on purpose",
            "many_builds": "2 builds of the compiled core"}[kind]
    assert want in line, line


def test_vs_build_worker_dies(tiny_gguf, tmp_path):
    """A worker that dies while loading: exit status 1, its stderr's tail in the one line."""
    d = fake_build(tmp_path / "crashing", (
        "import os, sys\n__version__ = '0'\n"
        "def policies():\n    return ['restkv']\n"
        "def cpu_features():\n    return ''\n"
        "class Model:\n    def __init__(self, *a, **k):\n"
        "        sys.stderr.write('fake core: crashed while loading\\n'); sys.stderr.flush(); os._exit(3)\n"))
    r = run_bench("--gguf", tiny_gguf(weight_type="Q4_0"), *ARGS, "--no-rss", "--vs-build", d, cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    line = one_error_line(r)
    assert "died (exit status 3)" in line and "fake core: crashed while loading" in line, line
