"""Tensor block formats and dot products: rk_dequantize / rk_vec_dot and the
type table, against gguf-py's independent numpy decoder and tests/quant_ref.py,
on both kernel sets (AVX2 in this process, portable C in an RK_CPU=scalar child)."""
import math
import os
import sys

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as GQT
from gguf.quants import dequantize as gguf_dequantize, quantize as gguf_quantize

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import quant_ref as ref  # noqa: E402
from engine._native import ffi, lib  # noqa: E402
from subproc import run_python  # noqa: E402

U = 2.0 ** -24  # float32 unit roundoff
ONE_F16 = b"\x00\x3c"


def last_error():
    return ffi.string(lib.rk_last_error()).decode()


def n_elems(t, data):
    _, blck, size = ref.FORMATS[t]
    return len(data) // size * blck


def dequant(t, data):
    out = np.empty(n_elems(t, data), np.float32)
    st = lib.rk_dequantize(t, ffi.from_buffer(data), len(data), ffi.from_buffer("float[]", out), out.size)
    assert st == lib.RK_OK, last_error()
    return out


def vec_dot(t, w, x):
    x = np.ascontiguousarray(x, np.float32)
    out = ffi.new("float *")
    st = lib.rk_vec_dot(t, ffi.from_buffer(w), len(w), ffi.from_buffer("float[]", x), x.size, out)
    assert st == lib.RK_OK, last_error()
    return float(out[0])


# ---- random data ----

SCALE_OFFSETS = {ref.Q4_0: [0], ref.Q4_1: [0, 2], ref.Q5_0: [0], ref.Q5_1: [0, 2], ref.Q8_0: [0],
                 ref.Q8_1: [0, 2], ref.Q4_K: [0, 2], ref.Q5_K: [0, 2], ref.Q6_K: [208]}


def random_row(t, n, rng):
    """Raw random blocks (every bit pattern of the packed integers occurs), with
    finite scales of random sign spread over three decades."""
    _, blck, size = ref.FORMATS[t]
    x = rng.standard_normal(n).astype(np.float32)
    if t == ref.F32:
        return x.tobytes()
    if t == ref.F16:
        return x.astype(np.float16).tobytes()
    if t == ref.BF16:
        return (x.view(np.uint32) >> 16).astype(np.uint16).tobytes()
    nb = n // blck
    b = rng.integers(0, 256, (nb, size), dtype=np.uint8)
    scales = lambda: 10.0 ** rng.uniform(-3, 0, nb) * rng.choice([-1.0, 1.0], nb)  # noqa: E731
    for off in SCALE_OFFSETS.get(t, []):
        b[:, off:off + 2] = scales().astype(np.float16).view(np.uint8).reshape(nb, 2)
    if t == ref.Q8_K:
        b[:, 0:4] = scales().astype(np.float32).view(np.uint8).reshape(nb, 4)
    return b.tobytes()


