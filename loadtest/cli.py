"""``qwen-vl-loadtest``: one command per load-test scenario; each deploys what it measures,
tears it down, shows progress with an ETA and writes a results folder.

    qwen-vl-loadtest card      [--model tiny|2b] [--variants BF16,GPTQ-Int4,AWQ] [--quick]
    qwen-vl-loadtest sweep     [--model tiny|2b] [--slo-ttft-ms 2000 --slo-tpot-ms 200]
    qwen-vl-loadtest overhead  [--model tiny|2b] [--rounds 3] [--ray-serve-llm] [--fast-paths]
    qwen-vl-loadtest baseline  [--model tiny|2b]
    qwen-vl-loadtest ceiling   [--fast-paths]
    qwen-vl-loadtest affinity  [--repeats 0,0.9] [--replicas 2]
    qwen-vl-loadtest sweep --url http://HOST:8000   # an existing deployment: nothing started
    qwen-vl-loadtest soak --run-dir DIR --config F  # the stack `qwen-vl serve` runs here

Results: ``results/<scenario>-<model>-<time>/`` (``--out`` to choose): ``report.md``,
``results.json`` (``vllm bench serve`` key names), ``results.csv``, ``records.jsonl``, PNG plots.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from pathlib import Path

from engine.embedded_model import FAMILIES, VARIANTS
from launch.cluster.connect import print_progress

from .scenarios.common import CARD_GRID, CPU_GRID, QUICK_GRID, ROOT, Grid


def _ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected numbers, e.g. 0,0.9") from None
    if not values or any(not 0 <= v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: each ratio must be between 0 and 1")
    return values


def _variants(text: str) -> list[str]:
    names = {v.lower(): v for v in VARIANTS}
    out = []
    for x in text.split(","):
        if x.strip().lower() not in names:
            raise argparse.ArgumentTypeError(f"unknown variant {x!r}; choose from "
                                             f"{', '.join(VARIANTS)}")
        out.append(names[x.strip().lower()])
    return out


def _device(config: Path) -> str:
    import yaml

    return (yaml.safe_load(config.read_text()).get("deployment") or {}).get("device", "cpu")


def _device_label(device: str) -> str:
    from . import machine

    if device == "gpu":
        from engine.devices import nvidia_smi

        return "\n".join(r[0] for r in nvidia_smi("name") or []) or "GPU"
    return machine.describe()


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
    aff.add_argument("--repeats", type=_floats,
                     help="repeat ratios: shares of image requests whose image was sent before "
                          "(default 0,0.9)")
    aff.add_argument("--replicas", type=int, default=2, help="engine replicas (default 2)")
    aff.add_argument("--concurrency", type=int)
    aff.add_argument("--requests", type=int, help="requests per step")
    aff.add_argument("--image-size", type=_size, help="WIDTHxHEIGHT (default 448x448)")

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
              "idle_s": 3, "affinity_requests": 10, "affinity_output_tokens": 4},
    "cpu": {"input_tokens": 128, "output_tokens": 64, "image_size": (448, 448), "duration": 600,
            "ceiling_levels": [1, 2, 4, 8, 16, 32, 64], "ceiling_requests": 64,
            "max_concurrency": 16, "min_requests": 8, "slo_ttft_ms": 10000, "slo_tpot_ms": 500,
            "concurrency": 4, "rounds": 3, "requests": 16, "levels": [1, 16], "cpu_requests": 32,
            "idle_s": 15, "affinity_requests": 120, "affinity_output_tokens": 8},
    "gpu": {"input_tokens": 512, "output_tokens": 256, "image_size": (448, 448), "duration": 600,
            "ceiling_levels": [1, 2, 4, 8, 16, 32, 64, 128, 256], "ceiling_requests": 256,
            "max_concurrency": 128, "min_requests": 32, "slo_ttft_ms": 2000, "slo_tpot_ms": 100,
            "concurrency": 16, "rounds": 3, "requests": 64, "levels": [1, 16], "cpu_requests": 64,
            "idle_s": 15, "affinity_requests": 256, "affinity_output_tokens": 32},
}


def _opt(args, name: str, defaults: dict):
    value = getattr(args, name, None)
    return defaults[name] if value is None else value


def _scenario_data(args, **derive_kw) -> dict:
    from engine.embedded_model import variant_source

    from .scenarios.common import derive, load_base

    base = load_base(args.config)
    source = variant_source(args.model, args.variant) if args.model else None
    return derive(base, source=source, **derive_kw)


def _grid(args, device: str) -> Grid:
    g = QUICK_GRID if args.quick else (CARD_GRID if device == "gpu" else CPU_GRID)
    return Grid(tuple(args.input_lengths or g.input_lengths),
                args.output_tokens or g.output_tokens, args.requests or g.requests_per_cell)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.run_dir = getattr(args, "run_dir", None)  # scenarios without the flag: none
    if args.run_dir and getattr(args, "url", None):
        parser.error("--url and --run-dir each name the deployment to measure: give one")
    if args.run_dir and args.model:
        parser.error("--model picks a model to deploy; with --run-dir the running stack's "
                     "config (--config) names its model")
    if args.run_dir and args.scenario == "ceiling" and args.fast_paths:
        parser.error("--fast-paths sets up a stack the scenario deploys; with --run-dir the "
                     "running stack's config (server.ray_throughput_optimized) decides")
    args.config = args.config.resolve()  # paths as given, before moving to the project root
    print_progress()  # a stack's start and stop say what they wait for, as `qwen-vl` does
    if args.out:
        args.out = args.out.resolve()
    if args.run_dir:
        args.run_dir = args.run_dir.resolve()
    os.chdir(ROOT)  # Locust, `qwen-vl serve` and `vllm serve` run from the project root
    if not args.config.is_file():
        raise SystemExit(f"qwen-vl-loadtest: --config {args.config}: no such file")
    device = _device(args.config)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or ROOT / "results" / f"{args.scenario}-{args.model or 'config'}-{stamp}"
    label = _device_label(device)
    try:
        if args.scenario == "card":
            from .scenarios import card

            report = card.run(config=args.config, family=args.model, variants=args.variants,
                              grid=_grid(args, device), out=out, baseline=args.baseline,
                              device_label=label)
        else:
            report = _run_other(args, device, out, label)
    except (RuntimeError, OSError) as err:  # a deployment that fails, an unreachable --url
        print(f"qwen-vl-loadtest {args.scenario}: {err}", file=sys.stderr)
        return 2
    print((out / "report.md").read_text())
    print(f"results: {out}")
    failed = sum(s["failed"] for s in report.data["steps"])
    # A soak fails on a missed target; --quick (half a minute, mostly warm-up) only reports memory.
    missed = args.scenario == "soak" and any(
        t["met"] is False for t in report.data["targets"]
        if not (args.quick and t["target"] == "resident memory growth"))
    return 1 if failed or missed else 0


def mixed_workload(args, d: dict, n_in: int, n_out: int):
    """The sweep's (and overhead's) chat workload: text, and images on a share of requests."""
    from .workload import Workload

    return Workload(endpoint="chat", input_tokens=n_in, output_tokens=n_out,
                    image_fraction=args.image_fraction, images_per_request=args.images_per_request,
                    image_size=args.image_size or d["image_size"])


def _run_other(args, device: str, out: Path, label: str):
    from . import deploy
    from .scenarios.common import check
    from .workload import Workload

    d = DEFAULTS["quick" if args.quick else device]
    n_in, n_out = _opt(args, "input_tokens", d), _opt(args, "output_tokens", d)
    settings = {"config": str(args.config), "model": args.model, "quick": args.quick,
                **({"run_dir": str(args.run_dir)} if args.run_dir else {})}
    if args.scenario == "baseline":
        data = _scenario_data(args, max_model_len=n_in + n_out + 32, prefix_caching=False)
    elif args.run_dir:  # the running stack's config, as it serves it
        data = _scenario_data(args)
    else:
        data = _scenario_data(args, max_model_len=n_in * 2 + 2048 + n_out)
    cfg, reason = check(data, args.scenario)
    if reason:
        raise SystemExit(f"cannot run {args.scenario} with this model here: {reason}")
    what = f"{cfg.model.served_name}, {label}"

    def stack_target(data: dict):
        """The stack to measure: a running one (--url, --run-dir) or one deployed here."""
        if getattr(args, "url", None):
            return deploy.remote(args.url, None, args.api_key)
        if args.run_dir:
            return deploy.running(args.run_dir, cfg)
        return deploy.stack(data, out / "deploy")

    if args.scenario == "sweep":
        from .scenarios import sweep

        from .plan_check import plan_for_sweep

        w = mixed_workload(args, d, n_in, n_out)
        target = stack_target(data)
        plan = plan_for_sweep(cfg, w, label)
        if args.url:
            what = f"{args.url}, load generated on {label}"
        return sweep.run(deployment=target, workload=w,
                         max_concurrency=_opt(args, "max_concurrency", d),
                         min_requests=_opt(args, "min_requests", d),
                         slo_ttft_ms=_opt(args, "slo_ttft_ms", d),
                         slo_tpot_ms=_opt(args, "slo_tpot_ms", d), out=out,
                         title=f"Concurrency sweep: {what}", settings=settings,
                         capacity_plan=plan)
    if args.scenario == "soak":
        from .scenarios import soak

        target = stack_target(data)
        if args.url:
            what = f"{args.url}, load generated on {label}"
        return soak.run(deployment=target, workload=mixed_workload(args, d, n_in, n_out),
                        concurrency=_opt(args, "concurrency", d),
                        duration_s=_opt(args, "duration", d), out=out,
                        title=f"Soak: {what}", settings=settings)
    if args.scenario == "overhead":
        from .scenarios import overhead

        return overhead.run(data=data, stack=stack_target(data),
                            workload=mixed_workload(args, d, n_in, n_out),
                            concurrency=_opt(args, "concurrency", d),
                            requests_per_round=_opt(args, "requests", d),
                            rounds=_opt(args, "rounds", d), out=out,
                            title=f"Stack overhead vs bare vllm serve: {what}",
                            settings=settings, ray_serve_llm=args.ray_serve_llm,
                            fast_paths=args.fast_paths, direct_streaming=args.direct_streaming,
                            cpu_requests=_opt(args, "cpu_requests", d), idle_s=d["idle_s"],
                            profile=args.profile)
    if args.scenario == "ceiling":
        from .scenarios import ceiling

        from .scenarios.common import with_fast_paths

        if args.fast_paths:
            data = with_fast_paths(data)
        return ceiling.run(data=data, deployment=stack_target(data),
                           reference=(deploy.bare_vllm(data, out / "deploy")
                                      if args.vllm_serve else None),
                           levels=args.levels or d["ceiling_levels"],
                           requests_per_level=args.requests or d["ceiling_requests"], out=out,
                           title=f"Serving-path ceiling: {what}", settings=settings,
                           idle_s=d["idle_s"])
    if args.scenario == "affinity":
        from .scenarios import affinity

        # Few output tokens by default: what a cached image saves is in the prefill (TTFT).
        w = Workload(endpoint="chat", input_tokens=n_in,
                     output_tokens=args.output_tokens or d["affinity_output_tokens"],
                     image_fraction=1.0, image_size=args.image_size or d["image_size"])
        stacks = {policy: deploy.stack(c, out / f"deploy-{policy}", name=policy)
                  for policy, c in affinity.policy_configs(data, args.replicas).items()}
        return affinity.run(deployments=stacks, repeats=args.repeats or [0.0, 0.9], workload=w,
                            concurrency=_opt(args, "concurrency", d),
                            requests=args.requests or d["affinity_requests"], out=out,
                            title=f"Image affinity vs default routing, {args.replicas} replicas: "
                                  f"{what}", settings=settings, idle_s=d["idle_s"])
    from .scenarios import baseline
    from .scenarios.common import hf_dtype

    return baseline.run(data=data, model_path=cfg.model_path(), dtype=hf_dtype(cfg),
                        workload=Workload(input_tokens=n_in, output_tokens=n_out),
                        concurrencies=args.concurrency or d["levels"],
                        requests_min=_opt(args, "min_requests", d), out=out,
                        title=f"HF transformers vs our stack: {what}", settings=settings)


if __name__ == "__main__":
    sys.exit(main())
