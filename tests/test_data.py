"""Tests of engine/data.py: data sets by name, fetched from a loopback HTTP server.

Every download goes to a server this file starts on 127.0.0.1 (ephemeral port, in a
thread): small fixture data sets registered by monkeypatching engine.data.DATASETS, and
the real registry through RESTKV_DATA_MIRROR (which replaces the host of every source URL).
"""
from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"

try:
    from engine import data as D
except ImportError:  # engine/__init__ imports the compiled module, which may not be built yet
    _spec = importlib.util.spec_from_file_location("engine_data_under_test", ROOT / "engine" / "data.py")
    D = importlib.util.module_from_spec(_spec)
    sys.modules[_spec.name] = D          # dataclasses look the module up there
    _spec.loader.exec_module(D)

EngineError = D.EngineError


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


# --------------------------------------------------------------------------- loopback server

class Loopback:
    """An HTTP server on 127.0.0.1 in a thread.  routes: path -> fn(handler) that answers;
    `requests` logs (method, path) of every request."""

    def __init__(self):
        self.routes: dict = {}
        self.requests: list = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):      # keep pytest's output clean
                pass

            def _any(self):
                path = self.path.split("?")[0]
                owner.requests.append((self.command, path))
                fn = owner.routes.get(path)
                if fn is None:
                    self.send_error(404)
                else:
                    fn(self)

            do_GET = do_HEAD = _any

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return self.base + path

    def serve(self, path: str, body: bytes, mode: str = "ok") -> None:
        """ok; truncate (Content-Length of the whole, half sent, connection closed);
        short (no Content-Length, half sent); corrupt (same length, other bytes);
        fail-once (503 the first time)."""
        state = {"calls": 0}

        def fn(h):
            state["calls"] += 1
            if mode == "fail-once" and state["calls"] == 1:
                h.send_error(503)
                return
            data = bytes(b ^ 0x55 for b in body) if mode == "corrupt" else body
            h.send_response(200)
            if mode != "short":
                h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            if h.command == "HEAD":
                return
            if mode in ("truncate", "short"):
                h.wfile.write(data[: len(data) // 2])
                h.wfile.flush()
                h.close_connection = True
                h.connection.shutdown(socket.SHUT_RDWR)
                return
            h.wfile.write(data)

        self.routes[path] = fn

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Loopback()
    yield s
    s.close()


def closed_port_url(path: str = "/x") -> str:
    """A loopback URL nothing listens on: connection refused."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}{path}"


# --------------------------------------------------------------------------- fixture data sets

TEXT = b"one passage here\nanother passage there\n" * 50
A, B = b"first essay\n" * 30, b"second essay\n" * 20


def _zip(members: dict) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for n, b in members.items():
            z.writestr(n, b)
    return buf.getvalue()


def _tgz(members: dict) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for n, b in members.items():
            info = tarfile.TarInfo(n)
            info.size = len(b)
            t.addfile(info, io.BytesIO(b))
    return buf.getvalue()


ZIP = _zip({"pkg/test.raw": TEXT, "pkg/other.raw": b"unused"})
TGZ = _tgz({"dev.txt": A, "test.txt": B, "novels/n1.txt": b"x" * 1000})
JSONL = b'{"text": "a first passage"}\n{"text": "a second\\npassage"}\n'


@pytest.fixture
def env(tmp_path, monkeypatch):
    """An empty data cache and shared folder; no mirror; no retries (the tests count attempts)."""
    cache, shared = tmp_path / "cache", tmp_path / "shared"
    shared.mkdir()
    monkeypatch.setenv("RESTKV_DATA", str(cache))
    monkeypatch.setenv("RESTKV_SHARED_DATA", str(shared))
    monkeypatch.delenv("RESTKV_DATA_MIRROR", raising=False)
    monkeypatch.setattr(D, "RETRIES", 0)
    return type("Env", (), {"cache": cache, "shared": shared})


@pytest.fixture
def fake(server, monkeypatch, env):
    """Register small data sets served by the loopback server."""
    P, S = D.Part, D.DataSet
    server.serve("/plain.txt", TEXT)
    server.serve("/pkg.zip", ZIP)
    server.serve("/both.tgz", TGZ)
    server.serve("/p.jsonl", JSONL)
    server.serve("/essays/a.txt", A)
    server.serve("/essays/b.txt", B)
    tgz = dict(url=server.url("/both.tgz"), download_name="both.tgz", download_sha256=sha(TGZ))
    sets = [
        S("plain", "a plain file", "plain/plain.txt", (P("plain/plain.txt", sha(TEXT), server.url("/plain.txt")),), "1 KB"),
        S("zipped", "a zip member", "zipped/test.raw",
          (P("zipped/test.raw", sha(TEXT), server.url("/pkg.zip"), download_name="pkg.zip",
             download_sha256=sha(ZIP), member="pkg/test.raw"),), "1 KB"),
        S("tar-dev", "known member hash", "tar/dev.txt", (P("tar/dev.txt", sha(A), member="dev.txt", **tgz),), "1 KB"),
        S("tar-test", "unknown member hash (TOFU)", "tar/test.txt",
          (P("tar/test.txt", None, member="test.txt", **tgz),), "1 KB"),
        S("jsonl", "converted", "j/lines.txt",
          (P("j/lines.txt", None, server.url("/p.jsonl"), download_name="p.jsonl",
             download_sha256=sha(JSONL), convert="jsonl-text"),), "1 KB"),
        S("folder", "two files", "essays", (P("essays/a.txt", sha(A), server.url("/essays/a.txt")),
                                            P("essays/b.txt", sha(B), server.url("/essays/b.txt"))),
          "1 KB", folder=True),
    ]
    monkeypatch.setattr(D, "DATASETS", {s.name: s for s in sets})
    monkeypatch.setattr(D, "ALIASES", {"flat": "plain"})
    return server


def files_under(d: Path) -> list:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file()) if d.exists() else []


def gets(server, path) -> int:
    return sum(1 for m, p in server.requests if m == "GET" and p == path)


# --------------------------------------------------------------------------- complete downloads

def test_plain_download_is_verified_and_reused(fake, env):
    p = D.path("plain")
    assert p == env.cache / "plain" / "plain.txt" and p.read_bytes() == TEXT
    assert D.path("flat") == p and D.fetch("plain") == p       # alias; already there
    assert gets(fake, "/plain.txt") == 1
    assert files_under(env.cache) == ["plain/plain.txt"]


def test_zip_member_extracted_and_archive_removed(fake, env):
    p = D.path("zipped")
    assert p.read_bytes() == TEXT
    assert files_under(env.cache) == ["zipped/test.raw"]          # no archive, no .part left


def test_one_archive_serves_two_sets_and_unknown_hash_is_recorded(fake, env, capsys):
    p = D.path("tar-test")
    assert p.read_bytes() == B and (env.cache / "tar" / "dev.txt").read_bytes() == A
    record = json.loads((env.cache / D._TOFU_FILE).read_text())
    assert record == {"tar/test.txt": sha(B)}
    assert "trust on first use" in capsys.readouterr().err
    assert D.path("tar-dev") == env.cache / "tar" / "dev.txt"
    assert gets(fake, "/both.tgz") == 1
    # a later copy that differs from the recorded hash is refused and fetched again
    p.write_bytes(b"tampered")
    assert D.path("tar-test").read_bytes() == B and gets(fake, "/both.tgz") == 2


def test_jsonl_converted_to_one_passage_a_line(fake, env):
    assert D.path("jsonl").read_text() == "a first passage\na second passage\n"


def test_folder_data_set(fake, env):
    p = D.path("folder")
    assert p == env.cache / "essays" and sorted(x.name for x in p.iterdir()) == ["a.txt", "b.txt"]
    (p / "b.txt").unlink()                                          # a missing file is fetched again
    assert D.path("folder") == p and gets(fake, "/essays/b.txt") == 2 and gets(fake, "/essays/a.txt") == 1


def test_retry_after_a_failed_attempt(fake, env, monkeypatch):
    fake.serve("/plain.txt", TEXT, mode="fail-once")
    monkeypatch.setattr(D, "RETRIES", 1)
    assert D.path("plain").read_bytes() == TEXT and gets(fake, "/plain.txt") == 2


# --------------------------------------------------------------------------- failed downloads

@pytest.mark.parametrize("mode,reason", [("truncate", r"closed early: \d+ bytes received, \d+ more expected"),
                                         ("short", "does not match"), ("corrupt", "does not match")])
@pytest.mark.parametrize("name,path", [("plain", "/plain.txt"), ("zipped", "/pkg.zip")])
def test_bad_download_leaves_nothing(fake, env, mode, reason, name, path):
    body = {"/plain.txt": TEXT, "/pkg.zip": ZIP}[path]
    fake.serve(path, body, mode=mode)
    with pytest.raises(EngineError, match=reason) as e:
        D.path(name)
    msg = str(e.value)
    assert fake.url(path) in msg and "-f FILE" in msg
    dest = env.cache / ("downloads/pkg.zip" if name == "zipped" else "plain/plain.txt")
    assert f"put it at {dest}" in msg
    assert files_under(env.cache) == []


def test_offline_error_names_url_and_destination(env, monkeypatch):
    url = closed_port_url("/plain.txt")
    monkeypatch.setattr(D, "DATASETS", {"plain": D.DataSet(
        "plain", "", "plain/plain.txt", (D.Part("plain/plain.txt", sha(TEXT), url),), "")})
    with pytest.raises(EngineError) as e:
        D.path("plain")
    msg = str(e.value)
    assert "connection failed" in msg and "Connection refused" in msg
    assert f"download {url} and put it at {env.cache / 'plain' / 'plain.txt'}" in msg
    assert files_under(env.cache) == []
    with pytest.raises(EngineError, match="not found; run `python -m engine.data fetch plain`"):
        D.path("plain", fetch=False)                                 # no network at all


def test_interrupted_download_leaves_nothing(fake, env, monkeypatch):
    import pooch

    def interrupted(self, url, output_file, pooch_, check_only=False):
        with open(output_file, "wb") as f:
            f.write(TEXT[:100])
        raise KeyboardInterrupt

    monkeypatch.setattr(pooch.HTTPDownloader, "__call__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        D.path("plain")
    assert files_under(env.cache) == []


def test_unknown_name_lists_the_names():
    with pytest.raises(EngineError, match="unknown data set 'nope'; known: lambada-dev.*wikitext2"):
        D.path("nope")


# --------------------------------------------------------------------------- shared data folder

def test_shared_copy_used_in_place(fake, env):
    (env.shared / "plain").mkdir()
    (env.shared / "plain" / "plain.txt").write_bytes(TEXT)
    assert D.path("plain") == env.shared / "plain" / "plain.txt"
    assert fake.requests == [] and files_under(env.cache) == []
    assert D.fetch("plain") == env.cache / "plain" / "plain.txt"     # fetch copies it into the cache
    assert fake.requests == [] and files_under(env.cache) == ["plain/plain.txt"]


def test_shared_copy_with_wrong_hash_is_rejected(fake, env, capsys):
    (env.shared / "plain").mkdir()
    (env.shared / "plain" / "plain.txt").write_bytes(TEXT + b"changed")
    with pytest.raises(EngineError, match="plain.txt was rejected: sha256 .* is not the expected"):
        D.path("plain", fetch=False)
    assert D.path("plain") == env.cache / "plain" / "plain.txt"       # downloaded instead
    assert "warning: ignoring" in capsys.readouterr().err


def test_shared_dirs_default_to_checkout_and_cwd(monkeypatch, tmp_path):
    monkeypatch.delenv("RESTKV_SHARED_DATA", raising=False)
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    dirs = D.shared_dirs()
    assert dirs[0] == tmp_path / "shared" / "data"
    # the checkout's ../shared/data: only when engine is imported from a checkout (an installed
    # package in site-packages has no such neighbour; CI imports the installed one)
    from_checkout = Path(D.__file__).resolve().parent.parent == ROOT
    if SHARED.is_dir() and from_checkout:
        assert SHARED.resolve() in [d.resolve() for d in dirs]


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} not found")
@pytest.mark.parametrize("name,rel", [("wikitext2", "wikitext-2/wiki.test.raw"),
                                      ("lambada", "lambada/lambada_development_plain_text.txt"),
                                      ("ruler-haystack", "paul_graham_essays")])
def test_real_registry_matches_shared_copies(env, name, rel):
    """The registry's sha256 values are those of this machine's byte-for-byte copies."""
    src = SHARED / rel
    if not src.exists():
        pytest.skip(f"{src} not found")
    dst = env.shared / rel
    shutil.copytree(src, dst) if src.is_dir() else (dst.parent.mkdir(parents=True), shutil.copy(src, dst))
    assert D.path(name, fetch=False) == dst
    victim = next(dst.glob("*.txt")) if dst.is_dir() else dst
    victim.write_bytes(victim.read_bytes()[:-1])
    with pytest.raises(EngineError, match="rejected"):
        D.path(name, fetch=False)


def test_real_registry_shape():
    assert D.names() == ["lambada-dev", "lambada-openai", "lambada-test", "paul-graham-essays", "wikitext2"]
    assert D._get("lambada").name == "lambada-dev" and D._get("WikiText").name == "wikitext2"
    assert D._get("paul_graham_essays").name == "paul-graham-essays"
    essays = D.DATASETS["paul-graham-essays"].parts
    assert len(essays) == 49 and all(len(p.sha256) == 64 for p in essays)
    for ds in D.DATASETS.values():
        for p in ds.parts:
            assert p.url.startswith("https://") and (p.sha256 or p.download_sha256)


def test_mirror_rewrites_real_urls_and_corrupt_archive_is_refused(server, env, monkeypatch):
    """The real wikitext2 entry, through RESTKV_DATA_MIRROR: an archive whose sha256 is not the
    published one is refused and nothing is kept."""
    monkeypatch.setenv("RESTKV_DATA_MIRROR", server.base)
    server.serve("/datasets/ggml-org/ci/resolve/main/wikitext-2-raw-v1.zip", _zip({"wikitext-2-raw/wiki.test.raw": TEXT}))
    with pytest.raises(EngineError, match="ef7edb566e3e2b2d") as e:
        D.path("wikitext2")
    assert server.url("/datasets/ggml-org/ci/resolve/main/wikitext-2-raw-v1.zip") in str(e.value)
    assert files_under(env.cache) == []


# --------------------------------------------------------------------------- CLI (subprocess)

def _run(args, env_extra, cwd=ROOT):
    # `python -m engine.data` needs the compiled extension (engine/__init__); the script form does not
    have_ext = importlib.util.find_spec("_restkv_ffi") is not None
    entry = ["-m", "engine.data"] if have_ext else [str(ROOT / "engine" / "data.py")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESTKV_")}
    if have_ext:  # the compiled core this process imported, not an older install's
        import subproc

        env.update(PYTHONPATH=subproc.pythonpath())
    else:
        env.update(PYTHONPATH=str(ROOT))
    env.update(**env_extra)
    return subprocess.run([sys.executable, *entry, *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=120)


@pytest.fixture
def cli_env(tmp_path):
    (tmp_path / "shared").mkdir()
    return {"RESTKV_DATA": str(tmp_path / "cache"), "RESTKV_SHARED_DATA": str(tmp_path / "shared")}


def test_cli_list_json(cli_env, tmp_path):
    r = _run(["list", "--json"], cli_env)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["data_dir"] == str(tmp_path / "cache")
    assert [d["name"] for d in out["datasets"]] == D.names()
    assert not any(d["present"] for d in out["datasets"])
    r = _run(["list"], cli_env)
    assert r.returncode == 0 and "wikitext2" in r.stdout and "not present" in r.stdout


def test_cli_errors_exit_2_without_traceback(cli_env, tmp_path):
    r = _run(["path", "nope"], cli_env)
    assert r.returncode == 2 and r.stderr.startswith("error: unknown data set 'nope'")
    r = _run(["path", "wikitext2", "--no-fetch"], cli_env)
    assert r.returncode == 2 and "error: data set wikitext2 not found" in r.stderr
    assert str(tmp_path / "cache" / "wikitext-2" / "wiki.test.raw") in r.stderr
    r = _run(["fetch", "wikitext2", "--retries", "0"], {**cli_env, "RESTKV_DATA_MIRROR": closed_port_url("")})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "error: could not download wikitext2" in r.stderr and "Connection refused" in r.stderr
    assert "/datasets/ggml-org/ci/resolve/main/wikitext-2-raw-v1.zip and put it at " in r.stderr
    assert str(tmp_path / "cache" / "downloads" / "wikitext-2-raw-v1.zip") in r.stderr
    assert files_under(tmp_path / "cache") == []
    r = _run([], cli_env)
    assert r.returncode == 2 and "fetch" in r.stdout
    r = _run(["--help"], cli_env)
    assert r.returncode == 0 and "RESTKV_DATA" in r.stdout and "lambada = lambada-dev" in r.stdout


@pytest.mark.skipif(not (SHARED / "paul_graham_essays").is_dir(), reason="no essays to serve")
def test_cli_fetch_real_essays_from_mirror(server, cli_env, tmp_path):
    """The real registry end to end: the 49 essays served under their upstream paths."""
    prefix = D._ESSAYS_URL.replace("https://raw.githubusercontent.com", "")
    for f in (SHARED / "paul_graham_essays").glob("*.txt"):
        server.serve(prefix + f.name, f.read_bytes())
    env = {**cli_env, "RESTKV_DATA_MIRROR": server.base}
    r = _run(["fetch", "essays", "-q"], env)
    assert r.returncode == 0, r.stderr
    folder = tmp_path / "cache" / "paul_graham_essays"
    assert r.stdout.strip() == str(folder) and len(list(folder.glob("*.txt"))) == 49
    r = _run(["path", "paul-graham-essays", "--no-fetch"], env)
    assert r.returncode == 0 and r.stdout.strip() == str(folder)
