"""The torchvision CPU shim: needed, effective in fresh processes, and a no-op where not needed."""

import subprocess
import sys

import pytest

from engine import process_hooks, torchvision_shim

PROBE_EXTENSION = (
    "import torch, importlib.util, os;"
    "spec = importlib.util.find_spec('torchvision');"
    "d = os.path.dirname(spec.origin);"
    "so = [f for f in os.listdir(d) if f.startswith('_C')][0];"
    "torch.ops.load_library(os.path.join(d, so))"
)


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def extension_loads() -> bool:
    return _python(PROBE_EXTENSION).returncode == 0


def test_pth_file_installed():
    import sysconfig
    from pathlib import Path

    site = Path(sysconfig.get_paths()["purelib"])
    assert (site / process_hooks.PTH_NAME).read_text() == process_hooks.PTH_LINE


def test_fresh_interpreter_imports_torchvision():
    """No explicit install() call: the .pth hook alone must make it work (as in Ray/vLLM workers)."""
    r = _python(
        "import torchvision, torch; from torchvision.transforms import v2;"
        "print(v2.Resize(8)(torch.zeros(3, 16, 16)).shape)"
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "torch.Size([3, 8, 8])" in r.stdout


def test_spawned_child_imports_torchvision(tmp_path):
    """vLLM starts its engine core and workers with multiprocessing 'spawn'."""
    code = (
        "import multiprocessing as mp\n"
        "def f(q):\n"
        "    import torchvision; q.put(torchvision.__version__)\n"
        "if __name__ == '__main__':\n"
        "    ctx = mp.get_context('spawn'); q = ctx.Queue(); p = ctx.Process(target=f, args=(q,))\n"
        "    p.start(); print('child', q.get(timeout=240)); p.join()\n"
    )
    script = tmp_path / "spawn_probe.py"
    script.write_text(code)
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "child " in r.stdout


def test_without_hook_torchvision_fails_here(extension_loads):
    """Documents why the shim exists: with CPU torch, torchvision dies on the nms schema."""
    r = _python(
        "import sys; sys.meta_path[:] = [f for f in sys.meta_path"
        " if type(f).__module__ != 'engine.process_hooks']; import torchvision"
    )
    if extension_loads:
        assert r.returncode == 0, r.stderr[-2000:]
    else:
        assert r.returncode != 0
        assert "torchvision::nms" in r.stderr


def test_noop_when_extension_loaded():
    assert torchvision_shim.define_missing_schemas(extension_loaded=True) == []


def test_noop_when_schemas_exist():
    import torchvision  # noqa: F401  (the hook has defined them, or the extension has)

    assert torchvision_shim.define_missing_schemas(extension_loaded=False) == []


def test_defines_exactly_the_two_schemas_when_needed(extension_loads):
    if extension_loads:
        pytest.skip("torchvision's C extension loads here; the shim does nothing")
    r = _python(
        "import torchvision.extension as e, torch;"
        "print(e._has_ops());"
        "torch._C._dispatch_find_schema_or_throw('torchvision::nms', '');"
        "torch._C._dispatch_find_schema_or_throw('torchvision::qnms', '');"
        "print('schemas ok')"
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["False", "schemas", "ok"]


def test_install_is_idempotent():
    process_hooks.install()
    process_hooks.install()
    finders = [f for f in sys.meta_path if isinstance(f, process_hooks._Finder)]
    assert len(finders) == 1
