"""Long-context task generators (issue 14; long-context-eval.md §5.5.1): determinism, placement of
the answers, formats, the length rule, the literal templates and each task's own recipe.

Most tests use a reversible word/punctuation tokenizer (no model needed); one test sizes every
task with SmolLM2's tokenizer (skipped without the model).  The essay tasks need
../shared/data/paul_graham_essays (skipped, saying so, without it).
"""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine import longctx
from engine.longctx import (DEVIATIONS, NEEDLE_DEPTHS, RULER11, TASKS, expand_tasks, generate, measure,
                            templates, words)
from engine.longctx.haystack import essay_dir

ROOT = Path(__file__).resolve().parent.parent


class WordTok:
    """Stand-in tokenizer: runs of word characters, runs of spaces, single punctuation marks;
    decode(encode(t)) == t.  Ids are given in order of first sight (counts never depend on them)."""

    _re = re.compile(r"\s+|\w+|[^\w\s]")

    def __init__(self):
        self.ids, self.pieces = {}, []

    def encode(self, text):
        out = []
        for w in self._re.findall(text):
            i = self.ids.get(w)
            if i is None:
                i = self.ids[w] = len(self.pieces)
                self.pieces.append(w)
            out.append(i)
        return out

    def decode(self, ids):
        return "".join(self.pieces[i] for i in ids)


def _have_essays() -> bool:
    try:
        essay_dir()
        return True
    except FileNotFoundError:
        return False


ESSAY_TASKS = {"niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multivalue", "niah_multiquery", "needle"}
needs_essays = pytest.mark.skipif(not _have_essays(), reason="../shared/data/paul_graham_essays not found")


def task_params(tasks=TASKS):
    return [pytest.param(t, marks=needs_essays) if t in ESSAY_TASKS else t for t in tasks]


@pytest.fixture(scope="module")
def tok():
    return WordTok()


def n(tok, text):
    return len(tok.encode(text)) if text else 0


def total(tok, s, overhead=0):
    return overhead + n(tok, s.context) + n(tok, s.question) + n(tok, s.answer_prefix) + s.max_new_tokens


# ---------------------------------------------------------------- interface and registry

def test_registry_and_expand_tasks():
    assert RULER11 == ("niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multikey_2",
                       "niah_multikey_3", "niah_multivalue", "niah_multiquery", "vt", "cwe", "fwe")
    assert TASKS == RULER11 + ("needle", "passkey")
    assert NEEDLE_DEPTHS == (0, 11, 22, 33, 44, 56, 67, 78, 89, 100)
    assert expand_tasks("ruler11") == list(RULER11)
    assert expand_tasks("all") == list(TASKS)
    assert expand_tasks("needle") == ["needle"] and expand_tasks("passkey") == ["passkey"]
    assert expand_tasks(" vt, s1,niah_single_1 ,needle,vt") == ["vt", "niah_single_1", "needle"]
    assert expand_tasks("ruler11,passkey") == list(RULER11) + ["passkey"]
    for bad in ("qa_1", "niah", "", "vt,nope"):
        with pytest.raises(ValueError, match="valid: ruler11, all, niah_single_1"):
            expand_tasks(bad)
    for key in ("sentence_splitter", "rng", "word_lists", "tokenizer"):
        assert DEVIATIONS[key]
    assert longctx.MAX_NEW_TOKENS == {**{t: 128 for t in RULER11[:8]}, "vt": 30, "cwe": 120, "fwe": 50,
                                      "needle": 30, "passkey": 10}


def test_bad_arguments(tok):
    with pytest.raises(ValueError, match="unknown task 'qa_1'"):
        generate("qa_1", 1024, 0, 0, tok)
    with pytest.raises(ValueError, match="index must be"):
        generate("vt", 1024, -1, 0, tok)
    with pytest.raises(ValueError, match="overhead_tokens must be"):
        generate("vt", 1024, 0, 0, tok, overhead_tokens=-1)


