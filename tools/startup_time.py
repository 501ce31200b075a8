"""Start-up time: from `import engine` to the first generated token, phase by phase.

    python tools/startup_time.py --gguf models/SmolLM2-135M-Instruct.Q4_1.gguf [--runs 5] [--json OUT]

Each run is a fresh interpreter (`python -c ...`), so imports, the model load and the
tokenizer build are paid again every time, as a user starting a script or `engine.chat` pays
them. Two conditions, medians over --runs:

- cold-ish: the GGUF is dropped from the page cache first (posix_fadvise DONTNEED; Python's
  own files stay cached), so the model is read from disk;
- warm: the GGUF is in the page cache (it was just read).

Phases (seconds, measured inside the child with time.perf_counter):
  import     `import engine`
  model      `engine.Model(path, n_threads=T)`
  tokenizer  `model.tokenizer` (building the tokenizer from the GGUF vocabulary)
  tokenize   the first `model.tokenize(prompt)` (pre-tokenizer tables, regexes)
  first      a session, `eval(ids)` of the prompt and the argmax: the first token
  total      import + model + tokenizer + tokenize + first
  chat       (--chat, a separate child) `import engine` .. `Chat(model, ...)` and
             `chat.turn("Hello!", max_tokens=1)`: chat start-up to its first generated token
  process    wall time of the whole child process, interpreter start and exit included
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import engine
t1 = time.perf_counter()
m = engine.Model(sys.argv[1], n_threads=int(sys.argv[2]))
t2 = time.perf_counter()
tok = m.tokenizer
t3 = time.perf_counter()
ids = m.tokenize(sys.argv[3])
t4 = time.perf_counter()
s = m.session(n_ctx=512)
first = int(s.eval(ids).argmax())
t5 = time.perf_counter()
print(json.dumps(dict(import_=t1 - t0, model=t2 - t1, tokenizer=t3 - t2, tokenize=t4 - t3, first=t5 - t4,
                      total=t5 - t0, token=first, n_prompt=len(ids))))
"""

_CHILD_CHAT = r"""
import json, sys, time
t0 = time.perf_counter()
import engine
from engine.chat import Chat
m = engine.Model(sys.argv[1], n_threads=int(sys.argv[2]))
chat = Chat(m, budget=256, policy="restkv", seed=0)
t1 = time.perf_counter()
turn = chat.turn("Hello!", max_tokens=1)
t2 = time.perf_counter()
print(json.dumps(dict(chat=t2 - t0, chat_ready=t1 - t0)))
"""

PHASES = ("import_", "model", "tokenizer", "tokenize", "first", "total")


def drop_from_page_cache(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def warm_page_cache(path: str) -> None:
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def run_child(code: str, args) -> dict:
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    wall = time.perf_counter() - t
    if out.returncode != 0:
        raise SystemExit(f"child failed:\n{out.stderr}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["process"] = wall
    return res


def measure(gguf: str, runs: int, threads: int, prompt: str, cold: bool, chat: bool) -> dict:
    rows, chat_rows = [], []
    for _ in range(runs):
        if cold:
            drop_from_page_cache(gguf)
        else:
            warm_page_cache(gguf)
        rows.append(run_child(_CHILD, [gguf, str(threads), prompt]))
        if chat:
            if cold:
                drop_from_page_cache(gguf)
            chat_rows.append(run_child(_CHILD_CHAT, [gguf, str(threads)]))
    med = {k: statistics.median(r[k] for r in rows) for k in (*PHASES, "process")}
    res = {"median": med, "runs": rows, "token": rows[0]["token"], "n_prompt": rows[0]["n_prompt"]}
    if chat:
        res["chat_median"] = {k: statistics.median(r[k] for r in chat_rows) for k in ("chat", "chat_ready", "process")}
        res["chat_runs"] = chat_rows
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", default="Hello")
    ap.add_argument("--no-chat", dest="chat", action="store_false", help="skip the chat start-up measurement")
    ap.add_argument("--json", help="write every run and the medians here")
    args = ap.parse_args(argv)
    if not os.path.isfile(args.gguf):
        ap.error(f"no such file: {args.gguf}")
    out = {"gguf": args.gguf, "threads": args.threads, "prompt": args.prompt, "python": sys.version.split()[0]}
    for cond in ("cold", "warm"):
        r = measure(args.gguf, args.runs, args.threads, args.prompt, cond == "cold", args.chat)
        out[cond] = r
        m = r["median"]
        line = " ".join(f"{k.rstrip('_')} {m[k]:.3f}" for k in PHASES)
        print(f"{cond:5s} (median of {args.runs}): {line} | process {m['process']:.3f} s", flush=True)
        if args.chat:
            c = r["chat_median"]
            print(f"{cond:5s} chat: to first token {c['chat']:.3f} s (Chat ready {c['chat_ready']:.3f} s) "
                  f"| process {c['process']:.3f} s", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
