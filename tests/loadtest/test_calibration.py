"""Calibration from a sweep's table (``loadtest.calibration``), its files (``loadtest.overlay``)
through the real config check and the chart, and GuideLLM's key names
(``loadtest.guidellm_keys``)."""

from __future__ import annotations

import pytest
import yaml

from engine.config import load_config
from launch.generate.chart import CHART_DIR
from loadtest import guidellm_keys, overlay
from loadtest.calibration import CalibrationError, calibrate, knee, slo_level
from loadtest.metrics import RequestRecord
from loadtest.scenarios.calibrate import attainment, knee_row, sweep_config, verify_config
from loadtest.scenarios.common import ROOT, load_base


def row(c: int, tokens_s: float, rps: float, ttft99: float = 100.0, tpot99: float = 20.0,
        failed: int = 0, kv: float | None = 0.2, slo: bool = True) -> dict:
    return {"concurrency": c, "output_throughput": tokens_s, "request_throughput": rps,
            "p99_ttft_ms": ttft99, "p99_tpot_ms": tpot99, "failed": failed,
            "kv_cache_usage_peak": kv, "meets_slo": slo}


# Throughput grows to concurrency 8, then gains 5%: the knee is 8. TTFT p99 passes 1 s at 16.
TABLE = [row(1, 100, 0.5), row(2, 190, 0.95), row(4, 350, 1.75), row(8, 600, 3.0, kv=0.42),
         row(16, 630, 3.1, ttft99=1500, kv=0.81, slo=False)]


def test_knee_is_the_best_level_before_the_first_that_gained_under_ten_percent():
    assert knee(TABLE)["concurrency"] == 8
    # a drop after the peak: the peak is the knee
    assert knee([row(1, 100, 1), row(2, 180, 2), row(4, 150, 2)])["concurrency"] == 2
    # 9% is under the margin, 11% is not
    assert knee([row(1, 100, 1), row(2, 109, 1)])["concurrency"] == 1
    assert knee([row(1, 100, 1), row(2, 111, 1)]) is None
    assert knee([row(1, 100, 1)]) is None


def test_slo_level_is_the_highest_level_meeting_it_with_every_level_below():
    assert slo_level(TABLE)["concurrency"] == 8
    assert slo_level([row(1, 1, 1, slo=False)]) is None
    # a level that passes above one that failed is not counted
    assert slo_level([row(1, 1, 1), row(2, 2, 2, slo=False), row(4, 4, 4)])["concurrency"] == 1
    assert slo_level([row(2, 2, 2, slo=False), row(1, 1, 1)])["concurrency"] == 1  # any order


def test_settings_follow_from_the_measurements():
    """The knee (8) is the SLO level: the autoscaler aims a level below it, at 1.75 requests/s
    per replica; a replica may run up to the SLO level."""
    cal = calibrate(TABLE, slo_ttft_ms=1000, slo_tpot_ms=50, request_rate=10,
                    min_request_rate=4)
    assert cal.operating["concurrency"] == 4 and cal.per_replica_rps == 1.75
    assert cal.overlay() == {
        "deployment": {
            "autoscaling": {"target_ongoing_requests": 4,  # the level below the knee
                            "min_replicas": 3,  # ceil(4 / 1.75)
                            "max_replicas": 6},  # ceil(10 / 1.75)
            "max_ongoing_requests": 8,  # the SLO level
            "max_queued_requests": 3,  # 3.0 requests/s at the SLO level x 1 s of TTFT SLO
        },
        "alerts": {"ttft_p99_s": 1.0, "queue_waiting": 1,
                   "kv_cache_usage": 0.55}}  # 0.42 at the SLO level + 0.1, rounded up to 0.05
    whys = {".".join(s.path): s.why for s in cal.settings}
    assert "the level below the knee (8, 3 requests/s" in \
        whys["deployment.autoscaling.target_ongoing_requests"]
    assert "10 requests/s at peak / 1.75 per replica" in whys["deployment.autoscaling.max_replicas"]
    assert "8 concurrent requests met" in whys["deployment.max_ongoing_requests"]
    assert "0.420 at concurrency 8" in whys["alerts.kv_cache_usage"]