@pytest.mark.parametrize("task", task_params())
def test_too_small_ctx_is_a_clear_error(task, tok):
    with pytest.raises(ValueError, match=f"{task} at ctx 160: .*too small"):
        generate(task, 160, 0, 0, tok, overhead_tokens=100)


@needs_essays
def test_data_root(tok, tmp_path):
    d = essay_dir()
    a = generate("niah_single_2", 1024, 0, 0, tok)
    assert generate("niah_single_2", 1024, 0, 0, tok, data_root=d.parent) == a
    assert generate("niah_single_2", 1024, 0, 0, tok, data_root=d) == a  # the essays folder itself
    assert a.meta["haystack_sha256"] == generate("needle", 1024, 0, 0, tok).meta["haystack_sha256"]
    with pytest.raises(FileNotFoundError, match="paul_graham_essays"):
        generate("niah_single_2", 1024, 0, 0, tok, data_root=tmp_path)
    generate("niah_single_1", 1024, 0, 0, tok, data_root=tmp_path)  # noise tasks need no data


# ---------------------------------------------------------------- literal templates (§2.3–2.6, §3)

def full(task, **kw):
    c, q, a = {"niah": (templates.NIAH_CONTEXT, templates.NIAH_QUESTION, templates.NIAH_ANSWER),
               "vt": (templates.VT_CONTEXT, templates.VT_QUESTION, templates.VT_ANSWER),
               "cwe": (templates.CWE_CONTEXT, templates.CWE_QUESTION, templates.CWE_ANSWER),
               "fwe": (templates.FWE_CONTEXT, templates.FWE_QUESTION, templates.FWE_ANSWER)}[task]
    return c, q, a


def test_niah_templates_equal_the_spec():
    c, q, a = full("niah")
    assert c.format(type_needle_v="numbers", context="{haystack}") == (
        "Some special magic numbers are hidden within the following text. Make sure to memorize it. "
        "I will quiz you about the numbers afterwards.\n{haystack}\n")
    assert q.format(type_needle_v="numbers", query="{query}") == (
        "What are all the special magic numbers for {query} mentioned in the provided text?")
    assert a.format(type_needle_v="numbers", query="{query}") == (
        " The special magic numbers for {query} mentioned in the provided text are")
    sing = templates.niah_singular
    assert sing(c).format(type_needle_v="number", context="{haystack}") == (
        "A special magic number is hidden within the following text. Make sure to memorize it. "
        "I will quiz you about the number afterwards.\n{haystack}\n")
    assert sing(q).format(type_needle_v="number", query="{query}") == (
        "What is the special magic number for {query} mentioned in the provided text?")
    assert sing(a).format(type_needle_v="number", query="{query}") == (
        " The special magic number for {query} mentioned in the provided text is")
    assert templates.NIAH_NEEDLE == "One of the special magic {type_needle_v} for {key} is: {value}."
    assert templates.NOISE_LINE == ("The grass is green. The sky is blue. The sun is yellow. Here we go. "
                                    "There and back again.")
    # RULER's own single template string (constants.py), split at the question and the answer prefix
    ruler = ("Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize it. "
             "I will quiz you about the {type_needle_v} afterwards.\n{context}\nWhat are all the special magic "
             "{type_needle_v} for {query} mentioned in the provided text?")
    assert c + q == ruler


def test_vt_cwe_fwe_templates_equal_the_spec():
    c, q, a = full("vt")
    assert (c + q).format(context="{context}", query="{value}") == (
        "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
        "Question: Find all variables that are assigned the value {value} in the text above.")
    assert a.format(num_v=5, query="{value}") == (
        " Answer: According to the chain(s) of variable assignment in the text above, 5 variables are assigned "
        "the value {value}, they are: ")
    c, q, a = full("cwe")
    assert (c + q).format(context="{context}") == (
        "Below is a numbered list of words. In these words, some appear more often than others. Memorize the ones "
        "that appear most often.\n{context}\nQuestion: What are the 10 most common words in the above list?")
    assert a == " Answer: The top 10 words that appear most often in the list are:"
    c, q, a = full("fwe")
    assert (c + q).format(context="{context}") == (
        "Read the following coded text and track the frequency of each coded word. Find the three most frequently "
        "appeared coded words. {context}\nQuestion: Do not provide any explanation. Please ignore the dots '....'. "
        "What are the three most frequently appeared words in the above coded text?")
    assert a == " Answer: According to the coded text above, the three most frequently appeared words are:"


