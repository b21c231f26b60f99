"""The Helm chart's side of the one config: its values schema and reference, and config files as
chart values.

The chart (``helm/qwen-vl-serving``) takes the serving config unchanged as its ``serving:``
values block. Its ``values.schema.json`` checks that block with the JSON schema of the same
pydantic model (``$defs``, regenerated here), so ``helm install`` rejects what ``qwen-vl serve``
would; the chart-level keys are written by hand in the same file. ``python -m
launch.generate.chart schema`` rewrites the ``$defs``; ``python -m launch.generate.chart
reference`` prints the values reference and ``python -m launch.generate.chart readme`` writes the
chart's README.md from README.md.tmpl with it (as helm-docs would: its Go binary is not
installable here); ``python -m launch.generate.chart monitoring`` writes the chart's dashboard and
rules (``launch.generate.monitoring``). Tests fail when any is stale.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

from engine.config import ServingConfig, load_config

CHART_DIR = Path(__file__).resolve().parents[2] / "helm" / "qwen-vl-serving"
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
    from launch.app import serve_application

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


def value_comments(text: str) -> dict[str, str]:
    """helm-docs' convention: a ``# -- description`` comment (continued by the ``#`` lines
    after it) right above a key of values.yaml describes that key; keys are dotted paths."""
    out: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    pending: list[str] | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            pending = [stripped[4:].strip()]
            continue
        if stripped.startswith("#"):
            if pending is not None:
                pending.append(stripped[1:].strip())
            continue
        if not stripped or ":" not in stripped:
            pending = None if not stripped else pending
            continue
        indent = len(line) - len(line.lstrip(" -"))
        key = stripped.lstrip("- ").split(":", 1)[0]
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([k for _, k in stack] + [key])
        stack.append((indent, key))
        if pending:
            out[path] = " ".join(pending)
        pending = None
    return out


def values_reference() -> str:
    """The chart's values reference: per top-level key its values.yaml comment, then every key
    under it with type, default and the schema's description."""
    schema = json.loads(SCHEMA_PATH.read_text())
    values_text = (CHART_DIR / "values.yaml").read_text()
    values, comments = yaml.safe_load(values_text), value_comments(values_text)
    lines, group = [], None
    for path, typ, default, desc in _rows(schema, values, ""):
        top = path.split(".")[0].split("[")[0]
        if top == "global":
            continue
        if top != group:
            group = top
            lines += ["", f"### `{top}`", ""]
            if comments.get(top):
                lines += [comments[top], ""]
            lines += ["| key | type | default | description |", "|---|---|---|---|"]
        if path == "serving":
            default, desc = "2B BF16 on GPU", ("The serving config, as `qwen-vl serve` reads "
                                               "it (the docs' Configuration page lists every key).")
        desc = desc.replace("|", "/").replace("<", "&lt;").replace(">", "&gt;")
        lines.append(f"| `{path}` | {typ} | {default} | {desc} |")
    return "\n".join(lines).strip("\n") + "\n"


README = CHART_DIR / "README.md"
README_TEMPLATE = CHART_DIR / "README.md.tmpl"


def chart_readme() -> str:
    """The chart's README, as helm-docs writes one: README.md.tmpl with the chart's metadata
    and the values reference filled in."""
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    text = README_TEMPLATE.read_text()
    for field in ("name", "version", "appVersion", "description", "kubeVersion"):
        text = text.replace("{{ chart.%s }}" % field, str(chart[field]))
    text = text.replace("{{ values }}", values_reference().rstrip("\n"))
    assert "{{" not in text, "README.md.tmpl names a field chart_readme does not fill"
    return text


def write_readme(path: Path = README) -> Path:
    path.write_text(chart_readme())
    return path


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["schema"]:
        print(f"wrote {write_schema()}")
    elif argv == ["reference"]:
        sys.stdout.write(values_reference())
    elif argv == ["readme"]:
        print(f"wrote {write_readme()}")
    elif argv == ["monitoring"]:
        from .monitoring import write_chart_files

        for path in write_chart_files():
            print(f"wrote {path}")
    else:
        print("usage: python -m launch.generate.chart schema|reference|readme|monitoring",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
