"""engine.bench on a tiny model: every case measured, llama.cpp alongside, RSS probes, CLI and JSON.
(Speed goals live in the benchmark's output, not in tests: here only that it measures what it says.)"""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine import EngineError
from engine import bench


def test_bench_measures_every_case(tiny_gguf):
    pytest.importorskip("llama_cpp")
    big = np.ones(400 * 2**20 // 8)  # the children's peak RSS must not include this parent's
    res = bench.run(tiny_gguf(weight_type="Q4_0"), threads=1, reps=1, vs=True, prefills=(32, 64), depths=(0, 96),
                    gen=8, rss=True, log=open("/dev/null", "w"))
    cases = [r["case"] for r in res["rows"]]
    assert cases == ["prefill 32", "prefill 64", "decode 8 @ depth 0", "decode 8 @ depth 96",
                     "decode 8 @ depth 96, restkv 0.1"]
    for r in res["rows"]:
        assert r["ours_tok_s"] > 0 and r["llama_cpp_tok_s"] > 0 and r["ratio"] > 0
        assert len(r["ours_samples"]) == 1
        if not r["case"].endswith("restkv 0.1"):
            assert r["round_ratios"] == [round(r["ours_samples"][0] / r["llama_cpp_samples"][0], 3)]
    by = {r["case"]: r for r in res["rows"]}
    # the compressed decode holds about a tenth of the 96-token cache (plus the decoded tokens)
    assert by["decode 8 @ depth 96, restkv 0.1"]["kv_bytes"] < by["decode 8 @ depth 96"]["kv_bytes"] / 4
    # compared with llama.cpp's full-cache decode at the same depth
    assert by["decode 8 @ depth 96, restkv 0.1"]["llama_cpp_tok_s"] == by["decode 8 @ depth 96"]["llama_cpp_tok_s"]
    comp, full = by["decode 8 @ depth 96, restkv 0.1"], by["decode 8 @ depth 96"]
    assert comp["round_ratios"] == [round(comp["ours_samples"][0] / full["llama_cpp_samples"][0], 3)]
    for who in ("ours", "llama.cpp"):
        assert 0 < res["rss"][who]["peak_rss_bytes"] < 300 * 2**20, who
    # the machine beside the ratios: our kernels, and llama.cpp's build features
    import engine

    assert res["machine"]["restkv_kernels"] == engine.cpu_features()
    assert "AVX" in res["machine"].get("llama_cpp", "AVX") or engine.cpu_features() == "scalar"
    del big


def test_bench_cli_json(tiny_gguf, tmp_path, capsys):
    out = tmp_path / "b.json"
    rc = bench.main(["--gguf", tiny_gguf(weight_type="Q4_0"), "--threads", "1", "--reps", "1", "--prefill", "16",
                     "--depths", "0,32", "--gen", "4", "--no-rss", "--json", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    assert [r["case"] for r in data["rows"]][-1] == "decode 4 @ depth 32, restkv 0.1"
    printed = capsys.readouterr().out
    assert "| prefill 16 |" in printed
    assert data["machine"]["cores"] >= 1 and "llama_cpp" not in data["machine"]  # no --vs-llama-cpp
    assert f"restkv-engine kernels: {data['machine']['restkv_kernels']}" in printed


def test_bench_bad_arguments(tiny_gguf, tmp_path):
    with pytest.raises(EngineError, match="no such file"):
        bench.run(str(tmp_path / "none.gguf"))
    assert bench.main(["--gguf", tiny_gguf(weight_type="Q4_0"), "--depths", "a,b"]) == 2


def test_bench_several_budgets(tiny_gguf, tmp_path):
    """--budget 0.5,0.1,16: a compressed-decode case per budget, each session holding its own budget"""
    out = tmp_path / "b.json"
    rc = bench.main(["--gguf", tiny_gguf(weight_type="Q4_0"), "--threads", "1", "--reps", "1", "--prefill", "16",
                     "--depths", "96", "--gen", "4", "--budget", "0.5,0.1,16", "--no-rss", "--json", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    by = {r["case"]: r for r in data["rows"]}
    assert list(by) == ["prefill 16", "decode 4 @ depth 96", "decode 4 @ depth 96, restkv 0.5",
                        "decode 4 @ depth 96, restkv 0.1", "decode 4 @ depth 96, restkv 16"]
    assert data["budgets"] == [0.5, 0.1, 16.0] and data["budget"] == [0.5, 0.1, 16.0]
    kv = [by[f"decode 4 @ depth 96, restkv {b}"]["kv_bytes"] for b in ("0.5", "16", "0.1")]
    assert kv[0] > kv[1] > kv[2] > 0  # half of 96 > 16 tokens > a tenth (per layer and KV head)
    assert bench.main(["--gguf", tiny_gguf(weight_type="Q4_0"), "--budget", "0.5,x"]) == 2