def test_needle_and_passkey_templates_equal_the_sources():
    t = templates
    prompt = (t.NEEDLE_CONTEXT.format(context="{context}")
              + t.NEEDLE_QUESTION.format(question=t.NEEDLE_RETRIEVAL_QUESTION) + t.NEEDLE_ANSWER)
    assert prompt == ("<|im_start|> This is a very long story book: <book> {context} </book>.\n Based on the content "
                      "of the book, Question: The best thing to do in San Francisco is: \nAnswer:")
    assert t.NEEDLE == ("\nThe best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a "
                        "sunny day.\n")
    assert t.PASSKEY_TASK == ("There is an important info hidden inside a lot of irrelevant text. Find it and "
                              "memorize them. I will quiz you about the important information there.")
    assert t.PASSKEY_INFO.format(key=7) == "The pass key is 7. Remember it. 7 is the pass key."
    assert t.PASSKEY_QUESTION + t.PASSKEY_ANSWER == "What is the pass key? The pass key is"


# ---------------------------------------------------------------- every task: determinism, answers, length

@pytest.mark.parametrize("task", task_params())
def test_same_seed_same_sample_and_answers_in_context(task, tok):
    a = generate(task, 2048, 3, 42, tok, overhead_tokens=7)
    b = generate(task, 2048, 3, 42, WordTok(), overhead_tokens=7)  # a fresh tokenizer: other ids, same text
    assert a == b
    assert json.dumps(a.as_dict(), sort_keys=True) == json.dumps(b.as_dict(), sort_keys=True)
    assert a.seed == longctx.sample_seed(42, task, 2048, 3)
    assert a.max_new_tokens == longctx.MAX_NEW_TOKENS[task] and a.metric == longctx.METRIC[task]
    assert a.stop_at_newline is (task == "needle")
    assert a.answers and all(isinstance(x, str) and x in a.context for x in a.answers)
    assert a.meta["answer_char_offsets"] == [a.context.find(x) for x in a.answers]
    # other seeds and indices give other samples (the needle test varies by index only)
    if task != "needle":
        assert generate(task, 2048, 3, 43, tok, overhead_tokens=7).context != a.context
    assert generate(task, 2048, 4, 42, tok, overhead_tokens=7).context != a.context
    # the question is not part of the context (cwe's one-shot repeats it, RULER's format)
    if task == "cwe":
        assert a.context.count(a.question) == 1 and a.context.find(a.question) < a.meta["oneshot_chars"]
    else:
        assert a.question not in a.context


@pytest.mark.parametrize("task", task_params())
@pytest.mark.parametrize("ctx,overhead", [(1024, 0), (4096, 30)])
def test_length_rule(task, ctx, overhead, tok):
    s = generate(task, ctx, 1, 5, tok, overhead_tokens=overhead)
    used = total(tok, s, overhead)
    assert used <= ctx
    assert s.meta["n_tokens"]["total"] == used
    assert s.meta["n_tokens"]["context"] == n(tok, s.context)
    if task == "needle":  # ReST-KV: 200 tokens kept free, the rest filled
        assert ctx - overhead - 200 <= used <= ctx
        return
    units = s.meta["haystack_units"]
    step = s.meta["fill_step"]
    grow = step if task == "fwe" else 1  # fwe grows in RULER's steps of m/32
    assert measure(task, ctx, 1, 5, tok, units, overhead_tokens=overhead) == used
    assert measure(task, ctx, 1, 5, tok, units + grow, overhead_tokens=overhead) > ctx
    assert measure(task, ctx, 1, 5, tok, units + step, overhead_tokens=overhead) > ctx  # within one step
    assert step == {"fwe": max((ctx - 50 - overhead) // 32, 1), "cwe": 10, "vt": 10 if ctx >= 4096 else 5,
                    "passkey": 1}.get(task, 500 if task in ESSAY_TASKS else (25 if ctx >= 4096 else 5))


def test_determinism_across_processes(tok):
    """The same sample in a fresh interpreter with another hash seed (no dependence on hash())."""
    tasks = [t for t in TASKS if t not in ESSAY_TASKS or _have_essays()]
    code = (
        "import json, re, sys\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})\n"
        "from test_longctx_tasks import WordTok\n"
        "from engine.longctx import generate\n"
        f"print(json.dumps([generate(t, 1500, 2, 9, WordTok()).as_dict() for t in {tasks!r}], sort_keys=True))\n")
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, check=True)
    here = json.dumps([generate(t, 1500, 2, 9, tok).as_dict() for t in tasks], sort_keys=True)
    assert out.stdout.strip() == here


