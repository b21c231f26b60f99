"""The calibrated settings as files: a config overlay and the same as Helm values, each key under
a comment with the measurement that set it, and the base config with the overlay applied.

- ``overlay.yaml``: only the calibrated keys, to merge into a config by hand or review;
- ``values-overlay.yaml``: the same under ``serving:``, for ``helm upgrade -f values.yaml -f
  values-overlay.yaml`` (Helm merges maps key by key);
- ``calibrated-config.yaml``: the base config with the overlay merged in, checked by the same
  loader and checkpoint check ``qwen-vl serve`` runs: ready for ``qwen-vl serve --config``.
"""

from __future__ import annotations

import copy
import textwrap
from pathlib import Path

import yaml

from .calibration import Calibration
from .config_check import check

WIDTH = 100


def merged(base: dict, overlay: dict) -> dict:
    """``base`` with ``overlay`` merged in, mapping by mapping (as Helm merges values)."""
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _comment(text: str, indent: str) -> list[str]:
    return textwrap.wrap(text, WIDTH, initial_indent=indent + "# ",
                         subsequent_indent=indent + "# ", break_on_hyphens=False)


def _emit(node: dict, why: dict[tuple[str, ...], str], path: tuple[str, ...],
          depth: int) -> list[str]:
    indent = "  " * depth
    lines: list[str] = []
    for key, value in node.items():
        here = (*path, key)
        if isinstance(value, dict):
            lines += [f"{indent}{key}:", *_emit(value, why, here, depth + 1)]
        else:
            lines += _comment(why[here], indent)
            lines.append(f"{indent}{key}: {yaml.safe_dump(value).splitlines()[0]}")
    return lines


def render(cal: Calibration, header: list[str], under: str | None = None) -> str:
    """The overlay as commented YAML (``under``: a top-level key to nest it under)."""
    why = {((under,) if under else ()) + s.path: s.why for s in cal.settings}
    tree = {under: cal.overlay()} if under else cal.overlay()
    lines = [line for h in header for line in _comment(h, "")]
    text = "\n".join(lines + _emit(tree, why, (), 0)) + "\n"
    assert yaml.safe_load(text) == tree  # the comments never change what the file holds
    return text


def write(out: Path, base: dict, cal: Calibration, header: list[str]) -> dict[str, Path]:
    """The three files in ``out``; the merged config is checked first (ValueError: why not)."""
    data = merged(base, cal.overlay())
    _, reason = check(data, "calibrated-config.yaml")
    if reason:
        raise ValueError(f"the calibrated config does not pass the config check: {reason}")
    out.mkdir(parents=True, exist_ok=True)
    paths = {"overlay": out / "overlay.yaml", "values": out / "values-overlay.yaml",
             "config": out / "calibrated-config.yaml"}
    paths["overlay"].write_text(render(cal, header))
    most = cal.value("deployment", "autoscaling", "max_replicas")
    paths["values"].write_text(render(cal, header + [
        "Helm merges these over the chart's values. Worker pods are a list, which Helm does "
        "not merge: give workerGroups[].maxReplicas room for "
        f"deployment.autoscaling.max_replicas ({most}) engine replicas yourself."],
        under="serving"))
    paths["config"].write_text("\n".join(
        line for h in header + ["The base config with overlay.yaml merged in (its comments say "
                                "where each value comes from)."]
        for line in _comment(h, "")) + "\n" + yaml.safe_dump(data, sort_keys=False))
    return paths
