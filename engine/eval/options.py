"""The evaluation tools' eviction options: --policy, --budget, --protocol, --positions and every policy
parameter (from the C core's tables, engine.eviction.cli_options), the checks of a policy and budget,
the Eviction they make, and what every tool's --help says of its exit status.

Used by engine.eval.protocols, engine.eval.lambada, the command lines (engine.eval.command,
engine.eval.sweep), engine.chat and engine.bench.
"""

from __future__ import annotations

import argparse
from dataclasses import fields, replace
from typing import Optional

from ..cli import check_budget  # noqa: F401  (re-exported: the budget check of the library and the tools)
from ..cli import distinct, parse_budgets, parse_list  # noqa: F401  (parse_budgets re-exported for the tools)
from ..errors import EngineError
from ..eviction import FULL, NON_EVICTING, cli_options

PROTOCOLS = ("prefix", "streaming")

# how every tool ends (engine.cli)
EXIT_HELP = ("exit status: 0 done, 2 bad command line or input (nothing computed), 1 failure while running, "
             "130 interrupted (Ctrl-C).")


def check_policy(policy: str) -> str:
    """A policy name, or a variant of one (split_variant), checked; the variant in its canonical spelling."""
    name, over = split_variant(policy)
    return ":".join([name] + [f"{k}={v}" for k, v in over.items()])


def base_policy(spec: str) -> str:
    """The policy a name or variant runs ('restkv:restkv_pooling=none' -> 'restkv')."""
    return str(spec).split(":", 1)[0].strip()


def split_variant(spec: str) -> tuple[str, dict]:
    """A policy with some of its own parameters set: 'restkv:restkv_pooling=none:ema_alpha=0.5' ->
    ('restkv', {'restkv_pooling': 'none', 'ema_alpha': 0.5}); a parameter named after its policy may drop
    that prefix ('restkv:pooling=none'). Variants are policies of their own in --policies lists, so the
    ablations of one policy share the prefills of a run (a --param option applies to every policy)."""
    from ..eviction import POLICIES, policies

    name, *parts = [x.strip() for x in str(spec).split(":")]
    if name not in POLICIES:
        raise EngineError(f"unknown policy {name!r} (known: {', '.join(policies())})")
    own = {p.name: p for p in POLICIES[name].params}
    over = {}
    for part in parts:
        k, eq, v = part.partition("=")
        k = k.strip().replace("-", "_")
        if k not in own and f"{name}_{k}" in own:
            k = f"{name}_{k}"
        if not eq or k not in own:
            raise EngineError(f"policy variant {spec!r}: {part!r} is not PARAM=VALUE of a parameter of {name} "
                              f"({', '.join(own) or 'it has none'})")
        p = own[k]
        try:
            val = p.pytype(v.strip())
        except ValueError:
            raise EngineError(f"policy variant {spec!r}: {k}={v.strip()!r} is not a{'n' if p.type == 'int' else ''} "
                              f"{p.type}") from None
        if p.choices and val not in p.choices:
            raise EngineError(f"policy variant {spec!r}: {k} is one of {', '.join(p.choices)}, not {val!r}")
        over[k] = val
    return name, over


def parse_policies(text: str, include_full: bool = False) -> list[str]:
    """--policies: a comma list of the C registry's names (repeats dropped), or 'all' (every policy; the
    full cache only with include_full: a sweep runs it once as its budget-1 run)."""
    from ..eviction import policies

    if text.strip() == "all":
        return [p for p in policies() if include_full or p != FULL]
    return distinct(parse_list(text, "policies"), check_policy, "--policies")


def budget_tokens(budget: float, n: int) -> int:
    """Entries kept out of n for a budget, as the C core counts them (floor, at least 1)."""
    if budget > 1:
        return int(budget)
    return max(1, int(budget * n + 1e-4))


def make_eviction(policy: str = "full", budget: float = 1.0, **params):
    """An engine.eviction.Eviction, with the policy and budget checked (clear errors); a policy variant's own
    settings (split_variant) override those of params."""
    from ..eviction import Eviction

    policy, over = split_variant(policy)
    b = check_budget(budget)
    names = {f.name for f in fields(Eviction)}
    bad = sorted(set(params) - names)
    if bad:
        raise EngineError(f"unknown eviction parameter(s) {', '.join(bad)}")
    return Eviction(policy=policy, budget=b, **{**params, **over})


def as_eviction(eviction):
    """None, an Eviction, or a dict of its fields (checked by make_eviction) -> None or an Eviction."""
    from ..eviction import Eviction

    if eviction is None or isinstance(eviction, Eviction):
        return eviction
    if isinstance(eviction, dict):
        return make_eviction(**eviction)
    raise EngineError(f"eviction must be an Eviction, a dict or None, got {type(eviction).__name__}")


# eviction hyper-parameters exposed on the command line: (option, Eviction field, type, help), built from the C
# core's parameter tables (engine.eviction.cli_options): the shared settings other than budget and schedule
# (positions is added with its choices by add_eviction_args), then every policy parameter
EVICTION_OPTIONS = [(opt, name, typ, hlp) for opt, name, typ, hlp, _ in cli_options() if name != "positions"]
_CHOICES = {name: choices for _, name, _, _, choices in cli_options() if choices}


