"""Whether the configured checkpoint can run as configured: the declared quantization matches
what the checkpoint holds, and a quantized one runs on the configured device.

These checks read the checkpoint (its ``config.json``, through
``ServingConfig.checkpoint_config``), so they are not validators: a replica that rebuilds the
config from the application's args reads nothing. The deploy step runs them once, before
anything starts: ``qwen-vl serve`` before the Ray head, the Serve application's builder
(``launch.app``) for a deploy that is not ours (the chart's RayService), ``qwen-vl plan`` and
the capacity check.
"""

from __future__ import annotations

from .checkpoint import CheckpointQuant, linear_sizes
from .config import ConfigError, ServingConfig

CPU_QUANT_BITS = 4  # vLLM's CPUWNA16 kernel: 4-bit GPTQ (uint4b8) and AWQ (uint4) only
CPU_QUANT_MULTIPLE = 32  # ... and input/output sizes that are multiples of 32


def check_checkpoint(cfg: ServingConfig) -> None:
    """Raise ``ConfigError`` naming the key when the checkpoint cannot run as configured."""
    found = cfg.checkpoint_quantization()
    if found == "unknown":
        return  # a hub id not cached: vLLM reads it (and says what fails)
    q, src = cfg.model.quantization, cfg.model.source
    if q == "none" and found is not None:
        raise ConfigError(f"model.quantization: none, but {found.origin} is {found.label}-"
                          "quantized; set it to auto (or to its method)")
    if q in ("gptq", "awq") and found is None:
        raise ConfigError(f"model.quantization: {q}, but {src} has no quantization_config "
                          "(an unquantized checkpoint); use auto or none, or a "
                          f"{q.upper()} checkpoint")
    if q in ("gptq", "awq") and found.method != q:
        raise ConfigError(f"model.quantization: {q}, but {found.origin} is {found.label}; "
                          "set it to auto")
    if found is None:
        return
    if cfg.engine_dtype() == "float32":
        raise ConfigError(f"model.dtype: float32 is not supported with {found.label} (vLLM's "
                          "GPTQ/AWQ kernels take float16/bfloat16 activations); use bfloat16")
    if cfg.deployment.device == "cpu":
        _check_cpu_quantization(found, linear_sizes(cfg.checkpoint_config()[0]))


def _check_cpu_quantization(found: CheckpointQuant, sizes: dict[str, int] | None) -> None:
    if found.method not in ("gptq", "awq"):
        return  # other methods: vLLM decides
    if found.bits != CPU_QUANT_BITS:
        raise ConfigError(
            f"model.source: {found.origin} is {found.label}, which cannot be served on CPU: "
            f"vLLM's CPU kernel (CPUWNA16) runs {CPU_QUANT_BITS}-bit GPTQ and AWQ only, and 8-bit "
            "GPTQ has no CPU kernel. Use the GPTQ-Int4 or AWQ checkpoint on CPU, or serve this "
            "one on a GPU (deployment.device: gpu)")
    if found.group_size not in (None, -1) and found.group_size % 2:
        raise ConfigError(f"model.source: {found.origin} has group_size {found.group_size}; "
                          "vLLM's CPU kernel needs an even group size")
    odd = {k: v for k, v in (sizes or {}).items() if v % CPU_QUANT_MULTIPLE}
    if odd:
        raise ConfigError(f"model.source: {found.origin} has linear sizes {odd} that vLLM's "
                          f"CPU 4-bit kernel cannot run (multiples of {CPU_QUANT_MULTIPLE} only)")
