"""Interactive chat in bounded KV memory, with the GGUF's own chat template.

    python -m engine.chat --gguf model.gguf --budget 1024 --policy restkv
    printf 'Hi!\\nAnd then?\\n' | python -m engine.chat --gguf model.gguf --budget 256 --json

One long-lived session holds the whole conversation.  Its KV cache evicts natively with the
"streaming" schedule: whenever a (layer, kv-head) buffer passes budget + slack tokens, the policy
cuts it back to the budget, so memory stays bounded however long the chat runs.  Each turn
only the tokens not seen yet are evaluated: the conversation is rendered with the chat template
and the part of the text past what the cache already holds is tokenised and evaluated.

From Python::

    from engine import Model
    from engine.chat import Chat
    chat = Chat(Model("model.gguf"), budget=512, policy="streaming")
    turn = chat.turn("Hello!", on_text=lambda piece: print(piece, end="", flush=True))
    print(turn.reply, chat.stats())
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable, Optional, Sequence

import numpy as np

from . import cli
from .errors import EngineError

# Plain ChatML, for GGUFs without tokenizer.chat_template.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CTX_FULL = -7  # rk_status RK_ERR_CTX_FULL
DEFAULT_SLACK = 64
DEFAULT_MAX_TOKENS = 512

HELP_COMMANDS = """\
commands:
  /reset         start a new conversation (empties the KV cache; the system prompt stays)
  /stats         KV memory, tokens held per head, conversation length, eviction settings
  /help          this text
  /quit, /exit   leave (also end of input: Ctrl-D)
  //text         send a message that begins with '/'
