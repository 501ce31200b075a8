#!/usr/bin/env python3
"""Golden digests: the bits of the engine's numerics, stored so that a refactoring can prove
it changed none of them (issue 12: "logits bit-identical to the commit before").

    python tests/golden_digests.py            # recompute, print the differences from the stored file
    python tests/golden_digests.py --write    # recompute twice (must agree) and store
    python tests/golden_digests.py --only avx2,scalar --case policy/   # a subset (no --write)

What is digested (sha256 of the raw bytes, first 16 hex digits): float32 logits (RK_LOGITS_ALL
over a prefill, single-token decode steps, logprobs) and the int32 kv_positions of every
(layer, kv-head) buffer after compression or streaming eviction. Each case stores one digest
per stage, so a difference says where it starts (prefill / kv / after / decode ...).

Cases (CASES below): tiny random GGUFs (models/tiny_gguf.py, fixed seeds) of every tensor type,
both vocab kinds and the model variants the loader distinguishes (untied output, mixed types,
MHA/MQA, rope scaling, Llama 3.1 rope factors, a vocabulary not a multiple of 8); every eviction
policy of the C registry under both schedules, plus shifted positions, a token budget, an f32
KV cache, a small n_batch and a shared prefill (copy_state_from); SmolLM2 for a subset.

Configurations (CONFIGS), each in its own child process since RK_CPU and RK_REPACK are read
once per process: avx2 (default kernels, 2 threads), scalar (RK_CPU=scalar), norepack
(RK_REPACK=0: the row-layout AVX2 kernels; only cases with repackable Q4_0/Q4_1/Q8_0 matrices),
threads1 (1 thread, a few cases). The stored file records the platform the digests were made
on (cpu features, machine, libc, compiler of the core); configurations whose bits depend on a
platform property that differs are skipped by tests/test_golden_digests.py (see platform_skip).

The tiny GGUFs are digested too (their file sha256): if models/tiny_gguf.py starts writing other
bytes, the comparison says "model file changed" instead of blaming the engine.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
STORE = HERE / "data" / "golden_digests.json"
FORMAT = 1

# --------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------

TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K")
REPACKABLE = ("Q4_0", "Q4_1", "Q8_0", "Q5_0", "Q4_K", "Q5_K", "Q6_K")  # src/cpu/repack.c: types with AVX2 packed kernels

TINY: dict[str, dict] = {f"t_{t}": dict(weight_type=t, seed=11) for t in TYPES}
TINY.update({
    "t_F16_spm": dict(weight_type="F16", vocab="spm", seed=12),
    "t_Q4_0_spm": dict(weight_type="Q4_0", vocab="spm", seed=13),
    "t_F32_untied": dict(weight_type="F32", tied=False, embd_type="Q8_0", output_type="Q6_K", seed=14),
    "t_Q5_K_untied": dict(weight_type="Q5_K", tied=False, embd_type="Q6_K", output_type="Q4_K", seed=15),
    "t_Q4_1_untied": dict(weight_type="Q4_1", tied=False, output_type="Q8_0", seed=16),
    "t_Q8_0_mha": dict(weight_type="Q8_0", n_heads=4, n_kv_heads=4, seed=17),
    "t_F16_mqa": dict(weight_type="F16", n_heads=4, n_kv_heads=1, seed=18),
    "t_BF16_ropelin": dict(weight_type="BF16", rope_scaling_linear=2.0, rope_freq_base=500000.0, seed=19),
    "t_Q6_K_llama3": dict(weight_type="Q6_K", llama3_rope_factors=True, rope_freq_base=500000.0,
                          n_ctx_train=64, seed=20),
    "t_Q4_0_v388": dict(weight_type="Q4_0", n_vocab=388, seed=21),  # token_embd not repackable (388 % 8)
    "t_Q8_0_eps": dict(weight_type="Q8_0", rms_eps=1e-6, n_layers=3, seed=22),
    # the policies' models: 4 layers (pyramidkv/lacache vary with depth), GQA 4/2; F32 weights (no
    # 8-bit activation rounding that would absorb a last-bit change) and Q8_0 (repacked)
    "t_pol": dict(weight_type="F32", n_layers=4, n_heads=4, n_kv_heads=2, seed=23),
    "t_polq": dict(weight_type="Q8_0", n_layers=4, n_heads=4, n_kv_heads=2, seed=24),
})
SMOLLM2 = "smollm2"


def tokens(n: int, n_vocab: int, salt: int = 0) -> list[int]:
    """a fixed pseudo-random token sequence (no RNG library: the same on every numpy)"""
    return [(i * 7919 + 13 + salt * 104729) % n_vocab for i in range(n)]


def model_uses(name: str) -> set[str]:
    if name == SMOLLM2:
        return {"Q4_1", "Q8_0"}
    kw = TINY[name]
    t = kw.get("weight_type", "F32")
    return {t, kw.get("embd_type", t), kw.get("output_type", t)}


# --------------------------------------------------------------------------------------------
# cases
# --------------------------------------------------------------------------------------------
# A case: {"kind": "forward" | "prefix" | "streaming" | "shared", "model": name, ...}. Names are
# stable keys of the stored file; add cases at will (the test reports new ones as "not stored").

POLICIES = ("full", "streaming", "h2o", "tova", "snapkv", "pyramidkv", "adakv", "lacache", "restkv", "topk")
POLICY_KW = dict(window=8, kernel=5, n_sink=4)  # the defaults' window (32) is larger than a tiny budget
# lacache_span=2 on the 4-layer model: its ladder (span >= n_layers falls back to StreamingLLM's set)


TEXTS = ("The quick brown fox, 1234 café!", "  leading spaces\n\ttabs and newlines\n\n",
         "naïve 日本語 ünïcödé 🙂 emoji", "<s> not special </s>", "x" * 40, "")


def _policy_variants():
    for p in POLICIES:
        if p == "adakv":
            yield "adakv-snapkv", dict(policy=p, ada_base="snapkv")
            yield "adakv-restkv", dict(policy=p, ada_base="restkv")
        else:
            yield p, dict(policy=p, lacache_span=2) if p == "lacache" else dict(policy=p)


def build_cases() -> dict[str, dict]:
    c: dict[str, dict] = {}
    for m in TINY:
        if m not in ("t_pol", "t_polq"):
            c[f"forward/{m}"] = dict(kind="forward", model=m, n_prefill=40, n_decode=4)
    c["forward/t_Q4_K/kv_f32"] = dict(kind="forward", model="t_Q4_K", n_prefill=40, n_decode=4, kv_type="f32")
    c["forward/t_Q4_0/n_batch7"] = dict(kind="forward", model="t_Q4_0", n_prefill=40, n_decode=4, n_batch=7)
    c["forward/t_pol"] = dict(kind="forward", model="t_pol", n_prefill=96, n_decode=4)
    for name, ev in _policy_variants():
        for model, tag in (("t_pol", ""), ("t_polq", "/q8_0")):
            c[f"prefix/{name}{tag}"] = dict(kind="prefix", model=model, ev=dict(ev, budget=0.25, **POLICY_KW))
            # full and topk never evict: they run the streaming schedule in a cache that holds everything
            c[f"streaming/{name}{tag}"] = dict(kind="streaming", model=model,
                                               ev=dict(ev, budget=24, slack=6, schedule="streaming", **POLICY_KW))
    c["prefix/h2o/budget20"] = dict(kind="prefix", model="t_pol", ev=dict(policy="h2o", budget=20, **POLICY_KW))
    c["prefix/streaming/shift"] = dict(kind="prefix", model="t_pol",
                                       ev=dict(policy="streaming", budget=0.25, positions="shift", **POLICY_KW))
    c["prefix/restkv/shift"] = dict(kind="prefix", model="t_pol",
                                    ev=dict(policy="restkv", budget=0.25, positions="shift", **POLICY_KW))
    c["streaming/restkv/shift"] = dict(kind="streaming", model="t_pol",
                                       ev=dict(policy="restkv", budget=24, slack=6, schedule="streaming",
                                               positions="shift", **POLICY_KW))
    c["streaming/h2o/slack0"] = dict(kind="streaming", model="t_pol",
                                     ev=dict(policy="h2o", budget=24, slack=0, schedule="streaming", **POLICY_KW))
    c["prefix/snapkv/kv_f32"] = dict(kind="prefix", model="t_pol", kv_type="f32",
                                     ev=dict(policy="snapkv", budget=0.25, **POLICY_KW))
    c["prefix/restkv/defaults"] = dict(kind="prefix", model="t_pol", ev=dict(policy="restkv", budget=0.5))
    c["prefix/pyramidkv/t_Q8_0_mha"] = dict(kind="prefix", model="t_Q8_0_mha",
                                            ev=dict(policy="pyramidkv", budget=0.3, **POLICY_KW))
    c["prefix/adakv-restkv/t_F16_mqa"] = dict(kind="prefix", model="t_F16_mqa",
                                              ev=dict(policy="adakv", ada_base="restkv", budget=0.3, **POLICY_KW))
    c["shared/h2o->restkv"] = dict(kind="shared", model="t_pol", src=dict(policy="h2o", budget=0.25, **POLICY_KW),
                                   ev=dict(policy="restkv", budget=0.25, **POLICY_KW))
    c["shared/h2o->snapkv"] = dict(kind="shared", model="t_pol", src=dict(policy="h2o", budget=0.25, **POLICY_KW),
                                   ev=dict(policy="snapkv", budget=0.2, **POLICY_KW))
    for m in ("t_F32", "t_F16_spm", SMOLLM2):  # the tokenizer (Python today, the C vocabulary tomorrow)
        c[f"tokenize/{m}"] = dict(kind="tokenize", model=m)
    # SmolLM2 (skipped where it is absent): full cache, restkv and h2o prefix, the streaming schedule
    c["smollm2/forward"] = dict(kind="forward", model=SMOLLM2, n_prefill=64, n_decode=3)
    c["smollm2/prefix/restkv"] = dict(kind="prefix", model=SMOLLM2, n_prefix=96, n_cont=12,
                                      ev=dict(policy="restkv", budget=0.25, window=16))
    c["smollm2/prefix/h2o"] = dict(kind="prefix", model=SMOLLM2, n_prefix=96, n_cont=12,
                                   ev=dict(policy="h2o", budget=0.25, window=16))
    c["smollm2/streaming/restkv"] = dict(kind="streaming", model=SMOLLM2, n_first=24, n_chunk=40, n_steps=8,
                                         ev=dict(policy="restkv", budget=32, slack=8, schedule="streaming",
                                                 window=16))
    return c


CASES = build_cases()

# configurations: environment of the child, threads, which cases
CONFIGS: dict[str, dict] = {
    "avx2": dict(env={"RK_CPU": "avx2", "RK_REPACK": ""}, n_threads=2, needs_avx2=True),
    "scalar": dict(env={"RK_CPU": "scalar", "RK_REPACK": ""}, n_threads=2, needs_avx2=False),
    "norepack": dict(env={"RK_CPU": "avx2", "RK_REPACK": "0"}, n_threads=2, needs_avx2=True),
    "threads1": dict(env={"RK_CPU": "avx2", "RK_REPACK": ""}, n_threads=1, needs_avx2=True),
    # the AVX512-VNNI prefill tiles (the default where the CPU has them) must give the AVX2 bits:
    # computed on their own, compared with the stored "avx2" digests, never stored
    "vnni": dict(env={"RK_CPU": "", "RK_REPACK": ""}, n_threads=2, needs_avx2=True, needs="avx512vnni",
                 same_as="avx2"),
}


def stored_key(config: str) -> str:
    """the configuration whose stored digests `config` is compared with"""
    return CONFIGS[config].get("same_as", config)


def base_features(features: str | None) -> str:
    """cpu features without the VNNI tiles' word: the AVX2 configurations run RK_CPU=avx2, so their
    bits are the same on CPUs with and without AVX512-VNNI (compared so on both sides)"""
    return " ".join(w for w in (features or "").split() if w != "avx512vnni")


def kernels_mismatch(config: str, child_features: str) -> tuple[str, str] | None:
    """("skip" | "fail", why) when the kernels a configuration's child ran are not the ones it is
    meant to test, else None: a 'vnni' child without VNNI (a CPU without it: skip) or an RK_CPU=avx2
    child on the VNNI tiles (a broken RK_CPU: fail)"""
    cfg, words = CONFIGS[config], child_features.split()
    needs = cfg.get("needs")
    if needs and needs not in words:
        return "skip", f"'{config}' needs a CPU with {needs} (its child ran: {child_features})"
    want = cfg["env"].get("RK_CPU")
    if want == "avx2" and ("avx512vnni" in words or "avx2" not in words):
        return "fail", f"'{config}' runs RK_CPU=avx2 but its child ran {child_features!r}"
    if want == "scalar" and words != ["scalar"]:
        return "fail", f"'{config}' runs RK_CPU=scalar but its child ran {child_features!r}"
    return None
THREADS1 = ("forward/t_F32", "forward/t_Q4_K", "forward/t_Q4_0", "prefix/restkv", "streaming/h2o", "smollm2/forward")
SCALAR_SMOLLM2 = ("smollm2/forward",)  # the portable kernels on SmolLM2: one case (seconds each)


def config_cases(config: str) -> list[str]:
    names = [n for n in CASES if config == "avx2" or CASES[n]["kind"] != "tokenize"]
    if config == "scalar":
        names = [n for n in names if CASES[n]["model"] != SMOLLM2 or n in SCALAR_SMOLLM2]
    elif config in ("norepack", "vnni"):
        names = [n for n in names if model_uses(CASES[n]["model"]) & set(REPACKABLE)]
    elif config == "threads1":
        names = [n for n in names if n in THREADS1]
    return names


# --------------------------------------------------------------------------------------------
# the computation (in the child process)
# --------------------------------------------------------------------------------------------

def h(*arrays) -> str:
    d = hashlib.sha256()
    for a in arrays:
        d.update(a.tobytes())
    return d.hexdigest()[:16]


def kv_digest(s, n_layers: int, n_kv_heads: int) -> str:
    import numpy as np

    parts = []
    for il in range(n_layers):
        for hh in range(n_kv_heads):
            p = s.kv_positions(il, hh).astype(np.int32)
            parts += [np.array([len(p)], np.int32), p]
    return h(*parts)


def run_case(case: dict, m, n_threads: int) -> dict:
    import numpy as np

    nv, nl, nkv = m.n_vocab, m.n_layers, m.n_kv_heads
    kind = case["kind"]
    kv_type = case.get("kv_type", "f16")
    out = {}
    if kind == "forward":
        toks = tokens(case["n_prefill"] + case["n_decode"], nv)
        n = case["n_prefill"]
        with m.session(n_ctx=128, n_threads=n_threads, n_batch=case.get("n_batch", 512), kv_type=kv_type) as s:
            out["prefill"] = h(s.eval(toks[:n], logits="all"))
            out["decode"] = h(np.stack([s.eval([t]) for t in toks[n:]]))
            lp, am = s.logprobs(tokens(8, nv, salt=1), return_argmax=True, score_first=True)
            out["logprobs"] = h(lp, am)
        return out
    if kind == "tokenize":  # kernel-independent: run in one configuration
        ids = [m.tokenize(t) for t in TEXTS] + [m.tokenize(t, add_special=False) for t in TEXTS]
        out["ids"] = h(*[np.array([len(i), *i], np.int32) for i in ids])
        out["pieces"] = hashlib.sha256("\x00".join(m.detokenize(i) for i in ids).encode()).hexdigest()[:16]
        return out
    ev = dict(case["ev"])
    if kind in ("prefix", "shared"):
        n_prefix, n_cont = case.get("n_prefix", 128), case.get("n_cont", 24)
        toks = tokens(n_prefix + n_cont, nv, salt=2)
        pre, cont = toks[:n_prefix], toks[n_prefix:]
        with m.session(n_ctx=n_prefix + n_cont + 8, n_threads=n_threads, kv_type=kv_type) as s:
            if kind == "prefix":
                s.set_eviction(**ev)
                out["prefill"] = h(s.eval(pre, logits="all"))
            else:  # one prefill under the source's settings, copied, then this case's policy
                with m.session(n_ctx=n_prefix + n_cont + 8, n_threads=n_threads, kv_type=kv_type) as src:
                    src.set_eviction(**case["src"])
                    out["prefill"] = h(src.eval(pre, logits="all"))
                    s.set_eviction(**ev)
                    s.copy_state_from(src)
            s.compress()
            out["kv"] = kv_digest(s, nl, nkv)
            k = n_cont // 2
            lp, am = s.logprobs(cont[:k], return_argmax=True, score_first=True)
            out["logprobs"] = h(lp, am)
            out["after"] = h(s.eval(cont[k:-3], logits="all"))
            out["decode"] = h(np.stack([s.eval([t]) for t in cont[-3:]]))
            out["kv_end"] = kv_digest(s, nl, nkv)
        return out
    if kind == "streaming":
        n_first, n_chunk, n_steps = case.get("n_first", 16), case.get("n_chunk", 48), case.get("n_steps", 24)
        toks = tokens(n_first + n_chunk + n_steps, nv, salt=3)
        evicts = ev["policy"] not in ("full", "topk")
        n_ctx = int(ev["budget"]) + ev["slack"] + 1 if evicts else len(toks) + 8
        with m.session(n_ctx=n_ctx, n_threads=n_threads, kv_type=kv_type) as s:
            s.set_eviction(**ev)
            out["first"] = h(s.eval(toks[:n_first], logits="all"))
            out["chunk"] = h(s.eval(toks[n_first:n_first + n_chunk], logits="all"))
            out["kv_mid"] = kv_digest(s, nl, nkv)
            out["decode"] = h(np.stack([s.eval([t]) for t in toks[n_first + n_chunk:]]))
            out["kv_end"] = kv_digest(s, nl, nkv)
        return out
    raise ValueError(f"unknown case kind {kind!r}")


def child(spec: dict) -> dict:
    """In a fresh process: {case name: {stage: digest} or {"error": message}}"""
    import engine

    cfg = CONFIGS[spec["config"]]
    res, models, times = {}, {}, {}
    try:
        for name in spec["cases"]:
            case = CASES[name]
            path = spec["paths"].get(case["model"])
            if path is None:
                continue
            if case["model"] not in models:
                models[case["model"]] = engine.Model(path, n_threads=cfg["n_threads"])
            t0 = time.perf_counter()
            try:
                res[name] = run_case(case, models[case["model"]], cfg["n_threads"])
            except Exception as e:  # reported per case, the others still run
                res[name] = {"error": f"{type(e).__name__}: {e}"}
            times[name] = round(time.perf_counter() - t0, 3)
    finally:
        for mm in models.values():
            mm.close()
    return {"cpu_features": engine.cpu_features(), "results": res, "times": times}


# --------------------------------------------------------------------------------------------
# the parent: models, children, platform, comparison
# --------------------------------------------------------------------------------------------

def sha256_file(path) -> str:
    d = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            d.update(b)
    return d.hexdigest()


def write_models(dir_: Path, names) -> dict[str, str]:
    sys.path.insert(0, str(ROOT / "models"))
    from tiny_gguf import write_tiny_llama

    paths = {}
    for n in names:
        if n == SMOLLM2:
            continue
        p = dir_ / f"{n}.gguf"
        if not p.exists():
            write_tiny_llama(str(p), **TINY[n])
        paths[n] = str(p)
    return paths


def find_smollm2() -> str | None:
    env = os.environ.get("RESTKV_SMOLLM2")
    if env and os.path.exists(env):
        return env
    try:
        from engine import models

        p = models.find("smollm2")
    except Exception:
        p = None
    if p is None and (ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf").exists():
        p = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return str(p) if p else None


def compiler_of_core() -> list[str]:
    """compilers named in the compiled core's .comment section (the AVX2 files are compiled with
    FMA contraction left to the compiler, so their bits depend on it)"""
    import _restkv_ffi

    data = Path(_restkv_ffi.__file__).read_bytes()
    found = set(m.decode(errors="replace") for m in re.findall(rb"GCC: \([^)\x00]*\) [0-9][0-9.]*|clang version [0-9][0-9.]*", data))
    return sorted(found)


def platform_info() -> dict:
    import engine

    libc = platform.libc_ver()
    return {"cpu_features": engine.cpu_features(), "machine": platform.machine(),
            "libc": f"{libc[0]} {libc[1]}".strip(), "compiler": compiler_of_core()}


def platform_skip(config: str, stored: dict, here: dict) -> str | None:
    """why the stored digests of a configuration cannot be compared here, or None.

    scalar: the core's portable code is compiled for the baseline ISA (no FMA, so no contraction;
    no -ffast-math, so no reassociation): the same bits on any x86-64 with the same libm (expf,
    logf, ... come from libc). The AVX2 configurations also need the same kernels (cpu features)
    and the same compiler (quant_avx2*.c leave FMA contraction to it)."""
    s = stored.get("platform", {})
    diffs = []
    if s.get("machine") != here["machine"]:
        diffs.append(f"machine {here['machine']} (stored: {s.get('machine')})")
    if s.get("libc") != here["libc"]:
        diffs.append(f"libc {here['libc']!r} (stored: {s.get('libc')!r})")
    needs = CONFIGS[config].get("needs")
    # a shortcut where this process runs the CPU's default kernels (else the child's kernels decide:
    # kernels_mismatch)
    if needs and not os.environ.get("RK_CPU") and needs not in here["cpu_features"].split():
        return f"'{config}' needs a CPU with {needs} (this one: {here['cpu_features']})"
    if CONFIGS[config]["needs_avx2"]:
        feats = base_features(here["cpu_features"])
        if feats != base_features(s.get("cpu_features")) or feats == "scalar":
            diffs.append(f"cpu features {here['cpu_features']!r} (stored: {s.get('cpu_features')!r})")
        # the stored compiler must be among the ones named in the core: a wheel built by pip also
        # carries the comment of an object it links (GCC 8.5.0 here) beside the one that compiled us
        if not set(s.get("compiler") or ["?"]) <= set(here["compiler"]):
            diffs.append(f"compiler {here['compiler']} (stored: {s.get('compiler')})")
    if diffs:
        return f"golden digests of '{config}' were made on another platform: " + "; ".join(diffs)
    return None


def run_config(config: str, paths: dict, names=None) -> dict:
    from subproc import run_python_json

    cases = [n for n in (names or config_cases(config)) if n in config_cases(config)]
    spec = {"config": config, "cases": cases, "paths": paths}
    code = ("import json, golden_digests\n"
            "print(json.dumps(golden_digests.child(json.loads(sys.argv[1]))))\n")
    return run_python_json(code, json.dumps(spec), env=CONFIGS[config]["env"], timeout=600)


def compute(configs, names=None, smollm2: str | None = None, model_dir: Path | None = None,
            log=lambda s: None) -> dict:
    """the digests of the given configurations, as stored (without the platform)"""
    used = {CASES[n]["model"] for n in (names or CASES)}
    with tempfile.TemporaryDirectory(prefix="golden_") as tmp:
        d = Path(model_dir or tmp)
        t0 = time.time()
        paths = write_models(d, sorted(used - {SMOLLM2}))
        log(f"tiny models written in {time.time() - t0:.1f} s")
        files = {n: sha256_file(p)[:16] for n, p in paths.items()}
        if smollm2 and SMOLLM2 in used:
            paths[SMOLLM2] = smollm2
            files[SMOLLM2] = sha256_file(smollm2)[:16]
        out = {"models": files, "configs": {}}
        for cfg in configs:
            t0 = time.time()
            r = run_config(cfg, paths, names)
            out["configs"][cfg] = r["results"]
            out.setdefault("times", {})[cfg] = r["times"]
            out.setdefault("features", {})[cfg] = r["cpu_features"]
            log(f"{cfg}: {len(r['results'])} cases in {time.time() - t0:.1f} s ({r['cpu_features']})")
    return out


def compare(stored: dict, got: dict, configs, names=None) -> list[str]:
    """human-readable differences, one line per case (empty: identical); names: a subset computed"""
    lines = []
    changed_models = {n for n, hsh in got["models"].items()
                      if n in stored.get("models", {}) and stored["models"][n] != hsh}
    for n in sorted(changed_models):
        lines.append(f"model file {n}: sha256 {got['models'][n]} != stored {stored['models'][n]} "
                     f"(models/tiny_gguf.py writes other bytes: its cases below are not comparable)")
    for cfg in configs:
        want = stored.get("configs", {}).get(stored_key(cfg), {})
        if stored_key(cfg) != cfg:
            want = {n: d for n, d in want.items() if n in config_cases(cfg)}
        have = got["configs"].get(cfg, {})
        for name in sorted(set(want) | set(have)):
            if name not in have:
                if (names is None or name in names) and CASES.get(name, {}).get("model") in got["models"]:
                    lines.append(f"[{cfg}] {name}: stored but not computed")
                continue
            if name not in want:
                lines.append(f"[{cfg}] {name}: not stored (new case? run --write with the OLD build)")
                continue
            a, b = want[name], have[name]
            if a == b:
                continue
            tag = " (model file changed)" if CASES[name]["model"] in changed_models else ""
            stages = [k for k in dict.fromkeys([*a, *b]) if a.get(k) != b.get(k)]
            detail = ", ".join(f"{k}: {b.get(k)} != stored {a.get(k)}" for k in stages)
            lines.append(f"[{cfg}] {name}{tag}: {detail}")
    return lines


def dumps(doc: dict) -> str:
    """JSON with one line per case (small, and a changed case is a one-line diff)"""
    def block(d: dict, ind: str, depth: int) -> str:
        if depth == 0 or not d:
            return json.dumps(d, sort_keys=True)
        items = [f"{ind} {json.dumps(k)}: {block(v, ind + ' ', depth - 1) if isinstance(v, dict) else json.dumps(v)}"
                 for k, v in sorted(d.items())]
        return "{\n" + ",\n".join(items) + "\n" + ind + "}"

    return block(doc, "", 3) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write", action="store_true", help="recompute twice, check they agree, store")
    ap.add_argument("--only", help="comma-separated configurations (default: all)")
    ap.add_argument("--case", help="only cases whose name contains this (not with --write)")
    ap.add_argument("--times", action="store_true", help="print the slowest cases of each configuration")
    ap.add_argument("--store", default=str(STORE), help="the digests file (default %(default)s)")
    a = ap.parse_args(argv)
    sys.path[:0] = [str(HERE), str(ROOT)]
    configs = a.only.split(",") if a.only else [c for c in CONFIGS if not a.write or stored_key(c) == c]
    names = [n for n in CASES if a.case in n] if a.case else None
    if a.write and (a.only or a.case):
        ap.error("--write recomputes everything: no --only / --case")
    smollm2 = find_smollm2()
    log = lambda s: print(s, file=sys.stderr)  # noqa: E731
    if smollm2 is None:
        log("SmolLM2 not found: its cases are left out (RESTKV_SMOLLM2=path, or python3 -m engine.models fetch smollm2)")
    here = platform_info()
    t0 = time.time()
    got = compute(configs, names, smollm2, log=log)
    times = got.pop("times")
    features = got.pop("features")
    for cfg in list(configs):
        bad = kernels_mismatch(cfg, features[cfg])
        if bad and bad[0] == "fail":
            log(f"error: {bad[1]}")
            return 1
        if bad:  # not comparable here: left out, said
            log(f"note: {bad[1]}: left out")
            configs.remove(cfg)
            got["configs"].pop(cfg)
    log(f"computed in {time.time() - t0:.1f} s")
    if a.times:
        for cfg, t in times.items():
            log(f"{cfg}, slowest: " + ", ".join(f"{n} {v:.2f} s" for n, v in sorted(t.items(), key=lambda x: -x[1])[:5]))
    if a.write:
        if smollm2 is None:
            log("refusing to write without SmolLM2")
            return 1
        again = compute(configs, names, smollm2, log=log)
        again.pop("times")
        again.pop("features")
        if again != got:
            log("NOT deterministic: two runs differ:\n  " + "\n  ".join(compare(again, got, configs)))
            return 1
        errors = [f"[{c}] {n}: {r['error']}" for c, rs in got["configs"].items() for n, r in rs.items() if "error" in r]
        if errors:
            log("cases failed:\n  " + "\n  ".join(errors))
            return 1
        import engine

        doc = {"format": FORMAT, "made_with": {"engine": engine.__version__, "note": "digest = sha256[:16]"},
               "platform": here, **got}
        Path(a.store).parent.mkdir(parents=True, exist_ok=True)
        Path(a.store).write_text(dumps(doc))
        n = sum(len(v) for v in got["configs"].values())
        log(f"wrote {a.store}: {n} case digests, identical over two runs")
        return 0
    if not Path(a.store).exists():
        log(f"{a.store} does not exist: run with --write (with the build whose bits are the reference)")
        return 1
    stored = json.loads(Path(a.store).read_text())
    for cfg in configs:
        why = platform_skip(cfg, stored, here)
        if why:
            log(f"note: {why}")
    diff = compare(stored, got, configs, names)
    print("\n".join(diff) if diff else "identical to the stored digests")
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main())
