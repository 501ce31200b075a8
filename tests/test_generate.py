"""Text generation (engine.generate / Model.generate) and the sampler.

Most tests use a tiny random model; "scripted" tests replace the sampler with a fixed
token sequence so that streaming, stop strings, EOS and UTF-8 handling are checked on
exactly the tokens we choose. SmolLM2 (when available) checks a real continuation.
"""

from __future__ import annotations

import inspect
import random

import numpy as np
import pytest

import engine.generate as G
from engine import EngineError, Model
from engine.generate import sample


@pytest.fixture(scope="module")
def model(tiny_gguf):
    # one thread: many short generations, and no spinning workers on a loaded machine
    with Model(tiny_gguf(), n_threads=1) as m:  # bpe vocab with clean_spaces (llama.cpp's "default" pre)
        yield m


@pytest.fixture(scope="module")
def spm_model(tiny_gguf):
    with Model(tiny_gguf(vocab="spm", seed=1), n_threads=1) as m:
        yield m


@pytest.fixture(scope="module")
def smol(smollm2):
    with Model(smollm2) as m:
        yield m


def ids(model, text):
    return model.tokenize(text, add_special=False)


class Script:
    """Stands in for engine.generate.sample: returns the given ids in order, records the calls."""

    def __init__(self, seq):
        self.seq = list(seq)
        self.calls = 0

    def __call__(self, logits, rng, *a, **k):
        t = self.seq[self.calls]  # IndexError if generation asks for more than scripted
        self.calls += 1
        return t


def scripted(monkeypatch, model, seq, prompt="a", **kw):
    script = Script(seq)
    monkeypatch.setattr(G, "sample", script)
    kw.setdefault("max_tokens", len(seq))
    pieces = list(model.generate(prompt, **kw))
    return pieces, script


class Recorder:
    """Wraps the real sampler and records the ids it returns."""

    def __init__(self):
        self.ids = []

    def __call__(self, *a, **k):
        t = sample(*a, **k)
        self.ids.append(t)
        return t


def argmax_loop(model, prompt, max_tokens):
    """Greedy decoding by hand over Session.eval; returns the generated ids."""
    prompt_ids = model.tokenize(prompt, add_special=True, parse_special=True)
    end = set(model.tokenizer.eog_ids)
    out = []
    with model.session(n_ctx=len(prompt_ids) + max_tokens) as s:
        logits = s.eval(prompt_ids)
        for _ in range(max_tokens):
            t = int(np.argmax(logits))
            if t in end:
                break
            out.append(t)
            if len(out) < max_tokens:
                logits = s.eval([t])
    return out


# ---------------------------------------------------------------- basics

def test_generate_is_a_generator_of_str(model):
    g = model.generate("hello", max_tokens=5, temperature=0)
    assert inspect.isgenerator(g)
    pieces = list(g)
    assert pieces and all(isinstance(p, str) and p for p in pieces)


def test_greedy_matches_argmax_loop(model):
    for prompt, n in (("hello world", 12), ("the cat", 20)):
        want = model.detokenize(argmax_loop(model, prompt, n))
        got = "".join(model.generate(prompt, max_tokens=n, temperature=0))
        assert got == want
        assert "".join(model.generate(prompt, max_tokens=n, temperature=0, seed=123)) == want


def test_greedy_ignores_seed_and_is_deterministic(model):
    runs = {"".join(model.generate("abc", max_tokens=10, temperature=0, seed=s)) for s in (None, 1, 2)}
    assert len(runs) == 1


def test_top_k_one_is_greedy(model):
    greedy = "".join(model.generate("abc", max_tokens=10, temperature=0))
    assert "".join(model.generate("abc", max_tokens=10, temperature=1.5, top_k=1, seed=5)) == greedy


def test_seed_reproducible_and_seeds_differ(model):
    kw = dict(max_tokens=16, temperature=1.0, top_k=0, top_p=1.0)
    a = "".join(model.generate("once", seed=7, **kw))
    b = "".join(model.generate("once", seed=7, **kw))
    assert a == b
    others = {"".join(model.generate("once", seed=s, **kw)) for s in range(8, 13)}
    assert len(others | {a}) >= 3


