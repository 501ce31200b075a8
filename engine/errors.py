"""Exception type shared by the engine's Python modules."""

from __future__ import annotations

from typing import Optional


class EngineError(Exception):
    """An error reported by the engine: a bad file or argument, a failed download, ...

    `status` is the C core's rk_status code when the error came from the C library, else None.
    """

    def __init__(self, message: str, status: Optional[int] = None):
        super().__init__(message)
        self.status = status
