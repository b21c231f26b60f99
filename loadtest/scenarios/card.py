"""Scenario ``card``: the model card's speed and memory table, from a live deployment of the stack.

For each quantization variant the platform can serve (the others are listed as skipped, with the
config check's reason), the stack is deployed with that variant (in the dtype the config gives
it: 16-bit, or float32 for the unquantized checkpoint on a CPU without BF16 instructions, see
``engine.config``; prefix caching off), warmed up with one request, and measured at each input
length: one user, prompts of exactly N token ids (checked against ``usage.prompt_tokens``),
``ignore_eos`` outputs of a fixed length, several requests per cell. Reported per cell:

- ``tokens_per_s``: the card's definition, completion tokens / end-to-end time;
- ``decode_tokens_per_s`` (1 / TPOT) and TTFT;
- memory (GPU memory in use, or the engine processes' RSS on CPU) and KV cache usage;
- the card's row and our/card ratios; HF transformers on the same checkpoint and machine
  (``--baseline``, the model card's method) and stack/HF ratios;
- the memory-bandwidth limit of single-stream decode and how close we are (the smallest input
  length), the bandwidth measured just before and just after that cell with the stack up.
"""

from __future__ import annotations

from pathlib import Path

from engine.embedded_model import VARIANTS, variant_source

from .. import deploy, hf_baseline
from ..bandwidth import measure_bandwidth, weight_bytes_per_token
from ..config_check import check
from ..report import Report, plot, step_result
from ..runner import Progress, run_step, warm_up
from ..workload import Workload
from .common import Grid, card_row, derive, hf_dtype, load_base

COLUMNS = [
    ("quantization", "quantization"), ("dtype", "runs in"), ("input_length", "input"),
    ("output_tokens", "output"),
    ("requests", "requests"), ("tokens_per_s", "tokens/s"), ("card_tokens_per_s", "card tokens/s"),
    ("ratio_tokens_per_s", "ours/card"), ("hf_tokens_per_s", "HF here tokens/s"),
    ("stack_vs_hf", "stack/HF"), ("decode_tokens_per_s", "decode tokens/s"),
    ("ttft_ms", "TTFT ms"), ("memory_gib", "memory GiB"), ("card_memory_gb", "card memory GB"),
    ("hf_memory_gib", "HF memory GiB"), ("kv_cache_usage_peak", "KV usage peak"),
    ("prompt_tokens_ok", "prompt tokens exact"),
]


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def run(*, config: Path, family: str, variants: list[str], grid: Grid, out: Path,
        baseline: bool, device_label: str) -> Report:
    base = load_base(config)
    report = Report("card", out, {
        "config": str(config), "model": family, "variants": variants,
        "input_lengths": list(grid.input_lengths), "output_tokens": grid.output_tokens,
        "requests_per_cell": grid.requests_per_cell, "baseline": baseline})
    print(f"card: {family} model, variants {', '.join(variants)}, input lengths "
          f"{list(grid.input_lengths)}, {grid.output_tokens} output tokens, "
          f"{grid.requests_per_cell} request(s) per cell", flush=True)
    runnable = []
    for variant in variants:
        data = derive(base, source=variant_source(family, variant),
                      max_model_len=max(grid.input_lengths) + grid.output_tokens + 32,
                      prefix_caching=False)
        cfg, reason = check(data, f"card {variant}")
        if reason:
            report.skip(variant, reason)
        else:
            runnable.append((variant, data, cfg))
    cells = Progress("card", len(runnable) * len(grid.input_lengths), every=0, unit="cells")
    done = 0
    for variant, data, cfg in runnable:
        rows, dtype, bandwidth = [], cfg.engine_dtype(), []
        with deploy.stack(data, out / "deploy", name=f"stack-{variant}") as target:
            warm_up(target, Workload(input_tokens=min(grid.input_lengths), seed=7),
                    output_tokens=min(16, grid.output_tokens), out_dir=out / "steps",
                    tag=f"{variant}-warmup")
            # The limit is measured just before and just after the decode it is compared
            # with, on the same machine state (stack up, idle): a shared host's bandwidth
            # moves by a fifth or more within minutes.
            bandwidth.append(_measure_bandwidth("before", variant))
            for n_in in sorted(grid.input_lengths):
                w = Workload(input_tokens=n_in, output_tokens=grid.output_tokens, seed=n_in)
                step = run_step(target, w, concurrency=1, num_requests=grid.requests_per_cell,
                                out_dir=out / "steps", tag=f"{variant}-in{n_in}")
                report.add_step(step_result(f"{variant}-in{n_in}", "stack", 1, step.records,
                                            step.duration, step.memory, w.model_dump()),
                                step.records)
                ok = [r for r in step.records if r.success]
                card = card_row(n_in, variant) or {}
                row = {
                    "quantization": variant, "dtype": dtype,
                    "input_length": n_in,
                    "output_tokens": grid.output_tokens, "requests": len(ok),
                    "failed": len(step.records) - len(ok),
                    "tokens_per_s": _mean([r.output_tokens / r.latency for r in ok]),
                    "decode_tokens_per_s": _mean([r.decode_tokens_per_s for r in ok]),
                    "ttft_ms": _mean([r.ttft * 1000 for r in ok]),
                    "memory_gib": step.memory.get("memory_gib_peak"),
                    "kv_cache_usage_peak": step.memory.get("kv_cache_usage_peak"),
                    "prompt_tokens_ok": bool(ok) and all(
                        r.prompt_tokens == n_in for r in ok),
                    "output_tokens_ok": bool(ok) and all(
                        r.output_tokens == grid.output_tokens for r in ok),
                    "card_tokens_per_s": card.get("tokens_per_s"),
                    "card_memory_gb": card.get("gpu_memory_gb"),
                }
                row["ratio_tokens_per_s"] = _ratio(row["tokens_per_s"], row["card_tokens_per_s"])
                row["ratio_memory"] = _ratio(row["memory_gib"], row["card_memory_gb"])
                rows.append(row)
                done += 1
                cells.update(done, force=True)
                if len(rows) == 1:
                    bandwidth.append(_measure_bandwidth("after", variant))
        if baseline:
            _add_baseline(report, variant, cfg.model_path(), hf_dtype(cfg), grid, rows)
        report.data.setdefault("bandwidth_bytes_per_s", {})[variant] = bandwidth
        _bandwidth_target(report, variant, cfg.model_path(), dtype, bandwidth, rows)
        report.data["table"].extend(rows)
        # After every variant, so a long run stopped part-way keeps what it measured.
        report.write(COLUMNS, f"Model card table: {family} model, {device_label}",
                     _plots(report, out))
    if not runnable:
        report.write(COLUMNS, f"Model card table: {family} model, {device_label}")
    return report


