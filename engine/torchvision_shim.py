"""Let ``import torchvision`` work with CPU-only PyTorch.

PyPI only has CUDA builds of torchvision. With ``torch==2.13.0+cpu`` its C extension
(``torchvision/_C.so``) cannot load, and ``torchvision/_meta_registrations.py`` then dies on
``torch.library.register_fake("torchvision::nms")`` (and ``"torchvision::qnms"``) because those
two operators were never defined. transformers' Qwen2-VL processors and vLLM's ``qwen2_vl``
module import torchvision, so nothing works until this is fixed.

The fix: define the two operator *schemas* in a ``torch.library`` "torchvision" FRAGMENT just
before ``_meta_registrations`` runs. Only schemas, no kernels: calling ``nms`` still fails (it
never worked without the extension); everything Qwen2-VL needs (the pure-PyTorch transforms)
works.

It is a no-op when the extension loads: the decision is taken *after* torchvision tried its
own extension (``torchvision.extension._has_ops()``), and when the ops exist already.

It must run in every process that imports torchvision: the CLI, Ray workers, vLLM's engine core
and its workers. ``make install`` writes a ``.pth`` file into the virtualenv (``install_pth``),
so every interpreter of that environment installs the import hook at start-up. The hook costs
nothing until torchvision is imported (torch is not imported by it before then).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from pathlib import Path

_TARGET = "torchvision._meta_registrations"
PTH_NAME = "zz_qwen_vl_torchvision_shim.pth"
# A .pth line must be one line starting with "import"; never fail interpreter start-up.
PTH_LINE = (
    "import sys; exec('try:\\n import engine.torchvision_shim as _s; _s.install()\\n"
    "except Exception:\\n pass')\n"
)
SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_fragment = None  # keeps the torch.library.Library alive (it unregisters when collected)


def _op_exists(name: str) -> bool:
    import torch

    try:
        torch._C._dispatch_find_schema_or_throw(f"torchvision::{name}", "")
        return True
    except RuntimeError:
        return False


def define_missing_schemas(extension_loaded: bool) -> list[str]:
    """Define the schemas torchvision's meta registrations need. Returns what was defined."""
    global _fragment
    if extension_loaded:
        return []
    missing = [n for n in SCHEMAS if not _op_exists(n)]
    if not missing:
        return []
    import torch

    if _fragment is None:
        _fragment = torch.library.Library("torchvision", "FRAGMENT")
    for name in missing:
        _fragment.define(SCHEMAS[name])
    return missing


class _Loader(importlib.abc.Loader):
    def __init__(self, wrapped: importlib.abc.Loader):
        self._wrapped = wrapped

    def create_module(self, spec):
        return self._wrapped.create_module(spec)

    def exec_module(self, module):
        ext = sys.modules.get("torchvision.extension")
        loaded = bool(ext is not None and ext._has_ops())
        define_missing_schemas(extension_loaded=loaded)
        self._wrapped.exec_module(module)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != _TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


def install() -> None:
    """Install the import hook in this process (idempotent)."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


def install_pth(site_packages: str | None = None) -> Path:
    """Write the .pth file that installs the hook in every interpreter of this environment."""
    import sysconfig

    target = Path(site_packages or sysconfig.get_paths()["purelib"]) / PTH_NAME
    if not target.exists() or target.read_text() != PTH_LINE:
        target.write_text(PTH_LINE)
    return target


if __name__ == "__main__":
    print(install_pth())