def test_an_slo_level_below_the_knee_is_the_operating_level():
    table = [*TABLE[:4], row(16, 900, 4.5, ttft99=1500, slo=False), row(32, 910, 4.5, slo=False)]
    cal = calibrate(table, slo_ttft_ms=1000, slo_tpot_ms=50)
    assert cal.knee["concurrency"] == 16 and cal.slo_level["concurrency"] == 8
    assert cal.operating is cal.slo_level and cal.per_replica_rps == 3.0
    assert "below the knee (16)" in next(s.why for s in cal.settings
                                         if s.path[-1] == "target_ongoing_requests")


def test_defaults_without_rates_and_a_knee_never_reached():
    table = [row(1, 100, 1.0), row(2, 200, 2.0), row(4, 400, 4.0, kv=None)]
    cal = calibrate(table, slo_ttft_ms=500, slo_tpot_ms=50, most_replicas=3)
    o = cal.overlay()
    assert cal.knee is None
    assert o["deployment"]["autoscaling"] == {"target_ongoing_requests": 4, "min_replicas": 1,
                                              "max_replicas": 3}
    assert o["deployment"]["max_ongoing_requests"] == 4  # the highest level measured
    assert o["deployment"]["max_queued_requests"] == 2  # 4 requests/s x 0.5 s
    assert "kv_cache_usage" not in o["alerts"] and "no KV cache usage" in cal.notes[0]
    assert "not reached" in next(s.why for s in cal.settings
                                 if s.path == ("deployment", "autoscaling",
                                               "target_ongoing_requests"))


def test_a_knee_below_the_slo_level_sets_the_target_and_the_rate():
    """Past the knee more requests at once still meet the SLO but buy no throughput: the
    autoscaler aims at the knee, and a replica may run up to the SLO level."""
    table = [row(1, 100, 1.0), row(2, 105, 1.2), row(4, 106, 1.3)]
    cal = calibrate(table, slo_ttft_ms=10000, slo_tpot_ms=500, request_rate=5)
    assert cal.knee["concurrency"] == 1 and cal.slo_level["concurrency"] == 4
    assert cal.operating is cal.knee and cal.per_replica_rps == 1.0
    assert "no headroom" in next(s.why for s in cal.settings
                                 if s.path[-1] == "target_ongoing_requests")
    assert cal.value("deployment", "autoscaling", "target_ongoing_requests") == 1
    assert cal.value("deployment", "autoscaling", "max_replicas") == 5  # 5 / 1.0
    assert cal.value("deployment", "max_ongoing_requests") == 4
    assert cal.value("deployment", "max_queued_requests") == 13  # 1.3 requests/s x 10 s


def test_a_short_ttft_slo_leaves_no_queue_and_warns_on_any_wait():
    cal = calibrate(TABLE, slo_ttft_ms=200, slo_tpot_ms=50)  # 3 requests/s x 0.2 s < 1
    assert cal.value("deployment", "max_queued_requests") == 0
    assert cal.value("alerts", "queue_waiting") == 0


def test_no_level_meeting_the_slo_says_what_the_lowest_measured():
    with pytest.raises(CalibrationError, match=r"at concurrency 1 TTFT p99 was 4000 ms"):
        calibrate([row(1, 10, 1, ttft99=4000, slo=False)], slo_ttft_ms=1000, slo_tpot_ms=50)
    with pytest.raises(CalibrationError, match="no level"):  # nothing measured
        calibrate([], slo_ttft_ms=1000, slo_tpot_ms=50)


@pytest.fixture
def written(tmp_path):
    base = load_base(ROOT / "configs" / "default.yaml")
    cal = calibrate(TABLE, slo_ttft_ms=1000, slo_tpot_ms=50, request_rate=10)
    return base, cal, overlay.write(tmp_path, base, cal, ["Calibrated here, for a test."])


