"""The import layers (pyproject.toml's import-linter contracts) hold, and the check catches a
wrong import: loadtest may use launch and engine, launch may use engine, nothing imports the
tests, only the CLIs' own entry points import the CLIs, the request path (launch.api) and the
operator side (launch.cluster) import neither each other nor the generators. Ray's private
modules are imported by launch.ray_compat alone (import-linter sees external packages only as
a whole, so that check reads the imports itself)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT = Path(sys.executable).parent / "lint-imports"


def lint(root: Path) -> subprocess.CompletedProcess:
    """lint-imports on the tree at ``root``, whose packages come first on the import path (the
    project is installed editable: without it, the linter would read the source tree's)."""
    import os

    return subprocess.run([str(LINT), "--no-cache", str(root / "pyproject.toml")], cwd=root,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(root)})


def test_the_tree_keeps_its_layers():
    r = lint(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("package, line, broken", [
    ("launch", "import loadtest.bandwidth", "launch.zz_layer_probe -> loadtest.bandwidth"),
    ("engine", "import launch.api.errors", "engine.zz_layer_probe -> launch.api.errors"),
    ("loadtest", "import tests.utils", "loadtest.zz_layer_probe -> tests.utils"),
    ("launch", "import launch.cli", "launch.zz_layer_probe -> launch.cli"),
    ("launch/api", "import launch.cluster.stop",
     "launch.api.zz_layer_probe -> launch.cluster.stop"),
    ("launch/cluster", "import launch.api.usage",
     "launch.cluster.zz_layer_probe -> launch.api.usage"),
    ("launch/api", "import launch.generate.chart",
     "launch.api.zz_layer_probe -> launch.generate.chart"),
    ("launch/router", "import launch.api.front_door",
     "launch.router.zz_layer_probe -> launch.api.front_door"),
])
def test_a_wrong_import_is_caught(package, line, broken, tmp_path):
    """A copy of the tree with one module whose import is deliberately wrong: the source tree
    is never written to."""
    import shutil

    for name in ("engine", "launch", "loadtest", "tests"):
        shutil.copytree(ROOT / name, tmp_path / name,
                        ignore=shutil.ignore_patterns("__pycache__", "data", "*.png"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    (tmp_path / package / "zz_layer_probe.py").write_text(f"{line}  # deliberately wrong\n")
    r = lint(tmp_path)
    assert r.returncode != 0 and broken in r.stdout, r.stdout + r.stderr
    assert not (ROOT / package / "zz_layer_probe.py").exists()


def private_ray_imports(root: Path) -> list[str]:
    """``path:line module`` of every import of a private Ray module or name under ``root``'s
    packages: a module path with a ``_``-part, ``ray.experimental``, ``ray.autoscaler``, or a
    ``_``-name imported from Ray."""
    found = []
    for package in ("engine", "launch", "loadtest"):
        for path in sorted((root / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    pairs = [(a.name, "") for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    pairs = [(node.module, a.name) for a in node.names]
                else:
                    continue
                for module, name in pairs:
                    parts = module.split(".")
                    if parts[0] == "ray" and (
                            any(p.startswith("_") for p in parts) or name.startswith("_")
                            or parts[1:2] in (["experimental"], ["autoscaler"])):
                        found.append(f"{path.relative_to(root).as_posix()}:{node.lineno} {module}")
    return found


def test_only_ray_compat_imports_rays_private_modules():
    found = private_ray_imports(ROOT)
    assert [f for f in found if not f.startswith("launch/ray_compat.py:")] == []
    # ray_compat holds each: the callback base, the key-value store, the controller client,
    # the autoscaler's flag, Ray Serve LLM's ingress router builder and the replica's
    # direct-ingress server with its request metadata.
    assert {f.split(" ")[1] for f in found} == {
        "ray.llm._internal.common.callbacks.base", "ray.experimental", "ray.serve.context",
        "ray.autoscaler.v2.utils", "ray.llm._internal.serve.core.ingress.builder",
        "ray.serve._private.common", "ray.serve._private.replica"}


def test_a_private_ray_import_elsewhere_is_caught(tmp_path):
    (tmp_path / "launch" / "api").mkdir(parents=True)
    (tmp_path / "launch" / "api" / "probe.py").write_text(
        "def f():\n    from ray.experimental.internal_kv import _internal_kv_get\n")
    assert private_ray_imports(tmp_path) == [
        "launch/api/probe.py:2 ray.experimental.internal_kv"]
