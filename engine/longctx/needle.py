"""ReST-KV's needle-in-a-haystack test (run_needle_in_haystack.py; §3.1), with L = ctx - overhead.

The essays are cut to L tokens, then to L - 200 - len(needle) (200 tokens kept free for the
wrapper, the question and the answer), and the needle goes in at int(len·d/100) tokens, moved
back to just after the preceding '.' token (d = 100 appends it).  Everything is done on token
ids of the evaluated model's tokenizer and decoded back to text, as ReST-KV does.

Samples: index selects the depth NEEDLE_DEPTHS[index % 10]; index // 10 = r starts the haystack
at the r-th essay (files sorted by name, cyclically), so more than 10 samples per length give
other haystacks at the same depths rather than copies (r = 0 is ReST-KV's haystack, whose glob
order we sort).
"""

from __future__ import annotations

from .fill import NoFit, n_tokens
from .templates import NEEDLE, NEEDLE_ANSWER, NEEDLE_CONTEXT, NEEDLE_QUESTION, NEEDLE_RETRIEVAL_QUESTION

NEEDLE_DEPTHS = (0, 11, 22, 33, 44, 56, 67, 78, 89, 100)
MAX_NEW = 30
FREE = 200  # ReST-KV final_context_length_buffer


def period_ids(tok) -> set:
    """Ids of the '.' token(s): what encode('.') gives (ReST-KV's generic rule) plus the '.' that
    follows a word, which differs from it in SentencePiece vocabularies (Llama-2: 869 and 29889)."""
    ids = set(tok.encode("."))
    for text in ("a.", "end. The"):
        ids |= {i for i in tok.encode(text) if tok.decode([i]).strip() == "."}
    return ids


def _essay_ids(tok, corpus, start_file: int, n: int) -> list:
    """At least n token ids of the essays from `start_file` on (fewer only if the text is shorter)."""
    chars = max(4096, n * 6)
    while True:
        ids = tok.encode(corpus.rotated_text(start_file, chars))
        if len(ids) >= n:
            return ids
        chars *= 2


def build(ctx: int, index: int, tok, overhead: int, corpus) -> dict:
    depth = NEEDLE_DEPTHS[index % len(NEEDLE_DEPTHS)]
    start_file = index // len(NEEDLE_DEPTHS)
    L = ctx - overhead
    needle_ids = tok.encode(NEEDLE)
    question = NEEDLE_QUESTION.format(question=NEEDLE_RETRIEVAL_QUESTION)
    fixed = overhead + n_tokens(tok, question) + n_tokens(tok, NEEDLE_ANSWER) + MAX_NEW
    room = L - FREE - len(needle_ids)
    if room <= 0:
        raise NoFit(f"ctx {ctx} is too small for the needle test: it keeps {FREE} tokens free and the needle "
                    f"takes {len(needle_ids)} (overhead {overhead})")
    # encode_and_trim: cut the essays to L tokens and decode; insert_needle re-encodes that text
    hay = tok.decode(_essay_ids(tok, corpus, start_file, L)[:L])
    ids = tok.encode(hay)
    dots = period_ids(tok)
    trim = 0
    while True:
        keep = ids[:max(room - trim, 0)]
        if depth == 100:
            at = len(keep)
        else:
            at = int(len(keep) * depth / 100)
            while at > 0 and keep[at - 1] not in dots:
                at -= 1
        text = tok.decode(keep[:at]) + NEEDLE + tok.decode(keep[at:]) if keep else NEEDLE
        context = NEEDLE_CONTEXT.format(context=text)
        need = fixed + n_tokens(tok, context)
        # ReST-KV's 200 free tokens hold the wrapper, the question and the answer of its own
        # prompt; a long chat template could exceed them: then trim the haystack further
        if need <= ctx:
            break
        if not keep:
            raise NoFit(f"ctx {ctx} is too small for the needle test even without a haystack ({need} tokens)")
        trim += need - ctx
    off = context.find(NEEDLE)
    return {
        "context": context, "question": question, "answer_prefix": NEEDLE_ANSWER,
        "answers": (NEEDLE.strip(),), "need": need,
        "meta": {"depth_percent": depth, "haystack_start_file": start_file % len(corpus.texts),
                 "haystack_tokens": len(keep), "needle_token_index": at, "needle_tokens": len(needle_ids),
                 "needle_char_offset": off, "needle_char_depth": round(100 * max(off, 0) / max(len(context), 1), 2),
                 "L": L, "free_tokens": FREE, "extra_trim": trim},
    }

