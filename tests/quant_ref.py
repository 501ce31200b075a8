"""Numpy reference of the GGUF block formats restkv-engine implements.

Written from the format descriptions (block layouts of GGML/GGUF), independent
of the C code and of gguf-py. Every block is viewed as rows of uint8; scales
are little-endian IEEE halves unless noted.

split(t, data) gives a weight row as S + M in float64, exactly: S carries the
per-element scale (d * q, or d * sc * q) and M the per-block offset (m, or
-dmin * min), 0 for symmetric formats. dequantize() rounds like the C code:
S and M are each formed in float32 and then added in float32.
"""
import numpy as np

F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q4_K, Q5_K, Q6_K, Q8_K, BF16 = (
    0, 1, 2, 3, 6, 7, 8, 9, 12, 13, 14, 15, 30)

# type -> (name, elements per block, bytes per block)
FORMATS = {
    F32: ("F32", 1, 4), F16: ("F16", 1, 2), BF16: ("BF16", 1, 2),
    Q4_0: ("Q4_0", 32, 18), Q4_1: ("Q4_1", 32, 20), Q5_0: ("Q5_0", 32, 22),
    Q5_1: ("Q5_1", 32, 24), Q8_0: ("Q8_0", 32, 34), Q8_1: ("Q8_1", 32, 36),
    Q4_K: ("Q4_K", 256, 144), Q5_K: ("Q5_K", 256, 176), Q6_K: ("Q6_K", 256, 210),
    Q8_K: ("Q8_K", 256, 292),
}
# weight type -> activation format of its dot product (as GGML)
VEC_DOT_TYPE = {
    F32: F32, F16: F32, BF16: F32,
    Q4_0: Q8_0, Q5_0: Q8_0, Q8_0: Q8_0, Q4_1: Q8_1, Q5_1: Q8_1,
    Q4_K: Q8_K, Q5_K: Q8_K, Q6_K: Q8_K,
}
WEIGHT_TYPES = list(VEC_DOT_TYPE)
ACT_TYPES = [Q8_0, Q8_1, Q8_K]


def name(t):
    return FORMATS[t][0]


def _rows(t, data):
    return np.frombuffer(bytes(data), np.uint8).reshape(-1, FORMATS[t][2])


def _half(b, off):
    """(nb, 1) float64 from the half at byte `off` of each block"""
    return np.ascontiguousarray(b[:, off:off + 2]).view(np.float16).astype(np.float64)


def _nibbles(qs):
    """(nb, 16) bytes -> (nb, 32): low nibbles are elements 0..15, high 16..31"""
    return np.concatenate([qs & 15, qs >> 4], axis=1).astype(np.int64)


def _bits32(qh):
    """(nb, 4) bytes holding a little-endian u32 -> (nb, 32) bits, bit j = element j"""
    return np.unpackbits(qh, axis=1, bitorder="little").astype(np.int64)


def k_scale_min(sc12):
    """(nb, 12) packed 6-bit scales of q4_K/q5_K -> (sc, mn), each (nb, 8).
    Pairs 0-3: low 6 bits of bytes 0-3 (scale) and 4-7 (min). Pairs 4-7: low
    4 bits in the nibbles of bytes 8-11, top 2 bits in the top bits of 0-3 / 4-7."""
    s = sc12.astype(np.int64)
    lo_sc, lo_mn, mix = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    sc = np.concatenate([lo_sc & 63, (mix & 15) | ((lo_sc >> 6) << 4)], axis=1)
    mn = np.concatenate([lo_mn & 63, (mix >> 4) | ((lo_mn >> 6) << 4)], axis=1)
    return sc, mn


def pack_k_scale_min(sc, mn):
    """inverse of k_scale_min: (nb, 8) scales and mins in 0..63 -> (nb, 12) uint8"""
    sc, mn = np.asarray(sc, np.int64), np.asarray(mn, np.int64)
    out = np.zeros((sc.shape[0], 12), np.int64)
    out[:, 0:4] = (sc[:, 0:4] & 63) | ((sc[:, 4:8] >> 4) << 6)
    out[:, 4:8] = (mn[:, 0:4] & 63) | ((mn[:, 4:8] >> 4) << 6)
    out[:, 8:12] = (sc[:, 4:8] & 15) | ((mn[:, 4:8] & 15) << 4)
    return out.astype(np.uint8)


