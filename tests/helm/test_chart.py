"""The Helm chart, rendered by the real Helm engine (Helm v4's Go SDK, offline), linted, and its
objects validated against the Kubernetes schemas and the KubeRay / prometheus-operator CRDs."""

from __future__ import annotations

import base64
import functools
import json
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from jsonschema import Draft7Validator

from engine.checkpoint import LOCAL_PATH_PREFIXES, is_local_path
from engine.config import (
    HAPROXY_BINARY_ENV, HAPROXY_PAGES_SCRIPT, AccessSettings, ServerSettings, load_config,
    parse_config,
)
from launch.app import serve_application
from launch.generate.chart import CHART_DIR
from loadtest.overlay import merged
from tests.utils import CONFIGS, ROOT, config_with

# The CRDs (KubeRay v1.7.0 RayService, prometheus-operator v0.93.0 ServiceMonitor; Apache-2.0),
# copied from the project's shared/k8s-schemas so a clone tests on its own.
SCHEMAS = Path(__file__).resolve().parent / "crds"
SHARED_SCHEMAS = Path(__file__).resolve().parents[2].parent / "shared" / "k8s-schemas"
K8S_VERSIONS = ("1.27.0", "1.33.0")  # the chart's kubeVersion floor and a current release
PROFILES = {  # profile -> the configs/ file its serving block is
    "2b-bf16-l4": "qwen2-vl-2b-instruct.yaml",
    "2b-gptq-int4": "qwen2-vl-2b-instruct-gptq-int4.yaml",
    "2b-awq": "qwen2-vl-2b-instruct-awq.yaml",
    "7b-bf16-tp2": "qwen2-vl-7b-instruct.yaml",
}
# Everything optional switched on (the profiles leave most of it off).
ALL_ON = {
    "ingress": {"enabled": True, "className": "nginx",
                "tls": [{"hosts": ["qwen-vl.example.com"], "secretName": "qwen-vl-tls"}]},
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
                "prometheusRule": {"enabled": True, "labels": {"release": "prometheus"}},
                "grafanaDashboard": {"enabled": True,
                                     "annotations": {"grafana_folder": "Serving"}}},
    "secrets": {"hfToken": {"existingSecret": "hf-token"},
                "apiKeys": {"value": "sk-chart-created-key-1,sk-chart-created-key-2"}},
    "modelCache": {"persistence": {"enabled": True, "existingClaim": "qwen-weights"}},
    "imagePullSecrets": [{"name": "regcred"}],
    "serviceAccountName": "qwen-vl",
    "extraEnv": [{"name": "VLLM_LOGGING_LEVEL", "value": "INFO"}],
    "serving": {"deployment": {"autoscaling": {"min_replicas": 1, "max_replicas": 3}}},
    "workerGroups": [{"name": "l4", "replicas": 1, "minReplicas": 1, "maxReplicas": 3,
                      "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-L4"}}],
}


# ------------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def chart():
    return helm.Chart.load(CHART_DIR)


def profile(name: str) -> dict:
    return yaml.safe_load((CHART_DIR / "profiles" / f"{name}.yaml").read_text())


def render(chart, values: dict | None = None) -> dict[str, str]:
    return chart.render(values or {}, name="qwen", namespace="ml", is_install=True)


def objects(manifests: dict[str, str]) -> list[dict]:
    out = []
    for path, text in manifests.items():
        if path.endswith("NOTES.txt"):
            continue
        out += [o for o in yaml.safe_load_all(text) if o]
    return out


