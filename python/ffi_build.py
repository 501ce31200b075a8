"""Generates the cffi extension source (_restkv_ffi) from the one public header.

The compiled core is a top-level module beside the pure-Python `engine` package, so a
checkout's engine/ folder works unchanged once the package is installed (running
`python -m engine.perplexity` from the checkout imports the source engine/ and the
installed _restkv_ffi).

The cdef is the text between the RK_API_BEGIN and RK_API_END markers of
src/restkv.h, so the bindings can never drift from the C API. Run by CMake:
    python python/ffi_build.py src/restkv.h OUT.c
"""

from __future__ import annotations

import re
import sys

from cffi import FFI


def read_cdef(header_path: str) -> str:
    text = open(header_path, encoding="utf-8").read()
    m = re.search(r"/\* RK_API_BEGIN \*/(.*)/\* RK_API_END \*/", text, re.S)
    if not m:
        raise SystemExit(f"{header_path}: RK_API_BEGIN/RK_API_END markers not found")
    return m.group(1)


def build(header_path: str) -> FFI:
    ffi = FFI()
    ffi.cdef(read_cdef(header_path))
    ffi.set_source("_restkv_ffi", '#include "restkv.h"')
    return ffi


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: ffi_build.py HEADER OUT.c")
    build(sys.argv[1]).emit_c_code(sys.argv[2])