def random_x(n, rng):
    """activations whose magnitude varies from block to block, with outliers"""
    x = rng.standard_normal(n) * np.repeat(10.0 ** rng.uniform(-2, 1, -(-n // 32)), 32)[:n]
    x[rng.integers(0, n, max(1, n // 100))] *= 20
    return x.astype(np.float32)


def row_sizes(t):
    blck = ref.FORMATS[t][1]
    if blck == 1:
        return [1, 7, 37, 576, 1000]      # tails of the 32- and 8-wide AVX2 loops
    if blck == 32:
        return [32, 96, 576, 2080]        # odd block counts: tail of the 2-block unroll
    return [256, 768, 1536]


# gguf-py quantises these; the K-quants are covered by raw random blocks
GGUF_QUANTISABLE = [ref.F32, ref.F16, ref.BF16, ref.Q4_0, ref.Q4_1, ref.Q5_0, ref.Q5_1, ref.Q8_0]


# ---- type table ----

@pytest.mark.parametrize("t", list(ref.FORMATS), ids=ref.name)
def test_type_table(t):
    name, blck, size = ref.FORMATS[t]
    assert ffi.string(lib.rk_type_name(t)).decode() == name == GQT(t).name
    assert lib.rk_type_block_size(t) == blck
    assert lib.rk_type_block_bytes(t) == size
    if t != ref.Q8_1:  # gguf-py lists 40 bytes, an f32 (d, s); GGML's block_q8_1 has two halves: 36
        assert GGML_QUANT_SIZES[GQT(t)] == (blck, size)


def test_unknown_types():
    for t in (-1, 4, 5, 10, 11, 16, 29, 31, 1000):
        assert lib.rk_type_name(t) == ffi.NULL
        assert lib.rk_type_block_size(t) == 0
        assert lib.rk_type_block_bytes(t) == 0


def test_cpu_features():
    feats = ffi.string(lib.rk_cpu_features()).decode()
    assert feats in ("avx2 fma f16c avx512vnni", "avx2 fma f16c", "scalar")
    if os.environ.get("RK_CPU") == "scalar":
        assert feats == "scalar"
    if os.environ.get("RK_CPU") == "avx2":
        assert feats in ("avx2 fma f16c", "scalar")


# ---- dequantisation ----

def assert_dequant_close(got, want, t, data):
    # Elementwise |diff| <= 2^-22 (|S| + |M|): only a rounding of d*q + m (say, a
    # compiler-contracted FMA) may differ; a wrong bit or layout costs >= |d|.
    S, M = ref.split(t, data)
    bad = np.abs(got.astype(np.float64) - want) > 2.0 ** -22 * (np.abs(S) + np.abs(M))
    assert not bad.any(), f"{ref.name(t)}: {bad.sum()} elements differ, first at {np.flatnonzero(bad)[:8]}"


@pytest.mark.parametrize("t", list(ref.FORMATS), ids=ref.name)
def test_dequantize_random_blocks(t):
    rng = np.random.default_rng(100 + t)
    blck = ref.FORMATS[t][1]
    w = random_row(t, 7 * blck if blck > 1 else 37, rng)
    got = dequant(t, w)
    assert_dequant_close(got, ref.dequantize(t, w), t, w)
    if t not in (ref.Q8_1, ref.Q8_K):  # gguf-py decodes neither activation format
        gg = gguf_dequantize(np.frombuffer(w, np.uint8), GQT(t)).reshape(-1)
        assert_dequant_close(got, gg, t, w)


@pytest.mark.parametrize("t", GGUF_QUANTISABLE, ids=ref.name)
def test_dequantize_gguf_quantized(t):
    x = np.random.default_rng(7).standard_normal(4 * 256).astype(np.float32)
    q = np.ascontiguousarray(gguf_quantize(x, GQT(t))).view(np.uint8).tobytes()
    got = dequant(t, q)
    assert_dequant_close(got, gguf_dequantize(np.frombuffer(q, np.uint8), GQT(t)).reshape(-1), t, q)
    assert np.abs(got - x).max() < 0.35  # 4-bit steps on N(0,1) data


@pytest.mark.parametrize("t", [ref.F16, ref.BF16], ids=ref.name)
def test_every_half_pattern(t):
    bits = np.arange(1 << 16, dtype=np.uint16)
    want = bits.view(np.float16).astype(np.float32) if t == ref.F16 else \
        (bits.astype(np.uint32) << 16).view(np.float32)
    got = dequant(t, bits.tobytes())
    assert np.array_equal(got, want, equal_nan=True)
    assert np.array_equal(np.signbit(got), np.signbit(want))


# ---- activation quantisation, read back through one-hot weight rows ----

def _onehot_rows(at, n):
    """Yields (probe, row): weight rows of the format paired with activation
    format `at` whose dot product with quantised x is exactly one float32
    value: d*q[j] per element j, then (Q8_1) each block's s or (Q8_K) each
    pair sum of bsums times -d."""
    if at == ref.Q8_0:
        zero = bytearray(n // 32 * 34)
        for j in range(n):
            r = bytearray(zero)
            r[34 * (j // 32):34 * (j // 32) + 2] = ONE_F16
            r[34 * (j // 32) + 2 + j % 32] = 1
            yield ("q", j), (ref.Q8_0, bytes(r))
    elif at == ref.Q8_1:
        zero = bytearray(n // 32 * 20)
        for j in range(n):
            b, e = divmod(j, 32)
            r = bytearray(zero)
            r[20 * b:20 * b + 2] = ONE_F16
            r[20 * b + 4 + e % 16] = 1 if e < 16 else 0x10
            yield ("q", j), (ref.Q4_1, bytes(r))
        for b in range(n // 32):
            r = bytearray(zero)
            r[20 * b + 2:20 * b + 4] = ONE_F16  # m = 1, d = 0: the dot is s
            yield ("s", b), (ref.Q4_1, bytes(r))
    else:
        zero = bytearray(n // 256 * 144)
        unit = ref.pack_k_scale_min(np.ones((1, 8)), np.zeros((1, 8)))[0].tobytes()
        for j in range(n):
            b, e = divmod(j, 256)
            c, r64 = divmod(e, 64)
            r = bytearray(zero)
            r[144 * b:144 * b + 2] = ONE_F16
            r[144 * b + 4:144 * b + 16] = unit
            r[144 * b + 16 + 32 * c + r64 % 32] = 1 if r64 < 32 else 0x10
            yield ("q", j), (ref.Q4_K, bytes(r))
        for b in range(n // 256):
            for p in range(8):
                mn = np.zeros((1, 8))
                mn[0, p] = 1
                r = bytearray(zero)
                r[144 * b + 2:144 * b + 4] = ONE_F16  # dmin = 1, d = 0: the dot is -d * bsum pair
                r[144 * b + 4:144 * b + 16] = ref.pack_k_scale_min(np.zeros((1, 8)), mn)[0].tobytes()
                yield ("bsum", 8 * b + p), (ref.Q4_K, bytes(r))


def probe_activations(at, x):
    return np.array([vec_dot(t, w, x) for _, (t, w) in _onehot_rows(at, x.size)], np.float32)


def expected_probes(at, x):
    a = ref.quantize(at, x)
    vals = [ref.split(at, a)[0].astype(np.float32)]
    if at == ref.Q8_1:
        vals.append(ref.q8_1_sums(a).astype(np.float32))
    if at == ref.Q8_K:
        b = np.frombuffer(a, np.uint8).reshape(-1, 292)
        d = np.ascontiguousarray(b[:, 0:4]).view(np.float32)
        pairs = np.ascontiguousarray(b[:, 260:292]).view(np.int16).reshape(-1, 8, 2).sum(axis=2)
        vals.append((-(d * pairs.astype(np.float32))).reshape(-1))
    return np.concatenate(vals)


def rounding_x():
    """768 activations with exact rounding ties (of q, and of d to half), zero blocks and a zero
    super-block, a magnitude tie of opposite signs, scales that are subnormal
    as halves, and random blocks"""
    x = random_x(768, np.random.default_rng(3))
    # max 127 gives d = 1 (Q8_0/Q8_1) and iscale = -1 (Q8_K): k + 0.5 are ties
    x[0] = 127
    x[1:32] = np.arange(-15, 16) + 0.5
    x[32:64] = 0
    x[64:96] = np.linspace(-3, 3, 32)  # -3 first: Q8_K must scale by it
    # d = amax / 127 exactly halfway between two halves: must round to even
    x[96:128] = np.linspace(-100, 100, 32)
    x[96] = 127 * (1 + 2.0 ** -11)
    x[128:160] = np.arange(-16, 16) + 0.5
    x[160:192] = np.linspace(-50, 50, 32)
    x[160] = -127 * (1 + 3 * 2.0 ** -11)
    x[192:224] = np.linspace(-7e-5, 7e-5, 32)
    x[193] = 127 * 10.5 * 2.0 ** -24  # subnormal half
    x[256:512] = 0
    x[544:576] *= 1e-6  # d ~ 1e-7: a subnormal half
    x[608:640] = 0
    x[610] = 1e-30      # d rounds to a zero half
    return x


@pytest.mark.parametrize("at", ref.ACT_TYPES, ids=ref.name)
def test_activation_quantisation_is_ggml_exact(at):
    x = rounding_x()
    assert np.array_equal(probe_activations(at, x), expected_probes(at, x))


@pytest.mark.parametrize("at", ref.ACT_TYPES, ids=ref.name)
def test_activation_quants_stay_within_127(at):
    """The packed AVX2 kernels (quant_avx2_packed.c) sum Q5_0 and Q6_K products in i16 with little
    room (activations within +-127: eight |q - 16| <= 16 pairs reach 32512, two 6-bit pairs 32004);
    the VNNI tiles sum in i32 and must give the same bits, so neither may saturate: every
    quantiser scales by amax / 127. Checked on the reference, which the C code matches bit for
    bit (test_activation_quantisation_is_ggml_exact), with each block's extreme both signs."""
    rng = np.random.default_rng(9)
    x = np.concatenate([rounding_x(), random_x(4096, rng)])
    x[rng.integers(0, x.size, 64)] *= -1  # outliers of both signs
    blck, size = ref.FORMATS[at][1:]
    b = np.frombuffer(ref.quantize(at, x), np.uint8).reshape(-1, size)
    off = {ref.Q8_0: 2, ref.Q8_1: 4, ref.Q8_K: 4}[at]
    q = np.ascontiguousarray(b[:, off:off + blck]).view(np.int8)
    assert q.min() >= -127 and q.max() <= 127 and q.min() == -127  # the bound is reached, not passed


def test_q8_0_reference_matches_gguf():
    # gguf-py's Q8_0 quantiser is documented bit-exact with GGML's reference
    x = rounding_x()
    assert ref.quantize(ref.Q8_0, x) == gguf_quantize(x, GQT.Q8_0).tobytes()


# ---- dot products ----

def accumulation_tol(n, mag):
    """Kernels form integer block sums exactly and then round in float32: one
    product of the two block scales, one of that by the integer sum, one add
    per block (twice for Q4_1/Q5_1's offset term) along the longest addition
    chain (<= n/32 + a horizontal sum), so |err| <= (2*ceil(n/32) + 16) u mag.
    A factor 4 covers integer lanes holding offset forms (q6_K stores q + 32)
    larger than the terms themselves."""
    return 4 * (2 * math.ceil(n / 32) + 16) * U * mag


@pytest.mark.parametrize("t", ref.WEIGHT_TYPES, ids=ref.name)
def test_vec_dot(t):
    rng = np.random.default_rng(200 + t)
    for n in row_sizes(t):
        for _ in range(3):
            w, x = random_row(t, n, rng), random_x(n, rng)
            got = vec_dot(t, w, x)
            # exact arithmetic on the engine's own quantised activations
            want, mag = ref.vec_dot(t, w, x)
            assert abs(got - want) <= accumulation_tol(n, mag), (ref.name(t), n, got, want)
            # the plain f32 product, off by the 8-bit quantisation of x (0 for float weights)
            S, M = ref.split(t, w)
            plain = float((S + M) @ x.astype(np.float64))
            bound = ref.plain_dot_error_bound(t, w, x) + accumulation_tol(n, mag)
            assert abs(got - plain) <= bound, (ref.name(t), n, got, plain, bound)


@pytest.mark.parametrize("t", GGUF_QUANTISABLE, ids=ref.name)
def test_vec_dot_of_quantised_weights_is_close_to_f32(t):
    # realistic rows from f32 weights: the result tracks the f32 dot
    rng = np.random.default_rng(300 + t)
    n = 1536
    wf, x = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    w = np.ascontiguousarray(gguf_quantize(wf, GQT(t))).view(np.uint8).tobytes()
    got, wq = vec_dot(t, w, x), dequant(t, w).astype(np.float64)
    act_err = ref.plain_dot_error_bound(t, w, x) + accumulation_tol(n, np.abs(wq) @ np.abs(x))
    assert abs(got - wq @ x) <= act_err
    # and the f32 weights, further off by at most the weight quantisation error
    assert abs(got - float(wf @ x)) <= act_err + np.abs(wq - wf) @ np.abs(x)


def test_vec_dot_empty_and_misaligned():
    out = ffi.new("float *", 5.0)
    assert lib.rk_vec_dot(ref.Q4_0, ffi.from_buffer(b"\0"), 0, ffi.new("float[1]"), 0, out) == lib.RK_OK
    assert out[0] == 0
    rng = np.random.default_rng(11)
    for t in (ref.Q4_1, ref.Q8_0, ref.Q6_K, ref.Q8_K, ref.F32):
        n = 256
        w = random_row(t, n, rng)
        x = random_x(n, rng)
        buf = bytearray(len(w) + 1)
        buf[1:] = w
        odd = ffi.from_buffer(buf) + 1
        got = np.empty(n, np.float32)
        assert lib.rk_dequantize(t, odd, len(w), ffi.from_buffer("float[]", got), n) == lib.RK_OK
        assert np.array_equal(got, dequant(t, w))
        if t in ref.VEC_DOT_TYPE:
            assert lib.rk_vec_dot(t, odd, len(w), ffi.from_buffer("float[]", x), n, out) == lib.RK_OK
            assert out[0] == vec_dot(t, w, x)


# ---- the portable path against the AVX2 path ----

def collect():
    """Results of every kernel on fixed data; run once per kernel set."""
    rng = np.random.default_rng(42)
    res = {"features": np.array(ffi.string(lib.rk_cpu_features()).decode())}
    for t in ref.FORMATS:
        blck = ref.FORMATS[t][1]
        w = random_row(t, 5 * blck if blck > 1 else 37, rng)
        res[f"deq_{t}"] = dequant(t, w)
    for t in ref.WEIGHT_TYPES:
        for n in row_sizes(t):
            w, x = random_row(t, n, rng), random_x(n, rng)
            res[f"dot_{t}_{n}"] = np.array([vec_dot(t, w, x), *ref.vec_dot(t, w, x)])
    x = rounding_x()
    for at in ref.ACT_TYPES:
        res[f"act_{at}"] = probe_activations(at, x)
    for t in (ref.F16, ref.BF16):
        res[f"halves_{t}"] = dequant(t, np.arange(1 << 16, dtype=np.uint16).tobytes())
    return res


def test_scalar_and_avx2_paths_agree(tmp_path):
    out = tmp_path / "scalar.npz"
    run_python(f"import numpy, test_quant; numpy.savez({str(out)!r}, **test_quant.collect())", env={"RK_CPU": "scalar"})
    scalar, here = np.load(out), collect()
    assert str(scalar["features"]) == "scalar"
    for key, v in here.items():
        s = scalar[key]
        if key.startswith("dot_"):
            n = int(key.split("_")[2])
            # each path is within the accumulation bound of the exact value
            assert abs(v[0] - s[0]) <= 2 * accumulation_tol(n, v[2]), (key, v, s)
        elif key != "features":
            # dequantisation and activation quantisation are bit-identical
            assert np.array_equal(v, s, equal_nan=True), key


# ---- argument checking ----

def _call_dequant(t, data, nbytes, n, dst=True):
    out = np.empty(min(max(n, 1), 4096), np.float32)
    src = ffi.from_buffer(data) if data is not None else ffi.NULL
    return lib.rk_dequantize(t, src, nbytes, ffi.from_buffer("float[]", out) if dst else ffi.NULL, n)


def _call_dot(t, data, nbytes, n, x=True, out=True):
    xs = np.ones(min(max(n, 1), 4096), np.float32)
    src = ffi.from_buffer(data) if data is not None else ffi.NULL
    return lib.rk_vec_dot(t, src, nbytes, ffi.from_buffer("float[]", xs) if x else ffi.NULL, n,
                          ffi.new("float *") if out else ffi.NULL)


BUF = bytes(4096)

BAD_CALLS = [
    ("unknown type", lambda: _call_dequant(4, BUF, 4096, 32), "unknown tensor type 4"),
    ("negative type", lambda: _call_dequant(-1, BUF, 4096, 32), "unknown tensor type -1"),
    ("n not a multiple", lambda: _call_dequant(ref.Q4_0, BUF, 4096, 33), "not a multiple of the Q4_0 block size 32"),
    ("K n not a multiple", lambda: _call_dequant(ref.Q6_K, BUF, 4096, 128), "block size 256"),
    ("negative n", lambda: _call_dequant(ref.F32, BUF, 4096, -4), "n must be >= 0"),
    ("src too small", lambda: _call_dequant(ref.Q4_1, BUF, 39, 64), "src_bytes is 39 bytes, but 64 Q4_1 elements need 40"),
    ("NULL src", lambda: _call_dequant(ref.Q8_0, None, 34, 32), "src is NULL"),
    ("NULL dst", lambda: _call_dequant(ref.Q8_0, BUF, 34, 32, dst=False), "dst is NULL"),
    ("huge n", lambda: _call_dequant(ref.F32, BUF, 4096, 1 << 62), "too large"),
    ("dot unknown type", lambda: _call_dot(99, BUF, 4096, 32), "unknown tensor type 99"),
    ("dot on Q8_1", lambda: _call_dot(ref.Q8_1, BUF, 4096, 32), "Q8_1 is an activation format"),
    ("dot on Q8_K", lambda: _call_dot(ref.Q8_K, BUF, 4096, 256), "Q8_K is an activation format"),
    ("dot n not a multiple", lambda: _call_dot(ref.Q4_K, BUF, 4096, 288), "not a multiple of the Q4_K block size 256"),
    ("dot row too small", lambda: _call_dot(ref.Q8_0, BUF, 67, 64), "row_bytes is 67 bytes, but 64 Q8_0 elements need 68"),
    ("dot NULL row", lambda: _call_dot(ref.F16, None, 64, 32), "row is NULL"),
    ("dot NULL x", lambda: _call_dot(ref.F16, BUF, 64, 32, x=False), "x is NULL"),
    ("dot NULL out", lambda: _call_dot(ref.F16, BUF, 64, 32, out=False), "out is NULL"),
]


@pytest.mark.parametrize("call, message", [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS])
def test_bad_arguments(call, message):
    assert call() == lib.RK_ERR_ARG
    assert message in last_error()
