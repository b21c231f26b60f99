"""A local Prometheus (Debian's ``prometheus`` package) scraping a stack with our rules loaded,
and its HTTP query API: what the dashboard script and the live monitoring tests read."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from launch.cluster.local_cluster import free_port


class PrometheusError(RuntimeError):
    pass


class LocalPrometheus:
    """``prometheus`` on 127.0.0.1 with a private data directory, scraping ``jobs`` every
    ``interval`` and evaluating ``rules`` (a rules-file dict) as often. Stop with ``close``."""

    def __init__(self, work: Path, jobs: list[dict[str, Any]], rules: dict[str, Any] | None,
                 interval: str = "1s"):
        binary = shutil.which("prometheus")
        if binary is None:
            raise PrometheusError("prometheus is not installed (Debian: apt-get install "
                                  "prometheus)")
        work.mkdir(parents=True, exist_ok=True)
        config: dict[str, Any] = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "scrape_configs": jobs,
        }
        if rules is not None:
            # The rule groups evaluate at the scrape interval (the shipped recording group's
            # 30 s would make a short run wait for its first samples).
            rules = json.loads(json.dumps(rules))
            for group in rules["groups"]:
                group["interval"] = interval
            (work / "rules.yaml").write_text(yaml.safe_dump(rules, sort_keys=False))
            config["rule_files"] = [str(work / "rules.yaml")]
        (work / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = work / "prometheus.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [binary, f"--config.file={work / 'prometheus.yml'}",
                 f"--storage.tsdb.path={work / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise PrometheusError(f"prometheus did not start:\n"
                                      f"{self.log.read_text()[-2000:]}")
            time.sleep(0.3)

    @staticmethod
    def job(name: str, target: str, path: str = "/metrics",
            credentials_file: str | None = None, keep_none: bool = False) -> dict[str, Any]:
        """A scrape job; ``keep_none`` scrapes (``up``, sample counts) but stores no series."""
        job: dict[str, Any] = {"job_name": name, "metrics_path": path,
                               "static_configs": [{"targets": [target]}]}
        if credentials_file:
            job["authorization"] = {"type": "Bearer", "credentials_file": credentials_file}
        if keep_none:
            job["metric_relabel_configs"] = [{"source_labels": ["__name__"], "regex": ".+",
                                              "action": "drop"}]
        return job

    def _get(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=30) as r:
            body = json.loads(r.read())
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's vector (``[{"metric": {...}, "value": [t, "v"]}, ...]``)."""
        return self._get("query", query=expr)["result"]

    def query_range(self, expr: str, start: float, end: float, step: float
                    ) -> list[dict[str, Any]]:
        return self._get("query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}",
                         step=f"{step:g}")["result"]

    def targets(self) -> list[dict[str, Any]]:
        return self._get("targets")["activeTargets"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
