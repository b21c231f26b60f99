"""The summary follows ``vllm bench serve``'s definitions and key names."""

from __future__ import annotations

import pytest

from loadtest.memory import kv_cache_usage
from loadtest.metrics import RequestRecord, max_concurrency, summarize


def rec(start, ttft, itl, tokens, prompt=10, success=True):
    latency = ttft + sum(itl)
    return RequestRecord(start_time=start, success=success, ttft=ttft, itl=list(itl),
                         latency=latency, prompt_tokens=prompt, output_tokens=tokens)


def test_summary_matches_vllm_definitions():
    a = rec(0.0, 0.5, [0.1, 0.1, 0.1], 4)          # TPOT (0.8 - 0.5) / 3 = 0.1
    b = rec(1.0, 0.3, [0.2], 2)                    # TPOT 0.2, ends at 1.5
    bad = RequestRecord(start_time=0.2, error="HTTP 400: no", status=400)
    s = summarize([a, b, bad])
    assert s["completed"] == 2 and s["failed"] == 1
    assert s["duration"] == pytest.approx(1.5)      # first start to last end
    assert s["total_output_tokens"] == 6 and s["total_input_tokens"] == 20
    assert s["output_throughput"] == pytest.approx(6 / 1.5)
    assert s["request_throughput"] == pytest.approx(2 / 1.5)
    assert s["total_token_throughput"] == pytest.approx(26 / 1.5)
    assert s["mean_ttft_ms"] == pytest.approx(400)
    assert s["median_tpot_ms"] == pytest.approx(150)
    assert s["mean_itl_ms"] == pytest.approx(125)   # 0.1, 0.1, 0.1, 0.2
    assert s["p99_e2el_ms"] == pytest.approx(800 - 0.01 * 300, rel=1e-3)
    assert s["request_goodput"] is None
    for key in ("median_ttft_ms", "p90_ttft_ms", "p99_ttft_ms", "std_itl_ms", "mean_e2el_ms"):
        assert key in s


def test_goodput_counts_requests_meeting_every_slo():
    a = rec(0.0, 0.5, [0.1, 0.1, 0.1], 4)
    b = rec(0.0, 0.3, [0.2], 2)
    s = summarize([a, b], duration=2.0, goodput={"ttft": 400, "tpot": 250})
    assert s["request_goodput"] == pytest.approx(0.5)  # only b: TTFT 300 ms, TPOT 200 ms


def test_one_token_requests_have_no_tpot():
    r = rec(0.0, 0.2, [], 1)
    assert r.tpot is None
    assert summarize([r])["mean_tpot_ms"] == 0.0


def test_max_concurrency():
    assert max_concurrency([rec(0, 1, [], 1), rec(0.5, 1, [], 1), rec(2, 1, [], 1)]) == 2


def test_kv_cache_usage_from_prometheus_text():
    text = ('# HELP ray_vllm_kv_cache_usage_perc x\n'
            'ray_vllm_kv_cache_usage_perc{model_name="a",ReplicaId="1"} 0.25\n'
            'ray_vllm_kv_cache_usage_perc{model_name="a",ReplicaId="2"} 0.5\n'
            'vllm:num_requests_running{model_name="a"} 3.0\n')
    assert kv_cache_usage(text) == 0.5
    assert kv_cache_usage('vllm:kv_cache_usage_perc{engine="0"} 0.125\n') == 0.125
    assert kv_cache_usage("nothing here\n") is None


def test_progress_counts_only_complete_new_records(tmp_path):
    from loadtest.runner import _RecordTail

    path = tmp_path / "records.jsonl"
    tail = _RecordTail(path)
    tail.poll()  # no file yet
    assert (tail.done, tail.failed) == (0, 0)
    ok, bad = rec(0.0, 0.1, [0.1], 2).to_json(), RequestRecord(start_time=0.0).to_json()
    path.write_text(ok + "\n" + bad + "\n" + ok[:20])  # the third is still being written
    tail.poll()
    assert (tail.done, tail.failed) == (2, 1)
    path.write_text(ok + "\n" + bad + "\n" + ok + "\n")
    tail.poll()
    assert (tail.done, tail.failed) == (3, 1)
