"""The engine's numerics are bit-identical to the stored golden digests (tests/data/golden_digests.json,
made by tests/golden_digests.py --write with the build before a refactoring; issue 12's acceptance:
"logits bit-identical to the commit before").

Each configuration (AVX2 kernels, RK_CPU=scalar, RK_REPACK=0, one thread; and the AVX512-VNNI tiles,
which must reproduce the stored AVX2 digests) runs in its own child
process (those settings are read once per process) over the cases of golden_digests.CASES: tiny GGUFs of
every tensor type and the loader's variants, every eviction policy under both schedules, SmolLM2 for a
subset. A failure names each case and stage (prefill, kv, logprobs, after, decode, ...) whose digest
differs. Configurations whose bits depend on a platform property that differs from the one recorded
(cpu features, compiler, libc, machine) are skipped, saying which.

Deliberate numeric changes: regenerate with `python tests/golden_digests.py --write` and say why in
the commit."""
from __future__ import annotations

import json

import pytest

import engine
import golden_digests as gd

pytestmark = pytest.mark.skipif(not gd.STORE.exists(), reason=f"{gd.STORE} not found")


@pytest.fixture(scope="module")
def stored():
    doc = json.loads(gd.STORE.read_text())
    assert doc.get("format") == gd.FORMAT, f"{gd.STORE}: format {doc.get('format')}, expected {gd.FORMAT}"
    return doc


@pytest.fixture(scope="module")
def here():
    return gd.platform_info()


@pytest.fixture(scope="module")
def smollm2_path(stored):
    """SmolLM2 when it is here (conftest's finder, which may fetch) and is the file the digests were made with"""
    from conftest import smollm2_or_skip

    try:
        path = smollm2_or_skip()
    except pytest.skip.Exception as e:
        return None, str(e)
    if gd.sha256_file(path)[:16] != stored["models"].get(gd.SMOLLM2):
        return None, f"{path} is not the SmolLM2 file the digests were made with"
    return path, None


@pytest.fixture(scope="module")
def computed(tmp_path_factory, smollm2_path):
    """config -> compute() of that configuration, run once per module"""
    model_dir = tmp_path_factory.mktemp("golden_models")
    cache = {}

    def get(config):
        if config not in cache:
            cache[config] = gd.compute([config], smollm2=smollm2_path[0], model_dir=model_dir)
        return cache[config]

    return get


def check(config, stored, here, computed, smollm2: bool):
    why = gd.platform_skip(config, stored, here)
    if why:
        pytest.skip(why)
    got = computed(config)
    bad = gd.kernels_mismatch(config, got["features"][config])
    if bad and bad[0] == "skip":
        pytest.skip(bad[1])
    assert bad is None, bad[1]
    names = [n for n in gd.config_cases(config) if (gd.CASES[n]["model"] == gd.SMOLLM2) == smollm2]
    want = {n: d for n, d in stored["configs"][gd.stored_key(config)].items() if n in names}
    have = {n: d for n, d in got["configs"][config].items() if n in names}
    errors = [f"[{config}] {n}: {d['error']}" for n, d in have.items() if "error" in d]
    diff = gd.compare({"models": stored["models"], "configs": {gd.stored_key(config): want}},
                      {"models": got["models"], "configs": {config: have}}, [config], names)
    if errors or diff:
        pytest.fail(f"{len(diff)} of {len(names)} cases of '{config}' differ from {gd.STORE.name} "
                    f"(digests made on {stored['platform']}):\n" + "\n".join(errors + diff), pytrace=False)


@pytest.mark.parametrize("config", list(gd.CONFIGS))
def test_tiny_models_bit_identical(config, stored, here, computed):
    check(config, stored, here, computed, smollm2=False)


@pytest.mark.parametrize("config", [c for c in gd.CONFIGS if any(
    gd.CASES[n]["model"] == gd.SMOLLM2 for n in gd.config_cases(c))])
def test_smollm2_bit_identical(config, stored, here, computed, smollm2_path):
    if smollm2_path[0] is None:
        pytest.skip(smollm2_path[1])
    check(config, stored, here, computed, smollm2=True)


def test_cases_cover_every_policy(stored):
    """every policy the digests were made for is still registered under its user-facing name (full and
    topk included); a policy the core has and the cases lack is listed (a new one has no old bits)"""
    registered = set(engine.policies())
    assert set(gd.POLICIES) <= registered, f"no longer registered: {sorted(set(gd.POLICIES) - registered)}"
    stored_cases = set(stored["configs"]["avx2"])
    missing = [n for n in gd.CASES if n not in stored_cases]
    assert not missing, f"cases without stored digests (run --write with the reference build): {missing}"
