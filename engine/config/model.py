"""``model:``: the checkpoint and how it is named and read."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ..embedded_model import EMBEDDED_PREFIX, SPECS, is_embedded
from .base import _Strict


class ModelSource(_Strict):
    source: str = Field(
        description="Hugging Face id, local checkpoint directory, or 'embedded:<name>' "
        f"(built locally; one of {sorted(SPECS)})."
    )
    served_name: str = Field(min_length=1, description="Model id clients send as 'model'.")
    revision: str | None = Field(None, description="Hub revision (ignored for local paths).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: an embedded model's own dtype (bfloat16 for its GPTQ/AWQ "
        "variants); otherwise vLLM's choice (the checkpoint's, float32 cast to 16-bit). On a "
        "CPU without BF16 instructions (no AVX512-BF16/AMX) an unquantized checkpoint runs in "
        "float32: vLLM's BF16 is many times slower there.")
    quantization: Literal["auto", "none", "gptq", "awq"] = Field(
        "auto", description="auto: whatever the checkpoint's quantization_config says; none: "
        "the checkpoint must be unquantized; gptq/awq: it must be that. vLLM picks the kernel "
        "(Marlin on GPUs that have it, CPUWNA16 on CPU).")
    trust_remote_code: bool = Field(
        False, description="Run the checkpoint's own Python code (Hugging Face trust_remote_code); "
        "Qwen2-VL needs none.")

    @model_validator(mode="after")
    def _known_embedded(self):
        if is_embedded(self.source) and self.source[len(EMBEDDED_PREFIX) :] not in SPECS:
            raise ValueError(
                f"unknown embedded model {self.source!r}; known: "
                + ", ".join(EMBEDDED_PREFIX + n for n in sorted(SPECS))
            )
        return self
