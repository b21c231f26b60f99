"""launch.generate.chart: the chart's schema and README (values reference) stay derived from their
sources, and the CLI helpers for the chart (chart-values, download)."""

import json

import yaml

from launch.generate.chart import (README, SCHEMA_PATH, chart_readme, serving_schema_defs,
                          value_comments, values_reference)
from tests.utils import CONFIGS, run_cli


def test_schema_defs_are_the_config_model():
    """values.schema.json's serving part is ServingConfig's JSON schema (regenerate with
    `python -m launch.generate.chart schema`)."""
    schema = json.loads(SCHEMA_PATH.read_text())
    assert schema["$defs"] == serving_schema_defs()
    assert schema["properties"]["serving"]["$ref"] == "#/$defs/ServingConfig"
    assert schema["$defs"]["ServingConfig"]["additionalProperties"] is False


def test_every_chart_value_is_in_the_schema():
    values = yaml.safe_load((SCHEMA_PATH.parent / "values.yaml").read_text())
    schema = json.loads(SCHEMA_PATH.read_text())
    assert set(values) <= set(schema["properties"])
    for key, node in schema["properties"].items():
        assert node.get("description") or node.get("$ref"), key
    undocumented = [row for row in values_reference().splitlines() if row.endswith("|  |")]
    assert undocumented == []


def test_chart_readme_is_current():
    """The chart's README.md is what `python -m launch.generate.chart readme` writes from
    README.md.tmpl, Chart.yaml, values.yaml's `# --` comments and the schema (as helm-docs
    would)."""
    assert README.read_text() == chart_readme()
    table = values_reference()
    assert "| `workerGroups[].maxReplicas` | integer |" in table
    assert "| `image.pullPolicy` | `Always` \\| `IfNotPresent` \\| `Never` | `\"IfNotPresent\"` |" \
        in table
    # a group's values.yaml comment heads its table
    assert "### `shm`\n\n/dev/shm as an in-memory volume" in table
    for section in ("## Install", "## Test, upgrade, uninstall", "helm uninstall", "## Values"):
        assert section in README.read_text(), section


def test_value_comments_follow_helm_docs():
    text = ("# header, not a description\n\n# -- The image.\n# Two lines.\nimage:\n"
            "  # -- Its tag.\n  tag: \"\"\n  pullPolicy: Always\nlist:\n  - name: a\n"
            "    # -- Nested in a list item.\n    size: 1\n")
    assert value_comments(text) == {"image": "The image. Two lines.", "image.tag": "Its tag.",
                                    "list.size": "Nested in a list item."}


def test_chart_values_prints_a_config_as_the_serving_block():
    path = CONFIGS / "qwen2-vl-7b-instruct.yaml"
    r = run_cli("chart-values", "--config", str(path), timeout=120)
    assert r.returncode == 0, r.stderr
    assert yaml.safe_load(r.stdout) == {"serving": yaml.safe_load(path.read_text())}


def test_chart_values_rejects_a_bad_config(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {source: Qwen/Qwen2-VL-2B-Instruct, served_name: m}\n"
                   "engine: {max_model_len: 10}\n")
    r = run_cli("chart-values", "--config", str(bad), timeout=120)
    assert r.returncode == 2
    assert "engine.max_model_len" in r.stderr and r.stdout == ""


def test_download_leaves_local_checkpoints_alone(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"architectures": ["Qwen2VLForConditionalGeneration"]}))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"source": str(ckpt), "served_name": "m"}}))
    r = run_cli("download", "--config", str(cfg), timeout=120)
    assert r.returncode == 0, r.stderr
    assert "nothing to download" in r.stdout


def test_download_reports_an_unreachable_hub_in_one_line(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"source": "no-such-org/no-such-model",
                                             "served_name": "m"}}))
    r = run_cli("download", "--config", str(cfg), timeout=300,
                env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert r.returncode == 1
    assert r.stderr.startswith("qwen-vl: ") and len(r.stderr.strip().splitlines()) == 1
    assert "Traceback" not in r.stderr
