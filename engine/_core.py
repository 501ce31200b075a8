"""Model and Session: Python objects that own the C handles (tier 2 over the _restkv_ffi core)."""

from __future__ import annotations

import os
import threading
import weakref
from typing import Iterable, Optional, Sequence

import numpy as np

from ._native import ffi, lib
from .errors import EngineError

_KV_TYPES = {"f16": lib.RK_TYPE_F16, "f32": lib.RK_TYPE_F32}
_DEVICES = {"cpu": lib.RK_DEVICE_CPU, "cuda": lib.RK_DEVICE_CUDA}
_LOGITS = {None: lib.RK_LOGITS_NONE, "none": lib.RK_LOGITS_NONE, "last": lib.RK_LOGITS_LAST, "all": lib.RK_LOGITS_ALL}


_BUSY = ("the session is in a call from another thread (a session runs one call at a time: give each "
         "thread its own session, model.session())")


def _check(status: int) -> None:
    if status != lib.RK_OK:
        msg = ffi.string(lib.rk_last_error()).decode("utf-8", "replace")
        raise EngineError(msg or ffi.string(lib.rk_status_str(status)).decode(), status=status)


def _token_array(ids: Iterable[int], n_vocab: int) -> np.ndarray:
    if isinstance(ids, np.ndarray):
        arr = ids
    else:
        try:
            arr = np.asarray(list(ids))
        except TypeError:
            raise EngineError(f"token ids must be a 1-D sequence of integers, got {type(ids).__name__}") from None
    if arr.ndim != 1:
        raise EngineError(f"token ids must be a 1-D sequence, got shape {arr.shape}")
    if arr.size and (not np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
        raise EngineError(f"token ids must be integers, got dtype {arr.dtype}")
    if arr.size and not np.can_cast(arr.dtype, np.int32):
        # ids beyond int32 would wrap around to valid-looking ids in the cast below
        i32 = np.iinfo(np.int32)
        wide = arr > i32.max if arr.dtype.kind == "u" else (arr < i32.min) | (arr > i32.max)
        if wide.any():
            i = int(np.argmax(wide))
            raise EngineError(f"token id {int(arr[i])} at index {i} is outside the vocabulary (0..{n_vocab - 1})")
    return np.ascontiguousarray(arr, dtype=np.int32)


def _check_int(name: str, v, lo: int) -> None:
    """v must be None or an int (not bool) in [lo, INT32_MAX]; the C structs hold int32_t."""
    if v is not None and (not isinstance(v, (int, np.integer)) or isinstance(v, bool) or not lo <= v <= 2**31 - 1):
        raise EngineError(f"{name} must be a positive integer below 2**31, got {v!r}")


def has_cuda() -> bool:
    """True if this build of the engine has a CUDA backend."""
    return bool(lib.rk_has_cuda())


def cpu_features() -> str:
    return ffi.string(lib.rk_cpu_features()).decode()


class Model:
    """Immutable weights of a GGUF Llama-family model.

    >>> with Model("model.gguf") as m:
    ...     for piece in m.generate("Hello", max_tokens=16):
    ...         print(piece, end="")
    """

    def __init__(self, path: str | os.PathLike, n_threads: Optional[int] = None, device: str = "cpu"):
        self.path = os.fspath(path)
        if not isinstance(device, str) or device not in _DEVICES:
            raise EngineError(f"unknown device {device!r} (expected one of {sorted(_DEVICES)})")
        _check_int("n_threads", n_threads, 1)
        params = ffi.new("rk_model_params *", lib.rk_model_default_params())
        params.n_threads = n_threads or 0
        params.device = _DEVICES[device]
        out = ffi.new("rk_model **")
        _check(lib.rk_model_load(out, self.path.encode(), params))
        self._ptr = ffi.gc(out[0], lib.rk_model_free)
        # held during each C call on the handle, so that close() in another thread waits for it
        # (the weights are read-only: threads only queue on this lock for the few short getters)
        self._lock = threading.Lock()
        self._sessions: "weakref.WeakSet[Session]" = weakref.WeakSet()
        self._tokenizer = None
        self.device = device

    # ---- lifetime ----
    def _call(self, fn, *args):
        """fn(handle, *args), the handle kept valid meanwhile (close() waits). The lock is taken by
        `with` on the lock itself, never in a generator or a Python __enter__: there a Ctrl-C landing
        just after the acquire would leave it held, and close() would then wait forever."""
        with self._lock:
            if self._ptr is None:
                raise EngineError("the model is closed")
            return fn(self._ptr, *args)

    _get = _call

    def _handle(self):
        """The raw C handle, without the guard (for tests that call the C API directly)."""
        if self._ptr is None:
            raise EngineError("the model is closed")
        return self._ptr

    def close(self) -> None:
        """Frees the weights now. Sessions of this model are closed first, each after the call it may
        be running in another thread has returned. (In C, a session keeps its model's weights alive
        by itself: rk_model_free before rk_session_free is safe.)"""
        for s in list(self._sessions):
            s.close()
        with self._lock:
            ptr, self._ptr = self._ptr, None
        if ptr is not None:
            ffi.release(ptr)

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- facts ----
    n_vocab = property(lambda self: int(self._get(lib.rk_model_n_vocab)))
    n_layers = property(lambda self: int(self._get(lib.rk_model_n_layers)))
    n_heads = property(lambda self: int(self._get(lib.rk_model_n_heads)))
    n_kv_heads = property(lambda self: int(self._get(lib.rk_model_n_kv_heads)))
    n_embd = property(lambda self: int(self._get(lib.rk_model_n_embd)))
    head_dim = property(lambda self: int(self._get(lib.rk_model_head_dim)))
    n_ctx_train = property(lambda self: int(self._get(lib.rk_model_n_ctx_train)))
    n_params = property(lambda self: int(self._get(lib.rk_model_n_params)))
    weight_bytes = property(lambda self: int(self._get(lib.rk_model_weight_bytes)))
    #: weights re-laid out at load for the AVX2 kernels (0 with the portable ones or RK_REPACK=0)
    repacked_bytes = property(lambda self: int(self._get(lib.rk_model_repacked_bytes)))
    desc = property(lambda self: ffi.string(self._get(lib.rk_model_desc)).decode())
    #: general.architecture ("llama", "qwen2", ...): rk_model_desc starts with it
    arch = property(lambda self: self.desc.split(",", 1)[0])

    @property
    def layer_windows(self) -> list[int]:
        """each layer's sliding window in positions (0 = a global layer)"""
        return [int(self._get(lib.rk_model_layer_window, il)) for il in range(self.n_layers)]

    def __repr__(self) -> str:
        return f"Model({self.path!r}: {self.desc})" if self._ptr is not None else f"Model({self.path!r}, closed)"

    # ---- tokenizer ----
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from .tokenizer import Tokenizer

            # from the metadata the C loader already parsed: no second read of the file
            self._tokenizer = Tokenizer.from_model(self)
        return self._tokenizer

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        return self.tokenizer.encode(text, add_special=add_special, parse_special=parse_special)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids))

    # ---- sessions and generation ----
    def session(self, n_ctx: Optional[int] = None, n_threads: Optional[int] = None, n_batch: int = 512,
                kv_type: str = "f16", eviction=None) -> "Session":
        """A new session (KV cache + scratch); `eviction`: an engine.Eviction or a dict of its fields."""
        return Session(self, n_ctx=n_ctx, n_threads=n_threads, n_batch=n_batch, kv_type=kv_type,
                       eviction=eviction)

    def generate(self, prompt: str, max_tokens: int = 128, temperature: float = 0.8, top_k: int = 40,
                 top_p: float = 0.95, seed: Optional[int] = None, stop: Optional[Sequence[str]] = None,
                 n_ctx: Optional[int] = None):
        """Streams generated text pieces; see engine.generate.generate for the parameters."""
        from .generate import generate

        return generate(self, prompt, max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                        seed=seed, stop=stop, n_ctx=n_ctx)


