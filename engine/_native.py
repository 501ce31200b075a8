"""The compiled C core (cffi module _restkv_ffi, built from src/restkv.h by `pip install .`)."""

try:
    from _restkv_ffi import ffi, lib  # noqa: F401
except ImportError as e:  # a checkout that was never installed
    raise ImportError("restkv-engine's compiled core (_restkv_ffi) is not installed: run "
                      "`python3 -m pip install .` in the repository first") from e
