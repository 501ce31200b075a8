"""Word lists of the PyPI package `wonderwords` (the lists RULER draws keys and cwe words from).

Read from the package's bundled files with importlib.resources (RULER calls the package's private
`_get_words_from_text_file`); each list's sha256 goes into the samples' metadata, so a different
wonderwords release shows up in the output.
"""

from __future__ import annotations

import functools
import hashlib
from importlib import resources

FILES = ("nounlist.txt", "adjectivelist.txt", "verblist.txt")


@functools.lru_cache(maxsize=None)
def _raw(name: str) -> str:
    try:
        return resources.files("wonderwords").joinpath("assets", name).read_text(encoding="utf-8")
    except ModuleNotFoundError as e:  # a declared dependency, but say what to install
        raise ModuleNotFoundError("the long-context tasks need the word lists of `wonderwords` "
                                  "(pip install wonderwords)") from e


@functools.lru_cache(maxsize=None)
def word_list(name: str) -> tuple:
    """The words of one file, as RULER reads them: one per line, trailing whitespace removed."""
    return tuple(line.rstrip() for line in _raw(name).splitlines(True) if line.strip())


@functools.lru_cache(maxsize=None)
def sha256s() -> dict:
    return {name: hashlib.sha256(_raw(name).encode("utf-8")).hexdigest() for name in FILES}


@functools.lru_cache(maxsize=None)
def nouns() -> tuple:
    # deduplicated and sorted, so that a uniform choice of (adjective, noun) is uniform over RULER's
    # sorted(set(adj-noun)) pairs (adjectivelist.txt holds two words twice)
    return tuple(sorted(set(word_list("nounlist.txt"))))


@functools.lru_cache(maxsize=None)
def adjectives() -> tuple:
    return tuple(sorted(set(word_list("adjectivelist.txt"))))


@functools.lru_cache(maxsize=None)
def cwe_pool() -> tuple:
    """cwe's words: nouns + adjectives + verbs, deduplicated and sorted (RULER then shuffles them)."""
    return tuple(sorted(set(word_list("nounlist.txt") + word_list("adjectivelist.txt")
                            + word_list("verblist.txt"))))


def adj_noun(r) -> str:
    """A RULER `words` key/value: 'adjective-noun' (about 6.2M pairs, never materialised)."""
    return f"{r.choice(adjectives())}-{r.choice(nouns())}"
