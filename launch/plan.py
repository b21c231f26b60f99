"""``qwen-vl plan``: the capacity plan of a config (``engine.capacity``) as a table or JSON."""

from __future__ import annotations

import argparse
import json

from engine.capacity import (PlanError, Plan, Workload, architecture_for, gib, make_plan,
                             parse_size)
from engine.devices import GPUS, gpu


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="YAML config (see configs/)")
    p.add_argument("--device", default=None,
                   help=f"{', '.join(GPUS)} or cpu (default: cpu for a CPU config; a GPU "
                        "config needs one)")
    p.add_argument("--bandwidth-gbs", type=float, default=None,
                   help="CPU memory bandwidth in GB/s (default: measured here)")
    w = p.add_argument_group("workload (per request)")
    w.add_argument("--prompt-tokens", type=int, default=512, help="text tokens (default 512)")
    w.add_argument("--output-tokens", type=int, default=128, help="default 128")
    w.add_argument("--images", type=int, default=1, help="images per request (default 1)")
    w.add_argument("--image-size", default="1024x768", help="WIDTHxHEIGHT (default 1024x768)")
    w.add_argument("--image-repeat", type=float, default=0.0,
                   help="share of image requests whose image was sent before (0-1, default 0): "
                        "the engine's caches skip those images' vision encoder and prefill on "
                        "the replica that has them (every repeat with "
                        "deployment.routing.image_affinity, one in N replicas without)")
    w.add_argument("--videos", type=int, default=0, help="video files per request (default 0)")
    w.add_argument("--video-seconds", type=float, default=60,
                   help="duration of each video (default 60)")
    w.add_argument("--video-fps", type=float, default=30,
                   help="the video files' own frame rate (default 30)")
    w.add_argument("--video-size", default="640x360", help="WIDTHxHEIGHT (default 640x360)")
    w.add_argument("--rps", type=float, default=None, help="target requests/s")
    w.add_argument("--concurrency", type=int, default=None, help="target requests in flight")
    w.add_argument("--slo-ttft-ms", type=float, default=None)
    w.add_argument("--slo-tpot-ms", type=float, default=None)
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--check", action="store_true",
                   help="also start the engine here with the config and compare its KV cache "
                        "size and weights with the plan (minutes)")


def workload_from(args) -> Workload:
    sizes = {}
    for flag in ("image_size", "video_size"):
        try:
            sizes[flag] = parse_size(getattr(args, flag))
        except ValueError as err:
            raise PlanError(f"--{flag.replace('_', '-')} {err}") from None
    for name in ("prompt_tokens", "output_tokens", "images", "videos"):
        if getattr(args, name) < 0:
            raise PlanError(f"--{name.replace('_', '-')} must be >= 0")
    for name in ("video_seconds", "video_fps"):
        if getattr(args, name) <= 0:
            raise PlanError(f"--{name.replace('_', '-')} must be > 0")
    if not 0 <= args.image_repeat <= 1:
        raise PlanError(f"--image-repeat must be between 0 and 1, not {args.image_repeat:g}")
    return Workload(prompt_tokens=args.prompt_tokens, output_tokens=args.output_tokens,
                    images=args.images, image_size=sizes["image_size"], videos=args.videos,
                    video_seconds=args.video_seconds, video_fps=args.video_fps,
                    video_size=sizes["video_size"], image_repeat=args.image_repeat,
                    requests_per_s=args.rps,
                    concurrency=args.concurrency, slo_ttft_ms=args.slo_ttft_ms,
                    slo_tpot_ms=args.slo_tpot_ms)


def plan_for(cfg, device_name: str | None, workload: Workload,
             bandwidth_gbs: float | None = None) -> Plan:
    """The plan of a loaded config; ``device_name`` None means the config's own device."""
    name = device_name or ("cpu" if cfg.deployment.device == "cpu" else None)
    if name is None:
        raise PlanError(f"the config serves on GPUs: say which with --device ({', '.join(GPUS)})")
    try:
        device = None if name.lower() == "cpu" else gpu(name)
    except KeyError as err:
        raise PlanError(str(err.args[0])) from None
    if device is None and bandwidth_gbs is None:
        from engine.memory_bandwidth import measure_bandwidth

        bandwidth_gbs = measure_bandwidth() / 1e9
    arch, origin = architecture_for(cfg)
    return make_plan(cfg, arch, origin, device, workload, cpu_bandwidth_gbs=bandwidth_gbs)


