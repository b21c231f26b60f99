"""``launch.cluster.deploy``'s pure pieces: what a failed deployment's status says, the progress
line, the root cause found in the engine workers' logs. Deploying to a real cluster is the e2e
modules' (test_serve_e2e, test_cli, test_scaleout_e2e)."""

from __future__ import annotations

from types import SimpleNamespace

from launch.cluster import deploy


def status(app="RUNNING", message="", **deployments):
    return SimpleNamespace(status=app, message=message, deployments={
        name: SimpleNamespace(status=s, message=m, replica_states=r)
        for name, (s, m, r) in deployments.items()})


def test_failure_cause_is_the_first_replica_that_failed_to_start():
    assert deploy._failure_cause(None) is None
    assert deploy._failure_cause(status(e=("UPDATING", "", {"STARTING": 1}))) is None
    failed = status(e=("UPDATING", "A replica failed to start: EngineDeadError: out of memory\n"
                                   "Traceback...", {}))
    assert deploy._failure_cause(failed).startswith("A replica failed to start: "
                                                        "EngineDeadError: out of memory")
    assert "\n" not in deploy._failure_cause(failed)
    assert deploy._failure_cause(status("DEPLOY_FAILED", "app", e=(
        "DEPLOY_FAILED", "bad argument", {}))) == "bad argument"


def test_progress_line_counts_replicas_by_state():
    assert deploy._progress(None, 3) == "[    3s] deploying..."
    line = deploy._progress(status(e=("UPDATING", "", {"RUNNING": 1, "STARTING": 1})), 42)
    assert line == "[   42s] e: 1 RUNNING, 1 STARTING"


def test_root_cause_is_the_engine_workers_last_error_line(tmp_path):
    logs = tmp_path / "session_latest" / "logs"
    logs.mkdir(parents=True)
    assert deploy.root_cause_from_logs(str(tmp_path)) is None
    marker = deploy._ROOT_CAUSE_MARKERS[0]
    (logs / "worker-1.err").write_text(f"noise\n  {marker}: the first\n{marker} Warning: no\n"
                                       f"{marker}: the cause\n")
    assert deploy.root_cause_from_logs(str(tmp_path)) == f"{marker}: the cause"
