"""KV-cache eviction settings: a description only; the C core does the work.

    s = model.session(n_ctx=2048)
    s.set_eviction(policy="snapkv", budget=0.1)      # prefix schedule: compress on demand
    s.eval(prompt, logits=None); s.compress()
    s.set_eviction(Eviction(policy="restkv", budget=256, schedule="streaming", slack=32))

See src/restkv.h (rk_evict_params) for what each field means.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Union

from ._native import ffi, lib
from .errors import EngineError

SCHEDULES = {"prefix": lib.RK_SCHEDULE_PREFIX, "streaming": lib.RK_SCHEDULE_STREAMING}
POSITIONS = {"original": lib.RK_POSITIONS_ORIGINAL, "shift": lib.RK_POSITIONS_SHIFT}


def policies() -> list[str]:
    """Names of the eviction policies this build knows."""
    out, i = [], 0
    while (p := lib.rk_policy_name(i)) != ffi.NULL:
        out.append(ffi.string(p).decode())
        i += 1
    return out


@dataclass
class Eviction:
    policy: str = "full"
    budget: float = 1.0          # (0, 1]: fraction kept per (layer, kv-head); >= 2: tokens kept
    schedule: str = "prefix"     # "prefix" (compress on demand) or "streaming" (evict as tokens arrive)
    positions: str = "original"  # "original" RoPE positions, or "shift" to contiguous ones
    window: int = 32
    n_sink: int = 4
    kernel: int = 5
    slack: int = 0
    ema_alpha: float = 0.3
    aws_beta: float = 2000.0
    pyramid_beta: float = 20.0
    ada_floor: float = 0.2
    ada_base: str = "snapkv"
    lacache_span: int = 16
    lacache_overlap: int = 0

    @classmethod
    def of(cls, **kwargs) -> "Eviction":
        """Eviction(**kwargs), with an EngineError naming unknown fields (not a TypeError)."""
        bad = sorted(set(kwargs) - {f.name for f in fields(cls)})
        if bad:
            raise EngineError(f"unknown eviction parameter(s) {', '.join(bad)} "
                              f"(known: {', '.join(f.name for f in fields(cls))})")
        return cls(**kwargs)

    def to_c(self):
        if self.schedule not in SCHEDULES:
            raise EngineError(f"unknown schedule {self.schedule!r} (expected one of {sorted(SCHEDULES)})")
        if self.positions not in POSITIONS:
            raise EngineError(f"unknown positions {self.positions!r} (expected one of {sorted(POSITIONS)})")
        p = ffi.new("rk_evict_params *", lib.rk_evict_default_params())
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "schedule":
                p.schedule = SCHEDULES[v]
            elif f.name == "positions":
                p.positions = POSITIONS[v]
            elif f.name in ("policy", "ada_base"):
                b = str(v).encode()
                if len(b) >= len(getattr(p, f.name)):
                    raise EngineError(f"{f.name} {v!r} is too long")
                setattr(p, f.name, b)
            else:
                try:
                    setattr(p, f.name, v)
                except (TypeError, OverflowError) as e:
                    raise EngineError(f"{f.name}={v!r}: {e}") from None
        return p

    def as_dict(self) -> dict:
        return asdict(self)


EvictionLike = Union[Eviction, dict, None]


# What each policy of the C registry (src/evict/policies/registry.c) keeps, and the Eviction fields its scoring
# reads besides budget, schedule, slack and positions (which every policy takes). The tools' --help is
# generated from this; tests/test_cli_edges.py checks that it covers every policy the C core registers
# and names only Eviction fields. Adding a policy: its C file, its line in registry.c, its entry here.
POLICY_INFO = {
    "full": ("keeps every entry (no eviction)", ()),
    "streaming": ("the first n_sink tokens and the most recent ones (StreamingLLM)", ("n_sink",)),
    "h2o": ("highest accumulated attention, normalised by how many queries saw the key (H2O)", ()),
    "tova": ("highest attention of the last query, one keep-set per layer (TOVA)", ()),
    "snapkv": ("the window, then the highest pooled window attention (SnapKV)", ("window", "kernel")),
    "pyramidkv": ("SnapKV scores, per-layer budgets falling with depth (PyramidKV)",
                  ("window", "kernel", "pyramid_beta")),
    "adakv": ("per-head budgets within a layer over snapkv or restkv scores (AdaKV)",
              ("window", "kernel", "ada_floor", "ada_base")),
    "lacache": ("a ladder pattern of kept spans across layers (LaCache)",
                ("n_sink", "window", "lacache_span", "lacache_overlap")),
    "restkv": ("ReST-KV: EMA of window attention times output-space distance, adaptive pooling",
               ("window", "kernel", "ema_alpha", "aws_beta")),
    "topk": ("evicts nothing: each query attends to its top budget-fraction of keys (sparse attention)", ()),
}


def policy_help(options: bool = True) -> str:
    """The policies of this build with what they keep and their parameters (defaults), for --help.

    options: name the parameters as command-line options (--n-sink 4), else as fields (n_sink=4)."""
    d = Eviction()
    names = policies()
    w = max(len(n) for n in names)
    lines = ["eviction policies (--policy NAME) and the parameters each reads, with their defaults:"]
    for name in names:
        desc, params = POLICY_INFO.get(name, ("(no description)", ()))
        lines.append(f"  {name.ljust(w)}  {desc}")
        if params:
            ps = [f"--{p.replace('_', '-')} {getattr(d, p)}" if options else f"{p}={getattr(d, p)}" for p in params]
            lines.append(f"  {' ' * w}  parameters: {', '.join(ps)}")
    lines.append("every policy also takes the budget (a fraction in (0, 1] of the entries kept, or a token "
                 "count >= 2),")
    lines.append("the positions of kept keys (original or shift) and, when streaming, the slack.")
    return "\n".join(lines)
