"""The long-context evaluation: every (sample, protocol, policy, budget), one prefill per sample, resumable.

    from engine.longctx.runner import run
    res = run("model.gguf", tasks="niah_single_1,passkey", lengths=[4096], samples=10,
              policies=["full", "snapkv", "restkv"], budgets=[0.25, 1024], protocols=["agnostic", "aware-full"],
              out="ruler_out")
    res["summary"], res["runs"]

Per sample (task, ctx, index; engine.longctx.generate sizes it with the model's tokenizer) the prompt is
cut into segments (engine.longctx.protocols) and prefilled once with the full cache: the source session
evaluates P + C, then Q, then S + A, and every configuration takes a copy of the state at its protocol's
stage (agnostic after P + C, aware after Q, aware-full after S + A; engine.eval.shared_prefill), compresses
it once (prefix schedule, kept keys keep their positions unless --positions shift), appends what its
protocol appends and decodes greedily. The results are bit for bit those of separate runs
(fresh_run; tests/test_ruler_protocols.py). A configuration that cuts nothing (full, budget 1, a token
budget B >= the span) is the full cache's run: computed once per (sample, protocol) and recorded for each.

With ray (--ray; docs/ray.md, engine.eval.distributed) each sample is a unit of work run on a Ray worker
(sample_unit: run_sample there), the samples generated here as workers free up and their runs recorded here
in the order they finish.

Files, in DIR (--out):
  ruler.jsonl   one finished run a line (appended and flushed as each finishes; its first line holds the
                settings the runs depend on): the resume log. A torn last line (a kill mid-write) is dropped
                on resume; runs already there are skipped; other settings are refused, not mixed.
  ruler.json    {meta, runs, summary, partial} of the runs asked for (partial after Ctrl-C)
  ruler.csv     one row per run
  ruler.md      one table per (length, protocol): rows policy@budget, columns the tasks and their average
  acc_vs_budget_<len>_<protocol>.png, needle_<policy>_<budget>_<protocol>.png   with matplotlib
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import numpy as np

from .. import cli
from ..errors import EngineError
from ..eval.options import check_budget, check_policy, make_eviction
from ..eval.shared_prefill import PrefillCache, SharedPrefill
from ..eviction import FULL, POLICIES
from .protocols import (PROTOCOLS, STAGE, GenTokenizer, Segments, check_protocols, end_ids, greedy, prompt_format,
                        same_as_full, segments)

JSONL, JSON, CSV, MD = "ruler.jsonl", "ruler.json", "ruler.csv", "ruler.md"
FORMAT = 1  # of ruler.jsonl's records
ABBREV = {"agnostic": "ag", "aware": "aw", "aware-full": "awf"}  # in the per-sample log lines
# the fields of a record that measure time (they differ between two runs of the same command)
TIME_FIELDS = ("prefill_seconds", "compress_seconds", "append_seconds", "decode_seconds", "seconds",
               "decode_tokens_per_second", "finished")


def tasks_api():
    """engine.longctx: the task generators (Sample, TASKS, expand_tasks, generate, score, DEVIATIONS, ...).
    A function, looked up at each use, so that tests can stand in for it."""
    from .. import longctx

    return longctx


# ---------------------------------------------------------------- configurations

@dataclass(frozen=True)
class Config:
    protocol: str
    policy: str
    budget: float

    @property
    def label(self) -> str:
        return label(self.policy, self.budget)


def label(policy: str, budget: float) -> str:
    return FULL if policy == FULL else f"{policy}@{budget:g}"


def plan_configs(protocols: Sequence[str], policies: Sequence[str], budgets: Sequence[float]) -> list[Config]:
    """Every (protocol, policy, budget) to run: per protocol the full cache once (when 'full' is among the
    policies or 1 among the budgets), then each other policy at each budget other than 1."""
    out = []
    for proto in protocols:
        if FULL in policies or 1.0 in budgets:
            out.append(Config(proto, FULL, 1.0))
        for p in policies:
            if p == FULL:
                continue
            for b in budgets:
                if b != 1.0:
                    out.append(Config(proto, p, float(b)))
    return out


def run_key(task: str, ctx: int, index: int, protocol: str, policy: str, budget: float) -> str:
    return json.dumps([task, int(ctx), int(index), protocol, policy, float(budget)])


def record_key(r: dict) -> str:
    return run_key(r["task"], r["ctx"], r["index"], r["protocol"], r["policy"], r["budget"])


# ---------------------------------------------------------------- one sample

def kept_counts(session, model) -> list[int]:
    """Entries held per (layer, kv-head) buffer of the global layers (sliding-window layers are rings the
    policies never evict from)."""
    layers = [il for il, w in enumerate(model.layer_windows) if w == 0]
    return [session.kv_count(il, g) for il in layers for g in range(model.n_kv_heads)]


def finish(session, segs: Segments, protocol: str, logits: Optional[np.ndarray], max_new: int, ends, tok,
           stop_at_newline: bool, model) -> dict:
    """The rest of a run once `session` holds the compressed span: the kept counts, the appended segments,
    greedy decoding. `logits`: of the span's last position from its prefill (before compression)."""
    kept = kept_counts(session, model)
    rest = segs.rest(protocol)
    t0 = time.perf_counter()
    if rest:
        logits = session.eval(list(rest), logits="last")
    elif logits is None:
        raise EngineError("aware-full needs the logits of the prefill's last position")
    # aware-full: the first generated token comes from the logits of the last prompt position computed by
    # the prefill itself, on the full cache, before the compression (as ReST-KV's and KVCache-Factory's
    # generate() do: the compression happens inside that forward pass, after its attention); only the
    # tokens after it are decoded on the compressed cache.
    t1 = time.perf_counter()
    dec = greedy(session, logits, max_new, ends, tok, stop_at_newline)
    t2 = time.perf_counter()
    n_span = segs.n_span(protocol)
    return {"n_span": n_span, "n_rest": len(rest), "kept_mean": float(np.mean(kept)), "kept_min": int(min(kept)),
            "kept_max": int(max(kept)), "kept_fraction": float(np.mean(kept)) / n_span,
            "first_token_from": "append" if rest else "prefill", "generated_ids": dec.ids, "prediction": dec.text,
            "n_generated": len(dec.ids), "stop_reason": dec.stop, "append_seconds": t1 - t0,
            "decode_seconds": t2 - t1, "decode_tokens_per_second": len(dec.ids) / (t2 - t1) if t2 > t1 else 0.0}


