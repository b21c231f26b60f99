"""Quantization benchmark: weight memory, process memory and decode tokens/s per variant.

    python -m loadtest.quant_bench                 # the embedded tiny model (minutes)
    python -m loadtest.quant_bench --family 2b     # the real Qwen2-VL-2B size (random weights)

For each variant (BF16, GPTQ-Int4, AWQ; GPTQ-Int8 where the device has a kernel for it) one
vLLM engine is built from the project's config (``configs/default.yaml`` with ``model.source``
switched, all in bfloat16 so only the weights differ) in a fresh process, one after the other,
and measured side by side in one run:

- weights: the bytes of the engine's own parameters after loading, read inside vLLM's worker by
  the capacity check's reader (``engine.capacity_check.weights_in_worker``, which also counts
  the weights vLLM packs into CPU kernels): the language model's decoder layers (what GPTQ/AWQ
  quantize) and all weights (with embeddings, norms and the vision tower); and the ratio to
  BF16;
- process memory: resident memory of the engine's processes (CPU) once it is ready;
- decode tokens/s at batch 1 and at 16 concurrent requests: (tokens - 1) / (time for N tokens
  - time for 1 token), i.e. decode only, prefill subtracted, ``ignore_eos``.

This is the engine alone (``vllm.LLM`` with the engine arguments our config produces); the stack
over HTTP is measured by the load tests. Figures depend on the machine, which is printed.
Results: a table on stdout and ``results/quant-bench-<family>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from engine import result_line
from engine.capacity_check import weights_in_worker
from engine.embedded_model import FAMILIES, variant_source

from . import machine
from .memory import process_tree, rss_bytes

ROOT = Path(__file__).resolve().parent.parent


def variant_engine_kwargs(source: str, max_model_len: int) -> dict:
    import dataclasses

    import yaml
    from vllm.engine.arg_utils import EngineArgs

    from engine.config import parse_config
    from engine.vllm_args import engine_kwargs

    data = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())
    data["model"].update(source=source, dtype="bfloat16")
    data["engine"].update(max_model_len=max_model_len, max_num_batched_tokens=max(
        max_model_len, 2048), enable_prefix_caching=False)
    cfg = parse_config(data, f"default.yaml with model.source={source}")
    fields = {f.name for f in dataclasses.fields(EngineArgs)}
    return {k: v for k, v in engine_kwargs(cfg).items() if k in fields}


def measure(source: str, tokens: int, concurrency: int, max_model_len: int) -> dict:
    """One variant, in this process (run by ``main`` in a fresh subprocess)."""
    from vllm import LLM, SamplingParams

    t0 = time.perf_counter()
    llm = LLM(**variant_engine_kwargs(source, max_model_len))
    load_s = time.perf_counter() - t0
    weights = llm.collective_rpc(weights_in_worker)[0]
    rss = rss_bytes(process_tree([os.getpid()]))

    def prompts(n: int, salt: int) -> list[dict]:  # distinct prompts: no prefix reuse
        return [{"prompt_token_ids": [151644, 872, 198] + [1000 + 37 * i + salt + j
                                                           for j in range(32)]
                 + [151645, 198, 151644, 77091, 198]} for i in range(n)]

    def timed(batch: int, max_tokens: int, salt: int) -> float:
        sp = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
        t = time.perf_counter()
        outs = llm.generate(prompts(batch, salt), sp, use_tqdm=False)
        assert all(len(o.outputs[0].token_ids) == max_tokens for o in outs)
        return time.perf_counter() - t

    timed(1, 4, salt=0)  # warm-up
    result = {"load_s": round(load_s, 1), "weights": weights, "rss_bytes": rss}
    for batch, key in ((1, "batch1"), (concurrency, f"concurrent{concurrency}")):
        prefill = timed(batch, 1, salt=100 + batch)
        full = timed(batch, tokens, salt=200 + batch)
        decode_s = max(full - prefill, 1e-9)
        result[key] = {"decode_tokens_per_s": round(batch * (tokens - 1) / decode_s, 2),
                       "e2e_tokens_per_s": round(batch * tokens / full, 2),
                       "seconds": round(full, 2)}
    return result


def _supported(variant: str, device: str) -> str | None:
    if variant.lower() == "gptq-int8" and device == "cpu":
        return "GPTQ-Int8 has no CPU kernel in vLLM 0.32 (GPU only)"
    return None


def run_variant(source: str, args) -> dict:
    """A fresh interpreter per variant, so memory figures are not mixed."""
    cmd = [sys.executable, "-m", "loadtest.quant_bench", "--one", source, "--tokens",
           str(args.tokens), "--concurrency", str(args.concurrency), "--max-model-len",
           str(args.max_model_len)]
    # collective_rpc ships weights_in_worker (a function) to vLLM's worker: that takes pickle,
    # which vLLM allows only when asked. Local processes of this benchmark only.
    env = {**os.environ, "VLLM_ALLOW_INSECURE_SERIALIZATION": "1"}
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.timeout,
                       env=env)
    result = result_line.parse(r.stdout)
    if r.returncode != 0 or result is None:
        from launch.cluster.reason import one_line

        return {"error": one_line(r.stderr) or f"exit {r.returncode}"}
    return result


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f}"


def report(family: str, results: dict, desc: dict) -> str:
    base = results.get("bf16", {}).get("weights")
    rows = ["| variant | decoder-layer weights MiB | × BF16 | all weights MiB | × BF16 | "
            "process RSS MiB | decode tok/s batch 1 | decode tok/s ×16 concurrent |",
            "|---|---|---|---|---|---|---|---|"]
    for variant, r in results.items():
        if "skipped" in r or "error" in r:
            rows.append(f"| {variant} | {r.get('skipped') or 'error: ' + r['error']} |"
                        + " |" * 6)  # 8 columns
            continue
        w = r["weights"]
        ratio = f"{w['decoder_layers'] / base['decoder_layers']:.2f}" if base else "-"
        tratio = f"{w['total'] / base['total']:.2f}" if base else "-"
        conc = next(v for k, v in r.items() if k.startswith("concurrent"))
        rows.append(f"| {variant} | {_mib(w['decoder_layers'])} | {ratio} | {_mib(w['total'])} | "
                    f"{tratio} | {_mib(r['rss_bytes'])} | "
                    f"{r['batch1']['decode_tokens_per_s']} | {conc['decode_tokens_per_s']} |")
    head = (f"quantization benchmark, family {family} ({FAMILIES[family]}), "
            f"machine: {desc}")
    return head + "\n" + "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--family", choices=list(FAMILIES), default="tiny")
    p.add_argument("--variants", default="bf16,gptq-int4,awq,gptq-int8")
    p.add_argument("--tokens", type=int, default=64, help="generated tokens per request")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--max-model-len", type=int, default=1024)
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per variant")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one source here
    args = p.parse_args(argv)
    if args.one:
        r = measure(args.one, args.tokens, args.concurrency, args.max_model_len)
        result_line.emit(r)
        return 0

    desc = machine.describe()
    print(f"machine: {desc}", flush=True)
    results: dict[str, dict] = {}
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    for i, variant in enumerate(names, 1):
        reason = _supported(variant, args.device)
        if reason:
            results[variant] = {"skipped": reason}
            print(f"[{i}/{len(names)}] {variant}: skipped ({reason})", flush=True)
            continue
        source = variant_source(args.family, variant)
        print(f"[{i}/{len(names)}] {variant}: building/loading {source} ...", flush=True)
        t = time.perf_counter()
        results[variant] = run_variant(source, args)
        print(f"[{i}/{len(names)}] {variant}: done in {time.perf_counter() - t:.0f}s "
              f"{json.dumps(results[variant])}", flush=True)
    table = report(args.family, results, desc)
    print("\n" + table)
    out = args.out or ROOT / "results" / f"quant-bench-{args.family}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"family": args.family, "machine": desc, "tokens": args.tokens,
                               "concurrency": args.concurrency, "results": results,
                               "table": table}, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