def test_max_tokens_zero_yields_nothing(model):
    assert list(model.generate("hello", max_tokens=0)) == []
    assert list(model.generate("hello", max_tokens=0, stop=["x"])) == []


def test_max_tokens_bounds_tokens(monkeypatch, model):
    rec = Recorder()
    monkeypatch.setattr(G, "sample", rec)
    text = "".join(model.generate("hello", max_tokens=5, temperature=1.0, seed=0))
    assert len(rec.ids) <= 5
    end = model.tokenizer.eog_ids
    gen = [t for t in rec.ids if t not in end]
    assert text == model.detokenize(gen)


@pytest.mark.parametrize("kw,msg", [
    (dict(max_tokens=-1), "max_tokens"),
    (dict(max_tokens=2.5), "max_tokens"),
    (dict(temperature=-0.1), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=-0.5), "top_p"),
    (dict(top_p=1.01), "top_p"),
    (dict(top_p=float("nan")), "top_p"),
    (dict(top_k=-1), "top_k"),
    (dict(top_k=2.5), "top_k"),
])
def test_bad_parameters(model, kw, msg):
    with pytest.raises(EngineError, match=msg):
        list(model.generate("hello", **kw))
    with pytest.raises(EngineError, match=msg):
        model.generate("hello", **kw)  # checked at the call, before the first piece


def test_empty_prompt(model):
    # the tiny bpe vocabulary adds no BOS: nothing to condition on
    with pytest.raises(EngineError, match="empty"):
        list(model.generate("", max_tokens=3))


def test_prompt_longer_than_context(model):
    with pytest.raises(EngineError, match="context"):
        list(model.generate("a b c d e f g h", max_tokens=3, n_ctx=2))


def test_closing_model_mid_stream(tiny_gguf):
    m = Model(tiny_gguf())
    g = m.generate("hello", max_tokens=50, temperature=1.0, top_k=0, seed=1, stop=["zzzzzz"])
    next(g, None)
    m.close()
    with pytest.raises(EngineError, match="closed"):
        list(g)


# ---------------------------------------------------------------- stop strings (scripted)

def test_stop_string_cuts_before_it(monkeypatch, model):
    seq = ids(model, "hello world STOP and more")
    pieces, script = scripted(monkeypatch, model, seq, stop=["STOP"])
    text = "".join(pieces)
    assert text == "hello world "
    assert all("STOP" not in p and "S" not in p for p in pieces)
    assert script.calls < len(seq)  # generation ended at the stop string


def test_stop_string_spanning_pieces(monkeypatch, model):
    seq = ids(model, "one two three four")
    pieces_of = [model.detokenize([t]) for t in seq]
    stop = "o thr"
    assert not any(stop in p for p in pieces_of)  # spans several tokens
    pieces, _ = scripted(monkeypatch, model, seq, stop=[stop])
    assert "".join(pieces) == "one tw"
    assert all(stop not in p for p in pieces)


def test_stop_string_split_across_two_tokens(monkeypatch, model):
    seq = ids(model, "ab") + ids(model, "cd") + ids(model, "ef")
    pieces, _ = scripted(monkeypatch, model, seq, stop=["bc"])
    assert "".join(pieces) == "a"


def test_earliest_of_several_stops_wins(monkeypatch, model):
    seq = ids(model, "xx END1 yy END2 zz")
    pieces, _ = scripted(monkeypatch, model, seq, stop=["END2", "yy", "never"])
    assert "".join(pieces) == "xx END1 "


def test_stop_at_very_start(monkeypatch, model):
    pieces, _ = scripted(monkeypatch, model, ids(model, "STOP here"), stop=["STOP"])
    assert pieces == []


def test_stop_as_single_string(monkeypatch, model):
    # a str is one stop string, not a list of its characters (" " would cut at "the")
    pieces, _ = scripted(monkeypatch, model, ids(model, "the red dog"), stop="d d")
    assert "".join(pieces) == "the re"


def test_stop_not_found_emits_everything(monkeypatch, model):
    seq = ids(model, "no stop in here")
    pieces, _ = scripted(monkeypatch, model, seq, stop=["STOP", ""])
    assert "".join(pieces) == model.detokenize(seq)