def format_plan(plan: dict) -> str:
    m, mem, kv, img, sp, ld = (plan[k] for k in ("model", "memory", "kv_cache", "images",
                                                 "speed", "load"))
    w, dev = m["weights_bytes"], plan["device"]
    per_gpu = "" if dev["name"] == "cpu" else " per GPU"
    rows = [
        ("model", f"{m['source']} ({m['dtype']}, quantization {m['quantization']}, "
                  f"TP {m['tensor_parallel_size']})"),
        ("architecture from", m["config_from"]),
        ("device", f"{dev['name']}" + (f", {gib(dev['memory_bytes'])}" if dev["memory_bytes"]
                                       else "")
         + (f", {dev['bandwidth_gbs']:.0f} GB/s" if dev["bandwidth_gbs"] else "")),
        ("weights", f"{gib(w['total'])} (language model {gib(w['language_model'])}, vision "
                    f"tower {gib(w['vision_tower'])})" + (f"; per GPU {gib(mem['weights_per_gpu_bytes'])}"
                                                 if per_gpu else "")),
    ]
    if "budget_bytes" in mem:
        rows.append(("GPU memory budget", f"{gib(mem['budget_bytes'])} "
                     f"({mem['gpu_memory_utilization']:g} x {gib(mem['gpu_bytes'])}); "
                     f"activation peak ~{gib(mem['activation_peak_bytes_estimate'])}, "
                     f"runtime ~{gib(mem['runtime_overhead_bytes_estimate'])} (estimates)"))
    rows += [
        ("KV cache memory", f"{gib(mem['kv_cache_bytes'])}{per_gpu} ({mem['source']})"),
        ("KV bytes per token", f"{kv['bytes_per_token']:,} ("
                               + (f"{kv['bytes_per_token_per_gpu']:,} per GPU; " if per_gpu else "")
                               + m["kv_cache_dtype"] + ")"),
        ("KV capacity", f"{kv['tokens']:,} tokens in {kv['blocks']:,} blocks of "
                        f"{m['block_size']} (vLLM logs {kv['tokens_reported_by_vllm']:,}); "
                        f"{kv['max_concurrency_at_max_model_len']:.2f} requests at max_model_len "
                        f"{m['max_model_len']:,}"),
        ("image", f"{img['size']} -> {img['resized_width']}x{img['resized_height']}: "
                  f"{img['prompt_tokens']} prompt tokens ({img['image_tokens']} image + 2); "
                  f"vision encoder {img['vision_gflops']:.1f} GFLOP"),
    ]
    vid = plan.get("videos") or {}
    if vid:
        rows.append(("video", f"{vid['duration_s']:g} s {vid['size']} at {vid['fps']:g} fps -> "
                     f"{vid['frames']} frames of {vid['resized_width']}x{vid['resized_height']}: "
                     f"{vid['prompt_tokens']:,} prompt tokens (budget {vid['budget_tokens']:,}); "
                     f"vision encoder {vid['vision_gflops']:.1f} GFLOP"))
    rows += [
        ("request", f"{ld['request_tokens']:,} tokens (prompt {ld['prompt_tokens']:,} incl. "
                    f"images{' and videos' if vid else ''}, output "
                    f"{ld['request_tokens'] - ld['prompt_tokens']:,})"),
        ("concurrency that fits", f"{ld['fit_concurrency']} (limited by {ld['fit_limited_by']})"),
    ]
    if "decode_tokens_per_s_batch1_max" in sp:
        rows.append(("decode bound", f"<= {sp['decode_tokens_per_s_batch1_max']:.0f} tokens/s at "
                     f"batch 1; <= {sp['decode_tokens_per_s_at_fit_max']:.0f} tokens/s at batch "
                     f"{max(ld['fit_concurrency'], 1)} (TPOT >= {sp['tpot_ms_at_fit_min']:.1f} "
                     "ms), from memory bandwidth"))
    if "prefill_ms_min" in sp:
        cached = plan["images"].get("cached_share", 0)
        rows.append(("prefill bound", f">= {sp['prefill_ms_min']:.1f} ms per request (vision "
                     f"{sp['vision_ms_per_image_min']:.2f} ms per image) at "
                     f"{sp['peak_tflops']:.0f} TFLOPS peak"
                     + (f"; {cached:.0%} of images found in the engine's caches" if cached
                        else "")))
    if "replicas_needed_min" in ld:
        rows.append(("replicas needed", f">= {ld['replicas_needed_min']}"
                     + (f" ({ld['gpus_needed_min']} GPUs)" if ld.get("gpus_needed_min") else "")
                     + (f" for {ld['output_tokens_per_s_needed']:.0f} output tokens/s"
                        if "output_tokens_per_s_needed" in ld else "")))
    width = max(len(k) for k, _ in rows)
    out = [f"{k:<{width}}  {v}" for k, v in rows]
    out += [f"warning: {msg}" for msg in plan["warnings"]]
    return "\n".join(out) + "\n"


def run(args) -> str:
    from engine.checkpoint_fit import check_checkpoint
    from engine.config import load_config

    cfg = load_config(args.config)
    check_checkpoint(cfg)
    plan = plan_for(cfg, args.device, workload_from(args), args.bandwidth_gbs).to_dict()
    text = format_plan(plan)
    if args.check:
        from engine.capacity_check import compare, format_comparison, measure

        if not args.json:  # the plan first: the engine takes minutes to start
            print(text + "starting the engine for the check...", flush=True)
            text = ""
        plan["check"] = compare(plan, measure(args.config))
        text += format_comparison(plan["check"])
    return json.dumps(plan, indent=2) + "\n" if args.json else text
