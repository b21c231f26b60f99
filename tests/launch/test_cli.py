"""The CLI's failure modes: each exits non-zero with its cause in one readable line."""

import socket

import pytest
import yaml

from engine.config import haproxy_pages_binary
from launch.cluster.local_cluster import cluster_processes, read_state
from launch.cluster.local_cluster import free_port
from tests.utils import CONFIGS, run_cli, write_config


def write_cfg(tmp_path, **overrides):
    return write_config(tmp_path, overrides)[0]


def one_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, text
    return lines[0]


def test_bad_config_exits_2_with_key(tmp_path):
    p = write_cfg(tmp_path, engine={"max_model_lenn": 1})
    r = run_cli("serve", "--config", str(p), env={"QWEN_VL_RUN_DIR": str(tmp_path / "run")})
    assert r.returncode == 2
    assert "engine.max_model_lenn: unknown key" in one_line(r.stderr)


@pytest.mark.parametrize("command", ["serve", "plan"])
def test_a_checkpoint_that_cannot_run_here_is_refused_before_anything_starts(tmp_path, command):
    """GPTQ-Int8 on CPU: the checkpoint check runs once after loading, before the Ray head."""
    run = tmp_path / "run"
    p = write_cfg(tmp_path, model={"source": "embedded:qwen2-vl-tiny-gptq-int8"})
    r = run_cli(command, "--config", str(p), env={"QWEN_VL_RUN_DIR": str(run)}, timeout=300)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "GPTQ-Int8, which cannot be served on CPU" in one_line(r.stderr)
    assert read_state(run) is None  # no Ray head was started


def test_missing_config_file(tmp_path):
    r = run_cli("serve", "--config", str(tmp_path / "nope.yaml"))
    assert r.returncode == 2 and "cannot read config" in one_line(r.stderr)


