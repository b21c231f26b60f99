"""The Grafana dashboard's panels drawn from a real Prometheus scrape (docs/images/dashboard.png).

    python -m loadtest.dashboard [--seconds 120] [--out docs/images/dashboard.png]

deploys the default config (named keys with quotas), starts a local Prometheus (Debian's
``prometheus``) scraping it with the shipped rules, drives a mixed load (text and image chats,
streams, bad requests, a burst beyond capacity, two keys over their quotas), and draws each
panel of ``launch.generate.monitoring.dashboard()`` with its own queries, as Grafana would (time
series, one line per series, the panel's legend format). ``render_png`` alone draws from any
Prometheus.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from launch.generate.monitoring import dashboard, rules

from .prometheus import LocalPrometheus

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "docs" / "images" / "dashboard.png"


def _legend(fmt: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt).strip() \
        or "value"


def render_png(prom: LocalPrometheus, out: Path, start: float, end: float,
               rate_interval: str = "1m", title: str = "qwen-vl-serving") -> int:
    """Draw every panel over [start, end]; returns how many panels had data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = dashboard()["panels"]
    cols = 3
    rows = (len(panels) + cols - 1) // cols
    plt.style.use("dark_background")
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 3.2 * rows), squeeze=False)
    step = max(1.0, (end - start) / 240)
    with_data = 0
    for ax, panel in zip(axes.flat, panels):
        lines = 0
        for target in panel["targets"]:
            expr = target["expr"].replace("$__rate_interval", rate_interval)
            for s in prom.query_range(expr, start, end, step):
                xs = [float(t) - start for t, _ in s["values"]]
                ys = [float(v) for _, v in s["values"]]
                ax.plot(xs, ys, linewidth=1.2, label=_legend(target["legendFormat"],
                                                             s["metric"]))
                lines += 1
        with_data += lines > 0
        unit = panel["fieldConfig"]["defaults"]["unit"]
        ax.set_title(f"{panel['title']} ({unit})", fontsize=10, loc="left")
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.2)
        ax.set_xlabel("seconds", fontsize=7)
        if lines:
            ax.legend(fontsize=6, loc="upper left", ncol=2)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=13)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=70)
    plt.close(fig)
    return with_data


# ------------------------------------------------------------------------ the whole run
KEYS = {"default": "sk-dashboard-default", "team-a": "sk-dashboard-team-a",
        "team-b": "sk-dashboard-team-b"}


def _post(base: str, key: str, body: dict) -> int:
    req = urllib.request.Request(f"{base}/v1/chat/completions", json.dumps(body).encode(),
                                 {"content-type": "application/json",
                                  "authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as err:
        err.read()
        return err.code
    except OSError:
        return 0


def _png_url() -> str:
    import base64
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (224, 320, 3), dtype=np.uint8)
                    ).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def mixed_load(base: str, model: str, seconds: float, keys: dict[str, str] = KEYS
               ) -> dict[str, dict[int, int]]:
    """Text and image chats per key (team-b streams), a bad request every few seconds, and a
    burst of 24 at once half-way (beyond max_ongoing + max_queued: 503s). Status counts per key."""
    image = _png_url()
    counts: dict[str, dict[int, int]] = {k: {} for k in keys}
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def note(key: str, status: int) -> None:
        with lock:
            counts[key][status] = counts[key].get(status, 0) + 1

    def worker(key: str, kind: str) -> None:
        while time.monotonic() < end:
            content = "Describe the picture." if kind == "text" else [
                {"type": "image_url", "image_url": {"url": image}},
                {"type": "text", "text": "What is this?"}]
            body = {"model": model, "max_tokens": 24, "stream": key == "team-b",
                    "messages": [{"role": "user", "content": content}]}
            if kind == "bad":
                body["max_tokens"] = 0
                time.sleep(3)
            status = _post(base, keys[key], body)
            note(key, status)
            if kind != "text" or status in (429, 503):
                time.sleep(0.5)

    threads = [threading.Thread(target=worker, args=(k, kind), daemon=True)
               for k in keys for kind in ("text", "image")]
    threads.append(threading.Thread(target=worker, args=("default", "bad"), daemon=True))
    for t in threads:
        t.start()
    time.sleep(seconds / 2)
    burst = [threading.Thread(target=lambda: note("default", _post(
        base, keys["default"], {"model": model, "max_tokens": 48,
                                "messages": [{"role": "user", "content": "burst"}]})),
        daemon=True) for _ in range(24)]
    for t in burst:
        t.start()
    for t in threads + burst:
        t.join()
    return counts


def stack_overrides(keys_file: Path) -> dict:
    """The default config with named keys, quotas and a small capacity (a burst overloads it)."""
    return {
        "deployment": {"max_ongoing_requests": 4, "max_queued_requests": 2},
        "access": {"api_keys_env": None, "api_keys_file": str(keys_file), "metrics": "key",
                   "keys": {"team-a": {"env": "QWEN_VL_TEAM_A_KEY"},
                            "team-b": {"env": "QWEN_VL_TEAM_B_KEY"}},
                   "quotas": {"team-a": {"tokens_per_minute": 2000, "concurrent_requests": 1},
                              "team-b": {"requests_per_minute": 30}}},
    }


def main(argv: list[str] | None = None) -> int:
    import os

    import yaml

    from engine.config import parse_config

    from .deploy import stack
    from .machine import describe

    p = argparse.ArgumentParser(prog="python -m loadtest.dashboard", description=__doc__)
    p.add_argument("--seconds", type=float, default=120, help="load duration")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the PNG to write")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="qwen-vl-dashboard-"))
    keys_file = work / "api-keys"
    keys_file.write_text(KEYS["default"] + "\n")
    os.environ["QWEN_VL_TEAM_A_KEY"], os.environ["QWEN_VL_TEAM_B_KEY"] = \
        KEYS["team-a"], KEYS["team-b"]
    os.environ.setdefault("RAY_metrics_report_interval_ms", "1000")
    data = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())
    for section, values in stack_overrides(keys_file).items():
        data.setdefault(section, {}).update(values)
    (work / "key").write_text(KEYS["default"])
    with stack(data, work) as target:
        metrics_port = int(target.metrics_url.rsplit(":", 1)[1].split("/")[0])
        api = target.base_url.split("//", 1)[1]
        prom = LocalPrometheus(work / "prometheus", [
            LocalPrometheus.job("ray", f"127.0.0.1:{metrics_port}"),
            LocalPrometheus.job("api", api, credentials_file=str(work / "key"), keep_none=True),
        ], rules(parse_config(data)))
        try:
            start = time.time()
            print(f"load for {args.seconds:g} s ...", flush=True)
            counts = mixed_load(target.base_url, target.model, args.seconds)
            print(f"  statuses per key: {counts}", flush=True)
            time.sleep(5)
            n = render_png(prom, args.out, start - 10, time.time(),
                           title=f"qwen-vl-serving: {target.model} on {describe()}")
        finally:
            prom.close()
    print(f"wrote {args.out} ({n} panels with data)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