def as_protocol(segs: Segments, protocol: str) -> dict:
    """The bookkeeping of finish() that depends on the protocol, for a run that evicted nothing: every
    global buffer holds the whole span."""
    n_span, rest = segs.n_span(protocol), segs.rest(protocol)
    return {"n_span": n_span, "n_rest": len(rest), "kept_mean": float(n_span), "kept_min": n_span,
            "kept_max": n_span, "kept_fraction": 1.0, "first_token_from": "append" if rest else "prefill"}


def fresh_run(model, segs: Segments, protocol: str, eviction, n_ctx: int, max_new: int, stop_at_newline: bool = False,
              n_threads: Optional[int] = None) -> dict:
    """One configuration alone, in a session of its own (the reference the shared prefill must equal):
    the span evaluated in one call, compressed (unless eviction is None), then finish()."""
    tok = model.tokenizer
    with model.session(n_ctx=n_ctx, n_threads=n_threads) as s:
        if eviction is not None:
            s.set_eviction(eviction)
        logits = s.eval(list(segs.span(protocol)), logits="last")
        if eviction is not None:
            s.compress()
        return finish(s, segs, protocol, logits, max_new, end_ids(tok), tok, stop_at_newline, model)


def run_sample(model, sample, segs: Segments, configs: Sequence[Config], ev_params: dict, n_ctx: int,
               n_threads: Optional[int] = None, cache: Optional[PrefillCache] = None) -> Iterable[tuple[Config, dict]]:
    """Yields (config, result) for each configuration, all from one shared prefill of the sample (the
    sessions taken from `cache` when given)."""
    tok = model.tokenizer
    ends = end_ids(tok)
    evs, stage_of, members, unique = [], [], [], {}
    for cfg in configs:
        n_span = segs.n_span(cfg.protocol)
        full = same_as_full(cfg.policy, cfg.budget, n_span)
        # a policy that masks attention (topk) evicts nothing: it attends over the whole prompt however it is
        # cut into stages, so its generations are the same under every protocol; it runs once for all of them
        # (a prefill of its own per budget), recorded under each with run_as = the protocol it ran under
        masks = POLICIES[cfg.policy.split(":", 1)[0]].masks_attention
        key = (cfg.protocol, None) if full else ("masked" if masks else cfg.protocol, cfg.policy, cfg.budget)
        if key not in unique:
            unique[key] = len(evs)
            evs.append(None if full else make_eviction(cfg.policy, cfg.budget, **ev_params))
            stage_of.append(STAGE[cfg.protocol])
            members.append([])
        members[unique[key]].append(cfg)
    sp = cache.get(model, evs, n_ctx, n_threads) if cache is not None else SharedPrefill(model, evs, n_ctx=n_ctx,
                                                                                         n_threads=n_threads)
    try:
        # the stages a configuration needs (aware-full's S + A only when some configuration compresses there)
        stages = segs.stages()[:max(stage_of) + 1]
        for j, session, pre in sp.prefill_stages(stages, stage_of=stage_of, logits=True):
            cfgs = members[j]
            res = finish(session, segs, cfgs[0].protocol, pre.logits, sample.max_new_tokens, ends, tok,
                         sample.stop_at_newline, model)
            res.update(prefill_seconds=pre.prefill_seconds, prefill_shared=pre.shared,
                       compress_seconds=pre.compress_seconds, evicted=evs[j] is not None)
            res["seconds"] = pre.compress_seconds + res["append_seconds"] + res["decode_seconds"]
            for cfg in cfgs:
                out = dict(res, same_as_full=evs[j] is None and cfg.policy != FULL, run_as=None)
                if cfg.protocol != cfgs[0].protocol:  # a masking policy's run, recorded under another protocol
                    out.update(as_protocol(segs, cfg.protocol), run_as=cfgs[0].protocol)
                yield cfg, out
    finally:
        if cache is None:
            sp.close()