def test_the_files_hold_the_overlay_under_a_comment_per_key(written):
    base, cal, paths = written
    text = paths["overlay"].read_text()
    assert yaml.safe_load(text) == cal.overlay()
    lines = text.splitlines()
    assert lines[0] == "# Calibrated here, for a test."
    for s in cal.settings:  # the line above each key is (the end of) its comment
        i = next(i for i, line in enumerate(lines)
                 if line.strip().startswith(f"{s.path[-1]}: "))
        assert lines[i - 1].lstrip().startswith("# "), (s.path, lines[i - 1])
        assert s.why.split()[-1] in lines[i - 1], (s.path, lines[i - 1])
        assert all(len(line) <= overlay.WIDTH for line in lines)
    assert yaml.safe_load(paths["values"].read_text()) == {"serving": cal.overlay()}
    assert "workerGroups[].maxReplicas" in paths["values"].read_text()


def test_the_calibrated_config_loads_through_the_config_check(written):
    base, cal, paths = written
    cfg = load_config(paths["config"])
    d = cfg.deployment
    assert (d.max_ongoing_requests, d.max_queued_requests) == (8, 3)
    assert (d.autoscaling.target_ongoing_requests, d.autoscaling.min_replicas,
            d.autoscaling.max_replicas) == (4, 1, 6)
    assert (cfg.alerts.ttft_p99_s, cfg.alerts.queue_waiting, cfg.alerts.kv_cache_usage) == \
        (1.0, 1, 0.55)
    assert cfg.model.source == base["model"]["source"]  # everything else as the base had it
    assert cfg.engine.max_num_seqs == base["engine"]["max_num_seqs"]


def test_a_calibrated_config_that_fails_the_check_is_not_written(tmp_path):
    base = load_base(ROOT / "configs" / "default.yaml")
    base["model"]["source"] = "embedded:qwen2-vl-tiny-gptq-int8"  # no CPU kernel
    cal = calibrate(TABLE, slo_ttft_ms=1000, slo_tpot_ms=50)
    with pytest.raises(ValueError, match="GPTQ-Int8"):
        overlay.write(tmp_path, base, cal, ["x"])
    assert list(tmp_path.iterdir()) == []


def test_the_values_overlay_renders_through_the_chart(written):
    """A profile's values with the overlay merged over them (as ``helm -f profile -f overlay``
    merges): the RayService's application args and the PrometheusRule's thresholds are the
    calibrated ones."""
    import helm_python as helm  # helm-python-sdk

    _, cal, paths = written
    values = overlay.merged(yaml.safe_load((CHART_DIR / "profiles" / "2b-bf16-l4.yaml")
                                           .read_text()),
                            yaml.safe_load(paths["values"].read_text()))
    values = overlay.merged(values, {"metrics": {"prometheusRule": {"enabled": True}}})
    manifests = helm.Chart.load(CHART_DIR).render(values, name="qwen", namespace="ml",
                                                  is_install=True)
    objs = [o for path, text in manifests.items() if not path.endswith("NOTES.txt")
            for o in yaml.safe_load_all(text) if o]
    service = next(o for o in objs if o["kind"] == "RayService")
    d = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]["args"]["deployment"]
    assert d["autoscaling"] == cal.overlay()["deployment"]["autoscaling"]
    assert (d["max_ongoing_requests"], d["max_queued_requests"]) == (8, 3)
    rule = next(o for o in objs if o["kind"] == "PrometheusRule")
    alerts = {r["alert"]: r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]
              if "alert" in r}
    assert alerts["QwenVLTimeToFirstTokenOverSLO"].endswith("> 1")
    assert alerts["QwenVLQueueBacklog"].endswith("> 1")
    assert "> 0.55 and" in alerts["QwenVLKVCacheFull"]


def test_sweep_and_verify_configs_run_one_replica():
    base = load_base(ROOT / "configs" / "default.yaml")
    s = sweep_config({**base, "deployment": {**base["deployment"], "max_ongoing_requests": 4,
                                             "autoscaling": {"max_replicas": 3}}}, 16)
    assert s["deployment"]["replicas"] == 1 and "autoscaling" not in s["deployment"]
    assert s["deployment"]["max_ongoing_requests"] == 16
    cal = calibrate(TABLE, slo_ttft_ms=1000, slo_tpot_ms=50, request_rate=10)
    v = verify_config(overlay.merged(base, cal.overlay()))
    assert v["deployment"]["replicas"] == 1 and "autoscaling" not in v["deployment"]
    assert v["deployment"]["max_ongoing_requests"] == 8


