"""The command-line tools at their edges (issue 11): every bad input a one-line 'error: ...' with exit
status 2 before any work, outputs checked up front and written atomically, Ctrl-C as one line and exit
status 130 with what was measured kept, numerically safe LAMBADA aggregation, warnings for too many
threads and for text that is not UTF-8, data sets by name, and help generated from the policy registry."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import fields
from pathlib import Path

import pytest

import engine
import subproc
from engine import cli
from engine.eviction import POLICY_INFO, Eviction, policies

TOOLS = ("perplexity", "lambada", "sweep", "ruler", "bench", "chat")
N_CTX = 64


def tool(name: str, *args, cwd, stdin: str = "", timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m engine.<name> args...` with the engine package this test imported."""
    env = dict(os.environ, PYTHONPATH=subproc.pythonpath())
    return subprocess.run([sys.executable, "-m", f"engine.{name}" if name else "engine", *args], cwd=cwd, env=env,
                          input=stdin, capture_output=True, text=True, timeout=timeout)


def assert_usage_error(r, *fragments):
    """Exit status 2, one line on stderr (after any warnings) 'error: ...' with every fragment, no traceback."""
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("warning: ")]
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("edges") / "t.txt"
    p.write_text(" ".join(f"word{i % 37} and {i}" for i in range(400)))
    return str(p)


@pytest.fixture(scope="module")
def lambada_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("edges") / "lam.txt"
    p.write_text("the cat sat on the mat and looked at the dog\nshe opened the door and saw her brother there\n")
    return str(p)


# ---------------------------------------------------------------- first run: python -m engine, --help

