"""The compression protocols of the long-context evaluation: a sample's prompt as token segments, what
each protocol compresses, the budgets' two meanings, and greedy decoding with the tasks' stop rules.

A prompt is  P (BOS and the chat prefix) · C (context) · Q (question) · S (end of the user turn and the
assistant header) · A (answer prefix) · G (generated)  (docs: ../shared/docs/long-context-eval.md §1):

    protocol     compressed span (prefilled, then compressed once)   appended after, never evicted
    agnostic     P + C                                               Q + S + A, then G (kvpress default)
    aware        P + C + Q                                           S + A, then G (kvpress --query_aware)
    aware-full   P + C + Q + S + A                                   G only (ReST-KV / KVCache-Factory)

Segments are tokenized separately (C, Q and A without BOS and without parsing special-token text, as
the generators of engine.longctx count them), so the three protocols see the same token sequence and a
generator's length rule  len(P) + len(S) + |C| + |Q| + |A| + max_new <= ctx  holds exactly.

--template auto renders the GGUF's chat template (engine.chat's Jinja2 sandbox) for one user message
whose content is a sentinel, as kvpress does, and splits the text there: before = P, after = S; the
user message is C + Q. A GGUF without a template, and --template raw, give P = BOS (when the vocabulary
adds one, as llama.cpp's tokenize does) and S = "\\n" (kvpress's rule).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from ..cli import distinct
from ..errors import EngineError

PROTOCOLS = ("agnostic", "aware", "aware-full")
# the stage of the shared prefill at which each protocol compresses: the span is the first STAGE + 1 of
# Segments.stages() = [P + C, Q, S + A]
STAGE = {"agnostic": 0, "aware": 1, "aware-full": 2}
TEMPLATES = ("auto", "raw")
SENTINEL = "[[RESTKV-RULER-SENTINEL-3c9e]]"
RAW_SUFFIX = "\n"


def check_protocols(names: Sequence[str]) -> list[str]:
    def known(p):
        if p not in PROTOCOLS:
            raise EngineError(f"unknown protocol {p!r} (expected {', '.join(PROTOCOLS)}, or a comma list of them)")
        return p

    return distinct(names, known, "--protocol")


class GenTokenizer:
    """What the generators get: encode(text) without BOS and without special-token parsing (text such as
    '<|im_start|>' in a haystack stays text), decode(ids)."""

    def __init__(self, tok):
        self.tok = tok

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special=False, parse_special=False)

    def decode(self, ids) -> str:
        return self.tok.decode(list(ids))


@dataclass(frozen=True)
class PromptFormat:
    """How a sample becomes a prompt: P and S as token ids, and where they come from."""
    mode: str                 # "chat" (a template rendered) or "raw"
    requested: str            # --template: "auto" or "raw"
    p_ids: tuple
    s_ids: tuple
    p_text: str
    s_text: str
    template_sha256: Optional[str] = None   # of the template source ("chat" only)
    origin: Optional[str] = None            # "gguf" or "given"
    verbatim: bool = True     # the template renders content as is (P + content + S == render(content))

    @property
    def overhead(self) -> int:
        """Tokens the format adds around a sample: the generators' overhead_tokens."""
        return len(self.p_ids) + len(self.s_ids)

    def as_dict(self) -> dict:
        return {"template": self.requested, "mode": self.mode, "origin": self.origin,
                "template_sha256": self.template_sha256, "p_text": self.p_text, "s_text": self.s_text,
                "p_tokens": len(self.p_ids), "s_tokens": len(self.s_ids), "verbatim": self.verbatim}


def _bos_prefix(tok) -> list[int]:
    bos = tok.bos_id
    return [bos] if tok.add_bos and bos is not None and bos >= 0 else []


def prompt_format(tok, template: str = "auto", source: Optional[str] = None) -> PromptFormat:
    """The format of --template (auto | raw) for a model's tokenizer; `source` overrides the GGUF's
    chat template (a Jinja2 string; with template='auto')."""
    if template not in TEMPLATES:
        raise EngineError(f"unknown template {template!r} (expected {' or '.join(TEMPLATES)})")
    src = source if source is not None else tok.chat_template
    if template == "raw" or not src:
        p = _bos_prefix(tok)
        return PromptFormat("raw", template, tuple(p), tuple(tok.encode(RAW_SUFFIX, add_special=False)),
                            tok.decode(p), RAW_SUFFIX)
    from ..chat import compile_template, render_template

    compiled = compile_template(src)
    bos_text = tok.id_to_token(tok.bos_id) if tok.bos_id is not None and tok.bos_id >= 0 else ""
    eos_text = tok.id_to_token(tok.eos_id) if tok.eos_id is not None and tok.eos_id >= 0 else ""

    def render(content: str) -> str:
        return render_template(compiled, [{"role": "user", "content": content}], add_generation_prompt=True,
                               bos_token=bos_text, eos_token=eos_text)

    text = render(SENTINEL)
    if text.count(SENTINEL) != 1:
        raise EngineError("the chat template does not render a user message verbatim (cannot split it into the "
                          "chat prefix and suffix); use --template raw")
    p_text, s_text = text.split(SENTINEL)
    probe = "Some text.\nWhat is it?"
    verbatim = render(probe) == p_text + probe + s_text
    # as engine.chat encodes rendered text: special-token text parsed, BOS added when the vocabulary asks
    # for it and the template did not write it
    p = tok.encode(p_text, add_special=False, parse_special=True)
    bos = _bos_prefix(tok)
    if bos and (not p or p[0] != bos[0]):
        p = bos + p
    s = tok.encode(s_text, add_special=False, parse_special=True)
    return PromptFormat("chat", template, tuple(p), tuple(s), p_text, s_text,
                        hashlib.sha256(src.encode("utf-8")).hexdigest(), "given" if source is not None else "gguf",
                        verbatim)


