"""Checkpoints of the shared-prefill evaluations (perplexity_many, lambada_many): the running tallies of
every configuration, saved between chunks (passages) so that an interrupted batch resumes where it stopped.

A batch of a 1.5B model's sweep runs for hours (45 configurations over each 2048-token chunk); without
them Ctrl-C, or the end of a working session, lost all of it. The tallies are plain numbers and lists,
written as JSON (floats round-trip exactly), so a resumed batch gives the figures of an uninterrupted
one bit for bit (its `seconds` excepted: they add the time of each part).

A checkpoint belongs to one batch: `key` (any JSON value, e.g. the settings of every run of the batch)
is stored with it, and a file holding another key is ignored, then overwritten.
"""

from __future__ import annotations

import json
import os
import time
from typing import Optional

from .. import cli


class Checkpoint:
    def __init__(self, path: str, key, every_seconds: float = 30.0):
        self.path, self.key, self.every = path, json.loads(json.dumps(key)), every_seconds
        self._last = time.monotonic()

    def load(self) -> Optional[dict]:
        """The saved state of this batch, or None (no file, another batch's, or unreadable)."""
        try:
            with open(self.path) as f:
                obj = json.load(f)
        except (OSError, ValueError):
            return None
        if not isinstance(obj, dict) or obj.get("key") != self.key or not isinstance(obj.get("state"), dict):
            return None
        return obj["state"]

    def due(self, last: bool = False) -> bool:
        """Whether to save now: the last step, or every_seconds since the previous save (a LAMBADA
        passage takes well under a second on small models, and 41 tallies are a few MB of JSON)."""
        return last or time.monotonic() - self._last >= self.every

    def save(self, state: dict) -> None:
        cli.write_json(self.path, {"key": self.key, "state": state}, indent=None)
        self._last = time.monotonic()

    def clear(self) -> None:
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass


def tallies_state(done: int, tallies, **extra) -> dict:
    return {"done": done, "tallies": [vars(t) for t in tallies], **extra}


def restore_tallies(state: Optional[dict], tallies) -> int:
    """Puts the saved figures back into `tallies` (fresh ones, one per configuration); the steps done."""
    if not state or len(state.get("tallies", ())) != len(tallies):
        return 0
    for t, saved in zip(tallies, state["tallies"]):
        vars(t).update(saved)
    return int(state["done"])