def test_port_in_use_is_one_line(tmp_path):
    p = write_cfg(tmp_path)
    port = yaml.safe_load(p.read_text())["server"]["port"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        r = run_cli("serve", "--config", str(p), env={"QWEN_VL_RUN_DIR": str(tmp_path / "run")})
    assert r.returncode == 1
    assert f"API port {port} is already in use" in one_line(r.stderr)


def test_stop_and_status_when_nothing_runs(tmp_path):
    env = {"QWEN_VL_RUN_DIR": str(tmp_path / "run")}
    r = run_cli("stop", env=env)
    assert r.returncode == 0 and "nothing to stop" in r.stdout
    r = run_cli("status", env=env)
    assert r.returncode == 3 and "not running" in r.stdout


@pytest.mark.slow
def test_engine_failure_is_one_line_and_cleans_up(tmp_path, monkeypatch):
    """vLLM rejects max_model_len above the model's 32768: the start fails fast, says why in one
    line, and leaves no Ray or engine process behind."""
    run = tmp_path / "run"
    p = write_cfg(tmp_path, engine={"max_model_len": 40000, "max_num_batched_tokens": 40000})
    r = run_cli("serve", "--config", str(p), "--detach", env={"QWEN_VL_RUN_DIR": str(run)},
                timeout=900)
    assert r.returncode == 1, r.stdout + r.stderr
    line = one_line(r.stderr)
    assert line.startswith("qwen-vl: deployment failed:")
    assert "40000" in line and "Traceback" not in line
    assert read_state(run) is None  # cleaned up
    monkeypatch.setenv("QWEN_VL_RUN_DIR", str(run))  # ray_temp_dir() derives from it
    from launch.cluster.local_cluster import ray_temp_dir

    assert cluster_processes_by_dir(ray_temp_dir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("base, overrides, demand, advice", [
    # One shipped config end to end; the other demands (a GPU on default.yaml, more CPUs than
    # the head has) take the same path from Ray's report: their bundles and advice are
    # unit-tested (test_app.py, test_scheduling.py), without a cluster each.
    ("embedded-gptq-int8.yaml", {}, "{CPU: 2, GPU: 1}", "deployment.device: cpu"),
])
def test_unschedulable_config_fails_fast(tmp_path, monkeypatch, base, overrides, demand, advice):
    """A replica no node of a CPU-only local cluster can hold (a GPU config, 8-bit GPTQ, more
    CPUs than the head has): `serve` says so in one line as soon as Ray reports the replica
    unplaceable (not after server.startup_timeout_s), exits 1 and leaves no process behind."""
    data = yaml.safe_load((CONFIGS / base).read_text())
    for section, values in overrides.items():
        data.setdefault(section, {}).update(values)
    # A startup timeout longer than the run's own: a serve that waited for it fails the test.
    data["server"] = {**data.get("server", {}), "port": free_port(), "metrics_port": free_port(),
                      "startup_timeout_s": 3600}
    p = tmp_path / "config.yaml"
    p.write_text(yaml.safe_dump(data))
    run = tmp_path / "run"
    r = run_cli("serve", "--config", str(p), env={"QWEN_VL_RUN_DIR": str(run)}, timeout=600)
    assert r.returncode == 1, r.stdout + r.stderr
    line = one_line(r.stderr)
    assert line.startswith("qwen-vl: cannot be scheduled: QwenVLServer:qwen2-vl-tiny: each "
                           f"replica needs {demand}"), line
    assert "no autoscaler can add one" in line and advice in line
    assert read_state(run) is None
    monkeypatch.setenv("QWEN_VL_RUN_DIR", str(run))
    from launch.cluster.local_cluster import ray_temp_dir

    assert cluster_processes_by_dir(ray_temp_dir()) == []


def cluster_processes_by_dir(temp_dir):
    from launch.cluster.local_cluster import ClusterState

    state = ClusterState(address="127.0.0.1:1", temp_dir=temp_dir, started_by_us=True,
                         metrics_port=0, http_host="", http_port=0, app_name="")
    return cluster_processes(state)


def test_root_cause_from_worker_logs(tmp_path):
    from launch.cluster.deploy import root_cause_from_logs

    logs = tmp_path / "session_latest" / "logs"
    logs.mkdir(parents=True)
    (logs / "worker-1.err").write_text(
        "INFO fine\nRuntimeError: Worker failed with error 'No common block size for 16 "
        "(CPU_ATTN: [MultipleOf(32)]).', please check the stack trace above for the root cause\n")
    assert "No common block size for 16" in root_cause_from_logs(str(tmp_path))


def test_join_takes_the_heads_fast_paths_from_its_config(tmp_path, monkeypatch):
    """`qwen-vl join --config` starts the worker node with the config's Ray fast-path flags (Ray
    Serve reads them in every process of every node); without --config, the defaults' (HAProxy
    on, as on a head started with the defaults)."""
    from launch import cli

    calls = []
    monkeypatch.setattr(cli, "join_cluster", lambda address, **kw: calls.append(kw["env"]))
    path, _ = write_config(tmp_path, {"server": {"ray_throughput_optimized": True,
                                                 "ray_ha_proxy": True}})
    (tmp_path / "off").mkdir()
    off, _ = write_config(tmp_path / "off", {"server": {"ray_ha_proxy": False}})
    assert cli.main(["join", "--address", "h:1", "--config", str(path)]) == 0
    assert cli.main(["join", "--address", "h:1"]) == 0
    assert cli.main(["join", "--address", "h:1", "--config", str(off)]) == 0
    ha = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "5",
          "RAY_SERVE_HAPROXY_RETRY_ON": "conn-failure empty-response",
          "RAY_SERVE_HAPROXY_BINARY_PATH": haproxy_pages_binary()}
    check = {"RAY_SERVE_PROXY_HEALTH_CHECK_PERIOD_S": "2"}
    assert calls == [{"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", **ha, **check}, {**ha, **check},
                     check]


def test_ray_start_gets_the_node_environment():
    """The environment given to a node's `ray start` reaches the process it runs."""
    from launch.cluster.local_cluster import ClusterError, _ray_start

    _ray_start(["sh", "-c", 'test "$RAY_SERVE_THROUGHPUT_OPTIMIZED" = 1'],
               {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"})
    with pytest.raises(ClusterError):
        _ray_start(["sh", "-c", 'test "$RAY_SERVE_THROUGHPUT_OPTIMIZED" = 1 || exit 3'], {})


def test_a_node_is_not_started_without_the_haproxy_it_names(tmp_path):
    """A node's HAProxy is ``qwen-vl-haproxy`` (ServerSettings.ray_env): where that file is not
    an executable (the package not installed in this environment), no node starts, and the
    error says what to install; Ray would start and then fail each HAProxy start in its log."""
    from launch.cluster.local_cluster import ClusterError, _ray_start

    started = tmp_path / "started"
    missing = str(tmp_path / "bin" / "qwen-vl-haproxy")
    with pytest.raises(ClusterError, match=f"{missing} .*RAY_SERVE_HAPROXY_BINARY_PATH.*not an "
                                           "executable file: install this package"):
        _ray_start(["touch", str(started)], {"RAY_SERVE_HAPROXY_BINARY_PATH": missing})
    assert not started.exists()
    _ray_start(["touch", str(started)], {"RAY_SERVE_HAPROXY_BINARY_PATH": haproxy_pages_binary()})
    assert started.exists()