def _q6(b):
    """q6_K values (nb, 256) in -32..31. Per half of 128 elements (64 bytes of ql,
    32 of qh): groups g = 0..3 of 32 take the low (g < 2) or high nibble of
    ql[32*(g % 2) + l] and bits 2g, 2g+1 of qh[l]."""
    ql, qh = b[:, 0:128].astype(np.int64), b[:, 128:192].astype(np.int64)
    halves = []
    for h in range(2):
        l, hb = ql[:, 64 * h:64 * h + 64], qh[:, 32 * h:32 * h + 32]
        nib = [l[:, :32] & 15, l[:, 32:] & 15, l[:, :32] >> 4, l[:, 32:] >> 4]
        halves += [nib[g] | (((hb >> (2 * g)) & 3) << 4) for g in range(4)]
    return np.concatenate(halves, axis=1) - 32


def _k_quants(b, five):
    """q4_K / q5_K integer values (nb, 256): chunk c of 64 elements takes qs[32c:32c+32],
    low nibbles first; q5_K adds bit 2c (low) / 2c+1 (high) of qh[l] as bit 4."""
    qs = b[:, 16 + 32 * five:].astype(np.int64).reshape(-1, 4, 1, 32)
    q = np.concatenate([qs & 15, qs >> 4], axis=2)  # (nb, chunk, half, 32)
    if five:
        qh = b[:, 16:48].astype(np.int64).reshape(-1, 1, 1, 32)
        shift = (2 * np.arange(4).reshape(1, 4, 1, 1) + np.arange(2).reshape(1, 1, 2, 1))
        q |= ((qh >> shift) & 1) << 4
    return q.reshape(-1, 256)


def split(t, data):
    """weight row of type t -> (S, M) float64 with dequantized value S + M (exact)"""
    raw = bytes(data)
    if t == F32:
        s = np.frombuffer(raw, np.float32).astype(np.float64)
        return s, np.zeros_like(s)
    if t == F16:
        s = np.frombuffer(raw, np.float16).astype(np.float64)
        return s, np.zeros_like(s)
    if t == BF16:
        s = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32).astype(np.float64)
        return s, np.zeros_like(s)
    b = _rows(t, raw)
    zero = np.zeros((b.shape[0], FORMATS[t][1]))
    if t == Q4_0:
        S, M = _half(b, 0) * (_nibbles(b[:, 2:18]) - 8), zero
    elif t == Q4_1:
        S, M = _half(b, 0) * _nibbles(b[:, 4:20]), _half(b, 2) + zero
    elif t == Q5_0:
        S, M = _half(b, 0) * ((_nibbles(b[:, 6:22]) | (_bits32(b[:, 2:6]) << 4)) - 16), zero
    elif t == Q5_1:
        S, M = _half(b, 0) * (_nibbles(b[:, 8:24]) | (_bits32(b[:, 4:8]) << 4)), _half(b, 2) + zero
    elif t in (Q8_0, Q8_1):
        off = 2 if t == Q8_0 else 4  # q8_1: (d, s) then qs; s is not part of the values
        S, M = _half(b, 0) * b[:, off:].view(np.int8), zero
    elif t in (Q4_K, Q5_K):
        sc, mn = k_scale_min(b[:, 4:16])
        q = _k_quants(b, t == Q5_K).reshape(-1, 8, 32)
        d = _half(b, 0) * sc
        dm = _half(b, 2) * mn
        S = (d[:, :, None] * q).reshape(-1, 256)
        M = -np.repeat(dm, 32, axis=1)
    elif t == Q6_K:
        sc = b[:, 192:208].view(np.int8).astype(np.float64)
        S, M = np.repeat(_half(b, 208) * sc, 16, axis=1) * _q6(b), zero
    elif t == Q8_K:
        d = np.ascontiguousarray(b[:, 0:4]).view(np.float32).astype(np.float64)
        S, M = d * b[:, 4:260].view(np.int8), zero
    else:
        raise ValueError(t)
    return S.reshape(-1), M.reshape(-1)


def dequantize(t, data):
    S, M = split(t, data)
    return S.astype(np.float32) + M.astype(np.float32)


def q8_1_sums(data):
    """the s field (float64) of each q8_1 block"""
    return _half(_rows(Q8_1, data), 2)[:, 0]


# ---- activation quantisers, rounding as GGML's reference code ----