# ---------------------------------------------------------------- niah

NEEDLE_RE = re.compile(r"One of the special magic (numbers|uuids|words) for (.+?) is: (.+?)\.(?=\s|$)")
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def is_adj_noun(x: str) -> bool:
    adjs, nouns = set(words.adjectives()), set(words.nouns())
    return any(x[i] == "-" and x[:i] in adjs and x[i + 1:] in nouns for i in range(len(x)))


def check_format(kind: str, x: str):
    if kind == "numbers":
        assert re.fullmatch(r"[1-9]\d{6}", x), x
    elif kind == "uuids":
        assert UUID4.match(x), x
    else:
        assert is_adj_noun(x), x


@pytest.mark.parametrize("task", task_params(RULER11[:8]))
def test_niah_needles_formats_and_query(task, tok):
    from engine.longctx.niah import CONFIGS

    cfg = CONFIGS[task]
    k = max(cfg.k, cfg.q)
    for index in range(3):
        s = generate(task, 2048, index, 0, tok)
        found = NEEDLE_RE.findall(s.context)
        real = [f for f in found if f[1] in s.meta["queries"] or f[2] in s.answers]
        keys = {f[1] for f in found}
        if cfg.haystack == "needle":  # every filler line is a needle too
            assert len(found) == s.meta["haystack_units"] + k * cfg.v
            assert len(real) == cfg.v
        else:
            assert len(found) == k * cfg.v == s.meta["needles"]
            assert len(keys) == k
        for typ, key, value in found:
            assert typ == cfg.type_v  # the needle stays plural
            check_format(cfg.type_k, key)
            check_format(cfg.type_v, value)
        # the answers are exactly the values of the queried keys
        assert sorted(s.answers) == sorted(v for _, key, v in found if key in s.meta["queries"])
        assert len(s.answers) == cfg.q * cfg.v and len(s.meta["queries"]) == cfg.q
        q = s.meta["queries"]
        query = q[0] if len(q) == 1 else f"{q[0]}, {q[1]}, {q[2]}, and {q[3]}"
        plural = cfg.q * cfg.v > 1
        noun = {"numbers": "number", "uuids": "uuid", "words": "word"}[cfg.type_v] + ("s" if plural else "")
        if plural:
            assert s.question == f"What are all the special magic {noun} for {query} mentioned in the provided text?"
            assert s.answer_prefix == f" The special magic {noun} for {query} mentioned in the provided text are"
            assert s.context.startswith(f"Some special magic {noun} are hidden")
        else:
            assert s.question == f"What is the special magic {noun} for {query} mentioned in the provided text?"
            assert s.answer_prefix == f" The special magic {noun} for {query} mentioned in the provided text is"
            assert s.context.startswith(f"A special magic {noun} is hidden")
        for off, tok_off in zip(s.meta["needle_char_offsets"], s.meta["needle_token_offsets"]):
            m = NEEDLE_RE.match(s.context, off)
            assert m and (m.group(2) in s.meta["queries"] or cfg.k > cfg.q)
            assert tok_off == n(tok, s.context[:off])
        assert all(o > 0 for o in s.meta["needle_char_offsets"])
        assert s.meta["wordlist_sha256"] == words.sha256s()


