"""Sampling profiles of a stack's serving processes with py-spy, while a block of load runs.

``profiled(pids, out, tag)`` starts ``py-spy record`` on the ingress replica and the engine
replica's Python side (found by ``loadtest.cpu_usage``'s groups), samples only threads that hold
the GIL (the Python CPU, not threads waiting in C), and afterwards writes per process: the raw
collapsed stacks (``*.txt``, for flamegraph.pl or speedscope) and a summary
(``*-top.md``): the functions with the most samples of their own, and each library's share of
the samples (this project's ``launch/`` and ``engine/`` against Ray's, vLLM's and the web
stack's), a sample counting for the library of its innermost frame outside the standard
library: middleware of ours that wraps a request does not claim the time of what it calls.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator

from .cpu_usage import read_counters

PROFILED_GROUPS = {"ingress replica": "ingress", "engine replica (Python)": "engine-replica"}
RATE_HZ = 250
# A frame reads "function (path/to/file.py:line)", the path relative to its sys.path entry; this
# project's modules show by their path inside the package, or by file name alone (Ray's workers
# import them from the working dir).
ROOT = Path(__file__).resolve().parent.parent
OURS = ("(launch/", "(engine/") + tuple(
    f"({name}:" for pkg in ("launch", "engine") for p in (ROOT / pkg).rglob("*.py")
    if p.name != "__init__.py" for name in {p.name, p.relative_to(ROOT / pkg).as_posix()})
LIBRARIES = {"ours (launch/, engine/)": OURS, "Ray Serve": ("(ray/serve/",),
             "Ray Serve LLM": ("(ray/llm/",), "Ray core": ("(ray/_private/", "(ray/_raylet"),
             "vLLM": ("(vllm/",), "FastAPI/Starlette": ("(fastapi/", "(starlette/"),
             "pydantic": ("(pydantic",), "logging": ("(logging/",)}


def py_spy() -> str:
    exe = Path(sys.executable).parent / "py-spy"
    found = str(exe) if exe.exists() else shutil.which("py-spy")
    if not found:
        raise RuntimeError("py-spy is not installed (it comes with the loadtest extra: "
                           "make install)")
    return found


@contextlib.contextmanager
def profiled(pids: Callable[[], list[int]], out: Path, tag: str) -> Iterator[None]:
    """Profiles of the serving processes among ``pids()`` while the block runs."""
    out.mkdir(parents=True, exist_ok=True)
    targets = {PROFILED_GROUPS[g]: pid for pid, (g, _) in read_counters(pids()).items()
               if g in PROFILED_GROUPS}
    procs = {}
    for name, pid in targets.items():
        raw = out / f"{tag}-{name}.txt"
        procs[name] = (subprocess.Popen(
            [py_spy(), "record", "--pid", str(pid), "--rate", str(RATE_HZ), "--gil",
             "--nonblocking", "--format", "raw", "--output", str(raw)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE), raw)
    try:
        yield
    finally:
        for name, (proc, raw) in procs.items():
            proc.send_signal(2)  # py-spy writes its output on SIGINT
            try:
                _, err = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                continue
            if raw.exists():
                (out / f"{tag}-{name}-top.md").write_text(summarize(raw, f"{tag} {name}"))
            else:
                print(f"  py-spy found nothing for {name}: {err.decode()[-300:]}", flush=True)


def owner(frames: list[str]) -> str:
    """The library a sample's CPU belongs to: that of its innermost frame from a known library
    (standard-library frames below it count for their caller), else "other"."""
    for f in reversed(frames):
        for lib, marks in LIBRARIES.items():
            if any(m in f for m in marks):
                return lib
    return "other"


def shares(raw: Path) -> tuple[int, Counter, Counter]:
    """(samples, samples per leaf function, samples per owning library)."""
    total, leaf, libs = 0, Counter(), Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        count = int(n)
        total += count
        frames = stack.split(";")
        leaf[frames[-1]] += count
        libs[owner(frames)] += count
    return total, leaf, libs


def summarize(raw: Path, title: str, top: int = 15) -> str:
    total, leaf, libs = shares(raw)
    if not total:
        return f"# {title}\n\nno samples\n"
    lines = [f"# {title}", "", f"{total} samples at {RATE_HZ} Hz of threads holding the GIL.", "",
             "| code | share of samples (its own, standard-library callees included) |",
             "|---|---|"]
    lines += [f"| {lib} | {libs[lib] / total:.1%} |" for lib in (*LIBRARIES, "other")]
    lines += ["", "| function (own samples) | share |", "|---|---|"]
    lines += [f"| `{fn}` | {n / total:.1%} |" for fn, n in leaf.most_common(top)]
    return "\n".join(lines) + "\n"