def make_record(sample, cfg: Config, res: dict, score: float, depth, n_prompt: int) -> dict:
    return {"task": sample.task, "ctx": sample.ctx, "index": sample.index, "protocol": cfg.protocol,
            "policy": cfg.policy, "budget": cfg.budget, "label": cfg.label,
            "budget_kind": "full" if cfg.policy == FULL else
            ("fraction" if cfg.budget <= 1 else "tokens"),
            "sample_seed": sample.seed, "depth": depth, "metric": sample.metric, "answers": list(sample.answers),
            "max_new_tokens": sample.max_new_tokens, "n_prompt": n_prompt, "score": float(score), **res,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}


# ---------------------------------------------------------------- the resume log

class Store:
    """DIR/ruler.jsonl: a header line (the settings every run depends on), then one finished run a line."""

    def __init__(self, out: str, fingerprint: dict, meta: dict, log=None):
        self.path = os.path.join(out, JSONL)
        self.fingerprint, self.meta, self.log = fingerprint, meta, log
        self._f = None

    def load(self) -> dict:
        """The runs already there, by key (a torn last line is dropped from the file)."""
        runs: dict = {}
        if not os.path.exists(self.path):
            return runs
        with open(self.path, "rb") as f:
            raw = f.read()
        lines = raw.split(b"\n")
        good = 0  # bytes of complete, parsed lines
        parsed = []
        for i, line in enumerate(lines):
            last = i == len(lines) - 1
            if last and not line:
                break
            try:
                obj = json.loads(line)
                if last:  # a final line without its newline: cut mid-write even if it parses
                    raise ValueError("no newline")
            except ValueError:
                if last or all(not x.strip() for x in lines[i + 1:]):
                    if self.log:
                        print(f"ruler: {self.path}: dropping a torn last line (a run interrupted while being "
                              "written; it runs again)", file=self.log)
                    break
                raise EngineError(f"{self.path}: line {i + 1} is not JSON; cannot resume from it (move the file "
                                  "away or use another --out)") from None
            parsed.append(obj)
            good += len(line) + 1
        if not parsed:
            return runs
        head = parsed[0]
        if not isinstance(head, dict) or head.get("ruler_jsonl") != FORMAT:
            raise EngineError(f"{self.path}: not a resume log of this tool (or of another version); move it away "
                              "or use another --out")
        diff = _differences(head.get("fingerprint", {}), self.fingerprint)
        if diff:
            raise EngineError(f"{self.path} holds runs made with other settings ({'; '.join(diff)}); they would be "
                              "mixed with these: use another --out, or move the file away to start over")
        if head.get("meta", {}).get("engine_version") != self.meta.get("engine_version") and self.log:
            cli.warn(f"{self.path} was started by restkv-engine {head.get('meta', {}).get('engine_version')}, this "
                     f"is {self.meta.get('engine_version')}: its runs are kept")
        for r in parsed[1:]:
            runs.setdefault(record_key(r), r)  # never twice
        if good < len(raw):
            with open(self.path, "r+b") as f:
                f.truncate(good)
        return runs

    def append(self, record: dict) -> None:
        if self._f is None:
            new = not os.path.exists(self.path) or os.path.getsize(self.path) == 0
            self._f = open(self.path, "a", encoding="utf-8")
            if new:
                self._write({"ruler_jsonl": FORMAT, "fingerprint": self.fingerprint, "meta": self.meta})
        self._write(record)

    def _write(self, obj: dict) -> None:
        self._f.write(json.dumps(obj, ensure_ascii=False) + "\n")
        self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def _differences(old: dict, new: dict) -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if a != b:
            if isinstance(a, dict) and isinstance(b, dict):
                out += [f"{k}.{x}" for x in _differences(a, b)]
            else:
                sa, sb = (json.dumps(x) for x in (a, b))
                sa, sb = (x if len(x) < 70 else x[:67] + "..." for x in (sa, sb))
                out.append(f"{k} {sa} there, {sb} now")
    return out


