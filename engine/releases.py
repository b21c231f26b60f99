"""The official Qwen2-VL releases: their names and sizes, for planning before a download and
for the embedded 2B-size model. Every Qwen2-VL-{2B,7B}-Instruct release and its GPTQ/AWQ twins
share the language and vision sizes below."""

from __future__ import annotations

import re

# Quantized releases end in one of these: Qwen2-VL-<size>-Instruct[-<suffix>].
RELEASE_SUFFIXES = ("GPTQ-Int4", "GPTQ-Int8", "AWQ")
_SUFFIX = "|".join(RELEASE_SUFFIXES)
RELEASE_SUFFIX = re.compile(rf"-({_SUFFIX})$", re.IGNORECASE)
OFFICIAL_RELEASE = re.compile(rf"Qwen2-VL-(2B|7B)-Instruct(?:-({_SUFFIX}))?$", re.IGNORECASE)

# The config.json sizes of the official releases.
OFFICIAL_TEXT = {
    "2B": {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
           "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151936,
           "tie_word_embeddings": True},
    "7B": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
           "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
           "tie_word_embeddings": False},
}
OFFICIAL_VISION = {"depth": 32, "embed_dim": 1280, "num_heads": 16, "mlp_ratio": 4,
                   "in_channels": 3, "patch_size": 14, "spatial_merge_size": 2,
                   "temporal_patch_size": 2}
