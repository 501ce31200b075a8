"""--ray (engine.eval.distributed): sweep and ruler grids on a local Ray cluster give the local run's results bit
for bit (the timing fields aside), also when a worker dies mid-grid or the driver is interrupted and run
again; a unit that fails is reported once and the others go on; without Ray, --ray says how to install it.

The tests that need Ray share one local cluster of 2 CPUs (2 workers of 1 CPU each); they skip where Ray is not
installed (pip install 'restkv-engine[ray]'; the test extra has it). The last test runs without Ray."""

from __future__ import annotations

import csv
import io
import json
import os
import sys

import pytest

from engine import cli
from engine.errors import EngineError
from engine.eval import distributed
from engine.eval import sweep as sweep_mod
from engine.eval.checkpoint import Checkpoint
from engine.eval.protocols import perplexity_unit
from engine.eviction import Eviction
from engine.longctx import cli as ruler_cli
from test_ruler import timeless
from test_sweep import data  # noqa: F401 (the fixture: a WikiText-like text and 3 LAMBADA passages)

N_CTX = 64
GRID = dict(policies=["snapkv", "streaming"], budgets=[1.0, 0.5, 0.25], datasets=["wikitext", "lambada"], ctx=N_CTX,
            chunks=3, progress=False)
RAY = {"address": None, "cpus_per_worker": 1}
SWEEP_TIME = ("seconds", "tokens_per_second")  # a sweep result's fields that measure time


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A local Ray cluster for the module; the workers die once on their first unit while the file named by
    RESTKV_RAY_DIE_ONCE is missing (it exists until a test removes it)."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'restkv-engine[ray]')")
    marker = tmp_path_factory.mktemp("ray") / "died"
    marker.touch()
    env = {distributed.DIE_ONCE_ENV: str(marker), "PYTHONPATH": os.pathsep.join(sys.path)}
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": env}, configure_logging=False,
             logging_level="warning")
    try:
        yield marker
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def gguf(tiny_gguf):
    return tiny_gguf(weight_type="Q8_0", n_ctx_train=1024)


def sweep(gguf, out, data, **kw):  # noqa: F811
    args = {**GRID, **kw}
    return sweep_mod.sweep(gguf, args.pop("policies"), args.pop("budgets"), args.pop("datasets"), str(out),
                           wikitext=data[0], lambada_file=data[1], lambada_n=3, **args)


def sweep_files(out):
    """sweep.json, .csv and .md without the fields that measure time."""
    saved = json.loads((out / "sweep.json").read_text())
    runs = [{"settings": r["settings"], "result": {k: v for k, v in r["result"].items() if k not in SWEEP_TIME}}
            for r in saved["runs"]]
    rows = [{k: v for k, v in r.items() if k not in SWEEP_TIME + ("finished",)}
            for r in csv.DictReader((out / "sweep.csv").open())]
    return runs, saved["errors"], rows, (out / "sweep.md").read_text()