def round_away(v):
    """C roundf(): halves away from zero (float32 in, float32 out)"""
    t = np.trunc(v)
    return t + np.where(np.abs(v - t) >= np.float32(0.5), np.sign(v), np.float32(0)).astype(np.float32)


def _q8_blocks(x):
    x = np.asarray(x, np.float32).reshape(-1, 32)
    d = np.abs(x).max(axis=1, keepdims=True) / np.float32(127)
    inv = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)
    q = round_away(x * inv).astype(np.int8)
    return d, q


def quantize(t, x):
    """f32 activations -> bytes of Q8_0, Q8_1 or Q8_K (F32: the floats themselves)"""
    x = np.asarray(x, np.float32)
    if t == F32:
        return x.tobytes()
    if t == Q8_0:
        d, q = _q8_blocks(x)
        return np.concatenate([d.astype(np.float16).view(np.uint8), q.view(np.uint8)], axis=1).tobytes()
    if t == Q8_1:
        d, q = _q8_blocks(x)
        s = q.astype(np.int32).sum(axis=1, keepdims=True).astype(np.float32) * d
        return np.concatenate([d.astype(np.float16).view(np.uint8), s.astype(np.float16).view(np.uint8),
                               q.view(np.uint8)], axis=1).tobytes()
    if t == Q8_K:
        out = []
        for blk in x.reshape(-1, 256):
            i = int(np.argmax(np.abs(blk)))  # first element of largest magnitude
            if blk[i] == 0:
                out.append(bytes(292))
                continue
            iscale = np.float32(-127) / blk[i]
            q = np.minimum(np.rint(iscale * blk), 127).astype(np.int8)  # rint: halves to even
            bsums = q.astype(np.int16).reshape(16, 16).sum(axis=1).astype(np.int16)
            out.append(np.float32(np.float32(1) / iscale).tobytes() + q.tobytes() + bsums.tobytes())
        return b"".join(out)
    raise ValueError(t)


def vec_dot(t, w, x):
    """What the engine's vec_dot computes for weight row w (type t) and f32 x,
    in float64 from exact terms. Returns (value, magnitude): magnitude is the sum
    of the absolute terms that float rounding acts on in the C kernels."""
    at = VEC_DOT_TYPE[t]
    a = quantize(at, x)
    S, M = split(t, w)
    A = split(at, a)[0]
    value, mag = float(S @ A), float(np.abs(S) @ np.abs(A))
    if t in (Q4_1, Q5_1):
        # the offsets meet the activation sums s of the Q8_1 blocks, not sum(A)
        m = M.reshape(-1, 32)[:, 0]
        s = q8_1_sums(a)
        value += float(m @ s)
        mag += float(np.abs(m) @ np.abs(s))
    else:
        value += float(M @ A)
        mag += float(np.abs(M) @ np.abs(A))
    return value, mag


def act_error_bound(t, x):
    """per-element bound on |x - dequantize(quantize(x))| for activation format t"""
    x = np.asarray(x, np.float32)
    if t == F32:
        return np.zeros(x.size)
    blck = FORMATS[t][1]
    amax = np.abs(x.astype(np.float64)).reshape(-1, blck).max(axis=1, keepdims=True)
    d = amax / 127
    if t == Q8_K:  # f32 scale: rounding to the nearest step only
        e = d * (0.5 + 1e-6)
    else:          # plus the half-precision scale, off by up to 2^-11 relative, times |q| <= 127
        e = d * (0.5 + 127 * 2.0 ** -11 + 1e-6)
    return np.repeat(e, blck, axis=1).reshape(-1)


def plain_dot_error_bound(t, w, x):
    """bound on |engine vec_dot - dequantize(w) @ x| due to quantising x alone"""
    at = VEC_DOT_TYPE[t]
    S, M = split(t, w)
    e = act_error_bound(at, x)
    if t not in (Q4_1, Q5_1):
        return float(np.abs(S + M) @ e)
    # offsets m meet s = fp16(d * sum(q)): off from sum(x) by 32 steps of d/2 plus the half rounding
    m = np.abs(M.reshape(-1, 32)[:, 0])
    s = np.abs(q8_1_sums(quantize(at, x)))
    d = e.reshape(-1, 32)[:, 0] / (0.5 + 127 * 2.0 ** -11 + 1e-6)
    return float(np.abs(S) @ e + m @ (s * 2.0 ** -11 + 16 * d * (1 + 1e-6)))
