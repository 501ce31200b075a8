"""Byte positions of the fields of a GGUF file, so tests can corrupt one precisely."""

from __future__ import annotations

import struct

_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def _skip(buf: bytes, pos: int, vtype: int) -> int:
    if vtype == 8:
        (n,) = struct.unpack_from("<Q", buf, pos)
        return pos + 8 + n
    if vtype == 9:
        et, n = struct.unpack_from("<IQ", buf, pos)
        pos += 12
        for _ in range(n):
            pos = _skip(buf, pos, et)
        return pos
    return pos + _SIZES[vtype]


def layout(buf: bytes) -> dict:
    """{'kv': {key: (value_type_pos, value_pos)}, 'tensors': {name: {'type_pos', 'offset_pos', 'dims_pos'}},
    'infos_end': position after the last tensor info}"""
    n_tensors, n_kv = struct.unpack_from("<QQ", buf, 8)
    pos = 24
    kv = {}
    for _ in range(n_kv):
        (klen,) = struct.unpack_from("<Q", buf, pos)
        key = buf[pos + 8:pos + 8 + klen].decode()
        pos += 8 + klen
        (vt,) = struct.unpack_from("<I", buf, pos)
        kv[key] = (pos, pos + 4)
        pos = _skip(buf, pos + 4, vt)
    tensors = {}
    for _ in range(n_tensors):
        (nlen,) = struct.unpack_from("<Q", buf, pos)
        name = buf[pos + 8:pos + 8 + nlen].decode()
        pos += 8 + nlen
        (nd,) = struct.unpack_from("<I", buf, pos)
        dims_pos = pos + 4
        pos += 4 + 8 * nd
        tensors[name] = {"dims_pos": dims_pos, "type_pos": pos, "offset_pos": pos + 4}
        pos += 12
    return {"kv": kv, "tensors": tensors, "infos_end": pos, "n_kv_pos": 16, "n_tensors_pos": 8}
