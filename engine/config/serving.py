"""The whole config, ``ServingConfig``: its sections and the checks across them (device,
output length). Checks that read the checkpoint are ``engine.checkpoint_fit``'s."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, PrivateAttr, model_validator

from ..checkpoint import CheckpointQuant, is_local_path, quantization_of, read_config
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
from .server import ROUTER_BODY_ENV, ServerSettings
from .tools import ToolsSettings


CPU_BLOCK_MULTIPLE = 32  # vLLM's CPU attention: "No common block size ... MultipleOf(32)"


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
    # The checkpoint's config.json, read on first need (``checkpoint_config``): the validators
    # compare fields only, so a replica that rebuilds the config from its args reads nothing.
    _checkpoint: tuple[dict | None, str] | None = PrivateAttr(None)

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

    def ray_env(self) -> dict[str, str]:
        """Environment every Ray node starts with: the server's fast paths
        (``ServerSettings.ray_env``), and the request body for the ingress request router when
        it routes on media (``deployment.routing.image_affinity``)."""
        env = self.server.ray_env()
        if self.deployment.routing.image_affinity:
            env[ROUTER_BODY_ENV] = "1"
        return env

    def max_output_tokens(self) -> int:
        return self.limits.max_tokens or self.engine.max_model_len

    @model_validator(mode="after")
    def _affinity_needs_haproxy(self):
        if self.deployment.routing.image_affinity and not self.server.ray_ha_proxy:
            raise ValueError("deployment.routing.image_affinity needs server.ray_ha_proxy: true "
                             "(HAProxy asks the router for each request's replica)")
        return self

    @model_validator(mode="after")
    def _device_limits(self):
        if self.deployment.device == "cpu" and self.engine.block_size % CPU_BLOCK_MULTIPLE:
            raise ValueError(
                f"engine.block_size {self.engine.block_size} is not supported on CPU: vLLM's CPU "
                f"attention needs a multiple of {CPU_BLOCK_MULTIPLE} (e.g. 32 or 128)"
            )
        return self

    # ---- derived views -------------------------------------------------------------------
    def checkpoint_config(self) -> tuple[dict | None, str]:
        """``(the checkpoint's config.json or None, where it came from)``, read once."""
        if self._checkpoint is None:
            self._checkpoint = read_config(self.model.source, self.model.revision)
        return self._checkpoint

    def checkpoint_quantization(self) -> CheckpointQuant | None | str:
        """The checkpoint's quantization (``engine.checkpoint.quantization_of``)."""
        return quantization_of(self.model.source, *self.checkpoint_config())

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
        found = self.checkpoint_quantization()
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

