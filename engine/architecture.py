"""What a checkpoint's ``config.json`` says of the model, read without loading it: the
language model's and the vision tower's sizes, the stored dtype and quantization."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .checkpoint import stored_dtype
from .releases import OFFICIAL_RELEASE, OFFICIAL_TEXT, OFFICIAL_VISION


DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "fp8": 1, "fp8_e4m3": 1,
               "fp8_e5m2": 1}


class PlanError(ValueError):
    """The plan cannot be made (no architecture, bad workload); the message says why."""


def official_config(source: str) -> dict | None:
    """The config.json of an official Qwen2-VL release named by ``source``, or None."""
    m = OFFICIAL_RELEASE.search(source)
    if m is None:
        return None
    size, quant = m.group(1).upper(), (m.group(2) or "").upper()
    text = OFFICIAL_TEXT[size]
    cfg: dict[str, Any] = {**text, "torch_dtype": "float16" if quant else "bfloat16",
                           "vision_config": {**OFFICIAL_VISION, "hidden_size": text["hidden_size"]}}
    if quant.startswith("GPTQ"):
        cfg["quantization_config"] = {"quant_method": "gptq", "bits": int(quant[-1]),
                                      "group_size": 128, "desc_act": False, "sym": True}
    elif quant == "AWQ":
        cfg["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": 128,
                                      "zero_point": True}
    return cfg


@dataclass(frozen=True)
class Architecture:
    """The sizes a plan needs, from a Qwen2-VL ``config.json`` (flat or ``text_config``)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    tied_embeddings: bool
    checkpoint_dtype: str
    vision_depth: int
    vision_embed_dim: int
    vision_heads: int
    vision_mlp_ratio: float
    vision_in_channels: int
    patch_size: int
    merge_size: int
    temporal_patch_size: int
    quant_method: str | None = None  # "gptq" / "awq"
    quant_bits: int | None = None
    quant_group_size: int | None = None

    @classmethod
    def from_config(cls, cfg: dict) -> "Architecture":
        text = {**cfg, **(cfg.get("text_config") or {})}
        vision = cfg.get("vision_config") or {}
        qc = cfg.get("quantization_config") or {}
        try:
            hidden, heads = int(text["hidden_size"]), int(text["num_attention_heads"])
            tied = text.get("tie_word_embeddings", cfg.get("tie_word_embeddings", False))
            return cls(
                vocab_size=int(text["vocab_size"]), hidden_size=hidden,
                intermediate_size=int(text["intermediate_size"]),
                num_layers=int(text["num_hidden_layers"]), num_heads=heads,
                num_kv_heads=int(text.get("num_key_value_heads") or heads),
                head_dim=int(text.get("head_dim") or hidden // heads),
                tied_embeddings=bool(tied),
                checkpoint_dtype=str(stored_dtype(cfg) or "bfloat16"),
                vision_depth=int(vision["depth"]), vision_embed_dim=int(vision["embed_dim"]),
                vision_heads=int(vision["num_heads"]),
                vision_mlp_ratio=float(vision.get("mlp_ratio", 4)),
                vision_in_channels=int(vision.get("in_channels", vision.get("in_chans", 3))),
                patch_size=int(vision.get("patch_size", 14)),
                merge_size=int(vision.get("spatial_merge_size", 2)),
                temporal_patch_size=int(vision.get("temporal_patch_size", 2)),
                quant_method=str(qc["quant_method"]).lower() if qc.get("quant_method") else None,
                quant_bits=int(qc.get("bits", qc.get("w_bit", 0))) or None if qc else None,
                quant_group_size=int(qc.get("group_size", qc.get("q_group_size", 0))) or None
                if qc else None,
            )
        except (KeyError, TypeError, ValueError) as err:
            raise PlanError(f"config.json is not a Qwen2-VL configuration (missing or bad "
                            f"{err})") from None


def architecture_for(cfg) -> tuple[Architecture, str]:
    """The architecture of a config's checkpoint and where it was read: the embedded model's
    spec, a local checkpoint, the Hugging Face cache, or an official release's known config."""
    from .embedded_model import hf_config, is_embedded, spec_for

    src = cfg.model.source
    if is_embedded(src):
        name, spec = spec_for(src)
        data = hf_config(spec).to_dict()
        data["torch_dtype"] = spec.dtype
        if spec.quant is not None:
            data["quantization_config"] = spec.quant.quantization_config()
        return Architecture.from_config(data), f"embedded model {name}"
    data, origin = cfg.checkpoint_config()
    if data is None:
        data, origin = official_config(src), f"{src} (the official release's config, built in)"
    if data is None:
        raise PlanError(f"no config.json for {src}: run `qwen-vl download --config ...` first, "
                        "or point model.source at a checkpoint directory")
    return Architecture.from_config(data), origin
