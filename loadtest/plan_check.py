"""The sweep's "plan vs measured": what ``qwen-vl plan`` predicts for the deployment and the
sweep's workload, beside what the sweep measured, with the ratio measured / planned.

- KV cache tokens: planned; measured is the engine's own start-up line ("KV cache size: N
  tokens") in the stack's Ray logs (not available for ``--url``).
- decode tokens/s of one stream: the bandwidth bound at batch 1; measured 1000 / TPOT p50 at
  concurrency 1.
- output tokens/s at the peak level: the bandwidth bound at that concurrency; measured the
  level's output throughput.
- concurrent requests: planned, those that fit (KV cache and ``engine.max_num_seqs``); measured,
  the highest level that met the SLO (the capacity the sweep reports).

The speed rows are upper bounds: a ratio well below 1 is normal (kernels, scheduling, the
HTTP path); a ratio above 1 means the plan is wrong.
"""

from __future__ import annotations

from pathlib import Path

from engine.capacity import Workload as PlanWorkload
from engine.capacity import decode_bound
from engine.capacity_check import KV_LOG
from engine.devices import row_for_gpu_name


def kv_tokens_from_logs(temp_dir: str) -> int | None:
    """The KV cache size the engine logged at start-up, from a Ray session's logs."""
    found = None
    for f in sorted((Path(temp_dir) / "session_latest" / "logs").glob("*"),
                    key=lambda p: p.stat().st_mtime):
        try:
            m = KV_LOG.findall(f.read_text(errors="replace"))
        except OSError:
            continue
        if m:
            found = int(m[-1].replace(",", ""))
    return found


def plan_for_sweep(cfg, workload, gpu_label: str) -> dict | None:
    """The plan for a deployment's config and the sweep's (load-test) workload; None (and
    why, printed) if it cannot be made. ``gpu_label``: this machine's GPU name as the load
    test reports it (nvidia-smi's), mapped to a row of the plan's table."""
    from engine.capacity import PlanError
    from launch.plan import plan_for

    w, h = workload.image_size
    # A frame list is a video whose every frame the front door keeps: one of video_frames
    # frames at the config's own sampling rate.
    fps = cfg.multimodal.video_fps
    pw = PlanWorkload(prompt_tokens=workload.input_tokens, output_tokens=workload.output_tokens,
                      images=workload.image_fraction * workload.images_per_request,
                      image_size=(w, h), image_repeat=workload.image_repeat_fraction,
                      videos=workload.video_fraction, video_size=workload.video_size,
                      video_seconds=workload.video_frames / fps, video_fps=fps)
    try:
        row = None if cfg.deployment.device == "cpu" else row_for_gpu_name(gpu_label)
        return plan_for(cfg, row, pw).to_dict()
    except PlanError as err:
        print(f"  no capacity plan: {err}", flush=True)
        return None


def comparison(plan: dict, table: list[dict], capacity: int, kv_measured: int | None) -> list:
    sp = plan["speed"]
    rows = [("KV cache tokens", plan["kv_cache"]["tokens_reported_by_vllm"], kv_measured)]
    c1 = next((r for r in table if r["concurrency"] == 1), None)
    peak = max(table, key=lambda r: r["output_throughput"])
    if sp.get("bandwidth_gbs"):
        rows.append(("decode tokens/s, one stream (bound)", decode_bound(sp, 1),
                     1000 / c1["median_tpot_ms"] if c1 and c1.get("median_tpot_ms") else None))
        rows.append((f"output tokens/s at concurrency {peak['concurrency']} (bound)",
                     decode_bound(sp, peak["concurrency"]), peak["output_throughput"]))
    rows.append(("concurrent requests (plan: fit; measured: highest level meeting the SLO)",
                 plan["load"]["fit_concurrency"], capacity))
    return [{"what": what, "planned": p, "measured": m,
             "ratio": (m / p) if m is not None and p else None} for what, p, m in rows]


def comparison_table(rows: list[dict]) -> str:
    """A markdown table: what, planned, measured, measured / planned."""
    def num(v):
        if v is None:
            return "-"
        return f"{v:,}" if isinstance(v, int) else f"{v:,.0f}" if abs(v) >= 100 else f"{v:,.2f}"

    lines = ["| | planned | measured | measured / planned |", "|---|---|---|---|"]
    lines += [f"| {r['what']} | {num(r['planned'])} | {num(r['measured'])} | "
              f"{'-' if r['ratio'] is None else format(r['ratio'], '.2f')} |" for r in rows]
    return "\n".join(lines) + "\n"