def _ratio(a, b):
    return a / b if a is not None and b else None


def _add_baseline(report: Report, variant: str, model_path: str, dtype: str, grid: Grid,
                  rows: list[dict]) -> None:
    print(f"  HF transformers baseline ({variant}, batch 1, {dtype}) ...", flush=True)
    result = hf_baseline.run(model_path, dtype, list(grid.input_lengths),
                             grid.output_tokens, grid.requests_per_cell)
    if "skipped" in result:
        report.skip(f"HF transformers baseline, {variant}", result["skipped"])
        return
    report.data.setdefault("baseline", {})[variant] = result
    by_len = {r["input_length"]: r for r in result["rows"]}
    for row in rows:
        hf = by_len.get(row["input_length"])
        if hf:
            row["hf_tokens_per_s"] = hf["tokens_per_s"]
            row["hf_memory_gib"] = hf["memory_gib"]
            row["stack_vs_hf"] = _ratio(row["tokens_per_s"], hf["tokens_per_s"])


def _measure_bandwidth(when: str, variant: str) -> float:
    bandwidth = measure_bandwidth()
    print(f"  memory bandwidth {when} {variant}'s single-stream decode: "
          f"{bandwidth / 1e9:.1f} GB/s", flush=True)
    return bandwidth


def _bandwidth_target(report: Report, variant: str, model_path: str, dtype: str,
                      measured_bandwidth: list[float], rows: list[dict]) -> None:
    """Decode at the smallest input length against ``bandwidth / weight bytes per token``,
    with the higher of the two bandwidths measured around it (the stricter limit)."""
    row = min(rows, key=lambda r: r["input_length"])
    per_token = weight_bytes_per_token(model_path, dtype)
    bandwidth = max(measured_bandwidth)
    limit = bandwidth / per_token
    measured = row["decode_tokens_per_s"]
    ratio = limit / measured if measured else None
    report.target(
        f"single-stream decode vs bandwidth limit ({variant})", ratio, "limit/measured <= 2",
        None if ratio is None else ratio <= 2.0,
        f"{per_token / 1e9:.2f} GB of weights per token ({dtype}), {bandwidth / 1e9:.1f} GB/s measured "
        f"(the higher of {' and '.join(f'{b / 1e9:.1f}' for b in measured_bandwidth)}, just "
        f"before and after the decode): limit {limit:.1f} tokens/s, measured decode {measured or 0:.1f} "
        f"tokens/s at input {row['input_length']}")


def _plots(report: Report, out: Path) -> list[Path]:
    table = report.data["table"]
    if not table:
        return []
    lengths = sorted({r["input_length"] for r in table})
    variants = [v for v in VARIANTS if any(r["quantization"] == v for r in table)]

    def series(key: str, card_key: str) -> dict[str, list]:
        s: dict[str, list] = {}
        for v in variants:
            rows = {r["input_length"]: r for r in table if r["quantization"] == v}
            s[f"{v} (ours)"] = [rows.get(n, {}).get(key) for n in lengths]
            cards = [(card_row(n, v) or {}).get(card_key) for n in lengths]
            if any(c is not None for c in cards):
                s[f"{v} (card, A100)"] = cards
        return s

    return [
        plot(out / "tokens_per_s.png", "Tokens/s at batch 1 (completion tokens / E2EL)", lengths,
             series("tokens_per_s", "tokens_per_s"), "input length (tokens)", "tokens/s",
             kind="bar"),
        plot(out / "memory.png", "Memory in use (ours: engine; card: GPU)", lengths,
             series("memory_gib", "gpu_memory_gb"), "input length (tokens)", "GiB / GB",
             kind="bar"),
    ]
