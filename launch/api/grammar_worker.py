"""The process that builds decoding grammars for the front door's compile budget.

``python -m launch.api.grammar_worker <tokenizer dir> <vocab size>``: loads the served tokenizer
into xgrammar (the engine's structured-output backend) once, prints ``ready``, then takes one
JSON line per job, ``{"id", "kind", "text", "compact", "wall_s"}``, and answers each with
``{"id", "cpu_s"}``, ``{"id", "error"}`` or ``{"id", "ended": true}``, in the order they end.

Each build runs in a child forked for it: xgrammar's compile cannot be interrupted, so a build
still running at ``wall_s`` is ended by killing its child, and the worker, with the tokenizer
loaded, goes on serving the builds beside it without a restart.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
import time


def compile_one(compiler, kind: str, text: str, compact: bool) -> None:
    """What the engine's xgrammar backend does with the same request, with its settings."""
    if kind == "json":
        compiler.compile_json_schema(text, any_whitespace=not compact,
                                     separators=(",", ":") if compact else None)
    elif kind == "regex":
        compiler.compile_regex(text)
    elif kind == "grammar":
        compiler.compile_grammar(text)
    elif kind == "structural_tag":
        compiler.compile_structural_tag(text)
    else:
        raise ValueError(f"unknown kind {kind!r}")


def _build(compiler, job: dict, out_fd: int) -> None:
    """In the forked child: build, write the reply, exit without Python's cleanup."""
    start = time.process_time()
    try:
        compile_one(compiler, job["kind"], job["text"], job["compact"])
        reply = {"cpu_s": time.process_time() - start}
    except Exception as err:  # xgrammar raises RuntimeError for any bad input: the input's
        reply = {"error": str(err)}
    os.write(out_fd, json.dumps(reply).encode())
    os._exit(0)


def main(argv: list[str]) -> int:
    import xgrammar
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(argv[0])
    info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=int(argv[1]))
    # One thread and no cache: the CPU time measured is one build's, as the engine's first.
    compiler = xgrammar.GrammarCompiler(info, max_threads=1, cache_enabled=False)
    print("ready", flush=True)
    running: dict[int, dict] = {}  # read end of a child's pipe -> its job, pid, deadline, bytes
    pending = b""
    while True:
        now = time.monotonic()
        wait = max(0.0, min(j["deadline"] for j in running.values()) - now) if running else None
        readable = select.select([0, *running], [], [], wait)[0]
        for fd in readable:
            if fd != 0:
                job = running[fd]
                chunk = os.read(fd, 1 << 16)
                job["out"] += chunk
                if not chunk:  # the child has written its reply and exited
                    _finish(fd, running, json.loads(job["out"] or b'{"error": "no reply"}'))
                continue
            chunk = os.read(0, 1 << 16)
            if not chunk:  # the replica is gone
                for fd in list(running):
                    os.kill(running[fd]["pid"], signal.SIGKILL)
                return 0
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                job = json.loads(line)
                read_fd, write_fd = os.pipe()
                pid = os.fork()
                if pid == 0:
                    os.close(read_fd)
                    _build(compiler, job, write_fd)
                os.close(write_fd)
                running[read_fd] = {"id": job["id"], "pid": pid, "out": b"",
                                    "deadline": time.monotonic() + job["wall_s"]}
        now = time.monotonic()
        for fd in [fd for fd, j in running.items() if j["deadline"] <= now]:
            os.kill(running[fd]["pid"], signal.SIGKILL)
            _finish(fd, running, {"ended": True})


def _finish(fd: int, running: dict, reply: dict) -> None:
    job = running.pop(fd)
    os.close(fd)
    os.waitpid(job["pid"], 0)
    sys.stdout.write(json.dumps({"id": job["id"], **reply}) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