@pytest.fixture(scope="module")
def local_sweep(gguf, data, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("local") / "sweep"
    r = sweep(gguf, out, data)
    assert r["ran"] == 10 and not r["failed"]
    return sweep_files(out)


def test_sweep_on_ray_is_the_local_sweep(cluster, gguf, data, local_sweep, tmp_path):  # noqa: F811
    out, log = tmp_path / "ray", io.StringIO()
    r = sweep(gguf, out, data, ray=RAY, log=log)
    assert r["ran"] == 10 and not r["failed"]
    assert sweep_files(out) == local_sweep
    assert cluster.exists()  # no worker died
    # the driver says where the units ran: 3 chunks + 3 passages, on this machine's one node
    (line,) = [x for x in log.getvalue().splitlines() if x.startswith("ray: units completed per node: ")]
    assert sum(int(c.rsplit(": ", 1)[1]) for c in line.split("node: ", 1)[1].split(", ")) == 6, line


def test_a_worker_dies_its_unit_runs_again(cluster, gguf, data, local_sweep, tmp_path):  # noqa: F811
    cluster.unlink()  # the first worker to take a unit dies (os._exit), once
    log = io.StringIO()
    r = sweep(gguf, tmp_path / "ray", data, ray=RAY, log=log)
    assert cluster.exists() and log.getvalue().count("a worker died") == 1
    assert r["ran"] == 10 and not r["failed"]
    assert sweep_files(tmp_path / "ray") == local_sweep


def test_interrupted_driver_resumes_nothing_lost_or_twice(cluster, gguf, data, local_sweep, tmp_path,  # noqa: F811
                                                          monkeypatch):
    # the batch in progress saves its tallies after every unit (the tool: at most every 30 s)
    monkeypatch.setattr(sweep_mod, "Checkpoint", lambda path, key: Checkpoint(path, key, every_seconds=0))
    real = distributed.Pool.ordered
    units = []

    def counted(stop_at=None):
        def ordered(self, fn, items):
            for res in real(self, fn, items):
                if len(units) + 1 == stop_at:
                    raise KeyboardInterrupt  # Ctrl-C as the driver receives a result
                units.append(fn.__name__)
                yield res
        return ordered

    # 3 WikiText chunks (that batch is saved whole), then 1 LAMBADA passage folded, Ctrl-C at the second
    monkeypatch.setattr(distributed.Pool, "ordered", counted(stop_at=5))
    out = tmp_path / "ray"
    with pytest.raises(cli.Interrupted):
        sweep(gguf, out, data, ray=RAY)
    assert units == ["score_chunk_unit"] * 3 + ["score_passage_unit"]
    assert json.loads((out / sweep_mod.CHECKPOINT).read_text())["state"]["done"] == 1
    units.clear()
    monkeypatch.setattr(distributed.Pool, "ordered", counted())
    r = sweep(gguf, out, data, ray=RAY)
    assert units == ["score_passage_unit"] * 2  # the 2 passages left, nothing else
    assert r["ran"] == 5 and r["skipped"] == 5 and not (out / sweep_mod.CHECKPOINT).exists()
    assert sweep_files(out) == local_sweep


def test_failing_units_are_reported_once_and_the_rest_goes_on(cluster, gguf, data, tmp_path):  # noqa: F811
    # the streaming protocol at budget 0.01 of 64 tokens keeps 1 (< 2): those runs fail (on the workers), the others not
    kw = dict(policies=["snapkv", "streaming"], budgets=[0.5, 0.01], datasets=["wikitext"], protocol="streaming")
    want = sweep(gguf, tmp_path / "local", data, **kw)
    got = sweep(gguf, tmp_path / "ray", data, ray=RAY, **kw)
    assert got["failed"] == want["failed"] and len(got["failed"]) == 2 and got["ran"] == want["ran"] == 2
    assert sweep_files(tmp_path / "ray") == sweep_files(tmp_path / "local")
    errors = json.loads((tmp_path / "ray" / "sweep.json").read_text())["errors"]
    assert len(errors) == 2 and all("keeps 1 token(s)" in e["error"] for e in errors)
    # the pool itself: one UnitError for the bad unit, the others' results
    toks = list(range(300))
    units = [dict(tokens=toks, n_ctx=N_CTX, n_chunks=2, eviction=Eviction(policy="streaming", budget=b),
                  protocol="streaming") for b in (0.5, 0.01, 0.25)]
    with distributed.Pool(gguf, **RAY) as pool:
        res = dict(pool.unordered(perplexity_unit, units))
    assert isinstance(res[1], distributed.UnitError) and "keeps 1 token(s)" in res[1].message
    assert res[0].ppl > 0 and res[2].ppl > 0
    # a worker Ray may not restart (max_retries 0) dies: its unit fails, once; the other worker does the rest
    cluster.unlink()
    with distributed.Pool(gguf, max_retries=0, **RAY) as pool:
        res = dict(pool.unordered(perplexity_unit, units[:1] * 4))
        assert cluster.exists() and sorted(res) == [0, 1, 2, 3]
        assert [type(r).__name__ for r in res.values()].count("UnitError") == 1
        # the dead worker is given no more units (it would fail them): the next ones all succeed
        again = dict(pool.unordered(perplexity_unit, units[:1] * 3))
        ppls = {r.ppl for r in list(res.values()) + list(again.values()) if not isinstance(r, distributed.UnitError)}
        assert len(again) == 3 and not any(isinstance(r, distributed.UnitError) for r in again.values())
        assert len(ppls) == 1
    # a model the workers cannot open stops the run before any unit, saying where and why
    with pytest.raises(EngineError, match="cannot open.*same path on every node"):
        distributed.Pool(str(tmp_path / "missing.gguf"), **RAY)


RULER_ARGV = ["--tasks", "niah_single_1", "--lengths", "512", "--samples", "3", "--policies", "full,snapkv,streaming",
              "--budgets", "0.25,64", "--protocol", "agnostic,aware-full", "--window", "4", "--no-progress"]


def ruler_files(d):
    """ruler.json, ruler.jsonl's header and runs (sorted: they come in the order samples finish), ruler.md,
    without the fields that measure time."""
    lines = [json.loads(x) for x in (d / "ruler.jsonl").read_text().splitlines()]
    runs = sorted(timeless(lines[1:]), key=lambda r: (r["index"], r["protocol"], r["policy"], r["budget"]))
    return timeless(json.loads((d / "ruler.json").read_text())), lines[0], runs, (d / "ruler.md").read_text()


@pytest.fixture(scope="module")
def local_ruler(gguf, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "ruler"
    assert ruler_cli.main(["--gguf", gguf, "--out", str(out)] + RULER_ARGV) == 0
    files = ruler_files(out)
    assert len(files[2]) == 3 * 2 * 5  # samples x protocols x (full + 2 policies x 2 budgets)
    return files


def test_ruler_on_ray_is_the_local_ruler(cluster, gguf, local_ruler, tmp_path, capsys):
    argv = ["--gguf", gguf, "--out", str(tmp_path / "ray"), "--ray", "--ray-cpus-per-worker", "1"] + RULER_ARGV
    assert ruler_cli.main(argv) == 0
    assert "30 run(s) done, 0 already done" in capsys.readouterr().out
    assert ruler_files(tmp_path / "ray") == local_ruler


def test_ruler_interrupted_on_ray_resumes(cluster, gguf, local_ruler, tmp_path, monkeypatch, capsys):
    real = distributed.Pool.unordered
    samples = []

    def counted(stop_at=None):
        def unordered(self, fn, items):
            for k, res in real(self, fn, items):
                if len(samples) + 1 == stop_at:
                    raise KeyboardInterrupt  # Ctrl-C as the driver receives the second sample
                samples.append(k)
                yield k, res
        return unordered

    argv = ["--gguf", gguf, "--out", str(tmp_path / "ray"), "--ray", "--ray-cpus-per-worker", "1"] + RULER_ARGV
    monkeypatch.setattr(distributed.Pool, "unordered", counted(stop_at=2))
    assert ruler_cli.main(argv) == cli.EXIT_INTERRUPTED
    assert len((tmp_path / "ray" / "ruler.jsonl").read_text().splitlines()) == 1 + 10  # header, 1 sample's runs
    samples.clear()
    monkeypatch.setattr(distributed.Pool, "unordered", counted())
    assert ruler_cli.main(argv) == 0
    assert len(samples) == 2 and "20 run(s) done, 10 already done" in capsys.readouterr().out
    assert ruler_files(tmp_path / "ray") == local_ruler


def test_without_ray_the_message_says_how_to_install_it(gguf, data, tmp_path, monkeypatch, capsys):  # noqa: F811
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    argv = ["--gguf", gguf, "--datasets", "lambada", "--lambada", data[1], "--out", str(tmp_path / "s"), "--ray"]
    assert sweep_mod.main(argv) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "pip install 'restkv-engine[ray]'" in err and "Traceback" not in err
    assert ruler_cli.main(["--gguf", gguf, "--out", str(tmp_path / "r"), "--ray", "auto"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "pip install 'restkv-engine[ray]'" in err and "Traceback" not in err
    with pytest.raises(EngineError, match="restkv-engine\\[ray\\]"):
        distributed.Pool(gguf)
    assert not os.path.exists(tmp_path / "s" / "sweep.json")


def test_a_folder_named_ray_is_not_ray(tmp_path, monkeypatch):
    # Ray's session folder /tmp/ray imports as an empty namespace package from a working directory of /tmp
    import types

    fake = types.ModuleType("ray")
    fake.__path__ = [str(tmp_path / "ray")]
    monkeypatch.setitem(sys.modules, "ray", fake)
    with pytest.raises(EngineError, match="not installed .*found only the folder .*restkv-engine\\[ray\\]"):
        distributed.import_ray()
