"""A request's JSON schemas, regexes and grammars, bounded before the engine compiles them.

The engine builds a decoding grammar from each (xgrammar, with the served tokenizer) before it
schedules the request, and its few compile threads are shared by every structured request on
the replica: one large or pathological schema holds up all of them. Size and shape limits
(``limits.schemas``) refuse the obvious at once; what they cannot see (a regex of a few dozen
characters with nested repetition takes seconds) is measured: the front door builds the same grammar in a
worker process (``launch.api.grammar_worker``, each build in a child of its own, side by side) and
refuses a request whose grammars take more CPU than ``compile_budget_s``, ending the build at
twice the budget plus a second. Results are kept by content hash, so a schema sent with every
request (a fixed tool set) is built once here, and a request whose schemas are all known waits
for nothing.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import select
import subprocess
import sys
import threading
from collections import OrderedDict
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from engine.config import SchemaLimits

from .rejections import RequestRejected, bad_request

READY_TIMEOUT_S = 180  # the worker's start (tokenizer load) is not the request's budget
KEPT = 512  # results kept by content hash


def items_of(body: Any) -> list[tuple[str, Any, str]]:
    """(kind, spec, param) for everything of the request the engine builds a grammar from:
    kind is json (spec a schema), regex, grammar, structural_tag (spec text) or choice (a
    list, counted and sized only: the engine turns it into a plain alternation)."""
    out: list[tuple[str, Any, str]] = []
    for i, tool in enumerate(getattr(body, "tools", None) or []):
        if tool.function.parameters is not None:
            out.append(("json", tool.function.parameters, f"tools[{i}].function.parameters"))
    fmt = getattr(body, "response_format", None)
    kind = getattr(fmt, "type", None)
    if kind == "json_schema" and fmt.json_schema is not None and \
            fmt.json_schema.json_schema is not None:
        out.append(("json", fmt.json_schema.json_schema, "response_format.json_schema.schema"))
    elif kind == "structural_tag":
        out.append(("structural_tag", json.dumps(fmt.model_dump(by_alias=True)),
                    "response_format"))
    so = getattr(body, "structured_outputs", None)
    if so is not None:
        for field in ("json", "regex", "grammar", "structural_tag", "choice"):
            spec = getattr(so, field, None)
            if spec is None:
                continue
            if field == "json" and isinstance(spec, str):
                try:
                    spec = json.loads(spec)
                except ValueError:
                    raise bad_request("structured_outputs.json is not JSON",
                                      "structured_outputs.json", "schema") from None
            out.append((field, spec, f"structured_outputs.{field}"))
    return out


def _text(kind: str, spec: Any) -> str:
    if kind == "json":
        return json.dumps(spec, separators=(",", ":"), ensure_ascii=False)
    if kind == "choice":
        return json.dumps(spec, ensure_ascii=False)
    return spec if isinstance(spec, str) else json.dumps(spec)


def check_shape(items: list[tuple[str, Any, str]], lim: SchemaLimits) -> None:
    """Bytes of all items together, enum members of all together, each document's nesting and
    each regex's length; a 400 naming the item where a limit is crossed."""
    total = members = 0
    for kind, spec, param in items:
        total += len(_text(kind, spec).encode())
        if total > lim.max_bytes:
            raise bad_request(f"the request's schemas, regexes and grammars are {total} bytes "
                              f"together by this one; the limit is {lim.max_bytes} "
                              "(limits.schemas.max_bytes)", param, "schema_size")
        if kind == "regex":
            _pattern(spec, param, lim)
        if kind == "choice":
            members += len(spec)
        elif kind == "json":
            members += _check_document(spec, param, lim)
        if members > lim.max_enum_members:
            counted = f"{members} choices" if kind == "choice" else (
                f"the request's schemas have {members} enum and const members together by "
                "this one")
            raise bad_request(f"{counted}; the limit is {lim.max_enum_members} "
                              "(limits.schemas.max_enum_members)", param, "schema_shape")


def _check_document(schema: Any, param: str, lim: SchemaLimits) -> int:
    """Nesting and regex lengths of one schema document; its enum and const members."""
    members = 0
    for path, depth, node in _walk(schema, param):
        if depth > lim.max_depth:
            raise bad_request(f"the schema nests {depth} objects and arrays deep here; the "
                              f"limit is {lim.max_depth} (limits.schemas.max_depth)", path,
                              "schema_shape")
        if not isinstance(node, dict):
            continue
        members += len(node["enum"]) if isinstance(node.get("enum"), list) else 0
        members += 1 if "const" in node else 0
        if isinstance(node.get("pattern"), str):
            _pattern(node["pattern"], f"{path}.pattern", lim)
        for key in node.get("patternProperties") or {}:
            _pattern(key, f"{path}.patternProperties", lim)
    return members