def test_attainment_counts_every_request_sent():
    ok = RequestRecord(start_time=0, success=True, ttft=0.5, latency=1.5, output_tokens=11)
    slow = RequestRecord(start_time=0, success=True, ttft=1.5, latency=2.5, output_tokens=11)
    failed = RequestRecord(start_time=0, success=False, status=503)
    assert attainment([ok, slow, failed, ok], 1000, 200) == 0.5
    assert attainment([ok], 1000, 50) == 0.0  # TPOT 100 ms
    assert attainment([], 1000, 200) == 0.0


def test_knee_row_sets_plan_beside_measured():
    cal = calibrate(TABLE, slo_ttft_ms=1000, slo_tpot_ms=50)
    r = knee_row({"load": {"fit_concurrency": 16, "fit_limited_by": "engine.max_num_seqs"}}, cal)
    assert (r["planned"], r["measured"], r["ratio"]) == (16, 8, 0.5)
    assert "engine.max_num_seqs" in r["what"]
    assert knee_row(None, cal)["ratio"] is None


def test_guidellm_keys_name_our_figures_as_guidellm_does():
    recs = [RequestRecord(start_time=0.0, success=True, ttft=0.1, latency=1.1, prompt_tokens=10,
                          output_tokens=11),
            RequestRecord(start_time=1.0, success=True, ttft=0.3, latency=2.3, prompt_tokens=10,
                          output_tokens=21),
            RequestRecord(start_time=1.0, success=False, status=503)]
    b = guidellm_keys.benchmark(recs, {"type_": "concurrent", "streams": 2})
    m = b["metrics"]
    assert b["config"]["strategy"] == {"type_": "concurrent", "streams": 2}
    assert m["request_totals"] == {"successful": 2, "errored": 1, "incomplete": 0, "total": 3}
    assert m["requests_per_second"]["successful"]["mean"] == pytest.approx(2 / 3.3)
    assert m["time_to_first_token_ms"]["successful"]["median"] == pytest.approx(200)
    # GuideLLM's inter-token latency is vLLM's TPOT: (1.1 - 0.1) / 10 and (2.3 - 0.3) / 20
    assert m["inter_token_latency_ms"]["successful"]["mean"] == pytest.approx(100)
    # its time per output token includes the first: 1100 / 11 and 2300 / 21
    assert m["time_per_output_token_ms"]["successful"]["min"] == pytest.approx(100)
    assert m["time_per_output_token_ms"]["successful"]["max"] == pytest.approx(2300 / 21)
    assert m["output_tokens_per_second"]["successful"]["mean"] == pytest.approx(32 / 3.3)
    assert set(m["request_latency"]["successful"]["percentiles"]) == {"p50", "p90", "p95",
                                                                      "p99"}
    assert guidellm_keys.benchmark([], {"type_": "constant", "rate": 1.0})["metrics"][
        "time_to_first_token_ms"] == {"successful": {"count": 0}}