class Session:
    """One timeline over a model: its KV cache, scratch buffers and threads.

    A session runs one call at a time: a call made while another thread is inside one raises
    EngineError at once (nothing changes); give each thread its own session. close() waits for
    a call in flight in another thread to return before it frees anything."""

    def __init__(self, model: Model, n_ctx: Optional[int] = None, n_threads: Optional[int] = None,
                 n_batch: int = 512, kv_type: str = "f16", eviction=None):
        if not isinstance(kv_type, str) or kv_type not in _KV_TYPES:
            raise EngineError(f"unknown kv_type {kv_type!r} (expected one of {sorted(_KV_TYPES)})")
        for name, v in (("n_ctx", n_ctx), ("n_threads", n_threads), ("n_batch", n_batch)):
            _check_int(name, v, 1)
        params = ffi.new("rk_session_params *", lib.rk_session_default_params())
        params.n_ctx = n_ctx or 0
        params.n_threads = n_threads or 0
        params.n_batch = n_batch
        params.kv_type = _KV_TYPES[kv_type]
        out = ffi.new("rk_session **")
        _check(model._call(lambda mh: lib.rk_session_init(out, mh, params)))
        self._ptr = ffi.gc(out[0], lib.rk_session_free)
        self._lock = threading.Lock()
        self.model = model  # keeps the weights alive as long as the session
        model._sessions.add(self)  # model.close() closes it first (also when built as Session(model))
        self._n_vocab = model.n_vocab
        self.eviction = None
        if eviction is not None:
            self.set_eviction(eviction)

    def _call(self, fn, *args):
        """fn(handle, *args) for one call. A second thread is refused rather than queued (two
        timelines interleaved in one cache would be garbage even where they did not crash); two
        threads arriving at the same instant may instead run one after the other. The lock is taken
        by `with` on the lock itself (see Model._call: Ctrl-C cannot leave it held), and close()
        waits on it."""
        if self._lock.locked():
            raise EngineError(_BUSY)
        with self._lock:
            if self._ptr is None:
                raise EngineError("the session is closed")
            return fn(self._ptr, *args)

    _get = _call

    def _handle(self):
        """The raw C handle, without the guard (for tests that call the C API directly)."""
        if self._ptr is None:
            raise EngineError("the session is closed")
        return self._ptr

    def close(self) -> None:
        """Frees the KV cache and scratch now, after a call running in another thread returns."""
        with self._lock:
            ptr, self._ptr = self._ptr, None
        if ptr is not None:
            ffi.release(ptr)

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    n_past = property(lambda self: int(self._get(lib.rk_session_n_past)))
    n_ctx = property(lambda self: int(self._get(lib.rk_session_n_ctx)))
    n_threads = property(lambda self: int(self._get(lib.rk_session_n_threads)))
    kv_bytes_alloc = property(lambda self: int(self._get(lib.rk_session_kv_bytes_alloc)))
    kv_bytes_used = property(lambda self: int(self._get(lib.rk_session_kv_bytes_used)))
    #: the same for the global layers (evicted from) and the sliding-window layers (bounded rings)
    kv_bytes_alloc_global = property(lambda self: int(self._get(lib.rk_session_kv_bytes_alloc_of, lib.RK_LAYERS_GLOBAL)))
    kv_bytes_used_global = property(lambda self: int(self._get(lib.rk_session_kv_bytes_used_of, lib.RK_LAYERS_GLOBAL)))
    kv_bytes_alloc_window = property(lambda self: int(self._get(lib.rk_session_kv_bytes_alloc_of, lib.RK_LAYERS_WINDOW)))
    kv_bytes_used_window = property(lambda self: int(self._get(lib.rk_session_kv_bytes_used_of, lib.RK_LAYERS_WINDOW)))

    def eval(self, ids: Iterable[int], logits: Optional[str] = "last") -> Optional[np.ndarray]:
        """Appends tokens; returns logits of the last token ([n_vocab]), of all ([n, n_vocab]) or None."""
        if not (logits is None or isinstance(logits, str)) or logits not in _LOGITS:
            raise EngineError(f"logits must be 'last', 'all' or None, got {logits!r}")
        toks = _token_array(ids, self._n_vocab)
        mode = _LOGITS[logits]
        out = None
        if mode == lib.RK_LOGITS_LAST:
            out = np.empty(self._n_vocab, dtype=np.float32)
        elif mode == lib.RK_LOGITS_ALL:
            out = np.empty((len(toks), self._n_vocab), dtype=np.float32)
        buf = ffi.from_buffer("float[]", out) if out is not None else ffi.NULL
        _check(self._call(lib.rk_session_eval, ffi.from_buffer("int32_t[]", toks), len(toks), buf, mode))
        return out

    def logprobs(self, ids: Iterable[int], return_argmax: bool = False, score_first: bool = False):
        """Appends tokens; returns log p(ids[i+1] | ids[..i]) for i < len(ids)-1 (float32, n-1 values).

        score_first=True also scores ids[0] from the last token evaluated before (n values), so a
        long text can be scored piece by piece without losing or repeating a prediction."""
        toks = _token_array(ids, self._n_vocab)
        n = len(toks)
        m = n if score_first else max(n - 1, 0)
        out = np.empty(m, dtype=np.float32)
        am = np.empty(m, dtype=np.int32) if return_argmax else None
        fn = lib.rk_session_logprobs_next if score_first else lib.rk_session_logprobs
        _check(self._call(fn, ffi.from_buffer("int32_t[]", toks), n, ffi.from_buffer("float[]", out) if m else ffi.NULL,
                          ffi.from_buffer("int32_t[]", am) if am is not None and m else ffi.NULL))
        return (out, am) if return_argmax else out

    def reset(self) -> None:
        """Empties the KV cache (the eviction settings stay)."""
        _check(self._call(lib.rk_session_reset))

    # ---- KV eviction ----
    def set_eviction(self, eviction=None, **kwargs) -> "Eviction":
        """Sets the eviction policy: an Eviction, a dict, or keyword arguments (see engine.eviction)."""
        from .eviction import Eviction

        if eviction is None:
            eviction = Eviction.of(**kwargs)
        elif isinstance(eviction, dict):
            eviction = Eviction.of(**{**eviction, **kwargs})
        elif not isinstance(eviction, Eviction):
            raise EngineError(f"eviction must be an Eviction, a dict or None, got {type(eviction).__name__}")
        elif kwargs:
            raise EngineError("pass either an Eviction or keyword arguments, not both")
        _check(self._call(lib.rk_session_set_eviction, *eviction.to_c()))
        self.eviction = eviction
        return eviction

    def compress(self) -> None:
        """Prefix schedule: compresses every (layer, kv-head) buffer to the budget now."""
        _check(self._call(lib.rk_session_compress))

    def copy_state_from(self, src: "Session") -> None:
        """Takes src's evaluated state (KV cache, positions, the statistics this session's policy
        scores with); this session keeps its eviction settings. One prefill then serves several
        policies and budgets: prefill a source set to h2o (it gathers every statistic), then per
        configuration copy, compress and continue. Both on the same model, n_ctx and kv_type."""
        if not isinstance(src, Session):
            raise EngineError(f"copy_state_from needs a Session, got {type(src).__name__}")
        if src is self:
            raise EngineError("copy_state_from: source and destination are the same session")
        # both sessions held for the copy; a thread copying the other way round would wait for
        # this one rather than deadlock with it, since the locks are always taken in one order
        first, second = sorted((self, src), key=id)
        if first._lock.locked() or second._lock.locked():
            raise EngineError(_BUSY)
        with first._lock, second._lock:
            if self._ptr is None or src._ptr is None:
                raise EngineError("the session is closed")
            _check(lib.rk_session_copy_state(self._ptr, src._ptr))

    def kv_count(self, layer: int, kv_head: int) -> int:
        n = int(self._call(lib.rk_session_kv_count, layer, kv_head))
        if n < 0:
            raise EngineError(f"no KV buffer for layer {layer}, kv-head {kv_head}")
        return n

    def kv_positions(self, layer: int, kv_head: int) -> np.ndarray:
        """Original positions of the tokens one (layer, kv-head) buffer holds, in slot order."""
        def positions(h):
            n = int(lib.rk_session_kv_count(h, layer, kv_head))
            if n < 0:
                raise EngineError(f"no KV buffer for layer {layer}, kv-head {kv_head}")
            out = np.empty(n, dtype=np.int32)
            lib.rk_session_kv_positions(h, layer, kv_head, ffi.from_buffer("int32_t[]", out), n)
            return out

        return self._call(positions)

    next_pos = property(lambda self: int(self._get(lib.rk_session_next_pos)))