def test_python_m_engine_lists_the_tools_and_the_version(tmp_path):
    r = tool("", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for name in ("models", "perplexity", "lambada", "sweep", "ruler", "bench", "chat"):
        assert re.search(rf"python -m engine\.{name} +\S", r.stdout), name
    assert "--help" in r.stdout
    v = tool("", "--version", cwd=tmp_path)
    assert v.returncode == 0 and v.stdout.strip() == f"restkv-engine {engine.__version__}"
    assert_usage_error(tool("", "perplexity", cwd=tmp_path), "python -m engine.TOOL")


def test_policy_info_covers_every_policy_the_c_core_registers():
    assert set(POLICY_INFO) == set(policies())
    names = {f.name for f in fields(Eviction)}
    for policy, (desc, params) in POLICY_INFO.items():
        assert desc and set(params) <= names - {"policy", "budget", "schedule"}, policy


@pytest.mark.parametrize("name", TOOLS)
def test_help_lists_policies_with_parameters(name, tmp_path):
    r = tool(name, "--help", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for p in policies():
        assert re.search(rf"^  {p} +\S", r.stdout, re.M), p
    # parameters with their defaults: as options where the tool has them, else as fields
    d = Eviction()
    assert (f"--kernel {d.kernel}" in r.stdout) if name in ("perplexity", "lambada", "sweep", "ruler") else \
        (f"kernel={d.kernel}" in r.stdout)
    assert "exit status" in r.stdout.lower()


# ---------------------------------------------------------------- counts, budgets, threads

@pytest.mark.parametrize("name, args, fragment", [
    ("perplexity", ["--chunks", "0"], "--chunks"),
    ("perplexity", ["--chunks", "-3"], "--chunks"),
    ("lambada", ["--limit", "0"], "--limit"),
    ("sweep", ["--chunks", "0"], "--chunks"),
    ("sweep", ["--lambada-n", "-1"], "--lambada-n"),
    ("ruler", ["--samples", "0"], "--samples"),
    ("bench", ["--reps", "0"], "--reps"),
    ("bench", ["--gen", "0"], "--gen"),
    ("chat", ["--max-tokens", "0"], "--max-tokens"),
])
def test_zero_or_negative_counts_are_refused(tiny_gguf, tmp_path, name, args, fragment):
    r = tool(name, "--gguf", tiny_gguf(), *args, cwd=tmp_path)
    assert_usage_error(r, fragment, ">= 1")


@pytest.mark.parametrize("name, args", [
    ("perplexity", ["--budget", "inf", "--policy", "snapkv"]),
    ("perplexity", ["--budget", "nan", "--policy", "snapkv"]),
    ("sweep", ["--budgets", "1,inf"]),
    ("ruler", ["--budgets", "0.5,inf"]),
    ("bench", ["--budget", "inf"]),
    ("chat", ["--budget", "inf"]),
])
def test_infinite_budget_gets_the_right_reason(tiny_gguf, text_file, tmp_path, name, args):
    extra = ["-f", text_file] if name == "perplexity" else []
    r = tool(name, "--gguf", tiny_gguf(), *extra, *args, cwd=tmp_path)
    assert_usage_error(r, "finite number", "fraction in (0, 1]")
    assert "must be > 0" not in r.stderr


@pytest.mark.parametrize("name, args", [
    ("perplexity", ["--json", "/nonexistent/dir/x.json"]),
    ("lambada", ["--json", "/nonexistent/dir/x.json"]),
    ("sweep", ["--out", "{file}/sub"]),
    ("ruler", ["--out", "{file}/sub"]),
    ("bench", ["--json", "/nonexistent/dir/x.json"]),
    ("chat", ["--gguf", "/nonexistent.gguf"]),
])
def test_more_threads_than_cores_warns_in_every_tool(tiny_gguf, text_file, tmp_path, name, args):
    """The warning comes first; a bad later argument then stops the tool before any work."""
    many = cli.available_cores() + 1
    args = [a.replace("{file}", text_file) for a in args]
    r = tool(name, "--gguf", tiny_gguf(), "--threads", str(many), *args, cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    first = r.stderr.splitlines()[0]
    assert first.startswith(f"warning: --threads {many} is more than the {cli.available_cores()} core"), r.stderr


def test_threads_within_the_cores_do_not_warn(tiny_gguf, text_file, tmp_path):
    r = tool("perplexity", "--gguf", tiny_gguf(), "-f", text_file, "--ctx", str(N_CTX), "--chunks", "1",
             "--threads", "1", "--no-progress", cwd=tmp_path)
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr


# ---------------------------------------------------------------- input files

def test_input_file_problems_are_one_line_errors(tiny_gguf, tmp_path):
    for path, fragment in ((str(tmp_path), "is a directory"), (str(tmp_path / "absent.txt"), "no such file")):
        assert_usage_error(tool("perplexity", "--gguf", tiny_gguf(), "-f", path, cwd=tmp_path), path, fragment)
        assert_usage_error(tool("lambada", "--gguf", tiny_gguf(), "-f", path, cwd=tmp_path), path, fragment)
    assert_usage_error(tool("perplexity", "--gguf", str(tmp_path), "-f", str(tmp_path), cwd=tmp_path))
    assert_usage_error(tool("sweep", "--gguf", tiny_gguf(), "--datasets", "wikitext", "--wikitext", str(tmp_path),
                            "--out", str(tmp_path / "o"), cwd=tmp_path), "is a directory")


def test_unreadable_file_is_a_clear_error(tmp_path, monkeypatch):
    p = tmp_path / "secret.txt"
    p.write_text("x")
    if os.geteuid() != 0:
        p.chmod(0)
    else:  # root reads everything: make open() fail as it would for a user
        real_open = open

        def fake_open(f, *a, **k):
            if str(f) == str(p):
                raise PermissionError(13, "Permission denied", str(f))
            return real_open(f, *a, **k)
        monkeypatch.setattr("builtins.open", fake_open)
    with pytest.raises(cli.UsageError, match="cannot be read"):
        cli.read_text(str(p))


def test_text_that_is_not_utf8_warns_and_is_decoded_with_replacements(tiny_gguf, text_file, tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(Path(text_file).read_bytes() + " caf\xe9 na\xefve".encode("latin-1"))
    r = tool("perplexity", "--gguf", tiny_gguf(), "-f", str(bad), "--ctx", str(N_CTX), "--chunks", "1",
             "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    warns = [ln for ln in r.stderr.splitlines() if ln.startswith("warning: ")]
    assert len(warns) == 1 and "not valid UTF-8" in warns[0] and "2 invalid" in warns[0] and "U+FFFD" in warns[0]
    assert cli.read_text(str(bad)).endswith(" caf\ufffd na\ufffdve")
    # valid UTF-8 (non-ASCII included) says nothing
    good = tmp_path / "utf8.txt"
    good.write_text(Path(text_file).read_text() + " café", encoding="utf-8")
    assert "warning" not in tool("perplexity", "--gguf", tiny_gguf(), "-f", str(good), "--ctx", str(N_CTX),
                                 "--chunks", "1", "--no-progress", cwd=tmp_path).stderr


# ---------------------------------------------------------------- outputs

@pytest.mark.parametrize("name, args, fragment", [
    ("perplexity", ["--json", "/nonexistent/dir/x.json"], "does not exist"),
    ("perplexity", ["--json", "{tmp}"], "is a directory"),
    ("lambada", ["--json", "/nonexistent/dir/x.json"], "does not exist"),
    ("bench", ["--json", "/nonexistent/dir/x.json"], "does not exist"),
    ("sweep", ["--out", "{text}/sub"], "is not a folder"),
    ("sweep", ["--out", "{text}"], "not a folder"),
])
def test_output_paths_are_checked_before_the_run(tiny_gguf, text_file, lambada_file, tmp_path, name, args, fragment):
    args = [a.replace("{tmp}", str(tmp_path)).replace("{text}", text_file) for a in args]
    data = {"perplexity": ["-f", text_file], "lambada": ["-f", lambada_file],
            "sweep": ["--datasets", "wikitext", "--wikitext", text_file], "bench": []}[name]
    t0 = time.monotonic()
    r = tool(name, "--gguf", tiny_gguf(), *data, *args, cwd=tmp_path)
    assert_usage_error(r, fragment)
    assert "model:" not in r.stderr  # refused before the model was even opened
    assert time.monotonic() - t0 < 60


def test_atomic_write_leaves_nothing_half_written(tmp_path):
    out = tmp_path / "r.json"
    out.write_text('{"old": true}')
    with pytest.raises(KeyboardInterrupt):
        with cli.atomic_write(str(out)) as f:
            f.write('{"new": ')
            raise KeyboardInterrupt
    assert json.loads(out.read_text()) == {"old": True} and os.listdir(tmp_path) == ["r.json"]
    cli.write_json(str(out), {"new": 1})
    assert json.loads(out.read_text()) == {"new": 1} and os.listdir(tmp_path) == ["r.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # an ordinary file's mode, not mkstemp's 0600


# ---------------------------------------------------------------- LAMBADA: long targets

def test_exp_mean_overflows_to_inf():
    from engine.eval.report import exp_mean

    assert exp_mean(3.0, 3) == pytest.approx(math.e)
    assert exp_mean(1e6, 100) == math.inf and exp_mean(710.0 * 7, 7) == math.inf


def test_lambada_long_target_gives_inf_not_overflow(tiny_gguf):
    """A target of hundreds of tokens (a random model: ~log(vocab) nats each) sums far past exp's range."""
    from engine.eval.lambada import lambada, prepare

    with engine.Model(tiny_gguf()) as m:
        items, _ = prepare(m, ["the cat sat on the mat " + "qzxv" * 150, "one two three four five six"])
        assert len(items[0].target_ids) > 200
        seen = []
        res = lambada(m, items, progress=False, on_passage=lambda i, ok, nll: seen.append(nll))
    assert math.fsum(seen) / 2 > 709  # the mean NLL is past exp's range: the case that raised OverflowError
    assert res.ppl == math.inf and res.running[-1][1] == math.inf and res.n_scored == 2


def test_lambada_on_a_binary_file_does_not_crash(tiny_gguf, tmp_path):
    """The issue's `--dataset lambada -f /bin/ls --limit 2`, with a binary file of our own."""
    import random

    rnd = random.Random(0)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\n".join(b"header " + bytes(rnd.randrange(1, 256) for _ in range(900)).translate(None, b"\r\n")
                                + b" " + bytes(rnd.randrange(33, 127) for _ in range(700)) for _ in range(3)))
    out = tmp_path / "l.json"
    r = tool("perplexity", "--gguf", tiny_gguf(), "--dataset", "lambada", "-f", str(junk), "--limit", "2",
             "--json", str(out), "--no-progress", cwd=tmp_path)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "not valid UTF-8" in r.stderr
    res = json.loads(out.read_text())
    # a 700-character last word: hundreds of target tokens, a mean NLL past exp's range
    assert res["n_scored"] == 2 and res["ppl"] == math.inf and "ppl = inf" in r.stdout


# ---------------------------------------------------------------- data sets by name

def test_dataset_names_resolve_through_engine_data(tmp_path, monkeypatch, text_file):
    """--dataset NAME without -f asks engine.data.path(name, data_dir=...); -f wins; unknown names are refused."""
    from engine import data

    calls = []

    def path(name, data_dir=None, fetch=True):
        calls.append((name, data_dir))
        if name == "lambada-test":
            raise engine.EngineError("lambada-test is not downloaded: python -m engine.data fetch lambada-test")
        return Path(text_file) if name != "wikitext-2" else tmp_path
    monkeypatch.setattr(data, "path", path)
    assert cli.dataset_path("wikitext2", data_dir=str(tmp_path)) == text_file
    assert calls == [("wikitext2", str(tmp_path))]
    assert cli.dataset_path("wikitext2", file=text_file) == text_file and len(calls) == 1
    with pytest.raises(cli.UsageError, match="python -m engine.data fetch lambada-test"):
        cli.dataset_path("lambada-test")
    with pytest.raises(cli.UsageError, match="is a directory"):
        cli.dataset_path("wikitext-2")
    with pytest.raises(cli.UsageError, match="unknown data set 'nope'"):
        cli.dataset_path("nope")
    assert cli.dataset_kind("lambada-openai") == "lambada" and cli.dataset_kind("wikitext") == "wikitext"


def test_dataset_names_cover_engine_data():
    from engine import data

    assert set(data.names()) - {"paul-graham-essays"} <= set(cli.DATASET_KINDS)


def test_dataset_names_with_a_file(tiny_gguf, text_file, lambada_file, tmp_path):
    r = tool("perplexity", "--gguf", tiny_gguf(), "--dataset", "wikitext2", "-f", text_file, "--ctx", str(N_CTX),
             "--chunks", "1", "--no-progress", cwd=tmp_path)
    assert r.returncode == 0 and re.search(r"\| dataset +\| wikitext2 \(t\.txt\)", r.stdout), r.stdout + r.stderr
    r = tool("perplexity", "--gguf", tiny_gguf(), "--dataset", "lambada-dev", "-f", lambada_file, "--no-progress",
             cwd=tmp_path)
    assert r.returncode == 0 and "LAMBADA: accuracy" in r.stdout, r.stderr
    assert_usage_error(tool("perplexity", "--gguf", tiny_gguf(), "--dataset", "nope", cwd=tmp_path), "--dataset")
    assert_usage_error(tool("sweep", "--gguf", tiny_gguf(), "--datasets", "wikitext,wikitext2", "--wikitext",
                            text_file, "--out", str(tmp_path / "o"), cwd=tmp_path), "both wikitext")


# ---------------------------------------------------------------- Ctrl-C

def sigint_as_a_terminal_gives_it():
    """(preexec_fn) SIGINT back to its default in the child: when the test run itself was started in the
    background of a non-interactive shell (`cmd &`, nohup), SIGINT is ignored and inherited as ignored,
    and Python then installs no KeyboardInterrupt handler; a user's Ctrl-C reaches a foreground process"""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Child:
    """A tool in a child process whose stderr is read as it comes, to interrupt it at the right moment."""

    def __init__(self, name, *args, cwd):
        env = dict(os.environ, PYTHONPATH=subproc.pythonpath())
        self.p = subprocess.Popen([sys.executable, "-m", f"engine.{name}", *args], cwd=cwd, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  preexec_fn=sigint_as_a_terminal_gives_it)
        self.err = b""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        while chunk := self.p.stderr.read1(4096):
            self.err += chunk

    def wait_for(self, pattern: str, timeout: float = 120):
        t = time.monotonic() + timeout
        while not re.search(pattern, self.err.decode(errors="replace")):
            assert self.p.poll() is None, f"ended before {pattern!r}: {self.err.decode(errors='replace')}"
            assert time.monotonic() < t, f"no {pattern!r} in {self.err.decode(errors='replace')}"
            time.sleep(0.05)

    def interrupt(self):
        self.p.send_signal(signal.SIGINT)
        out = self.p.stdout.read()
        self.p.wait(timeout=120)
        self._reader.join(timeout=10)
        return self.p.returncode, out.decode(errors="replace"), self.err.decode(errors="replace")

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()


def last_line(err: str) -> str:
    return [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip()][-1]


@pytest.fixture(scope="module")
def long_text(tmp_path_factory):
    p = tmp_path_factory.mktemp("long") / "long.txt"
    p.write_text(" ".join(f"word{i % 97} and {i}" for i in range(30000)))
    return str(p)


needs_sigint = pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process")


@needs_sigint
def test_ctrl_c_in_perplexity_keeps_the_chunks_done(tiny_gguf, long_text, tmp_path):
    out = tmp_path / "p.json"
    c = Child("perplexity", "--gguf", tiny_gguf(), "-f", long_text, "--ctx", "128", "--json", str(out),
              "--threads", "1", cwd=tmp_path)
    try:
        c.wait_for(r"\b[2-9]\d*/\d+ \[")  # the progress bar has counted two chunks
        rc, stdout, err = c.interrupt()
    finally:
        c.kill()
    assert rc == 130 and "Traceback" not in err, err
    m = re.fullmatch(r"interrupted: (\d+) of (\d+) chunks done; partial results written to (.+)", last_line(err))
    assert m and m[3] == str(out), last_line(err)
    done, total = int(m[1]), int(m[2])
    assert 2 <= done < total
    res = json.loads(out.read_text())
    assert res["partial"] is True and res["n_chunks"] == done == len(res["chunk_ppl"])
    assert res["n_scored"] == done * (128 // 2 - 1) and res["ppl"] > 1 and res["ppl"] == res["chunk_ppl"][-1]
    assert f"[{done}]" in stdout and not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


@needs_sigint
def test_ctrl_c_in_bench_keeps_the_rounds_done(tiny_gguf, tmp_path):
    out = tmp_path / "b.json"
    c = Child("bench", "--gguf", tiny_gguf(weight_type="Q4_0"), "--threads", "1", "--reps", "100000",
              "--prefill", "16", "--depths", "0,32", "--gen", "4", "--no-rss", "--json", str(out), cwd=tmp_path)
    try:
        c.wait_for(r"round 2/100000 done")
        rc, stdout, err = c.interrupt()
    finally:
        c.kill()
    assert rc == 130 and "Traceback" not in err, err
    m = re.fullmatch(r"interrupted: (\d+) of 100000 timed rounds done; partial results written to (.+)",
                     last_line(err))
    assert m, last_line(err)
    res = json.loads(out.read_text())
    assert res["partial"] is True and res["reps"] == int(m[1]) >= 2 and res["reps_asked"] == 100000
    assert all(len(r["ours_samples"]) == res["reps"] for r in res["rows"]) and "| prefill 16 |" in stdout


@needs_sigint
def test_ctrl_c_in_sweep_keeps_the_runs_done_and_resumes(tiny_gguf, text_file, tmp_path):
    lam = tmp_path / "lam.txt"
    lam.write_text("".join(f"passage {i} goes on and on about the sea and the sky and ends with word{i}\n"
                           for i in range(20000)))
    out = tmp_path / "sw"
    args = ["--gguf", tiny_gguf(), "--policies", "streaming", "--budgets", "1", "--datasets", "wikitext,lambada",
            "--wikitext", text_file, "--lambada", str(lam), "--ctx", str(N_CTX), "--out", str(out),
            "--threads", "1"]
    c = Child("sweep", *args, cwd=tmp_path)
    try:
        c.wait_for(r"sweep: wikitext full @ 1 \(prefix\): ppl")  # the first batch is done and saved
        c.wait_for(r"lambada: +[0-9]+%.*\b[1-9]\d*/\d+ \[")      # the LAMBADA batch is under way
        rc, _, err = c.interrupt()
    finally:
        c.kill()
    assert rc == 130 and "Traceback" not in err, err
    assert last_line(err) == (f"interrupted: 1 of 2 runs done and saved in {out / 'sweep.json'}; "
                              "the same command resumes with the others (the batch in progress from its last "
                              "saved chunk or passage)")
    saved = json.loads((out / "sweep.json").read_text())
    assert [r["settings"]["dataset"] for r in saved["runs"]] == ["wikitext"]
    # no temporary file left behind (the LAMBADA batch's checkpoint is there once it ran 30 s)
    assert sorted(set(os.listdir(out)) - {"sweep.batch.json"}) == ["sweep.csv", "sweep.json"]
    # resuming skips the run done (here with fewer passages: another LAMBADA run, the WikiText one kept)
    r = tool("sweep", *args, "--lambada-n", "2", "--no-progress", cwd=tmp_path)
    assert r.returncode == 0 and "1 already in" in r.stderr and "1 run(s) done, 1 already done" in r.stdout, r.stderr
