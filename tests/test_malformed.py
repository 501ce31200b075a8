"""Malformed and unsupported GGUF files give a clear EngineError, never a crash."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

import engine
from engine import EngineError
from gguf_layout import layout


@pytest.fixture(scope="module")
def good(tiny_gguf) -> bytes:
    return Path(tiny_gguf(weight_type="Q4_0")).read_bytes()


def load_bytes(tmp_path, data: bytes, name="bad.gguf"):
    p = tmp_path / name
    p.write_bytes(data)
    return engine.Model(str(p))


def expect_error(tmp_path, data: bytes, *needles: str):
    with pytest.raises(EngineError) as ei:
        load_bytes(tmp_path, data)
    msg = str(ei.value)
    assert "bad.gguf" in msg, msg  # names the file
    for n in needles:
        assert n in msg, f"{n!r} not in {msg!r}"
    return msg


def test_good_file_loads(tmp_path, good):
    m = load_bytes(tmp_path, good, "good.gguf")
    assert m.n_layers == 2
    m.close()


@pytest.mark.parametrize("frac", [0.0005, 0.01, 0.05, 0.2, 0.5, 0.9, 0.999])
def test_truncated(tmp_path, good, frac):
    expect_error(tmp_path, good[: int(len(good) * frac)], "trunc" if frac < 0.2 else "")


def test_truncated_in_tensor_data_names_tensor(tmp_path, good):
    lay = layout(good)
    msg = expect_error(tmp_path, good[: len(good) - 100], "runs past the end")
    assert "tensor '" in msg


def test_empty_file(tmp_path):
    expect_error(tmp_path, b"", "empty")


def test_bad_magic(tmp_path, good):
    expect_error(tmp_path, b"GGUX" + good[4:], "not a GGUF file")


def test_bad_version(tmp_path, good):
    expect_error(tmp_path, good[:4] + struct.pack("<I", 99) + good[8:], "version 99")


def test_absurd_counts(tmp_path, good):
    bad = bytearray(good)
    struct.pack_into("<Q", bad, 16, 1 << 60)
    expect_error(tmp_path, bytes(bad), "metadata entries")
    bad = bytearray(good)
    struct.pack_into("<Q", bad, 8, 1 << 60)
    expect_error(tmp_path, bytes(bad), "tensors")


def test_tensor_data_past_end(tmp_path, good):
    lay = layout(good)
    pos = lay["tensors"]["blk.1.ffn_down.weight"]["offset_pos"]
    bad = bytearray(good)
    struct.pack_into("<Q", bad, pos, len(good) * 4 // 32 * 32)
    expect_error(tmp_path, bytes(bad), "blk.1.ffn_down.weight", "runs past the end")


def test_misaligned_tensor(tmp_path, good):
    lay = layout(good)
    pos = lay["tensors"]["blk.0.attn_q.weight"]["offset_pos"]
    bad = bytearray(good)
    (off,) = struct.unpack_from("<Q", bad, pos)
    struct.pack_into("<Q", bad, pos, off + 1)
    expect_error(tmp_path, bytes(bad), "blk.0.attn_q.weight", "aligned")


def test_overlapping_tensors(tmp_path, good):
    lay = layout(good)
    t = lay["tensors"]
    (off,) = struct.unpack_from("<Q", good, t["blk.0.attn_k.weight"]["offset_pos"])
    bad = bytearray(good)
    struct.pack_into("<Q", bad, t["blk.0.attn_v.weight"]["offset_pos"], off)
    expect_error(tmp_path, bytes(bad), "overlap")


def test_unsupported_tensor_type(tmp_path, good):
    # IQ4_NL has Q4_0's block size and bytes, so the file stays self-consistent
    lay = layout(good)
    bad = bytearray(good)
    struct.pack_into("<I", bad, lay["tensors"]["blk.0.attn_q.weight"]["type_pos"], 20)
    expect_error(tmp_path, bytes(bad), "blk.0.attn_q.weight", "IQ4_NL", "not support")


def test_unknown_tensor_type_id(tmp_path, good):
    lay = layout(good)
    bad = bytearray(good)
    struct.pack_into("<I", bad, lay["tensors"]["blk.0.attn_q.weight"]["type_pos"], 77)
    expect_error(tmp_path, bytes(bad), "unknown tensor type id 77")


def test_unknown_architecture(tmp_path, good):
    i = good.index(b"general.architecture")
    j = good.index(b"llama", i + 20)
    expect_error(tmp_path, good[:j] + b"gemma" + good[j + 5:], "architecture 'gemma'")


def test_shape_mismatch(tmp_path, good):
    lay = layout(good)
    bad = bytearray(good)
    dims = lay["tensors"]["output_norm.weight"]["dims_pos"]
    (n,) = struct.unpack_from("<Q", bad, dims)
    struct.pack_into("<Q", bad, dims, n // 2)
    expect_error(tmp_path, bytes(bad), "output_norm.weight", "shape")


def test_missing_tensor(tmp_path, good):
    i = good.index(b"blk.1.ffn_up.weight")
    expect_error(tmp_path, good[:i] + b"blk.1.ffn_uq.weight" + good[i + 19:], "blk.1.ffn_up.weight", "missing")


def test_wrong_value_type(tmp_path, good):
    lay = layout(good)
    tpos, _ = lay["kv"]["llama.embedding_length"]
    bad = bytearray(good)
    struct.pack_into("<I", bad, tpos, 6)  # u32 -> f32: same size, wrong type
    expect_error(tmp_path, bytes(bad), "llama.embedding_length", "type f32")


def test_missing_file(tmp_path):
    with pytest.raises(EngineError, match="cannot open"):
        engine.Model(str(tmp_path / "nope.gguf"))


def test_directory_is_not_a_model(tmp_path):
    with pytest.raises(EngineError, match="not a regular file"):
        engine.Model(str(tmp_path))


def test_gguf_v2_loads(tmp_path, good):
    """GGUF v2 has v3's layout for little-endian files (v3 only added big-endian support)."""
    m = load_bytes(tmp_path, good[:4] + struct.pack("<I", 2) + good[8:], "v2.gguf")
    assert m.n_layers == 2
    m.close()
