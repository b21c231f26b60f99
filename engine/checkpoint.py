"""What a checkpoint is, read without loading it: its ``config.json`` and quantization.

Used by ``engine.checkpoint_fit`` to reject combinations that cannot run (e.g. GPTQ-Int8 on
CPU) before anything starts. Sources, in order: the embedded model's spec (nothing built), a
local checkpoint directory, the local Hugging Face cache for a hub id. Nothing is downloaded here; a
hub id that is not cached is recognised by the official release names (``…-GPTQ-Int4``,
``…-GPTQ-Int8``, ``…-AWQ``), else its quantization is unknown until vLLM reads it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .embedded_model import is_embedded, spec_for
from .releases import RELEASE_SUFFIX



@dataclass(frozen=True)
class CheckpointQuant:
    method: str  # "gptq", "awq", or any other quant_method vLLM may know
    bits: int | None
    group_size: int | None
    origin: str  # where this was read from, for messages

    @property
    def label(self) -> str:
        if self.method == "gptq" and self.bits:
            return f"GPTQ-Int{self.bits}"
        return self.method.upper() + (f" {self.bits}-bit" if self.bits else "")


# A model.source with one of these prefixes is a checkpoint directory (the Helm chart's
# "localSource" helper tests the same prefixes; tests/helm checks each).
LOCAL_PATH_PREFIXES = ("/", "./", "../", "~")


def is_local_path(source: str) -> bool:
    return source.startswith(LOCAL_PATH_PREFIXES)


def read_config(source: str, revision: str | None = None) -> tuple[dict | None, str]:
    """``(config.json as a dict or None, where it came from)``."""
    if is_embedded(source):
        name, spec = spec_for(source)
        cfg: dict = {"text_config": {
            "hidden_size": spec.hidden_size, "intermediate_size": spec.intermediate_size,
            "num_attention_heads": spec.num_attention_heads,
            "num_key_value_heads": spec.num_key_value_heads}}
        if spec.quant is not None:
            cfg["quantization_config"] = spec.quant.quantization_config()
        return cfg, f"embedded model {name}"
    if is_local_path(source):
        path = Path(source).expanduser() / "config.json"
        try:
            return json.loads(path.read_text()), str(path)
        except (OSError, ValueError):
            return None, str(path)
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(source, "config.json", revision=revision)
    except Exception:  # malformed repo id and the like: vLLM will say
        cached = None
    if isinstance(cached, str):
        try:
            return json.loads(Path(cached).read_text()), f"{source} (local Hugging Face cache)"
        except (OSError, ValueError):
            pass
    return None, source


def stored_dtype(cfg: dict) -> str | None:
    """The dtype a checkpoint's config.json says its weights are stored in, if it says."""
    return (cfg.get("torch_dtype") or cfg.get("dtype")
            or (cfg.get("text_config") or {}).get("torch_dtype"))


def quantization_of(source: str, cfg: dict | None, origin: str) -> CheckpointQuant | None | str:
    """The quantization of a checkpoint whose config ``read_config`` returned: a
    ``CheckpointQuant``, ``None`` if it has none, or ``"unknown"``."""
    if cfg is None:
        m = RELEASE_SUFFIX.search(source.rstrip("/"))
        if m is None or is_local_path(source):
            return "unknown"
        suffix = m.group(1).upper()
        method, bits = ("gptq", int(suffix[-1])) if suffix.startswith("GPTQ") else ("awq", 4)
        return CheckpointQuant(method, bits, 128, f"{source} (official release name)")
    qc = cfg.get("quantization_config")
    if not qc:
        return None
    bits = qc.get("bits", qc.get("w_bit"))
    group = qc.get("group_size", qc.get("q_group_size"))
    return CheckpointQuant(str(qc.get("quant_method", "unknown")).lower(),
                           int(bits) if bits else None, int(group) if group else None, origin)


def linear_sizes(cfg: dict | None) -> dict[str, int] | None:
    """Input/output sizes of the language model's quantized linear layers, if readable."""
    if cfg is None:
        return None
    text = cfg.get("text_config") or cfg
    try:
        hidden, inter = int(text["hidden_size"]), int(text["intermediate_size"])
        heads = int(text["num_attention_heads"])
        kv = int(text.get("num_key_value_heads", heads))
    except (KeyError, TypeError, ValueError):
        return None
    head_dim = int(text.get("head_dim") or hidden // heads)
    return {"hidden_size": hidden, "intermediate_size": inter,
            "q_proj output": heads * head_dim, "k/v_proj output": kv * head_dim}
