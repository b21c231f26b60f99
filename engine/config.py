"""The one typed config: the single source of truth for engine, Ray Serve application and chart.

Loaded from YAML with ``yaml.safe_load``; every model forbids unknown keys, so a typo fails with
the key named. ``to_engine_kwargs`` maps it onto vLLM engine arguments and checks each name
against vLLM's own ``EngineArgs`` fields, so a flag renamed upstream fails at load time, not
deep in engine start-up.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .embedded_model import EMBEDDED_PREFIX, SPECS, ensure_checkpoint, is_embedded


class ConfigError(ValueError):
    """A config that cannot be used; the message names the key and the problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSource(_Strict):
    source: str = Field(
        description="Hugging Face id, local checkpoint directory, or 'embedded:<name>' "
        f"(built locally; one of {sorted(SPECS)})."
    )
    served_name: str = Field(min_length=1, description="Model id clients send as 'model'.")
    revision: str | None = Field(None, description="Hub revision (ignored for local paths).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    quantization: Literal["gptq", "awq", "gptq_marlin", "awq_marlin"] | None = Field(
        None, description="None reads the checkpoint's quantization_config, if any."
    )
    trust_remote_code: bool = False

    @model_validator(mode="after")
    def _known_embedded(self):
        if is_embedded(self.source) and self.source[len(EMBEDDED_PREFIX) :] not in SPECS:
            raise ValueError(
                f"unknown embedded model {self.source!r}; known: "
                + ", ".join(EMBEDDED_PREFIX + n for n in sorted(SPECS))
            )
        return self


class EngineSettings(_Strict):
    """Paged attention, scheduling and KV cache."""

    max_model_len: int = Field(4096, ge=64, description="Context length (prompt + output).")
    block_size: int = Field(
        32, ge=1, description="Tokens per KV cache block (paged attention); CPU: a multiple of 32."
    )
    max_num_seqs: int = Field(16, ge=1, description="Sequences batched per engine step.")
    max_num_batched_tokens: int | None = Field(
        None, ge=64, description="Tokens per engine step; None lets vLLM choose."
    )
    gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, description="GPU only: fraction of GPU memory for weights and KV cache."
    )
    cpu_kv_cache_gib: float = Field(
        1.0, gt=0, description="CPU only: KV cache size in GiB."
    )
    enable_prefix_caching: bool = True
    kv_cache_dtype: Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2"] = "auto"
    enforce_eager: bool = Field(False, description="Skip torch.compile / CUDA graphs.")
    seed: int = 0
    extra_args: dict[str, Any] = Field(
        default_factory=dict,
        description="Any other vLLM engine argument, by its EngineArgs name (checked).",
    )


class MultimodalSettings(_Strict):
    max_images_per_prompt: int = Field(4, ge=0)
    max_videos_per_prompt: int = Field(1, ge=0)
    min_pixels: int = Field(56 * 56, ge=28 * 28, description="Images are resized to at least this.")
    max_pixels: int = Field(
        256 * 28 * 28, ge=28 * 28, description="Images are resized to at most this (caps tokens)."
    )
    video_fps: float = Field(2.0, gt=0, description="Frames sampled per second of video.")
    video_max_frames: int = Field(16, ge=2, description="Frames sampled per video at most.")

    @model_validator(mode="after")
    def _pixels_ordered(self):
        if self.max_pixels < self.min_pixels:
            raise ValueError(
                f"max_pixels ({self.max_pixels}) must be >= min_pixels ({self.min_pixels})"
            )
        return self


class Autoscaling(_Strict):
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    target_ongoing_requests: float = Field(8, gt=0)
    upscale_delay_s: float = Field(30, ge=0)
    downscale_delay_s: float = Field(600, ge=0)

    @model_validator(mode="after")
    def _ordered(self):
        if self.max_replicas < self.min_replicas:
            raise ValueError(
                f"max_replicas ({self.max_replicas}) must be >= min_replicas ({self.min_replicas})"
            )
        return self


class DeploymentSettings(_Strict):
    """How the engine is replicated by Ray Serve."""

    device: Literal["cpu", "gpu"] = "cpu"
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per replica (GPU only).")
    replicas: int = Field(1, ge=1, description="Fixed replica count (ignored with autoscaling).")
    autoscaling: Autoscaling | None = None
    max_ongoing_requests: int = Field(32, ge=1, description="Requests in flight per replica.")
    cpus_per_replica: float = Field(1, gt=0, description="Ray CPUs reserved per engine replica.")
    env: dict[str, str] = Field(
        default_factory=dict, description="Extra environment variables for engine processes."
    )

    @model_validator(mode="after")
    def _tp_needs_gpu(self):
        if self.device == "cpu" and self.tensor_parallel_size != 1:
            raise ValueError(
                f"tensor_parallel_size {self.tensor_parallel_size} needs device: gpu "
                "(the CPU engine runs one process per replica)"
            )
        return self


CPU_BLOCK_MULTIPLE = 32  # vLLM's CPU attention: "No common block size ... MultipleOf(32)"


