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

It must run in every process that imports torchvision: ``engine.process_hooks`` runs
``before_import`` just before ``torchvision._meta_registrations`` executes, in every interpreter
of the environment.
"""

from __future__ import annotations

import sys

TARGET = "torchvision._meta_registrations"
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


def before_import(_module) -> None:
    """Runs just before ``torchvision._meta_registrations`` (after torchvision tried its own
    extension)."""
    ext = sys.modules.get("torchvision.extension")
    define_missing_schemas(extension_loaded=bool(ext is not None and ext._has_ops()))
