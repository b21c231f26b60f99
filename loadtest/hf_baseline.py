"""The model card's own method: HF transformers ``generate``, batch 1, a forced output length.

    python -m loadtest.hf_baseline --model-path DIR --input-lengths 1,6144 --output-tokens 2048

For each input length: a prompt of exactly that many token ids (the load tests' generator),
``generate(max_new_tokens=N, min_new_tokens=N, do_sample=False)`` (so EOS cannot end it early),
timed on the wall clock after a warm-up. Reported per length:

- ``tokens_per_s``: N / wall time (the card's definition, prefill included);
- ``decode_tokens_per_s``: (N - 1) / (T(N) - T(1)), prefill subtracted;
- ``memory_gib``: on GPU ``torch.cuda.max_memory_allocated`` (what HF benchmarks report), on
  CPU the process's peak resident memory.

It runs in a fresh process per call (``run``), so memory figures are its own. GPTQ/AWQ
checkpoints need GPTQModel or AutoAWQ in transformers; where they cannot be imported the
variant is reported as skipped with that reason.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

from .workload import TOKEN_ID_RANGE

GIB = float(1 << 30)


def checkpoint_dtype(model_path: str) -> str | None:
    """The dtype the checkpoint's weights are stored in (its config.json), if it says."""
    from engine.checkpoint import read_config, stored_dtype

    cfg, _ = read_config(str(Path(model_path).resolve()))
    dtype = stored_dtype(cfg) if cfg else None
    return dtype if dtype in ("bfloat16", "float16", "float32") else None


def quantized_unsupported_reason(model_path: str) -> str | None:
    import importlib.util

    from engine.checkpoint import quantization_of, read_config

    path = str(Path(model_path).resolve())
    found = quantization_of(path, *read_config(path))
    if found is None or found == "unknown":
        return None
    method = found.method

    needed = {"gptq": "gptqmodel", "awq": "awq"}.get(method, method)
    if importlib.util.find_spec(needed) is None:
        return (f"HF transformers needs the '{needed}' package for {method.upper()} checkpoints; "
                "it is not installable with the pinned CPU torch (GPTQModel needs torch>=2.14.1; "
                "AutoGPTQ/AutoAWQ ship CUDA builds only)")
    return None


def measure(model_path: str, dtype: str, input_lengths: list[int], output_tokens: int,
            repeats: int) -> dict:
    import torch
    from transformers import Qwen2VLForConditionalGeneration

    device = "cuda" if torch.cuda.is_available() else "cpu"
    t0 = time.perf_counter()
    model = Qwen2VLForConditionalGeneration.from_pretrained(
        model_path, dtype=getattr(torch, dtype)).to(device).eval()
    load_s = time.perf_counter() - t0

    def generate(n_in: int, n_out: int, seed: int) -> float:
        rng = random.Random(f"hf:{seed}:{n_in}")
        ids = torch.tensor([[rng.randrange(*TOKEN_ID_RANGE) for _ in range(n_in)]], device=device)
        if device == "cuda":
            torch.cuda.synchronize()
        st = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                 max_new_tokens=n_out, min_new_tokens=n_out, do_sample=False,
                                 pad_token_id=0)
        if device == "cuda":
            torch.cuda.synchronize()
        assert out.shape[1] - n_in == n_out, f"generated {out.shape[1] - n_in} != {n_out}"
        return time.perf_counter() - st

    generate(max(input_lengths[0], 1), min(output_tokens, 8), seed=-1)  # warm-up
    rows = []
    for n_in in input_lengths:
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        full = [generate(n_in, output_tokens, seed=i) for i in range(repeats)]
        first = [generate(n_in, 1, seed=i) for i in range(repeats)]
        t_full, t_first = sum(full) / len(full), sum(first) / len(first)
        mem = (torch.cuda.max_memory_allocated() if device == "cuda"
               else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        rows.append({
            "input_length": n_in, "output_tokens": output_tokens, "requests": repeats,
            "tokens_per_s": output_tokens / t_full,
            "decode_tokens_per_s": (output_tokens - 1) / max(t_full - t_first, 1e-9)
            if output_tokens > 1 else None,
            "ttft_ms": t_first * 1000, "e2el_s": t_full,
            "memory_gib": mem / GIB,
            "memory_kind": "torch.cuda.max_memory_allocated" if device == "cuda" else "peak RSS",
        })
        print(f"  HF transformers: input {n_in}: {rows[-1]['tokens_per_s']:.2f} tokens/s, "
              f"{rows[-1]['memory_gib']:.2f} GiB", flush=True)
    return {"device": device, "dtype": dtype, "load_s": load_s, "threads": torch.get_num_threads(),
            "torch": torch.__version__, "rows": rows}


def run(model_path: str, dtype: str, input_lengths: list[int], output_tokens: int,
        repeats: int, timeout_s: float = 7200) -> dict:
    """``measure`` in a fresh process; ``{"skipped": reason}`` for unsupported checkpoints."""
    reason = quantized_unsupported_reason(model_path)
    if reason:
        return {"skipped": reason}
    cmd = [sys.executable, "-m", "loadtest.hf_baseline", "--model-path", model_path,
           "--dtype", dtype, "--input-lengths", ",".join(map(str, input_lengths)),
           "--output-tokens", str(output_tokens), "--repeats", str(repeats), "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                          cwd=Path(__file__).resolve().parent.parent)
    for line in proc.stdout.splitlines():
        if line.startswith("  HF transformers"):
            print(line, flush=True)
    if proc.returncode != 0:
        raise RuntimeError(f"HF baseline failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-path", required=True)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--input-lengths", default="1")
    ap.add_argument("--output-tokens", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="print the result as JSON (last line)")
    args = ap.parse_args(argv)
    lengths = [int(x) for x in args.input_lengths.split(",")]
    reason = quantized_unsupported_reason(args.model_path)
    if reason:
        result: dict = {"skipped": reason}
    else:
        result = measure(args.model_path, args.dtype, lengths, args.output_tokens, args.repeats)
    print(json.dumps(result) if args.json else json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