a line ending with '\\' continues on the next line.  Ctrl-C during a reply stops the reply;
at the prompt it drops the line being typed, twice in a row it leaves."""


# ----------------------------------------------------------------------------- templates

class _TemplateError(Exception):
    pass


def _raise_exception(message):
    raise _TemplateError(str(message))


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # as transformers' chat-template environment: non-ASCII kept as is
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def compile_template(source: str):
    """A Jinja2 chat template compiled in a sandbox, with the helpers templates expect
    (as in Hugging Face transformers: trim_blocks, lstrip_blocks, loop controls,
    ``raise_exception``, ``strftime_now``, a ``tojson`` that keeps non-ASCII)."""
    try:
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise EngineError("the chat needs Jinja2 to render chat templates: pip install 'Jinja2>=3.1'") from None
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.TemplateError as e:
        raise EngineError(f"the chat template does not compile: {e}") from None


def render_template(template, messages: Sequence[dict], add_generation_prompt: bool = True,
                    bos_token: str = "", eos_token: str = "", **extra) -> str:
    """Renders a compiled template (see compile_template) for a list of {role, content} messages."""
    import jinja2

    try:
        return template.render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                               bos_token=bos_token, eos_token=eos_token, **extra)
    except _TemplateError as e:
        raise EngineError(f"the chat template refused the conversation: {e}") from None
    except jinja2.TemplateError as e:  # sandbox violations, undefined names used as values, ...
        raise EngineError(f"the chat template failed: {type(e).__name__}: {e}") from None


# ----------------------------------------------------------------------------- budget

def resolve_budget(budget, n_ctx_train: int) -> int:
    """KV budget in tokens: a value in (0, 1] is a fraction of the model's trained context,
    a value >= 2 a number of tokens."""
    try:
        b = float(budget)
    except (TypeError, ValueError):
        raise EngineError(f"--budget must be a number (tokens, or a fraction in (0, 1] of the model's "
                          f"context), got {budget!r}") from None
    if not math.isfinite(b):
        raise EngineError(f"--budget {budget}: must be a finite number: a token count (integer >= 2), or a "
                          "fraction in (0, 1] of the model's context")
    if b <= 0:
        raise EngineError(f"--budget must be > 0 (tokens, or a fraction in (0, 1] of the model's context), "
                          f"got {budget!r}")
    if b <= 1:
        tokens = int(b * n_ctx_train)
        if tokens < 2:
            raise EngineError(f"--budget {budget}: {b:g} of the model's context ({n_ctx_train}) is {tokens} "
                              f"tokens; at least 2 are needed")
        return tokens
    if b != int(b) or b < 2:
        raise EngineError(f"--budget {budget}: a budget above 1 is a number of tokens and must be an integer >= 2")
    if b > 2**31 - 2:
        raise EngineError(f"--budget {budget} is too large")
    return int(b)


# ----------------------------------------------------------------------------- chat

@dataclass
class Turn:
    """What one turn did."""
    user: str
    reply: str
    stop: str                  # "eot", "max_tokens", "interrupted" or "context_full"
    prompt_tokens: int         # tokens evaluated before the reply (the new part of the conversation)
    reply_tokens: int
    prompt_seconds: float
    reply_seconds: float
    prompt_ids: list = field(default_factory=list, repr=False)
    reply_ids: list = field(default_factory=list, repr=False)

    @property
    def reply_tokens_per_s(self) -> float:
        return self.reply_tokens / self.reply_seconds if self.reply_seconds > 0 else 0.0

    @property
    def prompt_tokens_per_s(self) -> float:
        return self.prompt_tokens / self.prompt_seconds if self.prompt_seconds > 0 else 0.0


class Chat:
    """A conversation over one session whose KV cache is bounded by streaming eviction.

    budget: tokens kept per (layer, kv-head) buffer (a value in (0, 1] is a fraction of the
    model's trained context); eviction starts when a buffer passes budget + slack tokens.
    The session gets n_ctx = budget + slack + 1 slots.
    """

    def __init__(self, model, budget=1024, policy: str = "restkv", slack: int = DEFAULT_SLACK,
                 positions: str = "original", system: Optional[str] = None, template: Optional[str] = None,
                 n_threads: Optional[int] = None, temperature: float = 0.8, top_k: int = 40,
                 top_p: float = 0.95, seed: Optional[int] = None, max_tokens: int = DEFAULT_MAX_TOKENS,
                 kv_type: str = "f16", on_notice: Optional[Callable[[str], None]] = None):
        from .eviction import Eviction
        from .generate import _validate

        _validate(max_tokens, temperature, top_k, top_p)
        if not isinstance(slack, int) or isinstance(slack, bool) or slack < 0:
            raise EngineError(f"--slack must be an integer >= 0, got {slack!r}")
        self.model = model
        self.tok = tok = model.tokenizer
        self.notice = on_notice or (lambda msg: None)
        self.budget = resolve_budget(budget, model.n_ctx_train)
        self.slack = slack
        self.n_ctx = self.budget + slack + 1
        if self.n_ctx > 2**31 - 1:
            raise EngineError(f"--budget {budget} with --slack {slack} is too large")
        self.sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p)
        self.max_tokens = max_tokens
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.system = system

        # ---- template ----
        if template is not None:
            self.template_source, self.template_origin = template, "given"
        elif tok.chat_template:
            self.template_source, self.template_origin = tok.chat_template, "gguf"
        else:
            self.template_source, self.template_origin = CHATML_TEMPLATE, "chatml-fallback"
            missing = [t for t in ("<|im_start|>", "<|im_end|>") if tok.token_to_id(t) is None]
            self.notice("the GGUF has no chat template (tokenizer.chat_template): using plain ChatML"
                        + (f"; the vocabulary lacks {' and '.join(missing)}, so the markers are plain text"
                           if missing else ""))
        self.template = compile_template(self.template_source)
        self.bos_text = tok.id_to_token(tok.bos_id) if tok.bos_id is not None and tok.bos_id >= 0 else ""
        self.eos_text = tok.id_to_token(tok.eos_id) if tok.eos_id is not None and tok.eos_id >= 0 else ""
        end = {i for i in (tok.eos_id, tok.eot_id) if i is not None and i >= 0} | set(tok.eog_ids)
        if self.template_origin != "gguf":
            im_end = tok.token_to_id("<|im_end|>")
            if im_end is not None:
                end.add(im_end)
        self.end_ids = frozenset(end)
        eot = tok.eot_id if tok.eot_id is not None and tok.eot_id >= 0 else tok.eos_id
        self.eot_text = tok.id_to_token(eot) if eot is not None and eot >= 0 else ""

        # ---- session with streaming eviction ----
        self.eviction = Eviction(policy=policy, budget=self.budget, schedule="streaming", positions=positions,
                                 slack=slack)
        self.eviction.check()  # the C core checks every setting before anything is allocated
        self.session = model.session(n_ctx=self.n_ctx, n_threads=n_threads, kv_type=kv_type)
        try:
            self.session.set_eviction(self.eviction)
            self._preflight()
        except BaseException:
            self.session.close()
            raise
        self.evicting = self.eviction.info.evicts
        self.turns = 0
        self.messages: list[dict] = []
        self._text = ""         # the rendered text whose tokens the KV cache holds
        self.prefix_stable = True
        self.reset()

    def _preflight(self) -> None:
        """Fails now, not turns later, when the policy cannot score: the streaming schedule
        scores only when a buffer first overflows.  A scratch session of a few tokens is
        compressed once with the same settings (prefix schedule)."""
        from .eviction import Eviction

        if not self.eviction.info.evicts:  # full, topk: nothing is ever scored
            return
        probe = Eviction(**{**self.eviction.as_dict(), "schedule": "prefix", "budget": 0.5})
        n = 8
        with self.model.session(n_ctx=n, n_threads=1) as s:
            s.set_eviction(probe)
            s.eval([i % self.model.n_vocab for i in range(1, n + 1)], logits=None)
            s.compress()

    # ---- state ----
    def reset(self) -> None:
        """A new conversation: empty cache, only the system prompt (if any) in the history."""
        self.session.reset()
        self.messages = [{"role": "system", "content": self.system}] if self.system else []
        self._text = ""
        self.turns = 0

    def close(self) -> None:
        self.session.close()

    def render(self, messages: Optional[Sequence[dict]] = None, add_generation_prompt: bool = True) -> str:
        return render_template(self.template, self.messages if messages is None else messages,
                               add_generation_prompt=add_generation_prompt, bos_token=self.bos_text,
                               eos_token=self.eos_text)

    def encode(self, text: str, first: bool) -> list[int]:
        """Tokens of a piece of rendered conversation.  Special-token text (<|im_start|>, ...)
        becomes the special tokens; BOS is added at the start of the conversation when the
        vocabulary asks for it and the template did not write it."""
        ids = self.tok.encode(text, add_special=False, parse_special=True)
        bos = self.tok.bos_id
        if first and self.tok.add_bos and bos is not None and bos >= 0 and (not ids or ids[0] != bos):
            ids = [bos] + ids
        return ids

    def _new_text(self) -> str:
        """The text to append to the cache so that it holds the conversation up to the
        assistant's generation prompt.

        The whole conversation is rendered and the part past the text already in the cache
        is returned: ChatML and most templates render a growing conversation as a growing
        prefix.  Some are not prefix-stable (they drop earlier reasoning, re-render a dated
        system block, ...); the cache cannot be rewound once entries were evicted, so then the
        new turn is rendered on its own and appended, after whatever closes the previous
        reply: the model sees the turns as the template would render each alone.
        """
        target = self.render(add_generation_prompt=True)
        if target.startswith(self._text):
            return target[len(self._text):]
        if self.prefix_stable:
            self.prefix_stable = False
            self.notice("the chat template does not render the conversation as a growing prefix; "
                        "each new turn is rendered on its own")
        close = ""
        prev = self.messages[:-1]
        if prev and prev[-1]["role"] == "assistant":
            full = self.render(prev, add_generation_prompt=False)
            reply = prev[-1]["content"]
            i = full.rfind(reply) if reply else -1
            close = full[i + len(reply):] if i >= 0 else self.eot_text
        # without the BOS a template may write at the start of a conversation
        turn = render_template(self.template, self.messages[-1:], add_generation_prompt=True, bos_token="",
                               eos_token=self.eos_text)
        return close + turn

    def prefill(self, content: str, role: str = "user"):
        """Adds a message and evaluates the new part of the conversation (up to the assistant's
        generation prompt).  Returns (logits of the last token, token ids evaluated, seconds)."""
        if not isinstance(content, str):
            raise EngineError(f"a message must be a string, got {type(content).__name__}")
        s = self.session
        n0 = s.n_past
        self.messages.append({"role": role, "content": content})
        piece = ""
        try:
            piece = self._new_text()
            ids = self.encode(piece, first=s.n_past == 0)
            if not ids:
                raise EngineError("the chat template rendered nothing for the new message")
            if not self.evicting and s.n_past + len(ids) > s.n_ctx:
                raise EngineError(f"the conversation no longer fits: {s.n_past} + {len(ids)} tokens > n_ctx "
                                  f"{s.n_ctx} with policy '{self.eviction.policy}', which does not evict "
                                  f"(/reset starts over)", status=CTX_FULL)
            t0 = time.perf_counter()
            logits = s.eval(ids)  # all or nothing: a failed eval leaves the session as it was
            secs = time.perf_counter() - t0
        except BaseException:
            if s.n_past > n0:  # interrupted (KeyboardInterrupt) after the eval went in: keep the turn
                self._text += piece
            else:
                self.messages.pop()
            raise
        self._text += piece
        return logits, ids, secs

    def add_reply(self, ids: Sequence[int]) -> str:
        """Records tokens as the assistant's reply (evaluating them): for tests and scripted
        replies.  Returns the reply text."""
        base = self.session.n_past
        if ids:
            self.session.eval(list(ids), logits=None)
        return self._record_reply(list(ids), base)

    def _record_reply(self, ids: list, base: int) -> str:
        # only the tokens that reached the cache count (an interrupted eval is not in it)
        n = max(0, min(len(ids), self.session.n_past - base))
        reply = self.model.detokenize(ids[:n]) if n else ""
        self.messages.append({"role": "assistant", "content": reply})
        self._text += reply
        self.turns += 1
        return reply

    def turn(self, content: str, on_text: Optional[Callable[[str], None]] = None,
             should_stop: Callable[[], bool] = lambda: False, max_tokens: Optional[int] = None) -> Turn:
        """One exchange: evaluates the user's message, then samples the reply token by token
        (on_text receives the text as it becomes final) until the end-of-turn token,
        max_tokens or should_stop()."""
        from .generate import _unstable_tail, sample

        max_tokens = self.max_tokens if max_tokens is None else max_tokens
        s = self.session
        logits, prompt_ids, prompt_secs = self.prefill(content)
        base = s.n_past
        out: list[int] = []
        emitted, stop = 0, "max_tokens"
        clean = bool(getattr(self.tok, "clean_spaces", False))
        t0 = time.perf_counter()
        try:
            for _ in range(max_tokens):
                if should_stop():
                    stop = "interrupted"
                    break
                t = sample(logits, self.rng, **self.sampling)
                if t in self.end_ids:
                    stop = "eot"  # not evaluated now: the next turn's text begins with it
                    break
                if not self.evicting and s.n_past >= s.n_ctx:
                    stop = "context_full"
                    break
                out.append(t)
                if on_text is not None:
                    text = self.model.detokenize(out)
                    # hold back an incomplete UTF-8 character and spaces the clean-up may remove
                    body = text.rstrip("\ufffd")
                    safe = len(body) - _unstable_tail(body, clean)
                    if safe > emitted:
                        on_text(text[emitted:safe])
                        emitted = safe
                logits = s.eval([t])
        finally:
            secs = time.perf_counter() - t0
            n_in = max(0, min(len(out), s.n_past - base))
            reply = self._record_reply(out, base)
        if on_text is not None and len(reply) > emitted:
            on_text(reply[emitted:])
        return Turn(user=content, reply=reply, stop=stop, prompt_tokens=len(prompt_ids), reply_tokens=n_in,
                    prompt_seconds=prompt_secs, reply_seconds=secs, prompt_ids=list(prompt_ids),
                    reply_ids=out[:n_in])

    # ---- figures ----
    def kv_tokens(self) -> tuple[int, int]:
        """Fewest and most tokens held by a (layer, kv-head) buffer."""
        s, m = self.session, self.model
        counts = [s.kv_count(il, g) for il in range(m.n_layers) for g in range(m.n_kv_heads)]
        return min(counts), max(counts)

    def stats(self) -> dict:
        s = self.session
        lo, hi = self.kv_tokens()
        return {
            "conversation_tokens": s.n_past, "next_pos": s.next_pos, "turns": self.turns,
            "kv_bytes_used": s.kv_bytes_used, "kv_bytes_alloc": s.kv_bytes_alloc,
            "kv_tokens_min": lo, "kv_tokens_max": hi, "budget": self.budget, "slack": self.slack,
            "n_ctx": self.n_ctx, "policy": self.eviction.policy, "positions": self.eviction.positions,
            "n_ctx_train": self.model.n_ctx_train,
        }


# ----------------------------------------------------------------------------- CLI

def _mib(b: int) -> str:
    return f"{b / 2**20:.2f} MiB" if b >= 2**20 else f"{b / 2**10:.1f} KiB"


def status_line(chat: Chat, turn: Optional[Turn] = None) -> str:
    st = chat.stats()
    used, alloc = st["kv_bytes_used"], st["kv_bytes_alloc"]
    lo, hi = st["kv_tokens_min"], st["kv_tokens_max"]
    held = f"{hi}" if lo == hi else f"{lo}-{hi}"
    parts = [f"kv {_mib(used)} / {_mib(alloc)} ({100 * used / alloc if alloc else 0:.0f}%)",
             f"{held} tok/head (budget {st['budget']} + slack {st['slack']})",
             f"conversation {st['conversation_tokens']} tok"]
    if turn is not None:
        parts.append(f"reply {turn.reply_tokens} tok, {turn.reply_tokens_per_s:.1f} tok/s"
                     + ("" if turn.stop == "eot" else f" [{turn.stop.replace('_', ' ')}]"))
    return "[" + " | ".join(parts) + "]"


def _stats_text(chat: Chat) -> str:
    st = chat.stats()
    ev = chat.eviction
    lo, hi = st["conversation_tokens"] - st["kv_tokens_max"], st["conversation_tokens"] - st["kv_tokens_min"]
    evicted = f"{lo}" if lo == hi else f"{lo}..{hi}"
    return "\n".join([
        f"model:        {chat.model.desc}",
        f"template:     {dict(gguf='from the GGUF', given='--chat-template', **{'chatml-fallback': 'plain ChatML (fallback)'})[chat.template_origin]}"
        + ("" if chat.prefix_stable else ", turns rendered one by one"),
        f"eviction:     policy {ev.policy}, schedule streaming, budget {chat.budget} tokens + slack {chat.slack}, "
        f"positions {ev.positions}, n_ctx {chat.n_ctx}",
        f"kv memory:    {st['kv_bytes_used']} / {st['kv_bytes_alloc']} bytes used "
        f"({_mib(st['kv_bytes_used'])} / {_mib(st['kv_bytes_alloc'])})",
        f"kv per head:  {st['kv_tokens_min']}..{st['kv_tokens_max']} tokens held "
        f"({evicted} of the conversation's tokens evicted)",
        f"conversation: {st['conversation_tokens']} tokens in {st['turns']} turns, next position "
        f"{st['next_pos']} (trained context {st['n_ctx_train']})",
    ])


_EPILOG = f"""\
{HELP_COMMANDS}

Memory: one session of n_ctx = budget + slack + 1 KV slots per (layer, kv-head) serves the whole
conversation: whenever a buffer passes budget + slack tokens the policy evicts down to the budget,
so memory never grows, however long the chat.  Each turn only the new tokens are evaluated.

Positions: 'original' keeps every token's position in the text, so positions keep growing;
past the model's trained context (n_ctx_train) RoPE is out of the range the model was trained
on and quality degrades.  Only 'shift' keeps RoPE in range forever: kept keys are re-rotated to
positions 0..n-1 and new tokens continue from there.

Without a terminal on stdin, each input line is a message (or a command); --json prints one JSON
object per turn (reply, token counts, KV bytes) on stdout.

Exit status: 0 at /quit or end of input, 2 bad command line or input (before the chat starts),
1 failure during the chat, 130 Ctrl-C twice at the prompt.  Errors: one line 'error: ...'.

Defaults: the KV cache is --budget + --slack + 1 tokens (not a context size as engine.perplexity's
--ctx), threads all cores available, as the other tools.

{{policies}}"""


def _parser() -> argparse.ArgumentParser:
    from .eviction import POSITIONS, policy_help

    p = cli.Parser(
        "python -m engine.chat",
        "Chat with a GGUF model in bounded KV memory: the GGUF's chat template, replies "
        "streamed token by token, native KV eviction (streaming schedule) so the conversation "
        "can go on forever.",
        epilog=_EPILOG.replace("{policies}", policy_help(options=False)
                               + "\n(the chat uses each policy's default parameters but --slack and --positions)"))
    p.add_argument("--gguf", "-m", required=True, help="path to the GGUF model file")
    p.add_argument("--budget", default="1024",
                   help="KV tokens kept per (layer, kv-head): an integer >= 2, or a fraction in (0, 1] of "
                        "the model's trained context (default 1024)")
    p.add_argument("--policy", default="restkv",
                   help="eviction policy (default restkv; the list below)")
    p.add_argument("--slack", type=int, default=DEFAULT_SLACK,
                   help=f"evict when a buffer holds budget + slack tokens, down to the budget: larger "
                        f"amortises eviction, costs slack more slots (default {DEFAULT_SLACK})")
    p.add_argument("--positions", choices=POSITIONS, default="original",
                   help="RoPE positions of the kept tokens: 'original' (default) or 'shift' to 0..n-1; "
                        "past the model's trained context only 'shift' keeps RoPE in range")
    p.add_argument("--system", default=None, help="system prompt (default: the template's own, if any)")
    p.add_argument("--chat-template", default=None, metavar="FILE",
                   help="Jinja2 chat template file to use instead of the GGUF's")
    p.add_argument("--max-tokens", "-n", type=cli.count, default=DEFAULT_MAX_TOKENS,
                   help=f"most tokens per reply (default {DEFAULT_MAX_TOKENS})")
    p.add_argument("--temp", type=float, default=0.8, help="sampling temperature, 0 = greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=40, help="top-k sampling, 0 = off (default 40)")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling threshold (default 0.95)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: fresh)")
    p.add_argument("--threads", "-t", type=int, default=None,
                   help="worker threads (default: all cores available to the process)")
    p.add_argument("--json", action="store_true", help="print one JSON object per turn instead of the text")
    return p


class _ReplyInterrupt:
    """While active, Ctrl-C (SIGINT) only raises a flag that the reply loop checks."""

    def __init__(self):
        self.flag = False
        self._old = None

    def __enter__(self):
        self.flag = False
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, signum, frame):
        self.flag = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            self._old = None


def _read_message(interactive: bool, prompt: str = "> ") -> Optional[str]:
    """One message (lines ending in a backslash continue); None at end of input."""
    lines = []
    while True:
        if interactive:
            line = input(prompt if not lines else ". ")
        else:
            line = sys.stdin.readline()
            if not line:
                return "\n".join(lines) if lines else None
            line = line.rstrip("\r\n")
        if line.endswith("\\"):
            lines.append(line[:-1])
            continue
        lines.append(line)
        return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    args = _parser().parse_args(argv)
    return cli.run(lambda: _main(args), on_interrupt="before the chat started")


def _main(args) -> int:
    for stream in (sys.stdout, sys.stderr, sys.stdin):
        try:
            stream.reconfigure(errors="replace")
        except (AttributeError, ValueError):
            pass
    interactive = sys.stdin.isatty()
    as_json = args.json

    def err(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    def out(obj) -> None:
        print(json.dumps(obj, ensure_ascii=False), flush=True)

    chat = None
    try:
        from . import Model
        from .eval.options import check_policy

        with cli.preflight():
            check_policy(args.policy)
            template = None
            if args.chat_template:
                template = cli.read_text(args.chat_template, "--chat-template")
            cli.check_threads(args.threads)
            cli.check_input(args.gguf, "--gguf")
            model = Model(args.gguf, n_threads=args.threads)
            resolve_budget(args.budget, model.n_ctx_train)  # a bad --budget is reported before anything else
            chat = Chat(model, budget=args.budget, policy=args.policy, slack=args.slack, positions=args.positions,
                        system=args.system, template=template, n_threads=args.threads, temperature=args.temp,
                        top_k=args.top_k, top_p=args.top_p, seed=args.seed, max_tokens=args.max_tokens,
                        on_notice=lambda m: err(f"note: {m}"))
        err(f"model: {model.desc}")
        err(f"kv: policy {args.policy}, budget {chat.budget} tokens + slack {chat.slack} (n_ctx {chat.n_ctx}, "
            f"{_mib(chat.session.kv_bytes_alloc)}), positions {args.positions}; /help for commands")
        if interactive:
            try:
                import readline  # noqa: F401  (line editing and history for input())
            except ImportError:
                pass
        warned_positions = False
        ctrl_c = 0
        while True:
            try:
                line = _read_message(interactive)
                ctrl_c = 0
            except KeyboardInterrupt:
                ctrl_c += 1
                if ctrl_c >= 2:
                    err("")
                    return 130
                err("\n(Ctrl-C again, /quit or Ctrl-D to leave)")
                continue
            except EOFError:
                line = None
            if line is None:
                if interactive:
                    err("")
                return 0
            msg = line.strip()
            if not msg:
                continue
            if msg.startswith("/") and not msg.startswith("//"):
                cmd = msg.split()[0].lower()
                if cmd in ("/quit", "/exit", "/q"):
                    return 0
                if cmd == "/reset":
                    chat.reset()
                    out({"event": "reset", **chat.stats()}) if as_json else err("(new conversation)")
                elif cmd == "/stats":
                    out({"event": "stats", **chat.stats()}) if as_json else print(_stats_text(chat), flush=True)
                elif cmd in ("/help", "/?"):
                    out({"event": "help", "text": HELP_COMMANDS}) if as_json else print(HELP_COMMANDS, flush=True)
                else:
                    if as_json:
                        out({"event": "error", "error": f"unknown command {cmd}"})
                    err(f"unknown command {cmd} (/help lists them)")
                continue
            if msg.startswith("//"):
                msg = msg[1:]
            if not interactive and not as_json:  # a readable transcript: the message, then the reply
                print(f"> {msg}", flush=True)

            def show(piece: str) -> None:
                sys.stdout.write(piece)
                sys.stdout.flush()

            with _ReplyInterrupt() as intr:
                try:
                    turn = chat.turn(msg, on_text=None if as_json else show, should_stop=lambda: intr.flag)
                except EngineError as e:
                    if e.status != CTX_FULL:  # policy "full" ran out of room: the chat goes on after /reset
                        raise
                    if as_json:
                        out({"event": "error", "error": str(e)})
                    err(f"error: {e}")
                    continue
            if as_json:
                out({"event": "turn", "turn": chat.turns, "user": turn.user, "reply": turn.reply, "stop": turn.stop,
                     "prompt_tokens": turn.prompt_tokens, "reply_tokens": turn.reply_tokens,
                     "reply_tokens_per_s": round(turn.reply_tokens_per_s, 2),
                     "prompt_tokens_per_s": round(turn.prompt_tokens_per_s, 2), **chat.stats()})
            else:
                print(flush=True)
            err(status_line(chat, turn))
            if (not warned_positions and args.positions == "original"
                    and chat.session.next_pos > model.n_ctx_train):
                warned_positions = True
                err(f"note: positions passed the model's trained context ({model.n_ctx_train}): with "
                    f"--positions original RoPE is now out of its trained range; --positions shift keeps it in range")
    except BrokenPipeError:  # the reader of stdout went away (| head)
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 1
    finally:
        if chat is not None:
            chat.close()


if __name__ == "__main__":
    sys.exit(main())