def test_stop_on_real_generation(model):
    full = "".join(model.generate("hi", max_tokens=24, temperature=0))
    stop = full[10:12]
    want = full[:full.find(stop)]
    assert "".join(model.generate("hi", max_tokens=24, temperature=0, stop=[stop])) == want


# ---------------------------------------------------------------- end of generation

def test_stops_at_eos(monkeypatch, model):
    eos = model.tokenizer.eos_id
    seq = ids(model, "abc") + [eos]  # anything after EOS would raise IndexError in Script
    pieces, script = scripted(monkeypatch, model, seq, max_tokens=50)
    assert "".join(pieces) == "abc"
    assert script.calls == len(seq)


def test_stops_at_every_end_of_generation_token(monkeypatch, smol):
    # SmolLM2 ends generation at <|im_end|> (eos), <|endoftext|> (eot) and <reponame> (fim_rep)
    eog = sorted(smol.tokenizer.eog_ids)
    assert len(eog) >= 2
    for e in eog:
        seq = ids(smol, " Paris") + [e]
        pieces, _ = scripted(monkeypatch, smol, seq, max_tokens=20)
        assert "".join(pieces) == " Paris"


# ---------------------------------------------------------------- UTF-8 and streaming invariants

def test_multibyte_never_broken(monkeypatch, model):
    text = "é€😀 naïve 日本"
    seq = ids(model, text)
    assert len(seq) > len(text)  # the tiny vocabulary spells these out byte by byte
    pieces, _ = scripted(monkeypatch, model, seq)
    assert "".join(pieces) == text
    for p in pieces:
        assert "\ufffd" not in p
        p.encode("utf-8")


def test_incomplete_utf8_at_the_end(monkeypatch, model):
    seq = ids(model, "ok €")[:-1]  # the last byte of € is missing
    pieces, _ = scripted(monkeypatch, model, seq)
    assert "".join(pieces) == model.detokenize(seq)
    assert "".join(pieces).startswith("ok ")


def test_clean_spaces_streaming(monkeypatch, model):
    # the detokenizer of this vocabulary removes " " before ".", "," and "'s": text already
    # streamed must never be taken back
    assert model.tokenizer.clean_spaces
    for text in ("a , b", "it 's here", "x ' y", "done .", "what ?", "we 're", "x '' y ,"):
        seq = [t for w in text for t in ids(model, w)]  # one token per character
        pieces, _ = scripted(monkeypatch, model, seq)
        assert "".join(pieces) == model.detokenize(seq), text


@pytest.mark.parametrize("which", ["model", "spm_model"])
def test_streaming_invariant_fuzz(monkeypatch, request, which):
    """Random token sequences: the pieces always join to detokenize(all ids)."""
    m = request.getfixturevalue(which)
    rnd = random.Random(1234)
    atoms = [ids(m, s) for s in (" ", "  ", ".", ",", "'", "''", "s", "re", "ve", "m", "t", "x", "!", "?",
                                 " '", "é", "€", "😀", "日", "ab", "\n")]
    atoms = [a for a in atoms if a]
    end = m.tokenizer.eog_ids
    for _ in range(30):
        seq = [t for _ in range(rnd.randint(1, 10)) for t in rnd.choice(atoms) if t not in end]
        if rnd.random() < 0.3:  # cut inside a multi-byte character
            seq = seq[:rnd.randint(1, len(seq))]
        pieces, _ = scripted(monkeypatch, m, seq)
        assert "".join(pieces) == m.detokenize(seq), seq
        assert all(pieces)


def test_sampled_generation_joins_to_detokenize(monkeypatch, model):
    rec = Recorder()
    monkeypatch.setattr(G, "sample", rec)
    for seed in range(5):
        rec.ids.clear()
        pieces = list(model.generate("x", max_tokens=20, temperature=2.0, top_k=0, top_p=1.0, seed=seed))
        gen = [t for t in rec.ids if t not in model.tokenizer.eog_ids]
        assert "".join(pieces) == model.detokenize(gen)


# ---------------------------------------------------------------- SmolLM2

def test_smollm2_paris(smol):
    text = "".join(smol.generate("The capital of France is", max_tokens=8, temperature=0))
    assert "Paris" in text