@needs_essays
def test_niah_essay_depths_and_sentence_boundaries(tok):
    from engine.longctx.niah import DEPTHS

    assert DEPTHS[:6] == [0, 3, 5, 8, 10, 13] and DEPTHS[-1] == 100 and len(set(DEPTHS)) == 40
    for index in range(4):
        s = generate("niah_multikey_1", 4096, index, 1, tok)
        m = s.meta
        assert len(m["depths"]) == 4 and len(set(m["depths"])) == 4 and set(m["depths"]) <= set(DEPTHS)
        assert m["sentence_positions"] == [int(m["n_sentences"] * d / 100) for d in m["depths"]]
        offs = sorted(m["needle_char_offsets"])
        body_start = s.context.index("\n") + 1
        body = len(s.context) - body_start
        for d, off in zip(m["depths"], offs):
            # a needle starts a sentence: after the instruction line or after end punctuation + space
            before = s.context[:off]
            # (RULER's join leaves a space after the line break at depth 0 and two between needles
            # that share a sentence position)
            assert re.search(r"(\n|[.!?][\"'\u201d\u2019)\]]*) +$", before), before[-40:]
            assert abs(100 * (off - body_start) / body - d) < 6  # depth in characters, roughly
        # the haystack is the corpus' first words (RULER always starts at word 0)
        assert s.context.split("\n", 1)[1].startswith(("July 2010What hard liquor", "One of the special magic"))


def test_sentence_splitter():
    from engine.longctx.haystack import split_sentences

    text = 'He said "Go." Then he left! Why? Because (it ended.) Mr. Smith 3.5 times.Next e.g. x'
    sents = split_sentences(text)
    assert sents == ['He said "Go."', "Then he left!", "Why?", "Because (it ended.)", "Mr.", "Smith 3.5 times.Next e.g.",
                     "x"]
    assert " ".join(sents) == text  # lossless on whitespace-collapsed text
    assert split_sentences("   ") == [] and split_sentences("no end") == ["no end"]


@needs_essays
def test_essay_haystack_is_the_corpus_prefix(tok):
    from engine.longctx.haystack import corpus

    s = generate("niah_multivalue", 2048, 0, 2, tok)
    body = s.context.split("\n", 1)[1][:-1]
    for m in NEEDLE_RE.finditer(s.context):
        body = body.replace(m.group(0), "")
    assert re.sub(" +", " ", body).strip() == corpus().essay_words(s.meta["haystack_units"])


def test_noise_needle_line_positions(tok):
    s = generate("niah_single_1", 2048, 0, 3, tok)
    lines = s.context.split("\n")
    assert lines[0].startswith("A special magic number is hidden") and lines[-1] == ""
    body = lines[1:-1]
    assert len(body) == s.meta["haystack_units"] + 1
    i = [j for j, line in enumerate(body) if line.startswith("One of the special magic")]
    assert i == s.meta["line_indices"]
    assert all(line == templates.NOISE_LINE for j, line in enumerate(body) if j not in i)


# ---------------------------------------------------------------- vt, cwe, fwe

def resolve(lines):
    val = {}
    for line in lines:
        m = re.fullmatch(r"VAR ([A-Z]+) = (\d+)", line)
        if m:
            val[m.group(1)] = m.group(2)
    for _ in range(len(lines)):
        for line in lines:
            m = re.fullmatch(r"VAR ([A-Z]+) = VAR ([A-Z]+) ", line)
            if m and m.group(2) in val:
                val[m.group(1)] = val[m.group(2)]
    return val