# ---------------------------------------------------------------- the run

def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _plain(x):
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)


def generator_info(api, data_root: Optional[str]) -> dict:
    """What the generated samples depend on besides (task, ctx, index, seed, tokenizer): the generators'
    recorded deviations from the references (engine.longctx.DEVIATIONS) and the hashes of their inputs
    (the wonderwords lists, the essay haystack; each sample's meta has them too)."""
    info = {"deviations": _plain(getattr(api, "DEVIATIONS", None))}
    if getattr(api, "__name__", "") == __name__.rpartition(".")[0]:  # the real generators, not a stand-in
        hashes = {}
        try:
            from .words import sha256s

            hashes["wordlists"] = dict(sha256s())
        except Exception as e:  # noqa: BLE001 (recorded, not fatal: a task that needs them will say why)
            hashes["wordlists"] = f"unavailable: {e}"
        try:
            from .haystack import corpus

            hashes["essays"] = corpus(data_root).sha256
        except Exception as e:  # noqa: BLE001
            hashes["essays"] = f"unavailable: {e}"
        info["hashes"] = hashes
    return info


def expand(api, tasks) -> list[str]:
    """--tasks: a name, a group (ruler11, needle, passkey) or a comma list, through engine.longctx.expand_tasks."""
    text = tasks if isinstance(tasks, str) else ",".join(tasks)
    try:
        out = list(api.expand_tasks(text))
    except (KeyError, ValueError) as e:
        msg = e.args[0] if e.args else str(e)
        raise EngineError(f"--tasks {text}: {msg}") from None
    if not out:
        raise EngineError("--tasks: no task given")
    return list(dict.fromkeys(out))


def _lengths(lengths) -> list[int]:
    if isinstance(lengths, (int, np.integer)):
        lengths = [lengths]

    def length(x):
        try:
            n = int(x)
            if n != float(x):
                raise ValueError
        except (TypeError, ValueError):
            raise EngineError(f"--lengths: {x!r} is not an integer number of tokens") from None
        if n < 64:
            raise EngineError(f"--lengths: {n} is too short (64 tokens at least)")
        return n

    return cli.distinct(lengths, length, "--lengths")