@dataclass(frozen=True)
class Segments:
    """A sample's prompt as token segments."""
    p: tuple
    c: tuple
    q: tuple
    s: tuple
    a: tuple

    def stages(self) -> list[np.ndarray]:
        """The shared prefill's segments: [P + C, Q, S + A] (stage k's span: the first k + 1)."""
        return [np.asarray(self.p + self.c, dtype=np.int32), np.asarray(self.q, dtype=np.int32),
                np.asarray(self.s + self.a, dtype=np.int32)]

    def span(self, protocol: str) -> tuple:
        """The tokens compressed under `protocol`."""
        k = STAGE[protocol]
        return self.p + self.c + (self.q if k >= 1 else ()) + (self.s + self.a if k >= 2 else ())

    def rest(self, protocol: str) -> tuple:
        """The tokens appended after the compression, before decoding."""
        k = STAGE[protocol]
        return (self.q if k < 1 else ()) + (self.s + self.a if k < 2 else ())

    @property
    def prompt(self) -> tuple:
        return self.p + self.c + self.q + self.s + self.a

    def n_span(self, protocol: str) -> int:
        return len(self.span(protocol))


def segments(sample, fmt: PromptFormat, gen_tok: GenTokenizer) -> Segments:
    return Segments(fmt.p_ids, tuple(gen_tok.encode(sample.context)), tuple(gen_tok.encode(sample.question)),
                    fmt.s_ids, tuple(gen_tok.encode(sample.answer_prefix)))


# ---------------------------------------------------------------- budgets

def budget_kind(budget: float) -> str:
    """'fraction' (in (0, 1): of the compressed span, kvpress's int(n * (1 - cr))), 'tokens' (an integer
    >= 2: per layer per KV head, the protected window included; ReST-KV's max_capacity_prompt), or 'full'
    (1: everything)."""
    if budget == 1.0:
        return "full"
    return "tokens" if budget > 1 else "fraction"


def kept_per_head(budget: float, n_span: int) -> int:
    """Entries each (layer, kv-head) buffer keeps of a compressed span of n_span tokens, as the C core
    counts them (src/evict/evict.c budget_tokens: floor, at least 1), for the policies with uniform
    budgets (pyramidkv and adakv spread the same total unevenly); a token count >= n_span keeps all."""
    from ..eval.options import budget_tokens

    return min(n_span, budget_tokens(budget, n_span))


def same_as_full(policy: str, budget: float, n_span: int) -> bool:
    """True when the configuration leaves the span whole, so that its run is the full cache's: the policy
    'full', budget 1, or an evicting policy with a token budget B >= n_span (ReST-KV: no compression when
    the prompt fits; pyramidkv's and adakv's uneven allocations then cut nothing either). A policy that
    masks attention (topk) is the full cache at budget 1 only."""
    from ..eviction import POLICIES

    pol = POLICIES[policy.split(":", 1)[0]]  # a variant runs its policy
    if budget == 1.0 or not (pol.evicts or pol.masks_attention):
        return True
    return pol.evicts and budget > 1 and n_span <= budget


# ---------------------------------------------------------------- decoding

def end_ids(tok) -> frozenset:
    """The ids that end a generation: EOS, EOT and every end-of-generation id (engine.generate's rule)."""
    out = {i for i in (tok.eos_id, getattr(tok, "eot_id", None)) if i is not None and i >= 0}
    return frozenset(out | set(getattr(tok, "eog_ids", ())))


@dataclass
class Decoded:
    ids: list           # generated ids (an end id that stopped it excluded)
    text: str           # detokenized, special tokens skipped; cut at the first newline when that stopped it
    stop: str           # "eos", "newline" or "max_new"


def greedy(session, logits: np.ndarray, max_new: int, ends: frozenset, tok, stop_at_newline: bool = False) -> Decoded:
    """Greedy decoding from `logits` (those of the last prompt token): argmax (lowest id on ties), up to
    max_new tokens; stops at an end id (not kept), and with stop_at_newline once the text holds a newline
    (ReST-KV's needle test stops at the "\\n" token; the text is cut there)."""
    out: list[int] = []
    stop = "max_new"
    for step in range(max_new):
        t = int(np.argmax(logits))
        if t in ends:
            stop = "eos"
            break
        out.append(t)
        if stop_at_newline and "\n" in tok.decode(out, skip_special=True):
            stop = "newline"
            break
        if step == max_new - 1:
            break
        logits = session.eval([t], logits="last")
    text = tok.decode(out, skip_special=True)
    if stop == "newline":
        text = text.split("\n", 1)[0]
    return Decoded(out, text, stop)