@pytest.mark.parametrize("ctx", [2048, 4096])
def test_vt_chain_resolves_and_one_shot(ctx, tok):
    s = generate("vt", ctx, 2, 11, tok)
    cut = s.meta["oneshot_chars"]
    shot, task = s.context[:cut], s.context[cut:]
    assert task.startswith("Memorize and track the chain(s)") and shot.endswith("\n\n")
    value = re.search(r"assigned the value (\d+) in the text above", s.question).group(1)
    assert 10000 <= int(value) <= 99998
    val = resolve(task.split("\n"))
    assert sorted(k for k, v in val.items() if v == value) == sorted(s.answers)
    assert len(s.answers) == 5 and all(re.fullmatch(r"[A-Z]{5}", a) for a in s.answers)
    assert s.answer_prefix == (" Answer: According to the chain(s) of variable assignment in the text above, "
                               f"5 variables are assigned the value {value}, they are: ")
    # the chain lines appear in order, each after the one it refers to
    pos = [task.index(f"VAR {a} = ") for a in s.answers]
    assert pos == sorted(pos)
    # the one-shot: 3-letter names, a complete example ending with its answer, about 500 tokens
    names = re.findall(r"VAR ([A-Z]+) =", shot)
    assert len(names) == 5 and all(len(x) == 3 for x in names)
    shot_value = s.meta["oneshot_value"]
    assert shot_value != value
    val = resolve(shot.split("\n"))
    assert sorted(k for k, v in val.items() if v == shot_value) == sorted(names)
    assert shot.rstrip("\n").endswith(f"they are:  {' '.join(s.meta['oneshot_names'])}")
    assert 400 < s.meta["oneshot_tokens"] <= 500


def cwe_counts(listing: str) -> collections.Counter:
    items = re.split(r"(?:^| )\d+\. ", listing)[1:]
    nums = [int(x) for x in re.findall(r"(?:^| )(\d+)\. ", listing)]
    assert nums == list(range(1, len(items) + 1))  # numbered 1..N
    return collections.Counter(items)


@pytest.mark.parametrize("ctx,common,uncommon,shot", [(2048, 6, 1, (20, 3, 1)), (4096, 30, 3, (40, 10, 3))])
def test_cwe_counts(ctx, common, uncommon, shot, tok):
    s = generate("cwe", ctx, 0, 4, tok)
    cut = s.meta["oneshot_chars"]
    shot_text, task = s.context[:cut], s.context[cut:]
    listing = task.split("\n")[1]
    counts = cwe_counts(listing)
    assert len(s.answers) == 10
    assert all(counts[a] == common for a in s.answers)
    others = [w for w in counts if w not in s.answers]
    assert len(others) == s.meta["haystack_units"] - 10 and all(counts[w] == uncommon for w in others)
    pool = set(words.cwe_pool())
    assert set(counts) <= pool
    shot_listing = shot_text.split("\n")[1]
    shot_counts = cwe_counts(shot_listing)
    n_words, c, u = shot
    assert len(shot_counts) == n_words and not set(shot_counts) & set(counts)
    top = [w for w, k in shot_counts.items() if k == c]
    assert len(top) == 10 and all(shot_counts[w] == u for w in shot_counts if w not in top)
    answer = shot_text.split("\n")[2]
    assert answer.startswith("Question: What are the 10 most common words in the above list? Answer: The top 10 "
                             "words that appear most often in the list are: 1. ")
    assert sorted(cwe_counts(answer.split("are: ", 1)[1])) == sorted(top)


@pytest.mark.parametrize("ctx", [2048, 8192])
def test_fwe_answers_are_the_top_three(ctx, tok):
    s = generate("fwe", ctx, 0, 8, tok)
    text = s.context[len("Read the following coded text and track the frequency of each coded word. Find the "
                         "three most frequently appeared coded words. "):-1]
    counts = collections.Counter(text.split(" "))
    ranked = [w for w, _ in counts.most_common()]
    assert ranked[0] == "..."
    assert ranked[1:4] == list(s.answers)
    assert counts[ranked[3]] > counts[ranked[4]]
    assert all(re.fullmatch(r"[a-z]{6}", w) for w in ranked[1:])
    assert s.meta["vocab_size"] == (ctx - 50) // 50
    from engine.longctx.fwe import ZETA2
    n_words = s.meta["haystack_units"]
    assert [counts[w] for w in ranked[:5]] == [int(n_words * k ** -2.0 / ZETA2) for k in range(1, 6)]


# ---------------------------------------------------------------- needle and passkey