def eviction_params(eviction: Optional[dict]) -> dict:
    """Every hyper-parameter (defaults included) other than policy, budget and schedule."""
    return {k: v for k, v in make_eviction(FULL, 1.0, **dict(eviction or {})).as_dict().items()
            if k not in ("policy", "budget", "schedule")}


def run(model, tasks, lengths, samples: int = 1, policies: Sequence[str] = (FULL,), budgets: Sequence[float] = (1.0,),
        protocols: Sequence[str] = ("agnostic",), seed: int = 42, template: str = "auto", out: Optional[str] = None,
        n_threads: Optional[int] = None, eviction: Optional[dict] = None, data_root: Optional[str] = None,
        progress: bool = True, log=None, json_out: Optional[str] = None, chat_template: Optional[str] = None,
        ray: Optional[dict] = None) -> dict:
    """Runs what is missing; returns {"meta", "runs", "summary", "partial", "tables", "ran", "skipped", "files"}.

    model: an engine.Model or a GGUF path. tasks: names, a group (ruler11, needle, passkey) or a comma list.
    lengths: target prompt lengths in tokens (max_new included). samples: per task and length. policies
    and budgets: every policy at every budget (fractions of the compressed span in (0, 1), token counts >= 2
    per layer per KV head, 1 = the full cache). protocols: agnostic, aware, aware-full. eviction: the
    policies' hyper-parameters (engine.Eviction fields). out: the folder of the resumable files (None:
    nothing written). Ctrl-C: engine.cli.Interrupted carrying this dict (partial), after writing it.
    ray: engine.eval.distributed.Pool's options (address, cpus_per_worker): each sample's runs are made on
    a Ray worker (sample_unit), recorded here as they come; a sample that fails there is reported in
    "errors" and run again next time, the others go on."""
    from .. import Model, __version__
    from . import plots, report

    log = sys.stderr if log is None else log
    own = not isinstance(model, Model)
    with cli.preflight():  # the checks made before any work: their errors are the caller's (exit status 2)
        api = tasks_api()
        task_list = expand(api, tasks)
        lengths = _lengths(lengths)
        if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < 1:
            raise EngineError(f"--samples must be an integer >= 1, got {samples!r}")
        if isinstance(protocols, str):
            protocols = protocols.split(",")
        protocols = check_protocols([p.strip() for p in protocols])
        if isinstance(policies, str):
            policies = policies.split(",")
        policies = list(dict.fromkeys(check_policy(p.strip()) for p in policies))
        if isinstance(budgets, (int, float)):
            budgets = [budgets]
        budgets = list(dict.fromkeys(float(check_budget(b)) for b in budgets))
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise EngineError(f"--seed must be an integer, got {seed!r}")
        ev_params = eviction_params(eviction)
        configs = plan_configs(protocols, policies, budgets)
        if not configs:
            raise EngineError("nothing to run: give 'full' among the policies, or budgets other than 1")
        if out is not None:
            cli.check_output_dir(out)
        cli.check_output(json_out)
        if own:
            cli.check_input(os.fspath(model), "--gguf")
            model = Model(model, n_threads=n_threads)
    try:
        with cli.preflight():
            tok = model.tokenizer
            fmt = prompt_format(tok, template, chat_template)
            # the evaluation's eviction settings, checked by the C core before any work
            for c in configs:
                if c.policy != FULL:
                    make_eviction(c.policy, c.budget, **ev_params).check()
        gen_tok = GenTokenizer(tok)
        path = os.path.abspath(model.path)
        meta = {"model": path, "model_size": os.path.getsize(path), "model_sha256": file_sha256(path),
                "model_desc": model.desc, "n_ctx_train": model.n_ctx_train, "engine_version": __version__,
                "template": fmt.as_dict(), "protocols": protocols, "seed": int(seed), "tasks": task_list,
                "lengths": lengths, "samples": int(samples), "policies": policies, "budgets": budgets,
                "eviction": ev_params, "generators": generator_info(api, data_root),
                "data_root": os.path.abspath(data_root) if data_root else None,
                "budget_rule": "fraction f in (0, 1): each (layer, kv-head) keeps max(1, floor(f * n_span)) of the "
                               "n_span compressed tokens (kvpress: compression_ratio = 1 - f); integer B >= 2: keeps "
                               "B, the protected window included (ReST-KV's max_capacity_prompt), nothing evicted "
                               "when n_span <= B; 1: the full cache"}
        if not fmt.verbatim:
            cli.warn("the chat template changes a user message's text (e.g. trims it): the segments are "
                     "P + C + Q + S of the raw message")
        for n in lengths:
            if n > model.n_ctx_train:
                cli.warn(f"--lengths {n}: beyond the model's training context ({model.n_ctx_train} tokens)")
        fingerprint = {k: meta[k] for k in ("model_sha256", "model_size", "seed", "eviction", "generators")}
        # the prompt format in effect (auto on a GGUF without a chat template is raw: the same prompts)
        fingerprint["template"] = {k: meta["template"][k] for k in ("mode", "template_sha256", "p_text", "s_text")}
        store = None
        done: dict = {}
        if out is not None:
            os.makedirs(out, exist_ok=True)
            store = Store(out, fingerprint, meta, log)
            with cli.preflight():  # a folder of other settings is the caller's mistake (exit status 2)
                done = store.load()
        # the plan: length, then sample index, then task (an interrupted campaign has every task equally far),
        # then the configurations
        plan = [(n, i, t) for n in lengths for i in range(samples) for t in task_list]
        keys = [run_key(t, n, i, c.protocol, c.policy, c.budget) for n, i, t in plan for c in configs]
        todo = []
        for n, i, t in plan:
            missing = [c for c in configs if run_key(t, n, i, c.protocol, c.policy, c.budget) not in done]
            if missing:
                todo.append(((n, i, t), missing))
        n_todo = sum(len(m) for _, m in todo)
        # the first sample of each (length, task) still to run is generated now: a length too short for a
        # task is reported before any work
        cache = {}
        with cli.preflight():
            for (n, i, t), _ in todo:
                if not any(k[0] == n and k[2] == t for k in cache):
                    cache[(n, i, t)] = _generate(api, t, n, i, seed, gen_tok, fmt.overhead, data_root)
        skipped = len(keys) - n_todo
        print(f"ruler: {len(keys)} runs ({len(plan)} samples x {len(configs)} configurations), {skipped} already "
              f"done, {n_todo} to run", file=log)
        ran = 0
        errors: list = []  # with ray: the samples that failed, {task, ctx, index, error}

        def result(partial: bool) -> dict:
            runs = [done[k] for k in keys if k in done]
            obj = {"meta": meta, "runs": runs, "summary": report.summarize(runs, meta, configs), "partial": partial}
            files = report.write_outputs(out, obj, configs) + plots.write_plots(out, obj) if out is not None else []
            if json_out:
                cli.write_json(json_out, obj)
            return {**obj, "tables": report.tables(obj, configs), "ran": ran, "skipped": skipped, "files": files,
                    "errors": errors}

        bar = None
        if progress and n_todo:
            from tqdm import tqdm

            bar = tqdm(total=n_todo, unit="run", desc="ruler", file=sys.stderr, dynamic_ncols=True, smoothing=0.05)

        def say(msg: str) -> None:
            (bar.write(msg, file=sys.stderr) if bar is not None else print(msg, file=log))

        def prepare(n: int, i: int, t: str):
            """The sample (generated now unless it was above) and its segments."""
            sample = cache.pop((n, i, t), None) or _generate(api, t, n, i, seed, gen_tok, fmt.overhead, data_root)
            segs = segments(sample, fmt, gen_tok)
            if len(segs.prompt) + sample.max_new_tokens > n:
                raise EngineError(f"{t} at {n} tokens, sample {i}: the generator made a prompt of {len(segs.prompt)} "
                                  f"tokens + {sample.max_new_tokens} new ones, more than {n}")
            return sample, segs

        def commit(sample, segs, results) -> None:
            """Records each (config, result) as it comes: appended to ruler.jsonl, counted once."""
            nonlocal ran
            n_prompt, depth = len(segs.prompt), _depth(api, sample)
            parts = []
            prefill = {}
            for cfg, res in results:
                rec = make_record(sample, cfg, res, api.score(sample, res["prediction"]), depth, n_prompt)
                if store is not None:
                    store.append(rec)
                done[record_key(rec)] = rec
                ran += 1
                prefill[cfg.protocol] = max(prefill.get(cfg.protocol, 0.0), res["prefill_seconds"])
                parts.append((configs.index(cfg), f"{ABBREV[cfg.protocol]}:{cfg.label} {rec['score']:.2f}"))
                if bar is not None:
                    bar.update(1)
            parts = [text for _, text in sorted(parts)]
            if len(parts) > 12:  # the details are in the files
                parts = parts[:3] + [f"... ({len(parts) - 3} more)"]
            say(f"ruler: {sample.task} {sample.ctx} #{sample.index} ({n_prompt} tokens, prefill "
                f"{max(prefill.values()):.1f} s): " + ", ".join(parts))

        prefills = PrefillCache()
        try:
            if ray is None:
                for (n, i, t), missing in todo:
                    if bar is not None:
                        bar.set_postfix_str(f"{t} {n} #{i}")
                    sample, segs = prepare(n, i, t)
                    commit(sample, segs, run_sample(model, sample, segs, missing, ev_params, n_ctx=n,
                                                    n_threads=n_threads, cache=prefills))
            else:
                _run_on_ray(model.path, ray, todo, prepare, commit, ev_params, errors, say, bar, log)
        except KeyboardInterrupt:
            if bar is not None:
                bar.close()
                bar = None
            if store is not None:
                store.close()
            raise cli.Interrupted(result(True), ran, n_todo, "runs") from None
        finally:
            prefills.close()
            if bar is not None:
                bar.close()
            if store is not None:
                store.close()
        return result(False)
    finally:
        if own:
            model.close()


