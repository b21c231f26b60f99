"""The plan checked against a live vLLM engine on this machine: the KV capacity vLLM logs at
start-up equals the planned one, and the loaded weights are within 2% of the planned bytes, for
the benchmark-size model (the real Qwen2-VL-2B sizes). The embedded tiny model's KV capacity is
checked the same way by every sweep (tests/loadtest/test_scenarios_e2e.py, plan vs measured)."""

from __future__ import annotations

import pytest

from engine.capacity import Workload, architecture_for, make_plan
from engine.capacity_check import compare, measure
from tests.utils import write_config

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("source,engine", [
    # A max_model_len that is no multiple of the block size: vLLM's rounding is reproduced.
    ("embedded:qwen2-vl-2b-random", {"cpu_kv_cache_gib": 1, "max_model_len": 3000,
                                     "max_num_batched_tokens": 3000}),
])
def test_plan_equals_the_engine(tmp_path, source, engine):
    from engine.config import load_config

    path, _ = write_config(tmp_path, {"model": {"source": source, "dtype": "auto"},
                                      "engine": engine})
    cfg = load_config(path)
    arch, origin = architecture_for(cfg)
    plan = make_plan(cfg, arch, origin, None, Workload(), cpu_bandwidth_gbs=10).to_dict()
    rows = {r["what"]: r for r in compare(plan, measure(path))}
    print(rows)
    kv = rows["KV cache tokens"]
    assert kv["engine"] == kv["planned"], kv
    for part in ("total", "language model", "vision tower"):
        r = rows[f"weights bytes ({part})"]
        assert abs(r["ratio"] - 1) <= 0.02, r
