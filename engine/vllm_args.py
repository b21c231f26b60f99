"""The config as vLLM's engine arguments, each name checked against the installed vLLM (as Ray
keeps ``VLLMEngineConfig.from_llm_config`` outside its config model)."""

from __future__ import annotations

import functools
from typing import Any

from .config import ConfigError, ServingConfig


def engine_kwargs(cfg: ServingConfig, model_path: str | None = None) -> dict[str, Any]:
    """The config as vLLM engine arguments (``EngineArgs`` field names), each name checked
    against the installed vLLM."""
    m, e, mm, d = cfg.model, cfg.engine, cfg.multimodal, cfg.deployment
    kwargs: dict[str, Any] = {
        "model": model_path or cfg.model_path(),
        "served_model_name": m.served_name,
        "revision": m.revision,
        "dtype": cfg.engine_dtype(),
        # auto/none: vLLM reads the checkpoint (checked above); gptq/awq: vLLM verifies it.
        # Either way vLLM chooses the kernel (Marlin on GPUs that support it).
        "quantization": m.quantization if m.quantization in ("gptq", "awq") else None,
        "trust_remote_code": m.trust_remote_code,
        "max_model_len": e.max_model_len,
        "block_size": e.block_size,
        "max_num_seqs": e.max_num_seqs,
        "max_num_batched_tokens": e.max_num_batched_tokens,
        "enable_prefix_caching": e.enable_prefix_caching,
        "kv_cache_dtype": e.kv_cache_dtype,
        "enforce_eager": e.enforce_eager,
        # xgrammar is the backend the front door measures schemas with (launch.api.schemas).
        "structured_outputs_config": {"backend": "xgrammar",
                                      "disable_any_whitespace": e.compact_json},
        "seed": e.seed,
        "tensor_parallel_size": d.tensor_parallel_size,
        "limit_mm_per_prompt": {
            "image": mm.max_images_per_prompt,
            "video": mm.max_videos_per_prompt,
        },
        "mm_processor_kwargs": cfg.mm_processor_kwargs(),
        "media_io_kwargs": {"video": {"num_frames": cfg.video_budget().max_frames,
                                      "fps": mm.video_fps}},
        # Requests may send mm_processor_kwargs: the front door (launch/api/front_door.py) lets
        # them only lower min/max_pixels, so vLLM may trust what reaches it.
        "trust_request_mm_kwargs": True,
        "chat_template": cfg.tools.template_path(),
        # The template renders content parts itself (images, videos, text), so vLLM passes
        # them as parts rather than flattening them to a string.
        "chat_template_content_format": "openai",
        "enable_auto_tool_choice": cfg.tools.auto,
        "tool_call_parser": cfg.tools.parser if cfg.tools.auto else None,
        "tool_strict_level": "parameter" if cfg.tools.strict_arguments else "auto",
    }
    if d.device == "gpu":
        kwargs["gpu_memory_utilization"] = e.gpu_memory_utilization
    else:
        kwargs["kv_cache_memory_bytes"] = e.cpu_kv_cache_bytes
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
    """The field names of vLLM's ``AsyncEngineArgs`` and ``FrontendArgs`` (imports vLLM once).

    Ray Serve LLM splits ``engine_kwargs`` between exactly these two dataclasses by name."""
    import dataclasses

    from . import process_hooks

    process_hooks.install()
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.launchers.cli_args import FrontendArgs

    return frozenset(f.name for cls in (AsyncEngineArgs, FrontendArgs)
                     for f in dataclasses.fields(cls))


def check_engine_arg_names(kwargs: dict[str, Any], known: frozenset[str] | None = None) -> None:
    known = vllm_engine_arg_names() if known is None else known
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ConfigError(
            f"engine argument(s) {unknown} are not fields of vLLM's EngineArgs/FrontendArgs "
            "(renamed or removed upstream?); fix engine.extra_args or engine/vllm_args.py"
        )
