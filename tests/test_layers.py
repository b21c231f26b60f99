"""The import layers (pyproject.toml's import-linter contracts) hold, and the check catches a
wrong import: loadtest may use launch and engine, launch may use engine, nothing imports the
tests, only the CLIs' own entry points import the CLIs."""

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
