"""Text generation: sampling over the session's logits, streamed as text pieces."""

from __future__ import annotations

from typing import Iterator, Optional, Sequence

import numpy as np

from .errors import EngineError


def sample(logits: np.ndarray, rng: np.random.Generator, temperature: float = 0.8, top_k: int = 40,
           top_p: float = 0.95) -> int:
    """Greedy when temperature <= 0; otherwise top-k, then top-p (nucleus), then temperature sampling."""
    if temperature <= 0:
        return int(np.argmax(logits))
    logits = logits.astype(np.float64)
    k = logits.size if top_k <= 0 else min(top_k, logits.size)
    idx = np.argpartition(-logits, k - 1)[:k]
    idx = idx[np.argsort(-logits[idx], kind="stable")]
    z = logits[idx] / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    if 0 < top_p < 1:
        keep = int(np.searchsorted(np.cumsum(p), top_p) + 1)
        idx, p = idx[:keep], p[:keep] / p[:keep].sum()
    return int(idx[rng.choice(len(idx), p=p)])


def _validate(max_tokens, temperature, top_k, top_p):
    if not isinstance(max_tokens, int) or max_tokens < 0:
        raise EngineError(f"max_tokens must be a non-negative integer, got {max_tokens!r}")
    if not temperature >= 0:  # also rejects NaN
        raise EngineError(f"temperature must be >= 0, got {temperature}")
    if not isinstance(top_k, (int, np.integer)) or top_k < 0:
        raise EngineError(f"top_k must be an integer >= 0 (0 = off), got {top_k!r}")
    if not 0 < top_p <= 1:
        raise EngineError(f"top_p must be in (0, 1], got {top_p}")


def generate(model, prompt: str, max_tokens: int = 128, temperature: float = 0.8, top_k: int = 40,
             top_p: float = 0.95, seed: Optional[int] = None, stop: Optional[Sequence[str]] = None,
             n_ctx: Optional[int] = None) -> Iterator[str]:
    """Yields text pieces as they are generated; stops at EOS/EOT, a stop string or max_tokens."""
    _validate(max_tokens, temperature, top_k, top_p)
    if isinstance(stop, str):  # one stop string, not a list of its characters
        stop = [stop]
    stop = [s for s in (stop or []) if s]
    tok = model.tokenizer
    prompt_ids = model.tokenize(prompt, add_special=True, parse_special=True)
    if not prompt_ids:
        raise EngineError("the prompt is empty (and the vocabulary adds no BOS)")
    n_ctx = n_ctx or min(model.n_ctx_train, len(prompt_ids) + max_tokens)
    if len(prompt_ids) > n_ctx:
        raise EngineError(f"the prompt has {len(prompt_ids)} tokens, more than the context of {n_ctx}")
    end_ids = {i for i in (tok.eos_id, getattr(tok, "eot_id", None)) if i is not None and i >= 0}
    end_ids |= set(getattr(tok, "eog_ids", ()))  # every end-of-generation id, as llama_vocab_is_eog
    rng = np.random.default_rng(seed)
    clean = bool(getattr(tok, "clean_spaces", False))
    return _stream(model, prompt_ids, max_tokens, temperature, top_k, top_p, rng, stop, n_ctx, end_ids, clean)


def _unstable_tail(text: str, clean_spaces: bool) -> int:
    """How many characters at the end of `text` more tokens may still change.

    Vocabularies with clean_spaces (llama.cpp's clean_up_tokenization_spaces, applied by
    detokenize) delete a space before ``?!.,``, around a lone apostrophe and before ``'s 'm 're
    've``, looking at most 3 bytes ahead in each of 3 passes: a space or apostrophe among the
    last 6 characters is not final yet.
    """
    if not clean_spaces:
        return 0
    tail = text[-6:]
    return len(tail) - min((tail.find(c) for c in " '" if c in tail), default=len(tail))


def _stream(model, prompt_ids, max_tokens, temperature, top_k, top_p, rng, stop, n_ctx, end_ids, clean=False):
    with model.session(n_ctx=n_ctx) as s:
        logits = s.eval(prompt_ids)
        out_ids: list[int] = []
        emitted = 0  # characters of the decoded text already yielded
        hold = max((len(x) for x in stop), default=1) - 1
        for _ in range(max_tokens):
            t = sample(logits, rng, temperature, top_k, top_p)
            if t in end_ids:
                break
            out_ids.append(t)
            text = model.detokenize(out_ids)
            cut = min((c for c in (text.find(x, max(emitted - len(x), 0)) for x in stop) if c >= 0), default=-1)
            if cut >= 0:
                if cut > emitted:
                    yield text[emitted:cut]
                return
            # hold back an incomplete UTF-8 character, anything that may begin a stop string and
            # spaces that the detokenizer's clean-up may still remove
            base = text.rstrip("\ufffd")
            safe = len(base) - max(hold if stop else 0, _unstable_tail(base, clean))
            if safe > emitted:
                yield text[emitted:safe]
                emitted = safe
            if s.n_past >= s.n_ctx:
                break
            logits = s.eval([t])
        text = model.detokenize(out_ids)
        if len(text) > emitted:
            yield text[emitted:]