def sample_unit(worker, unit: dict) -> list:
    """run_sample on a worker of engine.eval.distributed: [(config, result)] of one sample."""
    return list(run_sample(worker.model, unit["sample"], unit["segs"], unit["configs"], unit["ev_params"],
                           n_ctx=unit["n_ctx"], n_threads=worker.n_threads, cache=worker.prefills))


def _run_on_ray(model_path, ray, todo, prepare, commit, ev_params, errors, say, bar, log) -> None:
    """The samples of `todo` on a Ray cluster: generated here as workers free up, run there, recorded here
    (commit) in the order they finish; a sample that fails is said once and kept in `errors`."""
    from ..eval.distributed import Pool, UnitError

    taken = {}  # unit index -> (sample, segs, configs)

    def units():
        for k, ((n, i, t), missing) in enumerate(todo):
            sample, segs = prepare(n, i, t)
            taken[k] = (sample, segs, missing)
            yield {"sample": sample, "segs": segs, "configs": missing, "ev_params": ev_params, "n_ctx": n}

    with Pool(model_path, log=log, **ray) as pool:
        for k, res in pool.unordered(sample_unit, units()):
            sample, segs, missing = taken.pop(k)
            if isinstance(res, UnitError):
                errors.append({"task": sample.task, "ctx": sample.ctx, "index": sample.index, "error": res.message})
                say(f"ruler: {sample.task} {sample.ctx} #{sample.index}: failed: {res.message} (its {len(missing)} "
                    "run(s) are run again next time)")
                if bar is not None:
                    bar.update(len(missing))
                continue
            commit(sample, segs, res)


def _generate(api, task: str, ctx: int, index: int, seed: int, gen_tok, overhead: int, data_root):
    try:
        return api.generate(task, ctx, index, seed, gen_tok, overhead_tokens=overhead, data_root=data_root)
    except (ValueError, KeyError, OSError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        raise EngineError(f"{task} at {ctx} tokens, sample {index}: {msg}") from None


def _depth(api, sample):
    """The needle's depth (%) of a needle-test sample (the heat maps' rows), else None."""
    if sample.task != "needle":
        return None
    m = sample.meta or {}
    if isinstance(m.get("depth_percent"), (int, float)):
        return m["depth_percent"]
    depths = getattr(api, "NEEDLE_DEPTHS", None)
    return depths[sample.index % len(depths)] if depths else None


__all__ = ["run", "run_sample", "sample_unit", "PrefillCache", "fresh_run", "finish", "plan_configs", "Config", "Store",
           "PROTOCOLS", "TIME_FIELDS"]
