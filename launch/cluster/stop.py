"""Drain and stop: new requests 503, running ones finish (``launch.drain``), then Serve and
the cluster's processes end; and why a cluster a foreground ``serve`` watches has ended."""

from __future__ import annotations

import os
import sys
import threading
import time

from .connect import connect, progress_log
from .deploy import root_cause_from_logs
from .local_cluster import (
    ClusterError,
    ClusterState,
    clear_state,
    head_alive,
    read_state,
    stop_processes,
    write_state,
)
from .reason import one_line


class _stderr_muted:
    """Redirect file descriptor 2 (Ray's background threads write there directly)."""

    def __enter__(self):
        sys.stderr.flush()
        self._saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)

    def __exit__(self, *exc):
        sys.stderr.flush()
        os.dup2(self._saved, 2)
        os.close(self._saved)
        return False


SHUTDOWN_GRACE_S = 90  # connect + Serve shutdown, on top of the drain timeout
STOPPED_GRACE_S = 2  # SIGTERM to SIGKILL for a cluster whose Serve has shut down


def drain_application(state: ClusterState, quiet: bool = False) -> None:
    """New requests get 503 + Retry-After; wait (``drain_timeout_s`` at most) until every
    replica reports that the requests it held are done (``launch.drain``)."""
    from ray import serve

    from launch import drain
    from launch.app import ENGINE_PREFIX

    app_status = serve.status().applications.get(state.app_name)
    serving = [d for name, d in (app_status.deployments if app_status else {}).items()
               if name.startswith(ENGINE_PREFIX)]
    if not serving:
        return
    replicas = sum((d.replica_states or {}).get("RUNNING", 0) for d in serving)
    since = drain.set_draining(state.app_name)
    deadline = since + state.drain_timeout_s
    last_print, last_held = 0.0, None
    while True:
        reports = drain.inflight_reports(state.app_name, since)
        held = sum(reports.values())
        complete = len(reports) >= replicas  # every replica has answered since the drain set
        if complete and held == 0:
            return
        now = time.time()
        if now >= deadline:
            if not quiet:
                progress_log.info(f"drain timeout ({state.drain_timeout_s:.0f}s, "
                                  f"deployment.drain_timeout_s): {held} requests still running "
                                  "are cut off")
            return
        # Said once every replica has answered (a count before that is partial), then again
        # when the count changes or every 5 s.
        if not quiet and complete and (held != last_held or now - last_print >= 5):
            progress_log.info(f"draining: {held} requests still running "
                              f"(at most {deadline - now:.0f}s more)")
            last_print, last_held = now, held
        time.sleep(drain.POLL_S)


def shutdown(state: ClusterState, quiet: bool = False) -> None:
    """Our own cluster: drain, Serve down, then every process of it. A cluster we joined via
    RAY_ADDRESS: drain, then only our application is deleted. A worker node we joined: its
    processes only (Serve moves its replicas elsewhere).

    The Serve part runs in a thread with a deadline: a half-dead cluster (GCS up, raylet gone)
    makes ``ray.init`` wait for minutes, and stop must still end every process."""
    if read_state() == state:  # a foreground `serve` of this cluster sees the stop begin
        state.stopping = True
        write_state(state)
    # A head of ours whose GCS server is gone answers no Serve call: ``ray.init`` would wait
    # out the whole deadline below for nothing, so its processes are ended at once.
    head_gone = state.started_by_us and state.role != "worker" and not head_alive(state)
    if head_gone and not quiet:
        progress_log.info("the Ray head is gone (its GCS server); ending the cluster's processes")
    served_down = threading.Event()  # Serve shut down: no replica holds a request
    if state.role != "worker" and not head_gone:
        done = threading.Event()

        def serve_down():
            try:
                import ray
                from ray import serve

                from launch import drain

                connect(state.address)
                drain_application(state, quiet)
                with _stderr_muted():  # Ray prints noise about its dying controller
                    if state.started_by_us:
                        serve.shutdown()
                    else:
                        serve.delete(state.app_name)
                        drain.clear(state.app_name)
                    served_down.set()
                    ray.shutdown()
            except Exception as err:  # the cluster may be gone; processes are reaped below
                if not quiet:
                    progress_log.info(f"serve shutdown: {one_line(str(err))}")
            finally:
                done.set()

        threading.Thread(target=serve_down, daemon=True).start()
        if not done.wait(state.drain_timeout_s + SHUTDOWN_GRACE_S):
            progress_log.info(f"serve shutdown: no answer from the cluster in "
                              f"{state.drain_timeout_s + SHUTDOWN_GRACE_S:.0f}s; ending its "
                              "processes")
    if state.started_by_us:
        # With Serve down nothing in flight is left to lose, and Ray's daemons (GCS server,
        # raylet, agents) take SIGTERM as a request to linger: a short grace before SIGKILL.
        stop_processes(state, grace_s=STOPPED_GRACE_S if served_down.is_set() else 10)
    clear_state()


def cluster_ended(state: ClusterState) -> tuple[int, str] | None:
    """Why the head a foreground ``serve`` started is gone, with the exit code that ``serve``
    then ends with; None while it runs. Stopped by ``qwen-vl stop`` from another shell: 0 (that
    stop drains and ends it). Its GCS server gone without a stop: 1, with the root cause the
    Ray logs hold, as a failed start reports it."""
    current = read_state()
    if current is None or current.address != state.address or current.stopping:
        return 0, "stopped by `qwen-vl stop` elsewhere; this `serve` ends with it"
    if head_alive(state):
        return None
    cause = root_cause_from_logs(state.temp_dir)
    return 1, ("the Ray head died (its GCS server is gone); nothing is served any more"
               + (f". Root cause: {cause}" if cause else f"; its logs: {state.temp_dir}"
                  "/session_latest/logs") + ". `qwen-vl stop` clears what is left")


def abandon_start(state: ClusterState) -> None:
    """End a head this start created: it has served nothing yet, so its processes end without
    a Serve shutdown, which would wait on replicas that never started."""
    clear_state()
    try:
        stop_processes(state, grace_s=3)
    except ClusterError as err:  # the start's own failure is the one to report
        progress_log.info(f"stopping: {err}")