@needs_essays
def test_needle_depths(tok):
    prev = -1.0
    for index, depth in enumerate(NEEDLE_DEPTHS):
        s = generate("needle", 2048, index, 0, tok)
        assert s.meta["depth_percent"] == depth and s.metric == "rouge1" and s.stop_at_newline
        nd = templates.NEEDLE
        off = s.context.find(nd)
        assert s.context.count(nd) == 1 and off == s.meta["needle_char_offset"]
        assert s.context.startswith("<|im_start|> This is a very long story book: <book> ")
        assert s.context.endswith(" </book>.\n")
        assert s.question == " Based on the content of the book, Question: The best thing to do in San Francisco is: "
        assert s.answer_prefix == "\nAnswer:"
        start = len("<|im_start|> This is a very long story book: <book> ")
        end = len(s.context) - len(" </book>.\n")
        if depth == 0:
            assert off == start
        elif depth == 100:
            assert off + len(nd) == end
        else:
            assert s.context[:off].endswith(".")  # moved back to just after a '.' token
            at, hay = s.meta["needle_token_index"], s.meta["haystack_tokens"]
            assert int(hay * depth / 100) - 150 < at <= int(hay * depth / 100)
            assert n(tok, s.context[start:off]) == at  # WordTok decodes and re-encodes losslessly
            rel = 100 * (off - start) / (end - start - len(nd))  # the same in characters, roughly
            assert depth - 8 < rel <= depth + 3
        assert s.meta["needle_char_depth"] >= prev
        prev = s.meta["needle_char_depth"]
        # ReST-KV's cut: haystack + needle = L - 200 tokens
        assert s.meta["haystack_tokens"] + s.meta["needle_tokens"] == 2048 - 200
    again = generate("needle", 2048, 10, 0, tok)  # the next round: the same depth, another haystack
    first = generate("needle", 2048, 0, 0, tok)
    assert again.meta["depth_percent"] == 0 and again.meta["haystack_start_file"] == 1
    assert again.context != first.context


def test_passkey(tok):
    keys = set()
    for index in range(5):
        s = generate("passkey", 2048, index, 0, tok)
        key = int(s.answers[0])
        keys.add(key)
        assert 1 <= key <= 50000 and s.metric == "first_int" and s.max_new_tokens == 10
        lines = (s.context + s.question + s.answer_prefix).split("\n")
        assert len(lines) == 5
        assert lines[0] == templates.PASSKEY_TASK
        assert lines[2] == f"The pass key is {key}. Remember it. {key} is the pass key."
        assert lines[4] == "What is the pass key? The pass key is"
        garbage = " ".join([templates.NOISE_LINE] * 200)
        assert garbage.startswith(lines[1]) and garbage.startswith(lines[3])  # both cut from the start
        assert len(lines[1]) + len(lines[3]) == s.meta["haystack_units"]
        assert len(lines[1]) == s.meta["garbage_prefix_chars"]
    assert len(keys) == 5


# ---------------------------------------------------------------- the real tokenizer

def test_every_task_with_smollm2_tokenizer():
    from conftest import smollm2_or_skip

    if not _have_essays():
        pytest.skip("../shared/data/paul_graham_essays not found")
    import engine

    with engine.Model(smollm2_or_skip(), n_threads=1) as m:
        class Tok:
            def encode(self, text):
                return m.tokenize(text, add_special=False)

            def decode(self, ids):
                return m.detokenize(ids)

        tok = Tok()
        for task in TASKS:
            t0 = time.perf_counter()
            s = generate(task, 4096, 0, 42, tok, overhead_tokens=12)
            dt = time.perf_counter() - t0
            used = total(tok, s, 12)
            assert used <= 4096 and used == s.meta["n_tokens"]["total"], task
            assert all(a in s.context for a in s.answers)
            if task == "needle":
                assert used > 4096 - 200
            elif task != "fwe":
                units = s.meta["haystack_units"]
                assert measure(task, 4096, 0, 42, tok, units + 1, overhead_tokens=12) > 4096, task
            assert dt < 10, (task, dt)  # ~0.1-0.5 s unloaded