def _pattern(text: str, param: str, lim: SchemaLimits) -> None:
    if len(text) > lim.max_pattern_chars:
        raise bad_request(f"a regex of {len(text)} characters; the limit is "
                          f"{lim.max_pattern_chars} (limits.schemas.max_pattern_chars)", param,
                          "schema_shape")


def _walk(node: Any, path: str, depth: int = 1):
    """(path, nesting depth, node) for every object and array of a JSON document."""
    if not isinstance(node, (dict, list)):
        return
    yield path, depth, node
    children = node.items() if isinstance(node, dict) else enumerate(node)
    for key, child in children:
        if isinstance(child, (dict, list)):
            yield from _walk(child, f"{path}.{key}" if isinstance(key, str) else f"{path}[{key}]",
                             depth + 1)


class GrammarBudget:
    """Builds grammars in one worker process (each build in a child of its own, so builds run
    side by side) and remembers the CPU each took, by content hash."""

    def __init__(self, lim: SchemaLimits, tokenizer_dir: str, vocab_size: int, compact: bool):
        self.lim, self.compact = lim, compact
        self.argv = [sys.executable, "-m", "launch.api.grammar_worker", tokenizer_dir,
                     str(vocab_size)]
        self.proc: subprocess.Popen | None = None
        self.lock = threading.Lock()  # the worker's start and its stdin
        self.waiting: dict[int, Future] = {}
        self.ids = itertools.count()
        self.seen: OrderedDict[str, float | str] = OrderedDict()

    def check(self, items: list[tuple[str, Any, str]]) -> None:
        """Refuse the request if building its grammars takes over the budget (blocking: call
        it from a thread)."""
        used = 0.0
        for kind, spec, param in items:
            if kind == "choice":
                continue
            result = self._cpu_s(kind, _text(kind, spec), self.lim.compile_budget_s - used)
            if isinstance(result, str):
                raise bad_request(f"the decoding grammar cannot be built from this: {result}",
                                  param, "schema")
            used += result
            if used > self.lim.compile_budget_s:
                took = "over " + _s(2 * self.lim.compile_budget_s + 1) + " (ended)" \
                    if result == float("inf") else _s(used)
                raise bad_request(
                    f"building the decoding grammar of the request's schemas took {took} of CPU "
                    f"by this one; the limit is {_s(self.lim.compile_budget_s)} "
                    "(limits.schemas.compile_budget_s)", param, "schema_budget")

    def _cpu_s(self, kind: str, text: str, left: float) -> float | str:
        key = hashlib.sha256(f"{kind}\0{self.compact}\0{text}".encode()).hexdigest()
        if key in self.seen:
            return self.seen[key]
        result = self._build(kind, text, 2 * max(left, 0.0) + 1)
        self.seen[key] = result
        while len(self.seen) > KEPT:
            self.seen.popitem(last=False)
        return result

    def _build(self, kind: str, text: str, wall_s: float) -> float | str:
        job_id, done = next(self.ids), Future()
        with self.lock:
            proc = self._worker()
            self.waiting[job_id] = done
            try:
                proc.stdin.write(json.dumps({"id": job_id, "kind": kind, "text": text,
                                             "compact": self.compact, "wall_s": wall_s}) + "\n")
                proc.stdin.flush()
            except OSError:
                self.waiting.pop(job_id, None)
                raise _checker_gone() from None
        try:
            reply = done.result(timeout=wall_s + 10)  # the worker ends the build at wall_s
        except FutureTimeout:
            self.waiting.pop(job_id, None)
            raise _checker_gone() from None
        if reply is None:
            raise _checker_gone()
        if reply.get("ended"):
            return float("inf")
        if "error" in reply:
            return re.sub(r"^\[[^\]]*\]\s+\S+:\d+:\s*", "", reply["error"]).strip()[:200]
        return reply["cpu_s"]

    def _worker(self) -> subprocess.Popen:
        if self.proc is not None and self.proc.poll() is None:
            return self.proc
        proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        ready = select.select([proc.stdout], [], [], READY_TIMEOUT_S)[0]
        if not ready or proc.stdout.readline().strip() != "ready":
            proc.kill()
            raise RequestRejected(503, "the schema checker did not start; retry the request",
                                  reason="schema_checker", retry_after=5)
        self.proc = proc
        threading.Thread(target=self._read, args=(proc,), daemon=True,
                         name="grammar-replies").start()
        return proc

    def _read(self, proc: subprocess.Popen) -> None:
        """Hand each reply to the build waiting for it; when the worker ends, fail the rest."""
        for line in proc.stdout:
            reply = json.loads(line)
            done = self.waiting.pop(reply["id"], None)
            if done is not None:
                done.set_result(reply)
        for job_id in list(self.waiting):
            done = self.waiting.pop(job_id, None)
            if done is not None and not done.done():
                done.set_result(None)

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


def _checker_gone() -> RequestRejected:
    return RequestRejected(503, "the schema checker stopped; retry the request",
                           reason="schema_checker", retry_after=1)


def _s(seconds: float) -> str:
    return f"{seconds:.2f} s"