def add_eviction_args(p: argparse.ArgumentParser, policy_budget: bool = True) -> None:
    """--policy, --budget, --protocol (with policy_budget), --positions and the policy hyper-parameters."""
    from ..eviction import Eviction

    d = Eviction()
    g = p.add_argument_group("KV-cache eviction")
    if policy_budget:
        g.add_argument("--budget", type=float, default=1.0,
                       help="KV-cache budget: a fraction in (0, 1] of the entries kept (prefix protocol: of the "
                            "prefilled half; streaming: of --ctx), or an integer >= 2, a number of tokens "
                            "(default 1.0 = the full cache)")
        g.add_argument("--policy", default=None,
                       help="eviction policy, see the list below (default 'full'; needed when --budget < 1)")
    g.add_argument("--protocol", choices=PROTOCOLS, default="prefix",
                   help="prefix: each chunk's first half prefilled and compressed, second half scored on top "
                        "(default; = llama-perplexity at budget 1); streaming: the whole text through a "
                        "cache held at the budget, every token after the first --ctx scored")
    g.add_argument("--positions", choices=_CHOICES["positions"], default=d.positions,
                   help="kept keys keep their RoPE positions (original, default) or are shifted to "
                        "contiguous ones (shift)")
    for opt, name, typ, hlp in EVICTION_OPTIONS:
        g.add_argument(opt, dest=name, type=typ, default=getattr(d, name), choices=_CHOICES.get(name),
                       help=f"{hlp} (default {getattr(d, name)})")


def eviction_params(args) -> dict:
    """The Eviction fields other than policy, budget and schedule, from parsed arguments."""
    return {"positions": args.positions, **{name: getattr(args, name) for _, name, _, _ in EVICTION_OPTIONS}}


def eviction_from_args(args, policy: Optional[str] = None, budget: Optional[float] = None):
    return make_eviction(policy=policy if policy is not None else (args.policy or FULL),
                         budget=budget if budget is not None else args.budget, **eviction_params(args))


def resolve_policy(policy: Optional[str], budget: float, protocol: str = "prefix") -> str:
    """The policy to run: 'full' by default at budget 1; clear errors for meaningless combinations."""
    from ..eviction import policies

    budget = check_budget(budget)
    if policy is not None:
        check_policy(policy)
    evicting = ", ".join(p for p in policies() if p not in NON_EVICTING)
    if protocol == "streaming":
        if policy is None or policy in NON_EVICTING:
            raise EngineError(f"the streaming protocol holds the cache at the budget and needs an evicting "
                              f"policy: --policy one of {evicting}"
                              + (f" ('{policy}' evicts nothing)" if policy else ""))
        return policy
    if budget == 1.0:
        return policy or FULL
    if policy is None:
        raise EngineError(f"--budget {budget:g} needs an eviction policy: --policy one of "
                          f"{', '.join(p for p in policies() if p != FULL)}")
    if policy == FULL:
        raise EngineError(f"--budget {budget:g} with --policy full: 'full' keeps every entry; "
                          f"choose an evicting policy ({evicting})")
    return policy


def open_model(args):
    """The model of --gguf and the threads its sessions get; checks the eviction settings against the
    C core (a bad --kernel, --window, ... is reported before any work)."""
    from .. import Model

    model = Model(args.gguf, n_threads=args.threads)
    with model.session(n_ctx=8) as s:
        if args.policy_ev is not None:
            s.set_eviction(replace(args.policy_ev, schedule="prefix"))
        return model, s.n_threads


def add_ray_args(p: argparse.ArgumentParser) -> None:
    """--ray [ADDRESS] and --ray-cpus-per-worker (engine.sweep, engine.ruler; engine.eval.distributed)."""
    g = p.add_argument_group("running on a Ray cluster (docs/ray.md; needs pip install 'restkv-engine[ray]')")
    g.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run the units of work (one shared prefill each: a chunk, a passage, a sample) on Ray "
                        "workers: 'auto' joins the cluster started on this machine (ray start --head), HOST:6379 "
                        "another; --ray alone starts a local cluster of this machine's CPUs. The model path must "
                        "exist on every node. The results are written here, as without --ray")
    g.add_argument("--ray-cpus-per-worker", type=int, default=2, metavar="N",
                   help="CPUs of each worker (a Ray actor holding the model), and its threads (default 2); one "
                        "worker per N CPUs of the cluster")


def ray_options(args) -> Optional[dict]:
    """engine.eval.distributed.Pool's options from --ray and --ray-cpus-per-worker (None without --ray),
    checked, Ray's presence included, before any work."""
    if args.ray is None:
        return None
    if args.ray_cpus_per_worker < 1:
        raise EngineError(f"--ray-cpus-per-worker must be >= 1, got {args.ray_cpus_per_worker}")
    from .distributed import import_ray

    import_ray()
    return {"address": None if args.ray == "local" else args.ray, "cpus_per_worker": args.ray_cpus_per_worker}
