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
    return subprocess.run([str(LINT), "--no-cache", str(root / "pyproject.toml")], cwd=root,
                          capture_output=True, text=True, timeout=120)


def test_the_tree_keeps_its_layers():
    r = lint(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("package, line, broken", [
    ("launch", "import loadtest.bandwidth", "launch.zz_layer_probe -> loadtest.bandwidth"),
    ("engine", "import launch.errors", "engine.zz_layer_probe -> launch.errors"),
    ("loadtest", "import tests.utils", "loadtest.zz_layer_probe -> tests.utils"),
    ("launch", "import launch.cli", "launch.zz_layer_probe -> launch.cli"),
])
def test_a_wrong_import_is_caught(package, line, broken):
    """A module with one deliberately wrong import, added to the tree for the run. (Added to
    the tree itself rather than to a copy: in this venv the project is installed editable, and
    the linter may resolve a copy's packages to the installed tree.)"""
    probe = ROOT / package / "zz_layer_probe.py"
    probe.write_text(f"{line}  # deliberately wrong: tests/test_layers.py\n")
    try:
        r = lint(ROOT)
    finally:
        probe.unlink()
    assert r.returncode != 0 and broken in r.stdout, r.stdout + r.stderr
