"""KV-cache eviction settings: a description only; the C core does the work.

    s = model.session(n_ctx=2048)
    s.set_eviction(policy="snapkv", budget=0.1)      # prefix schedule: compress on demand
    s.eval(prompt, logits=None); s.compress()
    s.set_eviction(Eviction(policy="restkv", budget=256, schedule="streaming", slack=32))

Everything here is read from the C core's tables (src/restkv.h: rk_policy_get_info,
rk_policy_param_info): the policies, what each does (flags: evicts, masks attention, which
tokens the shared code protects), the statistics each needs, and every parameter with its type,
default, range and help. `Eviction` is a dataclass built from them: a field per shared setting
(budget, schedule, positions, window, n_sink, slack) and per policy parameter (kernel, ema_alpha,
...), so a policy added in C appears here, in the tools' options and in the sweep's columns with
no Python change. The C core parses and validates the settings ("key=value,..." text).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, make_dataclass
from typing import Optional, Sequence, Union

from ._native import ffi, lib
from .errors import EngineError

EVICTS = lib.RK_POLICY_EVICTS
MASKS_ATTN = lib.RK_POLICY_MASKS_ATTN
KEEPS_SINKS = lib.RK_POLICY_KEEPS_SINKS
KEEPS_WINDOW = lib.RK_POLICY_KEEPS_WINDOW
KEEPS_LAST = lib.RK_POLICY_KEEPS_LAST
NEED_WINDOW = lib.RK_NEED_WINDOW
NEED_ACC = lib.RK_NEED_ACC
_TYPES = {lib.RK_PARAM_INT: "int", lib.RK_PARAM_FLOAT: "float", lib.RK_PARAM_CHOICE: "choice"}


def _check(status: int) -> None:
    if status != lib.RK_OK:
        raise EngineError(ffi.string(lib.rk_last_error()).decode(errors="replace"), status)


def _s(p) -> str:
    return ffi.string(p).decode() if p != ffi.NULL else ""


@dataclass(frozen=True)
class Param:
    """One parameter as the C core declares it."""
    name: str
    type: str              # "int", "float" or "choice"
    default: object        # int, float or the choice's name
    min: float
    max: float
    min_open: bool
    max_open: bool
    choices: tuple         # "choice": the names
    help: str

    @property
    def pytype(self):
        return {"int": int, "float": float, "choice": str}[self.type]

    def range_text(self) -> str:
        if self.type == "choice":
            return "one of " + ", ".join(self.choices)
        if self.type == "int":
            return f">= {self.min:.0f}" if self.max >= 2**31 - 1 else f"{self.min:.0f}..{self.max:.0f}"
        if math.isinf(self.max):
            return f"{'>' if self.min_open else '>='} {self.min:g}"
        return f"{'(' if self.min_open else '['}{self.min:g}, {self.max:g}{')' if self.max_open else ']'}"


@dataclass(frozen=True)
class Policy:
    """One policy as the C core registers it."""
    name: str
    help: str
    flags: int
    needs: int             # NEED_* bits its scores read
    gathers: int           # NEED_* bits a session set to it keeps (what copy_state can pass on)
    params: tuple          # its own Params

    @property
    def evicts(self) -> bool:
        return bool(self.flags & EVICTS)

    @property
    def masks_attention(self) -> bool:
        return bool(self.flags & MASKS_ATTN)

    @property
    def shared_used(self) -> tuple:
        """The shared settings besides budget, schedule, positions and slack that it reads."""
        out = []
        if self.flags & KEEPS_SINKS:
            out.append("n_sink")
        if self.flags & KEEPS_WINDOW or self.needs & NEED_WINDOW:
            out.append("window")
        return tuple(out)

    @property
    def uses(self) -> tuple:
        return self.shared_used + tuple(p.name for p in self.params)


def _param(info) -> Param:
    typ = _TYPES[info.type]
    choices = tuple(_s(info.choices).split("|")) if typ == "choice" else ()
    if typ == "choice":
        default = choices[int(info.default_value)]
    elif typ == "int":
        default = int(info.default_value)
    else:
        default = float(info.default_value)
    return Param(_s(info.name), typ, default, info.min, info.max, bool(info.min_open), bool(info.max_open), choices,
                 _s(info.help))


def _params_of(index: int) -> tuple:
    out = []
    info = ffi.new("rk_param_info *")
    for j in range(lib.rk_policy_n_params(index)):
        _check(lib.rk_policy_param_info(index, j, info))
        out.append(_param(info))
    return tuple(out)


def _read_tables():
    shared = _params_of(lib.RK_EVICT_SHARED)
    pols = {}
    info = ffi.new("rk_policy_info *")
    for i in range(lib.rk_policy_count()):
        _check(lib.rk_policy_get_info(i, info))
        name = _s(info.name)
        pols[name] = Policy(name, _s(info.help), info.flags, info.needs, info.gathers, _params_of(i))
    return shared, pols


SHARED_PARAMS, POLICIES = _read_tables()
SHARED = {p.name: p for p in SHARED_PARAMS}
SCHEDULES = SHARED["schedule"].choices
POSITIONS = SHARED["positions"].choices
# the policy that changes nothing (keeps every entry): the default, and the sweeps' baseline
FULL = next(n for n, p in POLICIES.items() if not p.flags & (EVICTS | MASKS_ATTN))
# policies that never evict (full keeps everything; an attention mask keeps every entry)
NON_EVICTING = tuple(n for n, p in POLICIES.items() if not p.evicts)
# policies whose budget masks attention: they change a prefill itself
MASKING = tuple(n for n, p in POLICIES.items() if p.masks_attention)


def policies() -> list[str]:
    """Names of the eviction policies this build knows."""
    return list(POLICIES)


def _policy_params() -> dict:
    """Every policy parameter by name (first declaration), with the policies that declare it."""
    out: dict = {}
    for pol in POLICIES.values():
        for p in pol.params:
            if p.name in SHARED:
                raise RuntimeError(f"policy {pol.name!r} declares {p.name!r}, a shared setting")
            prev = out.get(p.name)
            if prev is None:
                out[p.name] = (p, [pol.name])
            else:
                prev[1].append(pol.name)
                if prev[0].default != p.default or prev[0].type != p.type:
                    out[p.name] = (None, prev[1])  # defaults differ: the field's default is each policy's own
    return out


POLICY_PARAMS = _policy_params()


def _fields():
    fs = [("policy", str, field(default=FULL))]
    for p in SHARED_PARAMS:
        fs.append((p.name, p.pytype, field(default=p.default)))
    for name, (p, _) in POLICY_PARAMS.items():
        fs.append((name, Optional[object] if p is None else p.pytype, field(default=None if p is None else p.default)))
    return fs


def _format(name: str, v) -> str:
    if isinstance(v, bool):
        text = str(int(v))
    elif isinstance(v, (int, float)):
        text = repr(v)            # a float's repr reads back as the same double (then C rounds it to float)
    elif hasattr(v, "__index__"):
        text = str(v.__index__())  # numpy integers
    elif hasattr(v, "__float__") and not isinstance(v, str):
        text = repr(float(v))
    else:
        text = str(v)
    if "," in text or "=" in text:
        raise EngineError(f"{name}={v!r}: a value may not contain ',' or '='")
    return text


def _settings(items) -> str:
    return ",".join(f"{k}={_format(k, v)}" for k, v in items)


def _of(cls, **kwargs):
    """Eviction(**kwargs), with an EngineError naming unknown fields (not a TypeError)."""
    names = [f.name for f in fields(cls)]
    bad = sorted(set(kwargs) - set(names))
    if bad:
        raise EngineError(f"unknown eviction parameter(s) {', '.join(bad)} (known: {', '.join(names)})")
    return cls(**kwargs)


def _info(self) -> Policy:
    pol = POLICIES.get(self.policy)
    if pol is None:
        raise EngineError(f"unknown policy {self.policy!r} (known: {', '.join(POLICIES)})")
    return pol


def _to_c(self) -> tuple:
    """(policy, settings) as bytes for rk_session_set_eviction, after checking the parameters of the
    other policies too (a value set for a policy that is not the one chosen is still checked, by the
    C core, against the policy that declares it)."""
    pol = _info(self)
    own = {p.name for p in pol.params}
    items = [(p.name, getattr(self, p.name)) for p in SHARED_PARAMS]
    items += [(n, getattr(self, n)) for n in POLICY_PARAMS if n in own and getattr(self, n) is not None]
    others: dict = {}
    for n, (p, declared) in POLICY_PARAMS.items():
        v = getattr(self, n)
        if n in own or v is None or (p is not None and v == p.default and type(v) is type(p.default)):
            continue
        others.setdefault(declared[0], []).append((n, v))
    for name, its in others.items():
        _check(lib.rk_evict_check(name.encode(), _settings(its).encode()))
    return self.policy.encode(), _settings(items).encode()


def _check_settings(self) -> None:
    """Raises EngineError if the C core would refuse these settings (n_ctx-dependent checks aside)."""
    policy, settings = _to_c(self)
    _check(lib.rk_evict_check(policy, settings))


def _as_dict(self) -> dict:
    return asdict(self)


Eviction = make_dataclass(
    "Eviction", _fields(),
    namespace={"of": classmethod(_of), "to_c": _to_c, "check": _check_settings, "as_dict": _as_dict,
               "info": property(_info),
               "__doc__": "Eviction settings: the policy, the shared settings and every policy parameter "
                          "(the C core's tables; a policy reads its own and ignores the others)."})
Eviction.__module__ = __name__

EvictionLike = Union[Eviction, dict, None]


def source_for(evs: Sequence[Optional[Eviction]], window: Optional[int] = None) -> Eviction:
    """Settings for a session that prefills once for all of evs (prefix schedule, nothing evicted): a
    policy that gathers every statistic they need, at budget 1, with their window."""
    want = 0
    for ev in evs:
        if ev is not None:
            want |= POLICIES[ev.policy].gathers
    cands = [p for p in POLICIES.values() if not p.masks_attention and p.gathers & want == want]
    best = min(cands, key=lambda p: bin(p.gathers).count("1"))  # the least gathered; registry order on ties
    w = window if window is not None else next((ev.window for ev in evs if ev is not None), SHARED["window"].default)
    return Eviction(policy=best.name, budget=1.0, window=w)


# What each policy keeps and the Eviction fields it reads besides budget, schedule, slack and positions
# (which every policy takes): (help, names), from the C core's tables, for --help.
POLICY_INFO = {n: (p.help, p.uses) for n, p in POLICIES.items()}


def _default_of(policy: Policy, name: str):
    for p in policy.params:
        if p.name == name:
            return p.default
    return SHARED[name].default


def policy_help(options: bool = True) -> str:
    """The policies of this build with what they keep and their parameters (defaults), for --help.

    options: name the parameters as command-line options (--n-sink 4), else as fields (n_sink=4)."""
    names = policies()
    w = max(len(n) for n in names)
    lines = ["eviction policies (--policy NAME) and the parameters each reads, with their defaults:"]
    for name in names:
        pol = POLICIES[name]
        lines.append(f"  {name.ljust(w)}  {pol.help or '(no description)'}")
        if pol.uses:
            ps = [f"--{p.replace('_', '-')} {_default_of(pol, p)}" if options else f"{p}={_default_of(pol, p)}"
                  for p in pol.uses]
            lines.append(f"  {' ' * w}  parameters: {', '.join(ps)}")
    lines.append("every policy also takes the budget (a fraction in (0, 1] of the entries kept, or a token "
                 "count >= 2),")
    lines.append("the positions of kept keys (original or shift) and, when streaming, the slack.")
    return "\n".join(lines)


def cli_options() -> list:
    """The eviction settings as command-line options: (option, Eviction field, type, help, choices), the
    shared settings other than budget and schedule first, then every policy parameter."""
    out = []
    for p in SHARED_PARAMS:
        if p.name in ("budget", "schedule"):
            continue
        out.append((f"--{p.name.replace('_', '-')}", p.name, p.pytype, p.help, p.choices or None))
    for name, (p, declared) in POLICY_PARAMS.items():
        first = p if p is not None else next(q for q in POLICIES[declared[0]].params if q.name == name)
        hlp = f"{', '.join(declared)}: {first.help}"
        out.append((f"--{name.replace('_', '-')}", name, first.pytype, hlp, first.choices or None))
    return out
