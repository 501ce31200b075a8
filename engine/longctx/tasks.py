"""The task registry: names, expand_tasks(), generate() and the deviations to record.

    from engine.longctx import generate, score
    s = generate("niah_single_2", 4096, index=0, seed=42, tok=tok, overhead_tokens=1)
    s.context + s.question + s.answer_prefix   # the prompt, without BOS/chat template
    score(s, "The special magic number ... is 1234567.")

`tok` is anything with encode(text) -> list[int] (no BOS, special tokens not parsed) and
decode(ids) -> str: the evaluated model's tokenizer sizes every prompt (RULER's rule).
"""

from __future__ import annotations

import hashlib

from . import cwe, fwe, haystack, metrics, needle, niah, passkey, vt, words
from .fill import NoFit, largest_fit, n_tokens, step_up_fit
from .needle import NEEDLE_DEPTHS
from .sample import Sample, sample_seed
from .templates import NOISE_LINE

RULER11 = ("niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multikey_2",
           "niah_multikey_3", "niah_multivalue", "niah_multiquery", "vt", "cwe", "fwe")
TASKS = RULER11 + ("needle", "passkey")
# the column names of RULER tables (§5.4); accepted by expand_tasks as well
SHORT_NAMES = dict(zip(RULER11, ("s1", "s2", "s3", "mk1", "mk2", "mk3", "mv", "mq", "vt", "cwe", "fwe")))
SHORT_NAMES.update(needle="needle", passkey="passkey")
GROUPS = {"ruler11": RULER11, "all": TASKS}

MAX_NEW_TOKENS = {**{t: niah.MAX_NEW for t in niah.CONFIGS}, "vt": vt.MAX_NEW, "cwe": cwe.MAX_NEW,
                  "fwe": fwe.MAX_NEW, "needle": needle.MAX_NEW, "passkey": passkey.MAX_NEW}
METRIC = {**{t: "all" for t in RULER11}, "needle": "rouge1", "passkey": "first_int"}

DEVIATIONS = {
    "sentence_splitter": "essay haystacks are split into sentences by a deterministic regex ("
                         + haystack.SPLITTER + ") instead of NLTK punkt, whose model cannot be downloaded "
                         "here; the haystack text is unchanged, an essay needle moves by at most one sentence",
    "rng": "distributions follow RULER/ReST-KV/Landmark, not their random streams: every sample has its own "
           "seed sha256(run seed, task, ctx, index) and named sub-streams; needle line indices, vt chain "
           "positions and the passkey split point are drawn as fractions of the haystack size; repeated "
           "keys/values within a sample are redrawn (RULER does not check); the vt one-shot is drawn per "
           "sample (RULER draws it once per run and re-randomises its names and value)",
    "word_lists": "keys and cwe words come from the PyPI wonderwords lists read with importlib.resources "
                  "(sha256 in each sample's meta), not RULER's private helper; cwe takes the one-shot's 40 "
                  "words from the other end of the shuffled pool so they never reappear in the task; RULER's "
                  "english_words.json (used past the pool's 8,166 words, cwe above ~190k tokens) is absent: "
                  "such a cwe sample raises ValueError",
    "tokenizer": "lengths are counted with the evaluated GGUF model's tokenizer, the context, question "
                 "and answer prefix tokenized separately plus the runner's overhead (BOS, chat template) "
                 "(RULER's rule, not kvpress's fixed Llama-3.1 lengths)",
    "length_fill": "each sample's haystack is the largest that fits, searched on that sample's own content "
                   "(n fits, n+1 does not); RULER searches once per task and steps every sample down by "
                   "500 words / 25 lines until it fits, so its prompts can be a step shorter; fwe keeps "
                   "RULER's own rule (grow from m/6 by m/32 words, m = ctx - 50 - overhead)",
    "one_shot": "the vt and cwe one-shot examples are part of the context segment, so a chat template wraps "
                "them with the task (RULER puts cwe's example before the model template; with its 'base' "
                "template, which kvpress uses, the prompts are the same)",
    "essay_corpus": "the 49 gkamradt essays (files sorted, concatenated without a separator) repeated when "
                    "longer haystacks are needed; RULER continues with 169 HTML essays instead (only "
                    "haystacks over ~110k words differ)",
    "needle_test": "ReST-KV's needle test with L = ctx - overhead (its grid runs L = 1000..32000); the "
                   "haystack files are sorted (ReST-KV uses unsorted glob order); sample index i uses depth "
                   "NEEDLE_DEPTHS[i % 10] and starts the haystack at essay i // 10; '<|im_start|>' stays "
                   "literal text as in ReST-KV; the '.' token(s) are found with the model's tokenizer",
    "passkey": "Landmark Attention's prompt with the garbage length (characters) filled to ctx by the length "
               "rule instead of its fixed list of sizes",
}


