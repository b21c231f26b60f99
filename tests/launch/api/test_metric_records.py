"""``launch.api.metric_records``: counts gathered per request reach Ray once per flush."""


def test_counters_reach_ray_once_per_tag_set_per_flush(monkeypatch):
    """A request adds to the pending counts; a flush hands Ray one ``inc`` per counter and tag
    set with the sum, makes each counter once, and leaves nothing pending."""
    import ray.serve.metrics

    from launch.api import metric_records

    made, calls = [], []

    class Counter:
        def __init__(self, name, description, tag_keys):
            made.append((name, tag_keys))
            self.name = name

        def inc(self, value, tags):
            calls.append((self.name, value, tags))

    monkeypatch.setattr(ray.serve.metrics, "Counter", Counter)
    monkeypatch.setattr(metric_records, "_counters", {})
    monkeypatch.setattr(metric_records, "_pending", {})
    monkeypatch.setattr(metric_records, "_described", {})
    for _ in range(3):
        metric_records.inc_counter("qwen_vl_t", "test", {"route": "/a", "code": "200"})
    metric_records.inc_counter("qwen_vl_t", "test", {"route": "/a", "code": "400"}, 2)
    metric_records.inc_counter("qwen_vl_t", "test", {"route": "/a", "code": "500"}, 0)  # nothing added
    assert calls == []  # nothing reaches Ray before a flush
    metric_records.flush_counters()
    assert made == [("qwen_vl_t", ("route", "code"))]
    assert sorted(calls, key=str) == [("qwen_vl_t", 2, {"route": "/a", "code": "400"}),
                                      ("qwen_vl_t", 3, {"route": "/a", "code": "200"})]
    metric_records.flush_counters()
    assert len(calls) == 2 and len(made) == 1
