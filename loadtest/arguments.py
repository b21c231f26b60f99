"""``qwen-vl-loadtest``'s command line: every scenario's flags (``build_parser``) and the
defaults a flag left out takes per kind of run (``DEFAULTS``: quick, CPU, GPU)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from engine.embedded_model import FAMILIES, VARIANTS

from .scenarios.common import CARD_GRID, CPU_GRID, ROOT


def _ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least 1")
    return value


def _frames(text: str) -> int:
    value = _positive(text)
    if value < 2:  # Workload.video_frames: Qwen2-VL encodes frames in pairs
        raise argparse.ArgumentTypeError(f"{text!r}: a video needs at least 2 frames")
    return value


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected requests/s, e.g. 2.5") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be above 0")
    return value


def _ratios(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected numbers, e.g. 0,0.9") from None
    if not values or any(not 0 <= v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: each ratio must be between 0 and 1")
    return values


def _ratio(text: str) -> float:
    values = _ratios(text)
    if len(values) != 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected one ratio between 0 and 1")
    return values[0]


def _variants(text: str) -> list[str]:
    names = {v.lower(): v for v in VARIANTS}
    out = []
    for x in text.split(","):
        if x.strip().lower() not in names:
            raise argparse.ArgumentTypeError(f"unknown variant {x!r}; choose from "
                                             f"{', '.join(VARIANTS)}")
        out.append(names[x.strip().lower()])
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qwen-vl-loadtest", description=(
        "One command per load-test scenario: each deploys what it measures, tears it down, "
        "shows progress with an ETA and writes a results folder (docs/load-testing.md)."))
    sub = p.add_subparsers(dest="scenario", required=True)

    def common(sp, model_default: str | None = None):
        sp.add_argument("--config", type=Path, default=ROOT / "configs" / "default.yaml",
                        help="the base config (default: configs/default.yaml)")
        sp.add_argument("--model", choices=list(FAMILIES), default=model_default,
                        help="embedded model: tiny (quick) or 2b (the real Qwen2-VL-2B size); "
                             "default: " + (model_default or "the config's model"))
        sp.add_argument("--quick", action="store_true",
                        help="seconds per step: short lengths, few requests (CI)")
        sp.add_argument("--out", type=Path, help="results folder (default: results/...)")
        return sp

    card = common(sub.add_parser("card", help="the model card's table from a live stack"),
                  model_default="tiny")
    card.add_argument("--variants", type=_variants, default=list(VARIANTS),
                      help="comma-separated, of " + ", ".join(VARIANTS) + " (default: all)")
    card.add_argument("--input-lengths", type=_ints,
                      help=f"default: card {list(CARD_GRID.input_lengths)} on GPU, "
                           f"{list(CPU_GRID.input_lengths)} on CPU")
    card.add_argument("--output-tokens", type=int,
                      help=f"default {CARD_GRID.output_tokens} on GPU, {CPU_GRID.output_tokens} on CPU")
    card.add_argument("--requests", type=int, help="measured requests per cell")
    card.add_argument("--no-baseline", dest="baseline", action="store_false",
                      help="skip the HF transformers columns")

    def mixed_workload_flags(sp):  # sweep and overhead send the same mixed workload
        sp.add_argument("--image-fraction", type=float, default=0.5)
        sp.add_argument("--images-per-request", type=int, default=1)
        sp.add_argument("--image-size", type=_size, help="WIDTHxHEIGHT (default 448x448)")
        sp.add_argument("--video-fraction", type=_ratio, default=0.0,
                        help="share of requests with a video: a frame list of random-pixel "
                             "JPEGs (default 0)")
        sp.add_argument("--video-frames", type=_frames, default=8,
                        help="frames per video (default 8; at most the config's "
                             "multimodal.video_max_frames)")
        sp.add_argument("--video-size", type=_size, default=(224, 224),
                        help="WIDTHxHEIGHT of each frame (default 224x224)")

    def run_dir_flag(sp):  # scenarios that can measure a stack already running here
        sp.add_argument("--run-dir", type=Path,
                        help="measure the stack `qwen-vl serve` runs on this machine from this "
                             "run directory (its QWEN_VL_RUN_DIR) instead of deploying one: "
                             "its URL, ports and processes (CPU, memory, KV cache) are read "
                             "from there, --config is the config it serves; it is neither "
                             "started nor stopped")

    def one_model(sp):
        common(sp)
        sp.add_argument("--variant", type=lambda t: _variants(t)[0], default="BF16",
                        help="with --model: which variant of it (default BF16)")
        sp.add_argument("--input-tokens", type=int, help="prompt length (chat: words)")
        sp.add_argument("--output-tokens", type=int, help="tokens generated per request")
        return sp

    sweep = one_model(sub.add_parser("sweep", help="concurrency sweep to saturation, capacity"))
    sweep.add_argument("--url", help="measure this running deployment instead of deploying")
    sweep.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"),
                       help="with --url (default: $OPENAI_API_KEY)")
    run_dir_flag(sweep)
    sweep.add_argument("--max-concurrency", type=int)
    sweep.add_argument("--min-requests", type=int, help="requests per level at least")
    mixed_workload_flags(sweep)
    sweep.add_argument("--slo-ttft-ms", type=float)
    sweep.add_argument("--slo-tpot-ms", type=float)

    cal = one_model(sub.add_parser(
        "calibrate", help="sweep one replica, write the autoscaler, queue and alert settings "
                          "it supports (a config overlay and Helm values), then verify them"))
    cal.add_argument("--url", help="sweep this running deployment (one replica) instead of "
                                   "deploying one; the verification then needs --verify-url")
    cal.add_argument("--verify-url", help="verify against this deployment of the calibrated "
                                          "config (one replica) instead of deploying it")
    cal.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"),
                     help="with --url or --verify-url (default: $OPENAI_API_KEY)")
    run_dir_flag(cal)
    cal.add_argument("--max-concurrency", type=int)
    cal.add_argument("--min-requests", type=int,
                     help="requests per level at least (default 24 on CPU, 64 on GPU: a p99 "
                          "from fewer is one request's luck)")
    mixed_workload_flags(cal)
    cal.add_argument("--repeats", type=_ratio, default=0.0,
                     help="share of image requests whose images were sent before (0-1)")
    cal.add_argument("--slo-ttft-ms", type=float)
    cal.add_argument("--slo-tpot-ms", type=float)
    cal.add_argument("--request-rate", type=_rate,
                     help="peak requests/s the deployment must hold: sets max_replicas "
                          "(default: the config's own)")
    cal.add_argument("--min-request-rate", type=_rate,
                     help="requests/s it holds at all times: sets min_replicas (default 1)")
    cal.add_argument("--verify-requests", type=_positive,
                     help="requests sent in the verification (default 4 with --quick, "
                          "else 32 on CPU, 200 on GPU)")

    over = one_model(sub.add_parser("overhead", help="our stack vs bare vllm serve"))
    mixed_workload_flags(over)
    run_dir_flag(over)
    over.add_argument("--concurrency", type=int)
    over.add_argument("--rounds", type=int)
    over.add_argument("--requests", type=int, help="requests per round")
    over.add_argument("--ray-serve-llm", action="store_true",
                      help="also measure Ray Serve LLM's own OpenAI app from the same config "
                           "(no front door, access gate or error mapping): splits the overhead "
                           "into Ray Serve's part and ours; a third deployment's memory")
    over.add_argument("--fast-paths", action="store_true",
                      help="also measure the stack with every Ray Serve fast path on "
                           "(server.ray_throughput_optimized besides server.ray_ha_proxy, "
                           "which is on by default)")
    over.add_argument("--direct-streaming", action="store_true",
                      help="also Ray Serve LLM's app with "
                           "RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING (the engine replica serves "
                           "HTTP behind HAProxy: no ingress hop), throughput-optimized")
    over.add_argument("--cpu-requests", type=int,
                      help="requests per target and kind (text, image) in the CPU-per-request "
                           "table; 0: no table (default 8 with --quick, else 32)")
    over.add_argument("--profile", action="store_true",
                      help="py-spy profiles of the stack's engine replica (the API and the "
                           "engine's Python side) during its CPU blocks (raw stacks, top "
                           "functions and library shares in profiles/)")

    soak = one_model(sub.add_parser(
        "soak", help="steady mixed load for --duration: zero failures, bounded memory"))
    soak.add_argument("--url", help="load this running deployment instead of deploying")
    soak.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"),
                      help="with --url (default: $OPENAI_API_KEY)")
    run_dir_flag(soak)
    soak.add_argument("--duration", type=float, help="seconds (default 600; --quick: 30)")
    soak.add_argument("--concurrency", type=int)
    mixed_workload_flags(soak)

    ceil = one_model(sub.add_parser(
        "ceiling", help="requests/s the serving path sustains (max_tokens 1), CPU by process"))
    ceil.add_argument("--fast-paths", action="store_true",
                      help="every Ray Serve fast path on (server.ray_throughput_optimized "
                           "besides server.ray_ha_proxy)")
    run_dir_flag(ceil)
    ceil.add_argument("--vllm-serve", action="store_true",
                      help="then measure bare `vllm serve` from the same config the same way "
                           "(after the stack, on the same cores) and report the stack's "
                           "ceiling against its API server's")
    ceil.add_argument("--levels", type=_ints,
                      help="concurrency levels, rising (default 1,2,4,...,64; --quick: 1,4)")
    ceil.add_argument("--requests", type=int,
                      help="requests per level at least (4 x concurrency at least)")

    aff = one_model(sub.add_parser(
        "affinity", help="repeated images: Ray Serve's default routing vs the image-affinity "
                         "router, on the same replicas"))
    aff.add_argument("--repeats", type=_ratios,
                     help="repeat ratios: shares of image requests whose image was sent before "
                          "(default 0,0.9)")
    aff.add_argument("--replicas", type=int, default=2, help="engine replicas (default 2)")
    aff.add_argument("--concurrency", type=int)
    aff.add_argument("--requests", type=int, help="requests per step")
    aff.add_argument("--image-size", type=_size, help="WIDTHxHEIGHT (default 448x448)")
    aff.add_argument("--session-turns", type=_positive, default=1,
                     help="multi-turn chats about one image, each turn with the conversation "
                          "so far (default 1: single questions)")

    base = one_model(sub.add_parser("baseline", help="HF transformers batch 1 vs our stack"))
    base.add_argument("--concurrency", type=_ints, help="stack levels (default 1,16)")
    base.add_argument("--min-requests", type=int, help="requests per stack level at least")
    return p


def _size(text: str) -> tuple[int, int]:
    from engine.capacity import parse_size

    try:
        return parse_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


# Defaults per (scenario, kind of run); flags override them.
DEFAULTS = {
    "quick": {"input_tokens": 16, "output_tokens": 8, "image_size": (112, 112), "duration": 30,
              "ceiling_levels": [1, 4], "ceiling_requests": 8,
              "max_concurrency": 2, "min_requests": 2, "slo_ttft_ms": 10000, "slo_tpot_ms": 500,
              "concurrency": 2, "rounds": 1, "requests": 4, "levels": [1, 4], "cpu_requests": 8,
              "idle_s": 3, "affinity_requests": 10, "affinity_output_tokens": 4,
              "verify_requests": 4, "calibrate_min_requests": 2},
    "cpu": {"input_tokens": 128, "output_tokens": 64, "image_size": (448, 448), "duration": 600,
            "ceiling_levels": [1, 2, 4, 8, 16, 32, 64], "ceiling_requests": 64,
            "max_concurrency": 16, "min_requests": 8, "slo_ttft_ms": 10000, "slo_tpot_ms": 500,
            "concurrency": 4, "rounds": 3, "requests": 16, "levels": [1, 16], "cpu_requests": 32,
            "idle_s": 15, "affinity_requests": 120, "affinity_output_tokens": 8,
            "verify_requests": 32, "calibrate_min_requests": 24},
    "gpu": {"input_tokens": 512, "output_tokens": 256, "image_size": (448, 448), "duration": 600,
            "ceiling_levels": [1, 2, 4, 8, 16, 32, 64, 128, 256], "ceiling_requests": 256,
            "max_concurrency": 128, "min_requests": 32, "slo_ttft_ms": 2000, "slo_tpot_ms": 100,
            "concurrency": 16, "rounds": 3, "requests": 64, "levels": [1, 16], "cpu_requests": 64,
            "idle_s": 15, "affinity_requests": 256, "affinity_output_tokens": 32,
            "verify_requests": 200, "calibrate_min_requests": 64},
}