def expand_tasks(spec: str) -> list:
    """'ruler11', 'needle', 'passkey', 'all', task names, RULER's short names (s1, mk2, ...) or a comma
    list of those -> task names in order, without repeats."""
    names = [p.strip() for p in str(spec).split(",") if p.strip()]
    short = {v: k for k, v in SHORT_NAMES.items()}
    out: list = []
    bad = []
    for name in names:
        key = name.lower()
        if key in GROUPS:
            found = GROUPS[key]
        elif key in TASKS:
            found = (key,)
        elif key in short:
            found = (short[key],)
        else:
            bad.append(name)
            continue
        out += [t for t in found if t not in out]
    if bad or not out:
        what = f"unknown task(s) {', '.join(map(repr, bad))}" if bad else f"no task in {spec!r}"
        raise ValueError(f"{what}; valid: {', '.join(GROUPS)}, {', '.join(TASKS)} "
                         f"(or {', '.join(SHORT_NAMES[t] for t in RULER11)})")
    return out


def _token_offsets(tok, text: str, char_offsets) -> list:
    """Token index at which each character offset starts, counted chunk by chunk between the offsets
    (one tokenization of the text in all; exact where a token boundary falls at each offset, as at
    the start of a needle sentence or line, else within a token)."""
    valid = sorted({o for o in char_offsets if o >= 0})
    at, pos, count = {}, 0, 0
    for o in valid:
        count += n_tokens(tok, text[pos:o])
        at[o], pos = count, o
    return [at.get(o, -1) for o in char_offsets]


def _builder(task: str, ctx: int, s: int, tok, data_root):
    """(builder, haystack kind, lower bound of n, tokens per unit: the search's first guess)."""
    if task in niah.CONFIGS:
        kind = niah.CONFIGS[task].haystack
        corpus = haystack.corpus(data_root) if kind == "essay" else None
        return niah.Niah(task, ctx, s, corpus), kind, 0, {"essay": 1.3, "noise": 25.0, "needle": 22.0}[kind]
    if task == "vt":
        return vt.Vt(ctx, s, tok), "noise", 0, 25.0
    if task == "cwe":
        b = cwe.Cwe(ctx, s)
        return b, "wonderwords", cwe.NUM_CW, 4.0 * b.rep_uncommon
    if task == "fwe":
        return fwe.Fwe(ctx, s), "coded words", 0, 2.0
    if task == "passkey":
        return passkey.Passkey(s), "noise (chars)", 0, 0.23
    raise ValueError(f"{task} has no haystack size")


def _need(b, tok, overhead: int, max_new: int, ctx: int):
    """need(n): the sample's whole length with haystack size n (ctx + 1 when n is out of range)."""
    fixed = overhead + n_tokens(tok, b.question) + n_tokens(tok, b.answer_prefix) + max_new

    def need(n: int) -> int:
        try:
            text = b.context(n)[0]
        except ValueError:  # cwe beyond its word pool: as if it did not fit (generate() says why)
            return ctx + 1
        return fixed + n_tokens(tok, text)

    return need


def measure(task: str, ctx: int, index: int, seed: int, tok, n: int, overhead_tokens: int = 0,
            data_root=None) -> int:
    """The length (overhead + segments + max_new) sample `index` would have with haystack size n
    (meta['haystack_units']): generate() picks the largest n with measure(n) <= ctx."""
    s = sample_seed(seed, task, ctx, index)
    b = _builder(task, ctx, s, tok, data_root)[0]
    return _need(b, tok, overhead_tokens, MAX_NEW_TOKENS[task], ctx)(n)


