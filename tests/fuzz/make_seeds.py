"""Writes the fuzzer's seed corpus: one small valid GGUF and malformed variants of it.

    python tests/fuzz/make_seeds.py [--out build/fuzz-seeds]

The corpus is generated, not committed (no model files in git; the seeds hold random weights).
Every malformed seed is named after what is wrong with it; the committed tests/fuzz/manifest.json
maps each file to a regular expression its load error must match, and this script writes the
same mapping next to the seeds. tests/test_fuzz_corpus.py checks that the two agree and that the
loader rejects every seed with its message; tests/fuzz/run.sh generates the seeds before fuzzing.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))            # tests/: gguf_layout
sys.path.insert(0, str(HERE.parent.parent / "models"))  # tiny_gguf

from gguf_layout import layout  # noqa: E402
from tiny_gguf import write_tiny_llama  # noqa: E402

TRUNC = r"truncated|runs past the end|more than the file can hold"
ALIGN = 32


def base_model(tmp: Path) -> bytes:
    p = write_tiny_llama(str(tmp / "valid.gguf"), weight_type="Q4_0", n_vocab=300, n_embd=32, n_layers=1,
                         n_heads=2, n_kv_heads=1, n_ff=64, n_ctx_train=64, seed=7)
    return Path(p).read_bytes()


def kv_entry(key: str, vtype: int, payload: bytes) -> bytes:
    k = key.encode()
    return struct.pack("<Q", len(k)) + k + struct.pack("<I", vtype) + payload


def gguf_str(s: bytes) -> bytes:
    return struct.pack("<Q", len(s)) + s


def with_kvs(good: bytes, entries: list[bytes], alignment: int = ALIGN) -> bytes:
    """good with extra metadata entries appended to its metadata, the tensor data re-aligned."""
    lay = layout(good)
    n_tensors, n_kv = struct.unpack_from("<QQ", good, 8)
    first_info = min(t["dims_pos"] for t in lay["tensors"].values())
    # the tensor infos start with the first tensor's name length, 8 + len(name) bytes before dims_pos
    name_len = {n: len(n.encode()) for n in lay["tensors"]}
    first_name = min(lay["tensors"], key=lambda n: lay["tensors"][n]["dims_pos"])
    infos_start = first_info - 4 - 8 - name_len[first_name]
    data_start = (lay["infos_end"] + ALIGN - 1) // ALIGN * ALIGN
    head = bytearray(good[:infos_start]) + b"".join(entries) + good[infos_start:lay["infos_end"]]
    struct.pack_into("<Q", head, 16, n_kv + len(entries))
    a = alignment if alignment and alignment & (alignment - 1) == 0 else ALIGN
    pad = (-len(head)) % a
    return bytes(head) + b"\0" * pad + good[data_start:]


def seeds(good: bytes) -> dict[str, tuple[bytes, str]]:
    """{file name: (bytes, regex the error must match)}"""
    lay = layout(good)
    t, kv = lay["tensors"], lay["kv"]
    out: dict[str, tuple[bytes, str]] = {}

    def put(name, data, expect):
        out[name] = (bytes(data), expect)

    def patched(fmt, pos, value):
        b = bytearray(good)
        struct.pack_into(fmt, b, pos, value)
        return b

    # truncated at every section boundary: header fields, after each metadata entry, after each
    # tensor info, at the data section and at the start of each tensor's data
    for i, cut in enumerate((0, 4, 8, 16, 24)):
        put(f"truncated-header-{cut}.gguf", good[:cut], TRUNC + "|empty")
    kv_ends = sorted(p for p, _ in kv.values())
    for i, p in enumerate(kv_ends):
        put(f"truncated-metadata-{i:02d}.gguf", good[:p], TRUNC)
    put("truncated-after-metadata.gguf", good[:min(x["dims_pos"] for x in t.values()) - 8], TRUNC)
    for i, x in enumerate(sorted(t.values(), key=lambda x: x["dims_pos"])):
        put(f"truncated-tensor-info-{i:02d}.gguf", good[:x["offset_pos"] + 8], TRUNC)
    data_start = (lay["infos_end"] + ALIGN - 1) // ALIGN * ALIGN
    put("truncated-at-data-section.gguf", good[:data_start], TRUNC)
    offsets = sorted(struct.unpack_from("<Q", good, x["offset_pos"])[0] for x in t.values())
    for i, off in enumerate(offsets[1:]):
        put(f"truncated-tensor-data-{i:02d}.gguf", good[:data_start + off], TRUNC)
    put("truncated-last-byte.gguf", good[:-1], TRUNC)

    put("bad-magic.gguf", b"GGUX" + good[4:], "not a GGUF file")
    put("bad-version.gguf", patched("<I", 4, 99), "version 99")
    put("absurd-metadata-count.gguf", patched("<Q", 16, 1 << 60), "metadata entries")
    put("absurd-tensor-count.gguf", patched("<Q", 8, 1 << 60), "tensors, more than")
    put("absurd-key-length.gguf", patched("<Q", 24, (1 << 63) + 5), "empty, too long|runs past the end")
    put("empty-key.gguf", patched("<Q", 24, 0), "empty, too long")
    tok_type, _ = kv["tokenizer.ggml.tokens"]
    put("absurd-array-count.gguf", patched("<Q", tok_type + 8, 1 << 62), "array of .* elements runs past the end")
    put("unknown-value-type.gguf", patched("<I", kv["general.architecture"][0], 99), "unknown value type 99")
    put("unknown-array-element-type.gguf", patched("<I", tok_type + 4, 77), "unknown array element type 77")
    nested = kv_entry("fuzz.nested", 9, struct.pack("<IQ", 9, 1) + struct.pack("<IQ", 9, 1)
                      + struct.pack("<IQ", 9, 1) + struct.pack("<IQ", 4, 1) + struct.pack("<I", 1))
    put("nested-arrays.gguf", with_kvs(good, [nested]), "nested too deeply")
    arch_type, arch_val = kv["general.architecture"]
    put("unterminated-string.gguf", patched("<Q", arch_val, 1 << 40), "string length .* runs past the end")
    put("wrong-value-type.gguf", patched("<I", kv["llama.embedding_length"][0], 6), "embedding_length.*type f32")
    put("string-where-number.gguf", patched("<I", kv["llama.block_count"][0], 8),
        "string length .* runs past the end|block_count.*type string")
    dup = kv_entry("general.architecture", 8, gguf_str(b"llama"))
    put("duplicate-key.gguf", with_kvs(good, [dup]), "duplicate metadata key 'general.architecture'")
    put("alignment-not-power-of-two.gguf", with_kvs(good, [kv_entry("general.alignment", 4, struct.pack("<I", 48))]),
        "alignment 48 is not a power of two")
    put("alignment-wrong-type.gguf", with_kvs(good, [kv_entry("general.alignment", 8, gguf_str(b"32"))]),
        "general.alignment has type")
    i = good.index(b"general.architecture")
    j = good.index(b"llama", i + 20)
    put("unknown-architecture.gguf", good[:j] + b"gemma" + good[j + 5:], "architecture 'gemma' is not supported")
    name = b"blk.0.ffn_up.weight"
    i = good.index(name)
    put("missing-tensor.gguf", good[:i] + b"blk.0.ffn_uq.weight" + good[i + len(name):],
        "tensor 'blk.0.ffn_up.weight' is missing")
    i = good.index(b"blk.0.attn_v.weight")
    put("duplicate-tensor-name.gguf", good[:i] + b"blk.0.attn_k.weight" + good[i + 19:], "duplicate tensor name")
    i = good.index(b"blk.0.attn_q.weight")
    put("tensor-name-with-nul.gguf", good[:i + 4] + b"\0" + good[i + 5:], "NUL-containing name")
    put("missing-required-key.gguf", good.replace(b"llama.block_count", b"llama.block_cnnnt"),
        "required metadata key 'llama.block_count' is missing|block_count")

    dims = t["output_norm.weight"]["dims_pos"]
    (n,) = struct.unpack_from("<Q", good, dims)
    put("shape-mismatch.gguf", patched("<Q", dims, n // 2), "output_norm.weight.*shape")
    q = t["blk.0.attn_q.weight"]
    put("too-many-dimensions.gguf", patched("<I", q["dims_pos"] - 4, 9), "9 dimensions")
    put("zero-dimension.gguf", patched("<Q", q["dims_pos"] + 8, 0), "invalid size 0")
    put("negative-dimension.gguf", patched("<q", q["dims_pos"] + 8, -32), "invalid size")
    b = bytearray(good)
    struct.pack_into("<QQ", b, q["dims_pos"], 1 << 32, 1 << 32)
    put("overflowing-product.gguf", b, "too large|invalid size|runs past the end")
    put("row-not-multiple-of-block.gguf", patched("<Q", q["dims_pos"], 33), "not a multiple of the Q4_0 block size")
    put("unknown-tensor-type.gguf", patched("<I", q["type_pos"], 77), "unknown tensor type id 77")
    put("unsupported-tensor-type.gguf", patched("<I", q["type_pos"], 20), "IQ4_NL.*not support")
    down = t["blk.0.ffn_down.weight"]
    put("offset-past-end.gguf", patched("<Q", down["offset_pos"], len(good) * 4 // 32 * 32),
        "blk.0.ffn_down.weight.*runs past the end")
    put("offset-huge.gguf", patched("<Q", down["offset_pos"], (1 << 64) - 32), "runs past the end|too large")
    (off,) = struct.unpack_from("<Q", good, q["offset_pos"])
    put("misaligned-tensor.gguf", patched("<Q", q["offset_pos"], off + 1), "attn_q.weight.*aligned")
    (koff,) = struct.unpack_from("<Q", good, t["blk.0.attn_k.weight"]["offset_pos"])
    put("overlapping-tensors.gguf", patched("<Q", t["blk.0.attn_v.weight"]["offset_pos"], koff), "overlap")

    def hparam(key, value, expect, fmt="<I"):
        put(f"hparam-{key.split('.')[-1]}-{value}.gguf", patched(fmt, kv[key][1], value), expect)

    hparam("llama.embedding_length", 0, "embedding_length|out of range")
    hparam("llama.attention.head_count", 0, "head_count|out of range")
    hparam("llama.attention.head_count", 3, "head_count|multiple")
    hparam("llama.attention.head_count_kv", 0, "head_count_kv|out of range")
    hparam("llama.block_count", 1000, "blk.1.*missing|out of range")
    hparam("llama.context_length", 0, "context_length|out of range")
    hparam("llama.rope.freq_base", float("nan"), "freq_base", fmt="<f")
    hparam("llama.attention.layer_norm_rms_epsilon", -1.0, "epsilon", fmt="<f")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(HERE.parent.parent / "build" / "fuzz-seeds"),
                    help="folder to write (default build/fuzz-seeds)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    good = base_model(out)
    manifest = {"valid.gguf": None}
    for name, (data, expect) in seeds(good).items():
        (out / name).write_bytes(data)
        manifest[name] = expect
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    print(f"{len(manifest)} seeds in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