def test_compare_sets_our_figures_beside_guidellms_by_concurrency(capsys, tmp_path):
    """Ours from records, GuideLLM's as its report holds them (with fields we do not write)."""
    import json

    recs = [RequestRecord(start_time=0.0, success=True, ttft=0.1, latency=1.1, prompt_tokens=10,
                          output_tokens=11, tag="c1"),
            RequestRecord(start_time=1.1, success=True, ttft=0.1, latency=0.9, prompt_tokens=10,
                          output_tokens=9, tag="c1"),
            RequestRecord(start_time=0.0, success=True, ttft=0.2, latency=1.0, prompt_tokens=10,
                          output_tokens=5, tag="c4")]
    ours = {"benchmarks": guidellm_keys.levels(recs, [{"tag": "c1", "concurrency": 1},
                                                      {"tag": "c4", "concurrency": 4}])}

    def theirs_bench(streams: int, rps: float, ttft_p50: float) -> dict:
        return {"config": {"strategy": {"type_": "concurrent", "streams": streams,
                                        "worker_count": 1}},
                "metrics": {"requests_per_second": {"successful": {"mean": rps, "mode": 0}},
                            "output_tokens_per_second": {"successful": {"mean": 40.0}},
                            "time_to_first_token_ms": {"successful": {
                                "median": ttft_p50, "percentiles": {"p99": 400.0}}},
                            "inter_token_latency_ms": {"successful": {"median": 100.0}}}}

    theirs = {"metadata": {}, "benchmarks": [theirs_bench(1, 0.5, 50.0),
                                             theirs_bench(2, 1.0, 60.0)]}
    rows = guidellm_keys.compare(ours, theirs)
    assert [r["concurrency"] for r in rows] == [1]  # the one level both measured
    r = rows[0]
    assert r["requests/s"] == (pytest.approx(1.0), 0.5, pytest.approx(2.0))  # 2 in 2.0 s
    assert r["output tokens/s"] == (pytest.approx(10.0), 40.0, pytest.approx(0.25))
    assert r["TTFT p50 ms"] == (pytest.approx(100.0), 50.0, pytest.approx(2.0))
    assert r["ITL p50 ms"] == (pytest.approx(100.0), 100.0, pytest.approx(1.0))
    (tmp_path / "ours.json").write_text(json.dumps(ours))
    (tmp_path / "theirs.json").write_text(json.dumps(theirs))
    assert guidellm_keys.main([str(tmp_path / "ours.json"), str(tmp_path / "theirs.json")]) == 0
    out = capsys.readouterr().out
    assert "| 1 | 1 / 0.5 (2.00x) | 10 / 40 (0.25x) | 100 / 50 (2.00x) | 100 / 400 (0.25x) |" \
        in out, out
    (tmp_path / "none.json").write_text(json.dumps({"benchmarks": [theirs_bench(8, 1, 1)]}))
    assert guidellm_keys.main([str(tmp_path / "ours.json"), str(tmp_path / "none.json")]) == 1


def test_compare_reads_a_real_guidellm_report():
    """GuideLLM 0.8.1's own JSON of a run against the stack (``guidellm run --output
    kind=json``; only the fields compared are kept), read where ``compare`` reads it."""
    import json
    from pathlib import Path

    theirs = json.loads((Path(__file__).parent / "data" / "guidellm-0.8.1-benchmarks.json")
                        .read_text())
    recs = [RequestRecord(start_time=0.0, success=True, ttft=0.02, latency=0.65,
                          prompt_tokens=147, output_tokens=64, tag="c4")]
    ours = {"benchmarks": guidellm_keys.levels(recs, [{"tag": "c4", "concurrency": 4}])}
    (row,) = guidellm_keys.compare(ours, theirs)
    real = next(b["metrics"] for b in theirs["benchmarks"]
                if b["config"]["strategy"]["streams"] == 4)
    assert row["concurrency"] == 4
    assert row["output tokens/s"][1] == real["output_tokens_per_second"]["successful"]["mean"]
    assert row["TTFT p99 ms"][1] == real["time_to_first_token_ms"]["successful"]["percentiles"][
        "p99"]
    assert row["ITL p50 ms"][1] == real["inter_token_latency_ms"]["successful"]["median"]
    assert all(value[1] > 0 for name, value in row.items() if name != "concurrency")


def test_the_plan_counts_a_frame_list_video_as_the_front_door_keeps_it():
    from loadtest.plan_check import plan_for_sweep
    from loadtest.workload import Workload

    cfg = load_config(ROOT / "configs" / "default.yaml")
    w = Workload(endpoint="chat", input_tokens=64, output_tokens=8, video_fraction=0.5,
                 video_frames=8, video_size=(224, 224))
    plan = plan_for_sweep(cfg, w, "cpu")
    video = plan["videos"]
    assert video["frames"] == 8 and video["size"] == "224x224"
    without = plan_for_sweep(cfg, w.model_copy(update={"video_fraction": 0.0}), "cpu")
    assert plan["load"]["prompt_tokens"] - without["load"]["prompt_tokens"] == \
        pytest.approx(0.5 * video["prompt_tokens"], abs=1)