def generate(task: str, ctx: int, index: int, seed: int, tok, overhead_tokens: int = 0, data_root=None) -> Sample:
    """Sample `index` of `task` at `ctx` tokens for a run seeded `seed` (deterministic: the same
    arguments and tokenizer give an identical Sample).  ValueError if `ctx` cannot hold the prompt
    even with an empty haystack."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid: {', '.join(TASKS)}")
    for name, v, lo in (("ctx", ctx, 1), ("index", index, 0), ("overhead_tokens", overhead_tokens, 0)):
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    s = sample_seed(seed, task, ctx, index)
    max_new = MAX_NEW_TOKENS[task]
    meta: dict = {}
    try:
        if task == "needle":
            corpus = haystack.corpus(data_root)
            built = needle.build(ctx, index, tok, overhead_tokens, corpus)
            context, question, answer_prefix = built["context"], built["question"], built["answer_prefix"]
            answers, total = built["answers"], built["need"]
            meta.update(built["meta"], haystack="essay", haystack_sha256=corpus.sha256, fill_rule="ReST-KV")
        else:
            context, question, answer_prefix, answers, total, meta = _fill(task, ctx, s, tok, overhead_tokens,
                                                                           max_new, data_root)
    except NoFit as e:
        raise ValueError(f"{task} at ctx {ctx}: {e}") from None
    nq, na = n_tokens(tok, question), n_tokens(tok, answer_prefix)
    meta["n_tokens"] = {"overhead": overhead_tokens, "context": total - overhead_tokens - nq - na - max_new,
                        "question": nq, "answer_prefix": na, "max_new_tokens": max_new, "total": total}
    offs = haystack.offsets(context, answers)
    meta["answer_char_offsets"] = offs
    return Sample(task=task, ctx=ctx, index=index, seed=s, context=context, question=question,
                  answer_prefix=answer_prefix, answers=tuple(answers), max_new_tokens=max_new,
                  metric=METRIC[task], stop_at_newline=(task == "needle"), meta=meta)


def _fill(task, ctx, s, tok, overhead, max_new, data_root):
    b, kind, lo, tpu = _builder(task, ctx, s, tok, data_root)
    need = _need(b, tok, overhead, max_new, ctx)
    if task == "fwe":
        m = ctx - max_new - overhead
        b.step = max(m // 32, 1)
        n, total, probes = step_up_fit(need, ctx, max(m // fwe.WORD_LEN, 0), b.step, "fwe text")
    else:
        n, total, probes = largest_fit(need, ctx, lo, tpu, f"{task} haystack")
        if task == "cwe" and n >= b.max_words:
            b.word_list(n + 1)  # raises the ValueError that says why
    context, placed = b.context(n)
    meta = {"haystack": kind, "haystack_units": n, "unit": b.unit, "fill_step": b.step, "fill_probes": probes}
    meta.update(placed)
    if kind == "essay":
        meta.update(haystack_sha256=b.corpus.sha256, sentence_splitter=haystack.SPLITTER)
    elif kind in ("noise", "noise (chars)"):
        meta["haystack_sha256"] = hashlib.sha256(NOISE_LINE.encode()).hexdigest()
    if task in niah.CONFIGS:
        offs = haystack.offsets(context, b.needles)
        meta.update(needles=len(b.needles), needle_char_offsets=offs,
                    needle_token_offsets=_token_offsets(tok, context, offs), queries=b.queries)
    if task in niah.CONFIGS or task == "cwe":
        meta["wordlist_sha256"] = dict(words.sha256s())
    if task == "vt":
        meta.update(b.oneshot_meta)
    if task == "passkey":
        off = context.find(b.info)
        meta.update(key_char_offset=off, key_token_offset=_token_offsets(tok, context, [off])[0])
    return context, b.question, b.answer_prefix, b.answers, total, meta


def score(sample: Sample, prediction: str) -> float:
    """The sample's metric on `prediction` (the generated text), in [0, 1]."""
    return metrics.score(sample, prediction)


__all__ = ["Sample", "TASKS", "RULER11", "NEEDLE_DEPTHS", "DEVIATIONS", "MAX_NEW_TOKENS", "METRIC",
           "SHORT_NAMES", "expand_tasks", "generate", "measure", "score", "sample_seed"]