def one(objs: list[dict], kind: str) -> dict:
    found = [o for o in objs if o["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


def serve_config(objs: list[dict]) -> dict:
    return yaml.safe_load(one(objs, "RayService")["spec"]["serveConfigV2"])


def pod_templates(rayservice: dict):
    cluster = rayservice["spec"]["rayClusterConfig"]
    yield "head", cluster["headGroupSpec"]["template"]
    for g in cluster["workerGroupSpecs"]:
        yield g["groupName"], g["template"]


def gpu_requests(rayservice: dict) -> list:
    return [c["resources"].get(k, {}).get("nvidia.com/gpu")
            for _, tpl in pod_templates(rayservice) for c in tpl["spec"]["containers"]
            for k in ("requests", "limits")]


def _strict(schema: dict) -> dict:
    """A CRD schema that also rejects unknown fields (the API server would prune them
    silently: a misspelt field would do nothing)."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema and \
                not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [_strict(v) for v in schema]
    return schema


@functools.cache
def _crd_validator(filename: str) -> Draft7Validator:
    """Read once per session (the RayService CRD is 1 MB of YAML)."""
    crd = yaml.safe_load((SCHEMAS / filename).read_text())
    version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
    return Draft7Validator(_strict(version["schema"]["openAPIV3Schema"]))


CRDS = {
    "RayService": lambda: _crd_validator("kuberay-v1.7.0-ray.io_rayservices.yaml"),
    "ServiceMonitor": lambda: _crd_validator("prometheus-operator-v0.93.0-servicemonitors.yaml"),
}


def validate_all(objs: list[dict]) -> list[str]:
    """Every object against its schema; the RayService's pod templates and serve Service also
    as plain Pods and Services (the CRD embeds them; this checks them with Kubernetes' own)."""
    checked = []
    for obj in objs:
        kind = obj["kind"]
        if kind == "PrometheusRule":
            # No PrometheusRule CRD schema is in shared/k8s-schemas: its envelope is checked
            # here and its rules by promtool (test_prometheus_rule_is_the_configs_rules).
            assert obj["apiVersion"] == "monitoring.coreos.com/v1" and set(obj["spec"]) == \
                {"groups"} and obj["metadata"]["name"], obj["metadata"]
        elif kind in CRDS:
            errors = [f"{'.'.join(map(str, e.path))}: {e.message}"
                      for e in CRDS[kind]().iter_errors(obj)]
            assert not errors, f"{kind} {obj['metadata']['name']}: {errors}"
        else:
            for v in K8S_VERSIONS:
                kubernetes_validate.validate(obj, v, strict=True)
        checked.append(kind)
        if kind == "RayService":
            extra = [{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                      "spec": tpl["spec"]} for name, tpl in pod_templates(obj)]
            serve_svc = obj["spec"]["serveService"]
            extra.append({"apiVersion": "v1", "kind": "Service", **serve_svc})
            for e in extra:
                for v in K8S_VERSIONS:
                    kubernetes_validate.validate(e, v, strict=True)
    return checked


# ------------------------------------------------------------------------- lint, schemas
@pytest.mark.parametrize("name", [None, *PROFILES])
def test_lint_has_no_errors_or_warnings(name):
    report = helm.lint(CHART_DIR, profile(name) if name else None, strict=True,
                       namespace="ml", kube_version="v1.33.0")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("name", [None, *PROFILES])
def test_every_object_validates(chart, name):
    objs = objects(render(chart, profile(name) if name else None))
    kinds = validate_all(objs)
    assert {"RayService", "ConfigMap", "PodDisruptionBudget"} <= set(kinds)


def test_every_optional_object_validates(chart):
    objs = objects(render(chart, ALL_ON))
    kinds = validate_all(objs)
    for kind in ("RayService", "Ingress", "ServiceMonitor", "PrometheusRule", "Service",
                 "Secret", "Pod"):
        assert kind in kinds
    rs = one(objs, "RayService")
    assert rs["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"] is True
    # The metrics Service selects the Ray pods (head and workers), not the helm test pod.
    selector = next(o for o in objs if o["kind"] == "Service")["spec"]["selector"]
    for _, tpl in pod_templates(rs):
        assert selector.items() <= tpl["metadata"]["labels"].items()
    assert not selector.items() <= one(objs, "Pod")["metadata"]["labels"].items()


@pytest.mark.skipif(not SHARED_SCHEMAS.is_dir(), reason="no shared/k8s-schemas beside the clone")
def test_crds_are_the_shared_ones():
    for f in SCHEMAS.iterdir():
        assert f.read_bytes() == (SHARED_SCHEMAS / f.name).read_bytes(), f.name


def test_the_crd_check_catches_a_misspelt_field(chart):
    rs = one(objects(render(chart)), "RayService")
    rs["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParam"] = {}
    assert list(CRDS["RayService"]().iter_errors(rs))


def test_schema_ships_with_the_chart(tmp_path):
    """Loading a chart directory applies .helmignore, as `helm package` does."""
    archive = helm.Chart.load(CHART_DIR).save(tmp_path)
    packaged = helm.Chart.load(archive)
    assert packaged.schema == json.loads((CHART_DIR / "values.schema.json").read_text())
    assert any(f["name"].startswith("profiles/") for f in packaged.files)


# ------------------------------------------------------------------------------ bad values
BAD_VALUES = [
    ({"serving": {"deployment": {"tensor_parallel_size": 0}}},
     "at '/serving/deployment/tensor_parallel_size': minimum: got 0, want 1"),
    ({"serving": {"model": {"source": None}}}, "at '/serving/model': missing property 'source'"),
    ({"serving": {"engine": {"max_model_len": "32k"}}},
     "at '/serving/engine/max_model_len': got string, want integer"),
    ({"serving": {"engine": {"max_model_lenn": 4096}}},
     "additional properties 'max_model_lenn' not allowed"),
    ({"serving": {"deployment": {"device": "tpu"}}},
     "at '/serving/deployment/device': value must be one of 'cpu', 'gpu'"),
    ({"serving": {"engine": {"gpu_memory_utilization": 1.5}}},
     "at '/serving/engine/gpu_memory_utilization': maximum: got 1.5, want 1"),
    ({"imge": {"repository": "x"}}, "at '': additional properties 'imge' not allowed"),
    ({"image": {"pullPolicy": "Sometimes"}},
     "at '/image/pullPolicy': value must be one of 'Always', 'IfNotPresent', 'Never'"),
    ({"service": {"port": 70000}}, "at '/service/port': maximum: got 70,000, want 65,535"),
    ({"workerGroups": [{"name": "gpu", "replicas": 1, "minReplicas": 0}]},
     "at '/workerGroups/0': missing property 'maxReplicas'"),
    ({"workerGroups": [{"name": "GPU_A", "replicas": 1, "minReplicas": 1, "maxReplicas": 1}]},
     "at '/workerGroups/0/name'"),
    ({"secrets": {"apiKeys": {"value": 12345}}},
     "at '/secrets/apiKeys/value': got number, want string"),
    # Checks a JSON schema cannot express, made by the templates:
    ({"workerGroups": [{"name": "gpu", "replicas": 1, "minReplicas": 3, "maxReplicas": 2}]},
     "workerGroups gpu: minReplicas (3) must be <= maxReplicas (2)"),
    ({"serving": {"model": {"source": "embedded:qwen2-vl-tiny"}}},
     "embedded models are built on the machine that runs `qwen-vl serve`"),
    ({"serving": {"access": {"api_keys_env": ""}}, "secrets": {"apiKeys": {"value": "k"}}},
     "secrets.apiKeys is set but serving.access.api_keys_env is empty"),
    ({"modelCache": {"persistence": {"enabled": True}},
      "workerGroups": [{"name": "gpu", "replicas": 1, "minReplicas": 1, "maxReplicas": 2}]},
     "a ReadWriteOnce claim mounts on one node, but workerGroups allow 2 engine pods"),
]


@pytest.mark.parametrize("values,message", BAD_VALUES, ids=[m[:40] for _, m in BAD_VALUES])
def test_bad_values_fail_with_a_clear_message(chart, values, message):
    with pytest.raises((helm.HelmValuesError, helm.HelmRenderError)) as err:
        render(chart, values)
    assert message in str(err.value)


# --------------------------------------------------------------------------------- secrets
def test_secrets_stay_in_secrets(chart):
    token, key = "hf_tok_SECRET_4242", "sk-SECRET-api-key-77"
    manifests = render(chart, {"secrets": {"hfToken": {"value": token},
                                           "apiKeys": {"value": key}}})
    objs = objects(manifests)
    secret = one(objs, "Secret")
    assert base64.b64decode(secret["data"]["HF_TOKEN"]).decode() == token
    assert base64.b64decode(secret["data"]["api-keys"]).decode() == key
    for obj in objs:
        if obj["kind"] != "Secret":
            text = yaml.safe_dump(obj)
            assert token not in text and key not in text, obj["kind"]
    assert token not in manifests["qwen-vl-serving/templates/NOTES.txt"]
    # The pods read both through secretKeyRef, under the variable the config names.
    rs = one(objs, "RayService")
    for _, tpl in pod_templates(rs):
        env = {e["name"]: e for e in tpl["spec"]["containers"][0]["env"]}
        assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {
            "name": secret["metadata"]["name"], "key": "HF_TOKEN"}
        assert env[AccessSettings().api_keys_env]["valueFrom"]["secretKeyRef"]["key"] == \
            "api-keys"


def test_existing_secrets_are_referenced_not_created(chart):
    objs = objects(render(chart, {"secrets": {"hfToken": {"existingSecret": "hf"},
                                              "apiKeys": {"existingSecret": "keys",
                                                          "key": "k"}},
                                  "serving": {"access": {"api_keys_env": "MY_KEYS"}}}))
    assert not [o for o in objs if o["kind"] == "Secret"]
    worker = one(objs, "RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    env = {e["name"]: e for e in worker["template"]["spec"]["containers"][0]["env"]}
    assert env["MY_KEYS"]["valueFrom"]["secretKeyRef"] == {"name": "keys", "key": "k"}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf", "key": "HF_TOKEN"}
    test_pod = one(objs, "Pod")
    assert {"name": "API_KEYS", "valueFrom": {"secretKeyRef": {"name": "keys", "key": "k"}}} \
        in test_pod["spec"]["containers"][0]["env"]


# ---------------------------------------------------------------- derived from the config
@pytest.mark.parametrize("name", PROFILES)
def test_gpus_per_engine_pod_are_the_tensor_parallel_size(chart, name):
    values = profile(name)
    tp = values["serving"]["deployment"]["tensor_parallel_size"]
    rs = one(objects(render(chart, values)), "RayService")
    cluster = rs["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]
    assert "nvidia.com/gpu" not in json.dumps(head["template"]["spec"]["containers"][0])
    assert head["rayStartParams"]["num-gpus"] == "0"
    for g in cluster["workerGroupSpecs"]:
        res = g["template"]["spec"]["containers"][0]["resources"]
        assert res["limits"]["nvidia.com/gpu"] == tp == res["requests"]["nvidia.com/gpu"]


@pytest.mark.parametrize("prefix", LOCAL_PATH_PREFIXES)
def test_checkpoint_directory_sources_mount_the_cache_on_the_head(chart, prefix):
    """The chart's localSource helper agrees with engine.checkpoint.is_local_path: the head
    builds the application from the directory, so it mounts the claim too; for a hub id it
    does not (a ReadWriteOnce claim stays with the engine pod)."""
    def head_cache(source: str) -> dict:
        rs = one(objects(render(chart, {
            "serving": {"model": {"source": source}},
            "modelCache": {"persistence": {"enabled": True, "existingClaim": "weights"}}})),
            "RayService")
        volumes = rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["volumes"]
        return next(v for v in volumes if v["name"] == "model-cache")

    source = f"{prefix}models/qwen2-vl-2b" if prefix.endswith("/") else f"{prefix}/qwen2-vl"
    assert is_local_path(source)
    assert head_cache(source)["persistentVolumeClaim"] == {"claimName": "weights"}
    assert "emptyDir" in head_cache("Qwen/Qwen2-VL-2B-Instruct")


def test_cpu_device_requests_no_gpus(chart):
    rs = one(objects(render(chart, {"serving": {"deployment": {"device": "cpu"}}})),
             "RayService")
    assert set(gpu_requests(rs)) == {None}


def test_defaults_follow_the_config_model(chart):
    """A serving block without server/access keys: the chart's fallbacks equal pydantic's."""
    server = ServerSettings()
    values = {"serving": {"deployment": {"device": None}},
              "secrets": {"apiKeys": {"value": "k"}}}
    objs = objects(render(chart, values))
    sc = serve_config(objs)
    assert sc["http_options"]["port"] == server.port
    assert sc["applications"][0]["name"] == server.app_name
    rs = one(objs, "RayService")
    cluster = rs["spec"]["rayClusterConfig"]
    assert cluster["headGroupSpec"]["rayStartParams"]["metrics-export-port"] == \
        str(server.metrics_port)
    container = cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"serve": server.port, "metrics": server.metrics_port}
    assert AccessSettings().api_keys_env in {e["name"] for e in container["env"]}
    # device left out: the config's default (cpu), so no GPUs.
    assert parse_config(sc["applications"][0]["args"]).deployment.device == "cpu"
    assert set(gpu_requests(rs)) == {None}


def test_ports_follow_the_config(chart):
    objs = objects(render(chart, {"serving": {"server": {"port": 9000, "metrics_port": 9090,
                                                         "app_name": "vl"}},
                                  "metrics": {"serviceMonitor": {"enabled": True}}}))
    sc = serve_config(objs)
    assert sc["http_options"] == {"host": "0.0.0.0", "port": 9000}
    assert sc["applications"][0]["name"] == "vl"
    rs = one(objs, "RayService")
    assert rs["spec"]["serveService"]["spec"]["ports"][0]["targetPort"] == 9000
    metrics_svc = next(o for o in objs if o["kind"] == "Service")
    assert metrics_svc["spec"]["ports"][0]["port"] == 9090


def test_ray_version_is_the_pinned_one(chart):
    import ray

    rs = one(objects(render(chart)), "RayService")
    assert rs["spec"]["rayClusterConfig"]["rayVersion"] == ray.__version__


# ------------------------------------------------------ the same application as `qwen-vl serve`
@pytest.mark.parametrize("name", PROFILES)
def test_profiles_serve_the_configs_unchanged(name):
    assert profile(name)["serving"] == yaml.safe_load((CONFIGS / PROFILES[name]).read_text())


def _describe(built) -> dict:
    """A built Serve application as plain data: each deployment's options and init args."""
    from pydantic import BaseModel
    from ray.serve.handle import DeploymentHandle

    def enc(x):
        if isinstance(x, BaseModel):
            return x.model_dump()
        if isinstance(x, DeploymentHandle):
            return f"handle:{x.deployment_name}"
        return repr(x)

    out = {}
    for d in built.deployments:
        out[d.name] = json.loads(json.dumps({
            "config": d._deployment_config.to_proto().SerializeToString().hex(),
            "ray_actor_options": d.ray_actor_options,
            "placement_group_bundles": d._replica_config.placement_group_bundles,
            "init_args": d.init_args, "init_kwargs": d.init_kwargs,
        }, default=enc, sort_keys=True))
    return out


def _build(entry: dict):
    from ray.serve._private.build_app import build_app as build_serve_app
    from ray._common.utils import import_attr

    app = import_attr(entry["import_path"])(entry["args"])
    return build_serve_app(app, name=entry["name"], route_prefix=entry["route_prefix"])


@pytest.fixture(scope="module")
def ray_runtime():
    """Building an LLM deployment starts a local Ray runtime in this process (nothing is
    deployed); shut it down after the module."""
    import ray

    yield
    ray.shutdown()


@pytest.mark.parametrize("name", PROFILES)
def test_rendered_serve_config_builds_the_application(chart, ray_runtime, name):
    """serveConfigV2 is a valid Serve config (Ray's own schema), its args parse into the
    project's config, and the builder it names builds the Serve application (not started)."""
    from ray.serve.schema import ServeDeploySchema

    sc = serve_config(objects(render(chart, profile(name))))
    ServeDeploySchema.model_validate(sc)
    entry = sc["applications"][0]
    cfg = parse_config(entry["args"])
    assert cfg.model.source == profile(name)["serving"]["model"]["source"]
    built = _build(entry)
    # One deployment, its replicas the ingress (each engine replica serves the API itself)
    assert built.ingress_deployment_name == f"QwenVLServer:{cfg.model.served_name}"
    assert len(built.deployments) == 1


@pytest.mark.parametrize("config", ["qwen2-vl-2b-instruct.yaml", "qwen2-vl-7b-instruct.yaml"])
def test_same_config_file_same_application_as_the_local_launcher(chart, ray_runtime, config):
    """The config file as `qwen-vl serve --config` deploys it, and as the chart renders it
    (the file under `serving:`, unchanged): the same Serve application."""
    path = CONFIGS / config
    local = serve_application(load_config(path))
    sc = serve_config(objects(render(chart, {"serving": yaml.safe_load(path.read_text())})))
    from_chart = sc["applications"][0]
    assert {k: from_chart[k] for k in ("name", "route_prefix", "import_path")} == \
        {k: local[k] for k in ("name", "route_prefix", "import_path")}
    assert from_chart["args"] == local["args"]
    assert sc["http_options"]["port"] == load_config(path).server.port
    assert _describe(_build(from_chart)) == _describe(_build(local))


def test_a_different_config_builds_a_different_application(chart, ray_runtime):
    """The comparison above can fail: one engine setting changed shows in the description."""
    path = CONFIGS / "qwen2-vl-2b-instruct.yaml"
    local = serve_application(load_config(path))
    changed = yaml.safe_load(path.read_text())
    changed["engine"]["max_num_seqs"] = 8
    sc = serve_config(objects(render(chart, {"serving": changed})))
    assert _describe(_build(sc["applications"][0])) != _describe(_build(local))


# ----------------------------------------------------------------- NOTES, helm test hook
def test_helm_test_pod_calls_models_and_a_chat_completion(chart):
    objs = objects(render(chart, {"secrets": {"apiKeys": {"existingSecret": "keys"}}}))
    pod = one(objs, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    script = pod["spec"]["containers"][0]["args"][0]
    assert "/v1/models" in script and "/v1/chat/completions" in script
    assert "Authorization: Bearer" in script
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    assert env["BASE_URL"]["value"] == "http://qwen-qwen-vl-serving:8000"
    assert env["MODEL"]["value"] == "qwen2-vl-2b-instruct"


def test_notes_tell_how_to_reach_and_call_the_api(chart):
    notes = render(chart, {"secrets": {"apiKeys": {"existingSecret": "keys"}}})[
        "qwen-vl-serving/templates/NOTES.txt"]
    assert "kubectl -n ml port-forward svc/qwen-qwen-vl-serving 8000:8000" in notes
    assert '"model": "qwen2-vl-2b-instruct"' in notes
    assert "get secret keys" in notes
    assert "helm test qwen -n ml" in notes
    open_notes = render(chart)["qwen-vl-serving/templates/NOTES.txt"]
    assert "No API key is configured" in open_notes


# ------------------------------------------------------------------ rules and dashboard
@pytest.mark.parametrize("alerts", [{}, {"ttft_p99_s": 0.75, "error_ratio": 0.02,
                                         "kv_cache_usage": 0.85, "for_minutes": 12}])
def test_prometheus_rule_is_the_configs_rules(chart, tmp_path, alerts):
    """The chart's PrometheusRule is ``qwen-vl monitoring``'s rules file for the same serving
    config, thresholds included, and promtool accepts it."""
    import subprocess

    from launch.generate.monitoring import rules
    from tests.utils import ensure_prometheus

    values = {"metrics": {"prometheusRule": {"enabled": True}}}
    if alerts:
        values["serving"] = {"alerts": alerts}
    objs = objects(render(chart, values))
    spec = one(objs, "PrometheusRule")["spec"]
    serving = yaml.safe_load((CHART_DIR / "values.yaml").read_text())["serving"]
    assert spec == rules(parse_config({**serving, "alerts": alerts}))
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(spec))
    promtool = Path(ensure_prometheus()) / "promtool"
    r = subprocess.run([str(promtool), "check", "rules", str(path)], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_dashboard_configmap_carries_the_dashboard_for_grafanas_sidecar(chart):
    from launch.generate.monitoring import dashboard

    objs = objects(render(chart, {"metrics": {"grafanaDashboard": {"enabled": True}}}))
    cm = next(o for o in objs if o["kind"] == "ConfigMap" and
              o["metadata"]["name"].endswith("-dashboard"))
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["qwen-vl-serving.json"]) == dashboard()
    off = objects(render(chart))
    assert not any(o["kind"] == "PrometheusRule" or o["metadata"]["name"].endswith(
        "-dashboard") for o in off)


# Where the image (the Dockerfile: pip into python:3.11-slim) installs the console scripts.
IMAGE_HAPROXY_PAGES = f"/usr/local/bin/{HAPROXY_PAGES_SCRIPT}"


def test_image_has_the_haproxy_the_chart_names():
    """The chart's RAY_SERVE_HAPROXY_BINARY_PATH (checked below) is the file the image's build
    checks for: a pod whose Ray cannot start HAProxy would serve nothing."""
    assert f"test -x {IMAGE_HAPROXY_PAGES}" in (ROOT / "Dockerfile").read_text()


@pytest.mark.parametrize("server, deployment", [
    ({}, {}), ({"ray_throughput_optimized": True}, {}),
    ({"ray_throughput_optimized": True, "ray_ha_proxy": True}, {}),
    ({"ray_ha_proxy": False}, {}),
    ({"replica_deregistration_s": 2.5}, {}),
    ({"replica_deregistration_s": 30}, {}),
    ({"proxy_check_s": 0.5, "ray_ha_proxy": False}, {}),
    ({}, {"routing": {"image_affinity": True}}),
    ({}, {"routing": {"image_affinity": False}, "replicas": 2})])
def test_ray_fast_paths_reach_every_ray_pod(chart, server, deployment):
    """server.ray_* (and the router's body, with deployment.routing.image_affinity) become the
    same environment on the head and every worker pod as `qwen-vl serve` gives every node it
    starts (ServingConfig.ray_env)."""
    serving = {"server": server, "deployment": deployment}
    values = {"serving": serving,
              "workerGroups": [{"name": n, "replicas": 1, "minReplicas": 1, "maxReplicas": 1}
                               for n in ("a", "b")]}
    rs = one(objects(render(chart, values)), "RayService")
    want = parse_config(config_with(**serving)).ray_env()
    if HAPROXY_BINARY_ENV in want:  # where the image installs it, not where this test runs
        want[HAPROXY_BINARY_ENV] = IMAGE_HAPROXY_PAGES
    seen = 0
    for _, tpl in pod_templates(rs):
        for c in tpl["spec"]["containers"]:
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            assert {k: v for k, v in env.items() if k.startswith("RAY_SERVE_")} == want, env
            seen += 1
    assert seen == 3


def _helm_commands() -> list[tuple[str, list[str]]]:
    """The `helm install` and `helm upgrade` lines the pages show, as argument lists."""
    import shlex

    from tests.utils import ROOT, commands, doc_pages, fenced_blocks

    out = []
    for page in doc_pages():
        for lang, body, _ in fenced_blocks(page.read_text()):
            for line in commands(body) if lang == "bash" else []:
                if not line.startswith("helm "):
                    continue
                words = shlex.split(line.split("  #")[0])
                if words[:2] in (["helm", "install"], ["helm", "upgrade"]):
                    out.append((f"{page.relative_to(ROOT)}: {line}", words))
    return out


def _values_of(words: list[str]) -> tuple[str, str, dict]:
    """Release, namespace and values of a `helm install|upgrade RELEASE CHART ...` line
    (-f files merged in order, then --set; what `helm template` would get)."""
    from tests.utils import ROOT

    release, namespace, values = words[2], "default", {}
    assert words[3] == "helm/qwen-vl-serving", words
    i = 4
    while i < len(words):
        flag, arg = words[i], words[i + 1] if i + 1 < len(words) else None
        if flag in ("-n", "--namespace"):
            namespace = arg
        elif flag in ("-f", "--values"):
            values = merged(values, yaml.safe_load((ROOT / arg).read_text()))
        elif flag == "--set":
            for assignment in arg.split(","):
                key, value = assignment.split("=", 1)
                node = values
                *path, leaf = key.split(".")
                for part in path:
                    node = node.setdefault(part, {})
                node[leaf] = value
        elif flag == "--reuse-values":
            i += 1
            continue
        else:
            raise AssertionError(f"flag the test does not know: {flag}")
        i += 2
    return release, namespace, values


def test_the_helm_commands_the_pages_show_render_and_validate(chart):
    """Every `helm install` / `helm upgrade` line in the README, the docs and the chart's README
    renders with Helm's engine into valid objects, and the RayService gets the name the pages'
    `kubectl get rayservice` lines watch."""
    import re

    from tests.utils import doc_pages

    shown = _helm_commands()
    assert len(shown) >= 3
    watched = {w for p in doc_pages() for w in re.findall(r"get rayservice (\S+)", p.read_text())}
    assert watched
    for where, words in shown:
        release, namespace, values = _values_of(words)
        manifests = chart.render(values, name=release, namespace=namespace,
                                 is_install=words[1] == "install")
        objs = objects(manifests)
        assert "RayService" in validate_all(objs), where  # raises on an invalid object
        assert one(objs, "RayService")["metadata"]["name"] in watched, where
