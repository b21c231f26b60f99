"""The whole config, ``ServingConfig``: its sections and the checks across them (device,
quantization on CPU, output length)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, PrivateAttr, model_validator

from ..checkpoint import CheckpointQuant, is_local_path, linear_sizes, quantization_of, read_config
from ..cpu_features import native_bf16
from ..embedded_model import EMBEDDED_PREFIX, SPECS, ensure_checkpoint, is_embedded
from ..vision import TOKEN_PIXELS, VideoBudget
from .access import AccessSettings
from .alerts import AlertSettings
from .base import ConfigError, _Strict
from .deployment import DeploymentSettings
from .engine import EngineSettings
from .limits import LimitsSettings
from .model import ModelSource
from .multimodal import MultimodalSettings, VIDEO_FRAME_CAP
from .server import ServerSettings
from .tools import ToolsSettings


CPU_BLOCK_MULTIPLE = 32  # vLLM's CPU attention: "No common block size ... MultipleOf(32)"
CPU_QUANT_BITS = 4  # vLLM's CPUWNA16 kernel: 4-bit GPTQ (uint4b8) and AWQ (uint4) only
CPU_QUANT_MULTIPLE = 32  # ... and input/output sizes that are multiples of 32


class ServingConfig(_Strict):
    model: ModelSource = Field(description="The checkpoint and the name clients use.")
    engine: EngineSettings = Field(EngineSettings(), description="vLLM engine settings.")
    multimodal: MultimodalSettings = Field(
        MultimodalSettings(), description="Images and videos: counts, pixel bounds, frames.")
    deployment: DeploymentSettings = Field(
        DeploymentSettings(), description="Replicas, devices and Ray Serve behaviour.")
    server: ServerSettings = Field(ServerSettings(), description="Ports, names, the local head.")
    limits: LimitsSettings = Field(
        LimitsSettings(), description="What the front door enforces on every request.")
    access: AccessSettings = Field(AccessSettings(), description="API keys and /metrics access.")
    tools: ToolsSettings = Field(ToolsSettings(), description="Function calling: tool_choice "
                                 "'auto', the tool-call parser, the chat template.")
    alerts: AlertSettings = Field(AlertSettings(), description="Alert-rule thresholds (SLOs).")
    # The checkpoint's quantization as the validator read it (``quantization_of``), once.
    _checkpoint_quant: CheckpointQuant | None | str = PrivateAttr("unknown")

    @model_validator(mode="after")
    def _max_tokens_fit(self):
        mt = self.limits.max_tokens
        if mt is not None and mt > self.engine.max_model_len:
            raise ValueError(f"limits.max_tokens ({mt}) must be <= engine.max_model_len "
                             f"({self.engine.max_model_len})")
        vt = self.multimodal.video_max_tokens
        if vt is not None and vt >= self.engine.max_model_len:
            raise ValueError(f"multimodal.video_max_tokens ({vt}) must be < engine.max_model_len "
                             f"({self.engine.max_model_len}): the prompt's text and the output "
                             "need room too")
        return self

    def max_output_tokens(self) -> int:
        return self.limits.max_tokens or self.engine.max_model_len

    @model_validator(mode="after")
    def _device_limits(self):
        if self.deployment.device == "cpu" and self.engine.block_size % CPU_BLOCK_MULTIPLE:
            raise ValueError(
                f"engine.block_size {self.engine.block_size} is not supported on CPU: vLLM's CPU "
                f"attention needs a multiple of {CPU_BLOCK_MULTIPLE} (e.g. 32 or 128)"
            )
        return self

    @model_validator(mode="after")
    def _quantization_runs_here(self):
        q = self.model.quantization
        ckpt_cfg, origin = read_config(self.model.source, self.model.revision)  # once
        found = quantization_of(self.model.source, ckpt_cfg, origin)
        self._checkpoint_quant = found
        if found == "unknown":
            return self  # a hub id not cached: vLLM reads it (and says what fails)
        src = self.model.source
        if q == "none" and found is not None:
            raise ValueError(f"model.quantization: none, but {found.origin} is {found.label}-"
                             "quantized; set it to auto (or to its method)")
        if q in ("gptq", "awq") and found is None:
            raise ValueError(f"model.quantization: {q}, but {src} has no quantization_config "
                             "(an unquantized checkpoint); use auto or none, or a "
                             f"{q.upper()} checkpoint")
        if q in ("gptq", "awq") and found.method != q:
            raise ValueError(f"model.quantization: {q}, but {found.origin} is {found.label}; "
                             "set it to auto")
        if found is None:
            return self
        if self.engine_dtype() == "float32":
            raise ValueError(f"model.dtype: float32 is not supported with {found.label} (vLLM's "
                             "GPTQ/AWQ kernels take float16/bfloat16 activations); use bfloat16")
        if self.deployment.device == "cpu":
            _check_cpu_quantization(found, linear_sizes(ckpt_cfg))
        return self

    # ---- derived views -------------------------------------------------------------------
    def model_path(self) -> str:
        """Where the engine loads the checkpoint from (builds the embedded model if needed)."""
        src = self.model.source
        if is_embedded(src):
            return str(ensure_checkpoint(src))
        if is_local_path(src):
            path = Path(src).expanduser()
            if not (path / "config.json").is_file():
                raise ConfigError(f"model.source: {src} is not a checkpoint directory "
                                  "(no config.json there)")
            return str(path)
        return src

    def engine_dtype(self) -> str:
        """The dtype the engine runs in ("auto" leaves it to vLLM).

        ``auto`` on a CPU deployment where the CPU has no BF16 instructions
        (``engine.cpu_features``): a checkpoint known to be unquantized runs in float32, since
        vLLM's BF16 linear layers fall back to plain torch there (far slower, most of all in
        prefill and batched decode); GPTQ/AWQ always run in bfloat16, which their kernels
        need."""
        m = self.model
        if m.dtype != "auto":
            return m.dtype
        if is_embedded(m.source):
            spec = SPECS[m.source[len(EMBEDDED_PREFIX):]]
            if spec.quant is not None:
                return "bfloat16"
            dtype, quantized = spec.dtype, False
        else:
            dtype, quantized = "auto", self._quantized()
        if self.deployment.device == "cpu" and quantized is False and native_bf16() is False:
            return "float32"
        return dtype

    def _quantized(self) -> bool | None:
        """Whether the checkpoint is GPTQ/AWQ-quantized; None: unknown (a hub id not cached)."""
        if self.model.quantization in ("gptq", "awq"):
            return True
        found = self._checkpoint_quant
        return None if found == "unknown" else found is not None

    def video_budget(self) -> VideoBudget:
        """The video settings in force, the defaults derived from ``engine.max_model_len``."""
        mm = self.multimodal
        tokens = mm.video_max_tokens or self.engine.max_model_len // 2
        floor = mm.video_min_pixels or mm.min_pixels
        frames = mm.video_max_frames
        if frames is None:
            # Two frames at the floor make floor / TOKEN_PIXELS tokens; half as many frames as
            # would fit there leaves each frame about twice the floor, so that frames of any
            # usual aspect ratio, rounded to whole 28-pixel patches, stay above it.
            frames = min(VIDEO_FRAME_CAP, tokens // max(1, floor // TOKEN_PIXELS))
            frames = max(2, frames - frames % 2)
        return VideoBudget(mm.video_fps, frames, tokens, floor, mm.max_pixels)

    def mm_processor_kwargs(self) -> dict[str, Any]:
        mm = self.multimodal
        return {"min_pixels": mm.min_pixels, "max_pixels": mm.max_pixels}


def _check_cpu_quantization(found: CheckpointQuant, sizes: dict[str, int] | None) -> None:
    if found.method not in ("gptq", "awq"):
        return  # other methods: vLLM decides
    if found.bits != CPU_QUANT_BITS:
        raise ValueError(
            f"model.source: {found.origin} is {found.label}, which cannot be served on CPU: "
            f"vLLM's CPU kernel (CPUWNA16) runs {CPU_QUANT_BITS}-bit GPTQ and AWQ only, and 8-bit "
            "GPTQ has no CPU kernel. Use the GPTQ-Int4 or AWQ checkpoint on CPU, or serve this "
            "one on a GPU (deployment.device: gpu)")
    if found.group_size not in (None, -1) and found.group_size % 2:
        raise ValueError(f"model.source: {found.origin} has group_size {found.group_size}; "
                         "vLLM's CPU kernel needs an even group size")
    odd = {k: v for k, v in (sizes or {}).items() if v % CPU_QUANT_MULTIPLE}
    if odd:
        raise ValueError(f"model.source: {found.origin} has linear sizes {odd} that vLLM's CPU "
                         f"4-bit kernel cannot run (multiples of {CPU_QUANT_MULTIPLE} only)")
