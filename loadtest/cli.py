"""``qwen-vl-loadtest``: one command per load-test scenario; each deploys what it measures,
tears it down, shows progress with an ETA and writes a results folder.

    qwen-vl-loadtest card      [--model tiny|2b] [--variants BF16,GPTQ-Int4,AWQ] [--quick]
    qwen-vl-loadtest sweep     [--model tiny|2b] [--slo-ttft-ms 2000 --slo-tpot-ms 200]
    qwen-vl-loadtest overhead  [--model tiny|2b] [--rounds 3] [--ray-serve-llm] [--fast-paths]
    qwen-vl-loadtest baseline  [--model tiny|2b]
    qwen-vl-loadtest ceiling   [--fast-paths]
    qwen-vl-loadtest affinity  [--repeats 0,0.9] [--replicas 2]
    qwen-vl-loadtest calibrate [--slo-ttft-ms 2000 --slo-tpot-ms 100] [--request-rate 20]
    qwen-vl-loadtest sweep --url http://HOST:8000   # an existing deployment: nothing started
    qwen-vl-loadtest soak --run-dir DIR --config F  # the stack `qwen-vl serve` runs here

Results: ``results/<scenario>-<model>-<time>/`` (``--out`` to choose): ``report.md``,
``results.json`` (``vllm bench serve`` key names), ``results.csv``, ``records.jsonl``, PNG plots.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from pathlib import Path

from launch.cluster.connect import print_progress

from .arguments import DEFAULTS, build_parser
from .scenarios.common import CARD_GRID, CPU_GRID, QUICK_GRID, ROOT, Grid

__all__ = ["build_parser", "main"]


def _device(config: Path) -> str:
    import yaml

    return (yaml.safe_load(config.read_text()).get("deployment") or {}).get("device", "cpu")


def _device_label(device: str) -> str:
    from . import machine

    if device == "gpu":
        from engine.devices import nvidia_smi

        return "\n".join(r[0] for r in nvidia_smi("name") or []) or "GPU"
    return machine.describe()


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
                    image_size=args.image_size or d["image_size"],
                    video_fraction=args.video_fraction, video_frames=args.video_frames,
                    video_size=args.video_size)


def _run_other(args, device: str, out: Path, label: str):
    from . import deploy
    from .config_check import check
    from .workload import Workload

    d = DEFAULTS["quick" if args.quick else device]
    n_in, n_out = _opt(args, "input_tokens", d), _opt(args, "output_tokens", d)
    settings = {"config": str(args.config), "model": args.model, "quick": args.quick,
                **({"run_dir": str(args.run_dir)} if args.run_dir else {})}
    if args.scenario == "baseline":
        data = _scenario_data(args, max_model_len=n_in + n_out + 32, prefix_caching=False)
    elif args.run_dir or args.scenario == "calibrate":  # the config as it is served
        data = _scenario_data(args)
    else:
        data = _scenario_data(args, max_model_len=n_in * 2 + 2048 + n_out)
    cfg, reason = check(data, args.scenario)
    if reason:
        raise SystemExit(f"cannot run {args.scenario} with this model here: {reason}")
    what = f"{cfg.model.served_name}, {label}"

    if args.scenario == "calibrate":
        return _calibrate(args, d, data, cfg, out, label, settings, n_in, n_out)

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
                     image_fraction=1.0, image_size=args.image_size or d["image_size"],
                     session_turns=args.session_turns)
        stacks = {policy: deploy.stack(c, out / f"deploy-{policy}", name=policy,
                                       env=affinity.STACK_ENV)
                  for policy, c in affinity.policy_configs(data, args.replicas).items()}
        return affinity.run(deployments=stacks, repeats=args.repeats or [0.0, 0.9], workload=w,
                            concurrency=_opt(args, "concurrency", d),
                            requests=args.requests or d["affinity_requests"], out=out,
                            title=f"Image affinity vs default routing, {args.replicas} replicas: "
                                  f"{what}", settings=settings, idle_s=d["idle_s"],
                            replicas=args.replicas)
    from .scenarios import baseline
    from .scenarios.common import hf_dtype

    return baseline.run(data=data, model_path=cfg.model_path(), dtype=hf_dtype(cfg),
                        workload=Workload(input_tokens=n_in, output_tokens=n_out),
                        concurrencies=args.concurrency or d["levels"],
                        requests_min=_opt(args, "min_requests", d), out=out,
                        title=f"HF transformers vs our stack: {what}", settings=settings)


def _calibrate(args, d: dict, data: dict, cfg, out: Path, label: str, settings: dict,
               n_in: int, n_out: int):
    from . import deploy
    from .plan_check import plan_for_sweep
    from .scenarios import calibrate

    w = mixed_workload(args, d, n_in, n_out).model_copy(
        update={"image_repeat_fraction": args.repeats})
    max_c = _opt(args, "max_concurrency", d)
    if args.url:
        swept = deploy.remote(args.url, None, args.api_key)
    elif args.run_dir:  # measured as it runs: its own replicas and queue limits
        swept = deploy.running(args.run_dir, cfg)
    else:
        swept = deploy.stack(calibrate.sweep_config(data, max_c), out / "deploy", name="sweep")
    if args.verify_url:
        def verify(_data):
            return deploy.remote(args.verify_url, None, args.api_key)
    elif args.url:
        verify = None
    else:
        def verify(v: dict):
            return deploy.stack(v, out / "deploy", name="calibrated")
    what = args.url or f"{cfg.model.served_name}, {label}"
    return calibrate.run(
        data=data, deployment=swept, verify=verify, workload=w, max_concurrency=max_c,
        min_requests=args.min_requests or d["calibrate_min_requests"],
        slo_ttft_ms=_opt(args, "slo_ttft_ms", d),
        slo_tpot_ms=_opt(args, "slo_tpot_ms", d), request_rate=args.request_rate,
        min_request_rate=args.min_request_rate,
        verify_requests=args.verify_requests or d["verify_requests"], out=out,
        title=f"Calibration of one replica: {what}", settings=settings,
        capacity_plan=plan_for_sweep(cfg, w, label), most_replicas=cfg.deployment.most_replicas)


if __name__ == "__main__":
    sys.exit(main())
