"""Run one measured step: a fixed number of requests at a fixed concurrency, driven by Locust.

Locust runs headless in its own process (it monkey-patches the standard library with gevent, which
must not happen in the process that deploys the stack). This process follows the records file
for progress and an ETA, and samples memory while the step runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .memory import MemorySampler
from .metrics import RequestRecord, read_records, run_duration
from .workload import Workload

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
WARMUP_OFFSET = 10**6  # warm-up prompts come from their own index range


@dataclass
class Target:
    """A deployment to measure: its base URL and what to sample for memory."""

    name: str
    base_url: str
    model: str
    api_key: str | None = None
    engine_pids: Callable[[], list[int]] | None = None
    metrics_url: str | None = None
    stack_pids: Callable[[], list[int]] | None = None  # every process of a local stack
    kv_cache_tokens: Callable[[], int | None] | None = None  # as the engine logged it


@dataclass
class StepResult:
    records: list[RequestRecord]
    duration: float
    memory: dict


def fmt_s(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Progress:
    """Prints ``label: done/total, ETA`` lines: on change, at most every ``every`` seconds."""

    def __init__(self, label: str, total: int, every: float = 10.0, out=sys.stdout,
                 unit: str = "requests"):
        self.label, self.total, self.every, self.out, self.unit = label, total, every, out, unit
        self.t0 = time.monotonic()
        self.last_print = 0.0
        self.last_done = -1

    def update(self, done: int, failed: int = 0, force: bool = False) -> None:
        now = time.monotonic()
        if done == self.last_done and (force or now - self.last_print < self.every):
            return
        if not force and done != self.total and now - self.last_print < self.every:
            return
        self.last_done, self.last_print = done, now
        elapsed = now - self.t0
        eta = elapsed / done * (self.total - done) if done else None
        fail = f", {failed} failed" if failed else ""
        eta_s = f", ETA {fmt_s(eta)}" if eta is not None and done < self.total else ""
        print(f"  {self.label}: {done}/{self.total} {self.unit}{fail}, {fmt_s(elapsed)} elapsed"
              f"{eta_s}", file=self.out, flush=True)


def run_step(target: Target, workload: Workload, *, concurrency: int, num_requests: int,
             out_dir: Path, tag: str, index_offset: int = 0, timeout_s: float = 3600,
             progress_every: float = 10.0, scrape: bool = True,
             rate: float | None = None) -> StepResult:
    """``num_requests`` requests from ``concurrency`` Locust users; all of them finish.
    ``rate``: requests/s, request ``i`` sent ``i / rate`` seconds after the first (an open
    loop, as traffic arrives), by whichever user is free; ``concurrency`` is then the most in
    flight at once, and the schedule slips only when all of them are busy.
    ``scrape``: read the KV cache usage from the deployment's metrics every second; off where
    the step's CPU is measured or targets are compared, since serving a scrape is the
    harness's load, not the requests' (Ray's metrics endpoint renders every series of the node
    for each one)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{target.name}-{tag}")
    records_path = out_dir / f"records-{safe}.jsonl"
    records_path.unlink(missing_ok=True)
    spec_path = out_dir / f"spec-{safe}.json"
    spec_path.write_text(json.dumps({
        "model": target.model, "workload": workload.model_dump(), "num_requests": num_requests,
        "records": str(records_path), "tag": tag, "api_key": target.api_key,
        "timeout_s": timeout_s, "index_offset": index_offset, "rate": rate}))
    users = max(1, min(concurrency, num_requests))
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
           "--users", str(users), "--spawn-rate", str(users), "--host", target.base_url,
           "--only-summary", "--loglevel", "WARNING", "--stop-timeout", str(int(timeout_s)),
           "--exit-code-on-error", "0"]
    env = {**os.environ, "QWEN_VL_LOADTEST_SPEC": str(spec_path)}
    log = open(out_dir / f"locust-{safe}.log", "w")
    progress = Progress(f"{target.name} {tag}", num_requests, every=progress_every)
    tail = _RecordTail(records_path)
    t0 = time.time()
    with MemorySampler(target.engine_pids, target.metrics_url if scrape else None,
                       target.api_key) as mem:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        limit = timeout_s * -(-num_requests // users) + 120  # every request at its timeout
        deadline = time.monotonic() + limit
        while proc.poll() is None:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"Locust step {tag} ran past {fmt_s(limit)}; see {log.name}")
            tail.poll()
            progress.update(tail.done, tail.failed)
            time.sleep(1.0)
    log.close()
    records = read_records(records_path)
    progress.update(len(records), sum(not r.success for r in records), force=True)
    if len(records) != num_requests:
        raise RuntimeError(f"Locust step {tag}: {len(records)} of {num_requests} requests "
                           f"recorded (exit code {proc.returncode}); see {log.name}")
    duration = run_duration(records)
    return StepResult(records, time.time() - t0 if duration is None else duration,
                      mem.summary())


def warm_up(target: Target, workload: Workload, *, output_tokens: int, out_dir: Path,
            tag: str = "warmup", requests: int = 1, concurrency: int = 1) -> StepResult:
    """``requests`` requests of ``workload`` (their own prompts and images) cut to
    ``output_tokens``, at ``concurrency``, outside any measurement."""
    return run_step(target, workload.model_copy(update={"output_tokens": output_tokens}),
                    concurrency=concurrency, num_requests=requests, out_dir=out_dir, tag=tag,
                    index_offset=WARMUP_OFFSET, scrape=False)


class _RecordTail:
    """Counts the records a running step has appended, reading only the new bytes."""

    def __init__(self, path: Path):
        self.path, self.offset, self.done, self.failed = path, 0, 0, 0

    def poll(self) -> None:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                chunk = fh.read()
        except FileNotFoundError:
            return
        complete = chunk[:chunk.rfind(b"\n") + 1]  # a line being written waits for next time
        self.offset += len(complete)
        for line in complete.splitlines():
            if line.strip():
                self.done += 1
                self.failed += not json.loads(line)["success"]
