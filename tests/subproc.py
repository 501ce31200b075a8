"""Runs test code in a fresh interpreter, for settings read once per process (RK_CPU,
RK_REPACK): the child imports the same engine package, compiled core and tests/ as
the calling process."""
from __future__ import annotations

import json
import os
import subprocess
import sys


def pythonpath() -> str:
    """PYTHONPATH for a child `python -m engine.TOOL`: the compiled core and the engine package this
    process imported (not whatever an older install left in site-packages)"""
    import _restkv_ffi

    import engine

    return os.pathsep.join([os.path.dirname(os.path.abspath(_restkv_ffi.__file__)),
                            os.path.dirname(os.path.dirname(os.path.abspath(engine.__file__)))])


def run_python(code: str, *args: str, env: dict | None = None, timeout: int = 900) -> str:
    """stdout of `python -c code args...` with os.environ updated by env; fails the calling
    test with the child's stderr if it exits non-zero"""
    import _restkv_ffi

    import engine

    path = [os.path.dirname(os.path.abspath(__file__)), os.path.dirname(os.path.abspath(_restkv_ffi.__file__)),
            os.path.dirname(os.path.dirname(os.path.abspath(engine.__file__)))]
    proc = subprocess.run([sys.executable, "-c", f"import sys; sys.path[:0] = {path!r}\n" + code, *args],
                          env=dict(os.environ, **(env or {})), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def run_python_json(code: str, *args: str, env: dict | None = None, timeout: int = 900):
    """run_python whose code prints one JSON value as its last line: that value"""
    return json.loads(run_python(code, *args, env=env, timeout=timeout).strip().splitlines()[-1])
