"""A scenario's results folder: JSON, CSV, a Markdown report and PNG plots.

- ``results.json``: the scenario, machine, config, every step's summary under ``vllm bench serve``
  key names with its raw per-request lists (``ttfts``, ``itls``, ``latencies``, ...), the table,
  the targets and what was skipped and why;
- ``records.jsonl``: every request as measured (``loadtest.metrics.RequestRecord``);
- ``results.csv``: the table;
- ``report.md``: the table, targets and skips as Markdown, with the machine described;
- ``*.png``: plots.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from pathlib import Path
from typing import Any

from . import machine
from .metrics import RequestRecord, raw_lists, summarize


def step_result(tag: str, target: str, concurrency: int, records: list[RequestRecord],
                duration: float, memory: dict, workload: dict,
                goodput: dict[str, float] | None = None) -> dict:
    return {"tag": tag, "target": target, "concurrency": concurrency, "workload": workload,
            **summarize(records, duration, goodput), **memory, **raw_lists(records)}


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """``columns``: (key, header). Missing values print as ``-``."""
    head = "| " + " | ".join(h for _, h in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(fmt(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])


class Report:
    def __init__(self, scenario: str, out_dir: Path, settings: dict):
        self.scenario = scenario
        self.out = out_dir
        self.out.mkdir(parents=True, exist_ok=True)
        self.data: dict[str, Any] = {
            "scenario": scenario, "date": dt.datetime.now().isoformat(timespec="seconds"),
            "machine": machine.describe(), "settings": settings, "steps": [], "table": [],
            "targets": [], "skipped": [], "notes": [],
        }
        self.records: list[RequestRecord] = []

    def add_step(self, step: dict, records: list[RequestRecord]) -> None:
        self.data["steps"].append(step)
        self.records.extend(records)

    def skip(self, what: str, reason: str) -> None:
        print(f"  skipped {what}: {reason}", flush=True)
        self.data["skipped"].append({"what": what, "reason": reason})

    def section(self, title: str, intro: str, rows: list[dict],
                columns: list[tuple[str, str]]) -> None:
        """A further Markdown table in the report (and its rows in ``results.json``)."""
        self.data.setdefault("sections", []).append(
            {"title": title, "intro": intro, "rows": rows, "columns": columns})

    def target(self, name: str, measured: float | None, goal: str, met: bool | None,
               detail: str) -> None:
        self.data["targets"].append({"target": name, "measured": measured, "goal": goal,
                                     "met": met, "detail": detail})

    def write(self, columns: list[tuple[str, str]], title: str,
              plots: list[Path] | None = None) -> Path:
        d = self.data
        (self.out / "results.json").write_text(json.dumps(d, indent=1, default=str))
        with open(self.out / "records.jsonl", "w") as fh:
            for r in self.records:
                fh.write(r.to_json() + "\n")
        with open(self.out / "results.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=[k for k, _ in columns], extrasaction="ignore")
            w.writeheader()
            for row in d["table"]:
                w.writerow({k: row.get(k) for k, _ in columns})
        lines = [f"# {title}", "", f"Machine: {d['machine']}  ", f"Date: {d['date']}", "",
                 markdown_table(d["table"], columns), ""]
        if d["targets"]:
            lines += ["## Targets", "", markdown_table(
                [{**t, "met": {True: "yes", False: "NO", None: "n/a"}[t["met"]]}
                 for t in d["targets"]],
                [("target", "target"), ("goal", "goal"), ("measured", "measured"),
                 ("met", "met"), ("detail", "detail")]), ""]
        if d.get("plan_vs_measured"):
            from .plan_check import comparison_table

            lines += ["## Plan vs measured", "", "`qwen-vl plan` for this config and workload "
                      "(speed rows are upper bounds from memory bandwidth).", "",
                      comparison_table(d["plan_vs_measured"])]
        for sec in d.get("sections", []):
            lines += [f"## {sec['title']}", "", sec["intro"], "",
                      markdown_table(sec["rows"], sec["columns"]), ""]
        if d["skipped"]:
            lines += ["## Skipped", ""] + [f"- {s['what']}: {s['reason']}" for s in d["skipped"]]
            lines.append("")
        if d["notes"]:
            lines += ["## Notes", ""] + [f"- {n}" for n in d["notes"]] + [""]
        for p in plots or []:
            lines.append(f"![{p.stem}]({p.name})")
        path = self.out / "report.md"
        path.write_text("\n".join(lines) + "\n")
        return path


def plot(path: Path, title: str, x: list, series: dict[str, list], xlabel: str, ylabel: str,
         logx: bool = False, kind: str = "line") -> Path:
    """One PNG: a line (or grouped bar) chart of ``series`` over ``x``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if kind == "bar":
        width = 0.8 / max(len(series), 1)
        for i, (name, ys) in enumerate(series.items()):
            ax.bar([j + i * width for j in range(len(x))],
                   [y if y is not None else 0 for y in ys], width, label=name)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(x))], [str(v) for v in x])
    else:
        for name, ys in series.items():
            ax.plot(x, ys, marker="o", label=name)
        if logx:
            ax.set_xscale("log", base=2)
            ax.set_xticks(x, [str(v) for v in x])
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return path