class ServerSettings(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    metrics_port: int = Field(8080, ge=1, le=65535, description="Ray's Prometheus port.")
    app_name: str = Field("qwen-vl", min_length=1)
    ray_num_cpus: int | None = Field(
        None, ge=1, description="Logical CPUs of a local Ray head; None: 2 per replica + 2."
    )
    startup_timeout_s: float = Field(900, gt=0, description="How long `serve` waits for health.")


class ServingConfig(_Strict):
    model: ModelSource
    engine: EngineSettings = EngineSettings()
    multimodal: MultimodalSettings = MultimodalSettings()
    deployment: DeploymentSettings = DeploymentSettings()
    server: ServerSettings = ServerSettings()

    @model_validator(mode="after")
    def _device_limits(self):
        if self.deployment.device == "cpu" and self.engine.block_size % CPU_BLOCK_MULTIPLE:
            raise ValueError(
                f"engine.block_size {self.engine.block_size} is not supported on CPU: vLLM's CPU "
                f"attention needs a multiple of {CPU_BLOCK_MULTIPLE} (e.g. 32 or 128)"
            )
        return self

    # ---- derived views -------------------------------------------------------------------
    def model_path(self) -> str:
        """Where the engine loads the checkpoint from (builds the embedded model if needed)."""
        src = self.model.source
        if is_embedded(src):
            return str(ensure_checkpoint(src))
        if src.startswith(("/", "./", "../", "~")):
            path = Path(src).expanduser()
            if not (path / "config.json").is_file():
                raise ConfigError(f"model.source: {src} is not a checkpoint directory "
                                  "(no config.json there)")
            return str(path)
        return src

    def mm_processor_kwargs(self) -> dict[str, Any]:
        mm = self.multimodal
        return {"min_pixels": mm.min_pixels, "max_pixels": mm.max_pixels}

    def to_engine_kwargs(self, model_path: str | None = None) -> dict[str, Any]:
        """vLLM engine arguments (``EngineArgs`` field names), checked against vLLM."""
        m, e, mm, d = self.model, self.engine, self.multimodal, self.deployment
        kwargs: dict[str, Any] = {
            "model": model_path or self.model_path(),
            "served_model_name": m.served_name,
            "revision": m.revision,
            "dtype": m.dtype,
            "quantization": m.quantization,
            "trust_remote_code": m.trust_remote_code,
            "max_model_len": e.max_model_len,
            "block_size": e.block_size,
            "max_num_seqs": e.max_num_seqs,
            "max_num_batched_tokens": e.max_num_batched_tokens,
            "enable_prefix_caching": e.enable_prefix_caching,
            "kv_cache_dtype": e.kv_cache_dtype,
            "enforce_eager": e.enforce_eager,
            "seed": e.seed,
            "tensor_parallel_size": d.tensor_parallel_size,
            "limit_mm_per_prompt": {
                "image": mm.max_images_per_prompt,
                "video": mm.max_videos_per_prompt,
            },
            "mm_processor_kwargs": self.mm_processor_kwargs(),
            "media_io_kwargs": {"video": {"num_frames": mm.video_max_frames, "fps": mm.video_fps}},
        }
        if d.device == "gpu":
            kwargs["gpu_memory_utilization"] = e.gpu_memory_utilization
        else:
            kwargs["kv_cache_memory_bytes"] = int(e.cpu_kv_cache_gib * (1 << 30))
        clash = sorted(set(e.extra_args) & set(kwargs))
        if clash:
            raise ConfigError(
                f"engine.extra_args: {clash} are set by dedicated config keys; set them there"
            )
        kwargs.update(e.extra_args)
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        check_engine_arg_names(kwargs)
        return kwargs


@functools.lru_cache(maxsize=1)
def vllm_engine_arg_names() -> frozenset[str]:
    """The field names of vLLM's ``AsyncEngineArgs`` (imports vLLM once)."""
    import dataclasses

    from . import torchvision_shim

    torchvision_shim.install()
    from vllm.engine.arg_utils import AsyncEngineArgs

    return frozenset(f.name for f in dataclasses.fields(AsyncEngineArgs))


def check_engine_arg_names(kwargs: dict[str, Any], known: frozenset[str] | None = None) -> None:
    known = vllm_engine_arg_names() if known is None else known
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ConfigError(
            f"engine argument(s) {unknown} are not fields of vLLM's EngineArgs "
            "(renamed or removed upstream?); fix engine.extra_args or engine/config.py"
        )


def _format_validation_error(err: ValidationError, origin: str) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{loc}: {msg}")
    return f"invalid config {origin}: " + "; ".join(lines)


def parse_config(data: Any, origin: str = "<dict>") -> ServingConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"invalid config {origin}: expected a mapping at the top level")
    try:
        return ServingConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, origin)) from None


def load_config(path: str | Path) -> ServingConfig:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"cannot read config {path}: {err.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"invalid YAML in {path}: {err}") from None
    return parse_config(data, str(path))
