"""Check a capacity plan against the engine: start vLLM on this machine with the config's engine
arguments and read what it reports (``qwen-vl plan --check``, and the tests).

- KV cache: the token count vLLM logs at start-up ("KV cache size: N tokens");
- weights: bytes of the loaded model's parameters inside vLLM's worker (buffers such as rotary
  caches are not weights), language model and vision tower apart.

The engine runs in a fresh interpreter (``python -m engine.capacity_check CONFIG``), so nothing
of it stays in the caller; the engine's output is kept for the error message if it fails.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from . import result_line

ROOT = Path(__file__).resolve().parent.parent
KV_LOG = re.compile(r"KV cache size: ([\d,]+) tokens")


class CheckError(RuntimeError):
    """The engine did not start or did not report what the check needs."""


def weights_in_worker(worker) -> dict:
    """Runs inside vLLM's worker: parameter bytes, vision tower and language model, and of the
    language model its decoder layers (what GPTQ/AWQ quantize).

    On CPU vLLM moves each linear layer's weight into a packed GEMM kernel handle (oneDNN or
    sgl-kernel) and leaves an empty ``weight`` Parameter behind; such a weight is counted at the
    size of the layer vLLM built (its input x output size per partition), in its dtype."""
    parts = {"language_model": 0, "vision_tower": 0, "decoder_layers": 0}
    seen = set()  # a tied LM head shares the embedding's Parameter
    for mod_name, module in worker.model_runner.model.named_modules():
        for name, t in module.named_parameters(recurse=False):
            if id(t) in seen:
                continue
            seen.add(id(t))
            n = t.numel() * t.element_size()
            if name == "weight" and n == 0 and hasattr(module, "cpu_linear"):
                n = (module.input_size_per_partition * module.output_size_per_partition
                     * t.element_size())
            if mod_name.startswith("visual"):
                parts["vision_tower"] += n
            else:
                parts["language_model"] += n
                if ".layers." in f"{mod_name}.":
                    parts["decoder_layers"] += n
    parts["total"] = parts["language_model"] + parts["vision_tower"]
    return parts


def _probe(config_path: str) -> dict:
    """In this process: start the engine, return the weights (the KV line goes to the log)."""
    import dataclasses

    from . import process_hooks

    process_hooks.install()
    from vllm import LLM
    from vllm.engine.arg_utils import EngineArgs

    from .checkpoint_fit import check_checkpoint
    from .config import load_config
    from .vllm_args import engine_kwargs

    cfg = load_config(config_path)
    check_checkpoint(cfg)
    fields = {f.name for f in dataclasses.fields(EngineArgs)}
    llm = LLM(**{k: v for k, v in engine_kwargs(cfg).items() if k in fields})
    return {"weights_bytes": llm.collective_rpc(weights_in_worker)[0]}


def measure(config_path: str | Path, timeout_s: float = 1800) -> dict:
    """``{"kv_cache_tokens": int, "weights_bytes": {...}}`` from a fresh engine."""
    # collective_rpc ships weights_in_worker (a function) to vLLM's worker: that takes pickle,
    # which vLLM allows only when asked. A local process of our own only.
    env = {**os.environ, "VLLM_ALLOW_INSECURE_SERIALIZATION": "1"}
    try:
        r = subprocess.run([sys.executable, "-m", "engine.capacity_check", str(config_path)],
                           cwd=ROOT, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        raise CheckError(f"the engine did not start within {timeout_s:.0f}s") from None
    log = r.stdout + r.stderr
    result = result_line.parse(r.stdout)
    found = KV_LOG.findall(log)
    if r.returncode != 0 or result is None or not found:
        tail = "\n".join(log.strip().splitlines()[-15:])
        raise CheckError(f"the engine check failed (exit {r.returncode}):\n{tail}")
    return {"kv_cache_tokens": int(found[-1].replace(",", "")),
            **result}


def compare(plan: dict, measured: dict) -> list[dict]:
    """Planned vs engine, with the ratio engine / planned."""
    rows = [("KV cache tokens", plan["kv_cache"]["tokens_reported_by_vllm"],
             measured["kv_cache_tokens"])]
    for part in ("total", "language_model", "vision_tower"):
        rows.append((f"weights bytes ({part.replace('_', ' ')})",
                     plan["model"]["weights_bytes"][part], measured["weights_bytes"][part]))
    return [{"what": what, "planned": p, "engine": m, "ratio": m / p if p else None}
            for what, p, m in rows]


def format_comparison(rows: list[dict]) -> str:
    out = ["check against the engine on this machine:",
           f"  {'':<32} {'planned':>16} {'engine':>16} {'engine/plan':>12}"]
    for r in rows:
        ratio = f"{r['ratio']:.4f}" if r["ratio"] is not None else "-"
        out.append(f"  {r['what']:<32} {r['planned']:>16,} {r['engine']:>16,} {ratio:>12}")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    result_line.emit(_probe(sys.argv[1]))