def test_smollm2_greedy_matches_argmax_loop(smol):
    want = smol.detokenize(argmax_loop(smol, "The capital of France is", 6))
    assert "".join(smol.generate("The capital of France is", max_tokens=6, temperature=0)) == want


def test_smollm2_utf8_stream(monkeypatch, smol):
    rec = Recorder()
    monkeypatch.setattr(G, "sample", rec)
    pieces = list(smol.generate("Emoji: 😀🎉 café, naïve, 日本語:", max_tokens=16, temperature=1.0, seed=3))
    gen = [t for t in rec.ids if t not in smol.tokenizer.eog_ids]
    full = smol.detokenize(gen)
    assert "".join(pieces) == full
    # only the very end may hold an incomplete character
    for p in pieces[:-1]:
        assert "\ufffd" not in p or "\ufffd" in full[:-1]


def test_smollm2_stop(smol):
    full = "".join(smol.generate("The capital of France is", max_tokens=8, temperature=0))
    assert "Paris" in full
    text = "".join(smol.generate("The capital of France is", max_tokens=8, temperature=0, stop=["ris"]))
    assert text == full[:full.find("ris")] and text.endswith("Pa")


# ---------------------------------------------------------------- sample()

def rng(seed=0):
    return np.random.default_rng(seed)


def test_sample_greedy_cases():
    r = np.random.default_rng(0)
    for _ in range(50):
        logits = r.standard_normal(100).astype(np.float32)
        best = int(np.argmax(logits))
        assert sample(logits, rng(), temperature=0) == best
        assert sample(logits, rng(), temperature=-1) == best
        assert sample(logits, rng(1), temperature=1.0, top_k=1) == best
        assert sample(logits, rng(2), temperature=5.0, top_k=1, top_p=1.0) == best
        assert sample(logits, rng(3), temperature=1.0, top_k=0, top_p=1e-9) == best
        assert sample(logits, rng(4), temperature=100.0, top_k=50, top_p=1e-6) == best


def test_sample_returns_int():
    t = sample(np.array([0.0, 1.0, 0.5], dtype=np.float32), rng(), temperature=1.0)
    assert type(t) is int and 0 <= t < 3


def freqs(logits, n=6000, **kw):
    r = rng(42)
    counts = np.bincount([sample(logits, r, **kw) for _ in range(n)], minlength=len(logits))
    return counts / n


def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_sample_distribution_follows_temperature(temperature):
    logits = np.array([0.0, 1.0, 2.0, 0.5], dtype=np.float32)
    got = freqs(logits, temperature=temperature, top_k=0, top_p=1.0)
    want = softmax(logits.astype(np.float64) / temperature)
    assert np.abs(got - want).max() < 0.03, (got, want)


def test_sample_lower_temperature_is_sharper():
    logits = np.array([0.0, 1.0, 2.0], dtype=np.float32)
    cold = freqs(logits, n=3000, temperature=0.3, top_k=0, top_p=1.0)[2]
    warm = freqs(logits, n=3000, temperature=3.0, top_k=0, top_p=1.0)[2]
    assert cold > 0.9 and warm < 0.6


def test_sample_top_k_excludes_the_rest():
    logits = np.array([3.0, 2.9, 2.8, 2.7, -1.0, -2.0], dtype=np.float32)
    got = freqs(logits, n=3000, temperature=5.0, top_k=3, top_p=1.0)
    assert got[3:].sum() == 0 and (got[:3] > 0.2).all()


def test_sample_top_p_nucleus():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    got = freqs(logits, n=4000, temperature=1.0, top_k=0, top_p=0.6)  # keeps 0.5 + 0.3
    assert got[2:].sum() == 0
    assert abs(got[0] - 0.5 / 0.8) < 0.03
    got = freqs(logits, n=4000, temperature=1.0, top_k=0, top_p=0.9)  # keeps the first three
    assert got[3] == 0 and got[2] > 0.1


def test_sample_same_seed_same_choice():
    logits = np.random.default_rng(3).standard_normal(500).astype(np.float32)
    a = [sample(logits, r, temperature=1.0) for r in [rng(9)] for _ in range(20)]
    b = [sample(logits, r, temperature=1.0) for r in [rng(9)] for _ in range(20)]
    assert a == b
