"""``qwen-vl``: serve, stop and inspect the stack.

    qwen-vl serve --config configs/default.yaml [--detach]
    qwen-vl join --address HOST:PORT      (on another machine: add a worker node)
    qwen-vl status
    qwen-vl stop
    qwen-vl plan --config F [--device L4] [--rps 2] ...   (capacity plan, nothing started)

A failed command exits non-zero with its cause in one line (exit 2: bad config; 1: anything
else). The work itself is ``launch.cluster``'s; this module parses arguments and prints.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time

from engine.checkpoint_fit import check_checkpoint
from engine.config import ConfigError, ServerSettings, load_config

from launch.cluster.connect import LaunchError, base_url, print_progress, use_token_auth
from launch.cluster.deploy import deploy, wait_healthy
from launch.cluster.local_cluster import ClusterError, free_port, read_state
from launch.cluster.reason import one_line
from launch.cluster.start import (download_checkpoint, ensure_cluster, join_cluster, needs_download,
                                  start_engine_arg_check)
from launch.cluster.status import status_report
from launch.cluster.stop import abandon_start, cluster_ended, shutdown
from .try_it import curl_example

# How often a foreground `serve` checks that its cluster still runs (stopped elsewhere, died).
WATCH_S = 2.0


def _say(msg: str) -> None:
    print(msg, flush=True)


# ---------------------------------------------------------------------------------- serve
def _interrupt(*_):
    raise KeyboardInterrupt


def cmd_serve(args) -> int:
    # SIGTERM while starting unwinds like Ctrl-C: what was started is stopped again.
    signal.signal(signal.SIGTERM, _interrupt)
    cfg = load_config(args.config)
    check_checkpoint(cfg)  # before the Ray head starts; the application's builder checks again
    _say(f"model {cfg.model.served_name} from {cfg.model.source}")
    model_path = cfg.model_path()  # builds the embedded model on first use
    engine_args_ok = start_engine_arg_check(cfg, model_path)  # while the Ray head starts
    state, redeploy = ensure_cluster(cfg)
    try:
        engine_args_ok()  # engine-arg drift fails here, before anything is deployed
        deploy(cfg, state)
        signal.signal(signal.SIGTERM, _interrupt)  # ray.init installed its own
        wait_healthy(cfg, cfg.server.startup_timeout_s, temp_dir=state.temp_dir,
                     address=state.address)
    except BaseException:
        # A failed redeploy leaves the running cluster up (fix the config and deploy again).
        # A head this command started has served nothing yet: its processes are ended without
        # a Serve shutdown, which would wait on replicas that never started.
        if state.started_by_us and not redeploy and not args.keep_on_failure:
            _say("start failed; stopping the Ray head this command started")
            abandon_start(state)
        raise
    url = base_url(cfg.server.host, cfg.server.port)
    if redeploy:
        _say(f"\nredeployed: {url}/v1  (model: {cfg.model.served_name}); the cluster stays "
             f"with the `qwen-vl serve` that started it (`qwen-vl stop` ends it)")
        return 0
    _say(f"\nready: {url}/v1  (model: {cfg.model.served_name})")
    _say(f"metrics: http://127.0.0.1:{cfg.server.metrics_port}/metrics")
    _say("try it:\n" + curl_example(cfg) + "\n")
    if state.started_by_us:
        _say(f"add a worker node (another machine): qwen-vl join --address {state.address}")
    if args.detach:
        _say("running in the background; stop it with `qwen-vl stop`")
        return 0
    _say("serving; press Ctrl-C to stop")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(WATCH_S):
        ended = cluster_ended(state) if state.started_by_us else None
        if ended is not None:
            code, why = ended
            _say(why) if code == 0 else print(f"qwen-vl: {why}", file=sys.stderr)
            return code
    _say("stopping...")
    t0 = time.monotonic()
    shutdown(state)
    _say(f"stopped ({time.monotonic() - t0:.0f}s)")
    return 0


# ----------------------------------------------------------------------------- stop/status
def cmd_stop(args) -> int:
    state = read_state()
    if state is None:
        _say("nothing to stop (no qwen-vl cluster recorded)")
        return 0
    t0 = time.monotonic()
    shutdown(state)
    _say(f"stopped ({time.monotonic() - t0:.0f}s)")
    return 0


def cmd_join(args) -> int:
    """Start a Ray worker node that joins the cluster at ``--address`` (a head that
    ``qwen-vl serve`` started, or any Ray cluster); Serve places replicas on it."""
    metrics_port = args.metrics_port or free_port()
    # Ray Serve's flags must be the same on every node: the head's config, else the defaults
    # (HAProxy on: it forwards to the replicas' own HTTP servers, this node's included).
    env = load_config(args.config).ray_env() if args.config else ServerSettings().ray_env()
    _say(f"joining {args.address} as a worker node ({args.num_cpus} logical CPUs)...")
    join_cluster(args.address, num_cpus=args.num_cpus, num_gpus=args.num_gpus,
                 metrics_port=metrics_port, node_ip=args.node_ip, env=env)
    _say(f"joined {args.address}; metrics on :{metrics_port}. `qwen-vl stop` takes this node "
         "out (Ray Serve restarts its replicas elsewhere).")
    return 0


def cmd_status(args) -> int:
    state = read_state()
    if state is None:
        _say("not running")
        return 3
    lines, code = status_report(state)
    for line in lines:
        _say(line)
    return code


# ------------------------------------------------------------------------ download/chart
def cmd_download(args) -> int:
    """Fetch the checkpoint into the Hugging Face cache (the chart's init container runs this
    before the engine starts, so a long download is visible as such)."""
    cfg = load_config(args.config)
    src = cfg.model.source
    if not needs_download(cfg):
        _say(f"{src}: {cfg.model_path()} (local, nothing to download)")
        return 0
    _say(f"downloading {src}" + (f" at {cfg.model.revision}" if cfg.model.revision else "")
         + " into the Hugging Face cache...")
    t0 = time.monotonic()
    path = download_checkpoint(cfg)
    _say(f"{src}: {path} ({time.monotonic() - t0:.0f}s)")
    return 0


def cmd_plan(args) -> int:
    from engine.capacity import PlanError
    from engine.capacity_check import CheckError

    from .plan import run

    try:
        sys.stdout.write(run(args))
    except (PlanError, CheckError) as err:
        raise LaunchError(str(err)) from None
    return 0


def cmd_chart_values(args) -> int:
    from launch.generate.chart import chart_values

    sys.stdout.write(chart_values(args.config))
    return 0


def cmd_monitoring(args) -> int:
    from pathlib import Path

    from engine.config import load_config

    from launch.generate.monitoring import write_files

    for path in write_files(load_config(args.config), Path(args.out)):
        print(f"wrote {path}")
    return 0


# ------------------------------------------------------------------------------------ main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qwen-vl", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="start Ray (if needed), deploy, wait until healthy")
    s.add_argument("--config", required=True, help="YAML config (see configs/)")
    s.add_argument("--detach", action="store_true", help="return once healthy")
    s.add_argument("--keep-on-failure", action="store_true",
                   help="leave the cluster running after a failed start (for debugging)")
    s.set_defaults(func=cmd_serve)
    sub.add_parser("stop", help="shut the application and local Ray down").set_defaults(
        func=cmd_stop)
    sub.add_parser("status", help="nodes, replicas (where each runs) and health").set_defaults(
        func=cmd_status)
    j = sub.add_parser("join", help="start a Ray worker node that joins a running cluster")
    j.add_argument("--address", required=True, help="the head's GCS address HOST:PORT "
                   "(printed by `qwen-vl serve` and `qwen-vl status`)")
    j.add_argument("--num-cpus", type=int, default=os.cpu_count() or 1,
                   help="logical CPUs this node offers (default: this machine's cores)")
    j.add_argument("--num-gpus", type=int, default=None, help="GPUs (default: all visible)")
    j.add_argument("--node-ip", default="127.0.0.1",
                   help="this node's IP as the head can reach it (default 127.0.0.1)")
    j.add_argument("--metrics-port", type=int, default=None,
                   help="Prometheus port of this node (default: a free port)")
    j.add_argument("--config", help="the head's YAML config: its Ray Serve fast paths "
                   "(server.ray_throughput_optimized, server.ray_ha_proxy) apply to this node too "
                   "(default: the defaults', HAProxy on)")
    j.set_defaults(func=cmd_join)
    d = sub.add_parser("download", help="fetch the config's checkpoint into the HF cache")
    d.add_argument("--config", required=True, help="YAML config")
    d.set_defaults(func=cmd_download)
    c = sub.add_parser("chart-values",
                       help="print a config as the Helm chart's serving: values block")
    c.add_argument("--config", required=True, help="YAML config")
    c.set_defaults(func=cmd_chart_values)
    m = sub.add_parser("monitoring", help="write the Prometheus rules (alert thresholds from "
                       "the config) and the Grafana dashboard")
    m.add_argument("--config", required=True, help="YAML config")
    m.add_argument("--out", default=".", help="directory to write them to (default: here)")
    m.set_defaults(func=cmd_monitoring)
    from .plan import add_arguments

    pl = sub.add_parser("plan", help="capacity plan: memory, KV cache, tokens per image, speed "
                        "bounds and replicas for a workload on a GPU type or this CPU")
    add_arguments(pl)
    pl.set_defaults(func=cmd_plan)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # This process imports vLLM only to check engine-arg names; its import-time warning about
    # Triton on CPU (emitted before vLLM configures logging) is noise on a terminal.
    logging.getLogger("vllm.triton_utils.importing").setLevel(logging.ERROR)
    use_token_auth()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    print_progress()  # the cluster side's progress lines, printed as this command's own
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"qwen-vl: {err}", file=sys.stderr)
        return 2
    except (LaunchError, ClusterError) as err:
        print(f"qwen-vl: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("qwen-vl: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # never a 200-line traceback on the terminal
        print(f"qwen-vl: {type(err).__name__}: {one_line(str(err))}", file=sys.stderr)
        if os.environ.get("QWEN_VL_DEBUG"):
            raise
        return 1


if __name__ == "__main__":
    sys.exit(main())
