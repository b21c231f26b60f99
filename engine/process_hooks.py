"""Import hooks installed in every Python process of the environment, at interpreter start-up.

Two fixes must be in place in *every* process that serves a model: the CLI, Ray's workers,
vLLM's engine core and its workers (started with multiprocessing "spawn"). ``make install``
writes a ``.pth`` file into the virtualenv (``install_pth``), so each interpreter installs one
meta-path finder at start-up. It costs nothing until a hooked module is imported, and it never
imports torch or vLLM itself before then.

- ``torchvision._meta_registrations`` (before it runs): ``engine.torchvision_shim``.
- ``vllm.model_executor.kernels.linear.mixed_precision.cpu`` (after it runs):
  ``engine.cpu_kernels`` (a PyTorch 4-bit GEMM where vLLM's CPU library has none).
- ``vllm.v1.executor.multiproc_executor`` (after it runs): ``engine.worker_start`` (the engine
  core forks its worker, as under ``vllm serve``).
- ``transformers.processing_utils`` (after it runs): ``engine.processor_load`` (a processor
  built around the tokenizer it is given loads and copies no other).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from pathlib import Path
from typing import Callable

PTH_NAME = "zz_qwen_vl_process_hooks.pth"
# A .pth line must be one line starting with "import"; never fail interpreter start-up.
PTH_LINE = (
    "import sys; exec('try:\\n import engine.process_hooks as _h; _h.install()\\n"
    "except Exception:\\n pass')\n"
)
Hook = Callable[[object], None]


def _hooks() -> dict[str, tuple[Hook | None, Hook | None]]:
    """Module name -> (run before its code, run after its code)."""
    from . import cpu_kernels, processor_load, torchvision_shim, worker_start

    return {
        torchvision_shim.TARGET: (torchvision_shim.before_import, None),
        cpu_kernels.TARGET: (None, cpu_kernels.after_import),
        worker_start.TARGET: (None, worker_start.after_import),
        processor_load.TARGET: (None, processor_load.after_import),
    }


class _Loader(importlib.abc.Loader):
    def __init__(self, wrapped: importlib.abc.Loader, before: Hook | None, after: Hook | None):
        self._wrapped, self._before, self._after = wrapped, before, after

    def create_module(self, spec):
        return self._wrapped.create_module(spec)

    def exec_module(self, module):
        if self._before:
            self._before(module)
        self._wrapped.exec_module(module)
        if self._after:
            self._after(module)


class _Finder(importlib.abc.MetaPathFinder):
    def __init__(self):
        self._hooks = _hooks()

    def find_spec(self, fullname, path, target=None):
        if fullname not in self._hooks:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader, *self._hooks[fullname])
        return spec


def install() -> None:
    """Install the hooks in this process (idempotent)."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


def install_pth(site_packages: str | None = None) -> Path:
    """Write the .pth file that installs the hooks in every interpreter of this environment."""
    import sysconfig

    directory = Path(site_packages or sysconfig.get_paths()["purelib"])
    target = directory / PTH_NAME
    if not target.exists() or target.read_text() != PTH_LINE:
        target.write_text(PTH_LINE)
    return target


if __name__ == "__main__":
    print(install_pth())
