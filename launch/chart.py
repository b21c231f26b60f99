"""The Helm chart's side of the one config: its values schema and reference, and config files as
chart values.

The chart (``helm/qwen-vl-serving``) takes the serving config unchanged as its ``serving:``
values block. Its ``values.schema.json`` checks that block with the JSON schema of the same
pydantic model (``$defs``, regenerated here), so ``helm install`` rejects what ``qwen-vl serve``
would; the chart-level keys are written by hand in the same file. ``python -m launch.chart
schema`` rewrites the ``$defs``; ``python -m launch.chart reference`` prints the values table and
``python -m launch.chart readme`` puts it into the README; ``python -m launch.chart monitoring``
writes the chart's dashboard and rules (``launch.monitoring``). Tests fail when any is stale.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

from engine.config import ServingConfig, load_config

CHART_DIR = Path(__file__).resolve().parent.parent / "helm" / "qwen-vl-serving"
SCHEMA_PATH = CHART_DIR / "values.schema.json"


def serving_schema_defs() -> dict[str, Any]:
    """The ``$defs`` of values.schema.json: ServingConfig's JSON schema and its parts."""
    schema = ServingConfig.model_json_schema(ref_template="#/$defs/{model}")
    defs = schema.pop("$defs")
    defs["ServingConfig"] = schema
    return dict(sorted(defs.items()))


def write_schema(path: Path = SCHEMA_PATH) -> Path:
    schema = json.loads(path.read_text())
    schema["$defs"] = serving_schema_defs()
    path.write_text(json.dumps(schema, indent=2) + "\n")
    return path


def chart_values(config_path: str | Path) -> str:
    """A config file as the chart's ``serving:`` block: the keys it sets, checked (ConfigError
    names a bad one), exactly the args the local launcher deploys."""
    from .app import serve_application

    args = serve_application(load_config(config_path))["args"]
    return yaml.safe_dump({"serving": args}, sort_keys=False)


# Objects shown as one row (their fields are Kubernetes' own).
LEAF_OBJECTS = ("resources", "startup", "liveness", "readiness")


def _type_of(node: dict[str, Any]) -> str:
    t = node.get("type")
    if isinstance(t, list):
        return " or ".join(t)
    if "enum" in node:
        return " \\| ".join(f"`{v}`" for v in node["enum"])
    return t or "object"


def _rows(node: dict[str, Any], values: Any, prefix: str):
    for key, sub in node.get("properties", {}).items():
        path = f"{prefix}{key}"
        val = values.get(key) if isinstance(values, dict) else None
        if sub.get("type") == "object" and "properties" in sub and key not in LEAF_OBJECTS:
            yield from _rows(sub, val, path + ".")
            continue
        if sub.get("type") == "array" and "properties" in sub.get("items", {}) and \
                key == "workerGroups":
            yield path, "list", "see below", sub.get("description", "")
            yield from _rows(sub["items"], (val or [{}])[0], path + "[].")
            continue
        default = "" if val is None else json.dumps(val, separators=(", ", ": "))
        yield path, _type_of(sub), f"`{default}`" if default else "", sub.get("description", "")


def values_reference() -> str:
    """The README's values table: every chart-level key, its type, default and meaning."""
    schema = json.loads(SCHEMA_PATH.read_text())
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    lines = ["| key | type | default | description |", "|---|---|---|---|"]
    for path, typ, default, desc in _rows(schema, values, ""):
        if path == "serving":
            default, desc = "2B BF16 on GPU", ("The serving config, as `qwen-vl serve` reads "
                                               "it (see Config reference).")
        if path == "global":
            continue
        lines.append(f"| `{path}` | {typ} | {default} | {desc.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


README = CHART_DIR.parent.parent / "README.md"
_TABLE_HEAD = "| key | type | default | description |\n|---|---|---|---|\n| `serving`"


def update_readme(path: Path = README) -> Path:
    """Replace the values table in README "Deploy on Kubernetes" with the current one."""
    text = path.read_text()
    start = text.index(_TABLE_HEAD)
    end = text.index("\n\n", start) + 1
    path.write_text(text[:start] + values_reference() + text[end:])
    return path


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["schema"]:
        print(f"wrote {write_schema()}")
    elif argv == ["reference"]:
        sys.stdout.write(values_reference())
    elif argv == ["readme"]:
        print(f"wrote {update_readme()}")
    elif argv == ["monitoring"]:
        from .monitoring import write_chart_files

        for path in write_chart_files():
            print(f"wrote {path}")
    else:
        print("usage: python -m launch.chart schema|reference|readme|monitoring", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
