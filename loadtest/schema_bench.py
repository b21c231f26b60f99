"""Benchmark: a small structured request's latency while large schemas are sent beside it.

    python -m loadtest.schema_bench --url http://127.0.0.1:8000 [--key KEY] [-n 8]

Against a running stack (the limits in force are the server's: ``limits.schemas``), one client
sends a small ``json_schema`` request (three enum and boolean fields, max_tokens 16) ``n`` times
and the median latency is taken: (a) alone; (a') while another client sends the same small
request back to back (the contention any second client brings); (b) while it sends instead,
schemas at the default size and shape limits (a 1024-member enum in just under 32 KiB, each
one new, so nothing is cached), which the engine compiles; (c) while another client sends short
regexes with nested repetition, which take seconds to compile and are refused at
``compile_budget_s``; (d) a 100,000-member enum, refused by its size before any compile. Prints
each median, its ratio to (a), and what the heavy client got (statuses, median time).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import string
import threading
import time
import urllib.error
import urllib.request

from .machine import describe

SMALL = {"type": "object", "additionalProperties": False, "required": ["flight", "on_time"],
         "properties": {"flight": {"type": "string", "enum": ["CA981", "LH720"]},
                        "on_time": {"type": "boolean"}}}


def post(url: str, key: str | None, body: dict, timeout: float = 300) -> tuple[int, float]:
    req = urllib.request.Request(url + "/v1/chat/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json",
                                  **({"Authorization": f"Bearer {key}"} if key else {})})
    start = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            resp.read()
            code = resp.status
    except urllib.error.HTTPError as err:
        err.read()
        code = err.code
    return code, time.monotonic() - start


def answer(model: str, schema: dict, max_tokens: int = 16) -> dict:
    return {"model": model, "max_tokens": max_tokens, "temperature": 0,
            "messages": [{"role": "user", "content": "Flight status as JSON."}],
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": "a", "schema": schema}}}


def big_enum(rng: random.Random, members: int = 1024, length: int = 26) -> dict:
    words = ["".join(rng.choice(string.ascii_letters) for _ in range(length))
             for _ in range(members)]
    return {"type": "object", "properties": {"c": {"type": "string", "enum": words}}}


def slow_regex(rng: random.Random) -> dict:
    reps = rng.randint(40, 60)  # each one new
    return {"type": "object", "properties": {"c": {
        "type": "string", "pattern": f"([a-z]{{1,30}}[0-9]{{2,20}}){{1,{reps}}}"}}}


def huge_enum(rng: random.Random) -> dict:
    return big_enum(rng, 100_000, 10)


def measure(url, key, model, n, heavy=None) -> dict:
    """Median latency of ``n`` small requests, with ``heavy`` (a schema maker) sent back to
    back by a second client meanwhile."""
    stop = threading.Event()
    got: list[tuple[int, float]] = []

    def hammer():
        rng = random.Random()  # unseeded: each run sends schemas neither side has cached
        while not stop.is_set():
            got.append(post(url, key, answer(model, heavy(rng), max_tokens=1)))

    thread = threading.Thread(target=hammer, daemon=True) if heavy else None
    if thread:
        thread.start()
        time.sleep(0.5)  # the heavy client's first request is in flight
    times = []
    for _ in range(n):
        code, took = post(url, key, answer(model, SMALL))
        if code != 200:
            raise SystemExit(f"the small request got {code}")
        times.append(took)
    stop.set()
    if thread:
        thread.join()
    return {"median_s": statistics.median(times),
            "heavy": sorted({c for c, _ in got}),
            "heavy_n": len(got),
            "heavy_median_s": statistics.median([t for _, t in got]) if got else None}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--key")
    ap.add_argument("--model", default="qwen2-vl-tiny")
    ap.add_argument("-n", type=int, default=8)
    args = ap.parse_args(argv)
    print(describe())
    post(args.url, args.key, answer(args.model, SMALL))  # warm: the small grammar is cached
    rows = [("alone", None), ("beside the same small request (a second client's load)",
                              lambda rng: SMALL),
            ("beside 1024-member enums (at the limits)", big_enum),
            ("beside nested-repetition regexes (over the budget)", slow_regex),
            ("beside 100,000-member enums (over max_bytes)", huge_enum)]
    print("| small json_schema request | median latency | vs alone | heavy client: statuses, "
          "requests, median |")
    print("|---|---|---|---|")
    base = None
    for label, heavy in rows:
        r = measure(args.url, args.key, args.model, args.n, heavy)
        base = base or r["median_s"]
        side = (f"{r['heavy']}, {r['heavy_n']}, {r['heavy_median_s'] * 1000:.0f} ms"
                if heavy else "-")
        print(f"| {label} | {r['median_s'] * 1000:.0f} ms | {r['median_s'] / base:.2f}x | "
              f"{side} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
