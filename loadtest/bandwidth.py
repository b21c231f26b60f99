"""The memory-bandwidth limit of single-stream decode.

At batch 1 every generated token reads every language-model weight once (the decoder layers,
the final norm and the LM head; the embedding table only one row, unless it is tied to the LM
head, which then reads all of it). So decode cannot beat ``bandwidth / weight bytes per token``.

- ``weight_bytes_per_token``: from the checkpoint's safetensors headers (no tensor is loaded),
  so quantized checkpoints count their packed bytes; floating-point tensors at the size of the
  dtype the engine runs in (a BF16 checkpoint served in float32 reads 4 bytes a weight);
- ``measure_bandwidth`` (``engine.memory_bandwidth``, which the capacity planner uses too): the
  machine's read bandwidth.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from engine.capacity import DTYPE_BYTES as ENGINE_DTYPE_BYTES
from engine.memory_bandwidth import measure_bandwidth

__all__ = ["measure_bandwidth", "tensor_bytes", "weight_bytes_per_token"]

FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
               "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def tensor_bytes(model_path: str, dtype: str = "auto") -> dict[str, int]:
    """Name -> bytes of every tensor in the checkpoint's safetensors files (headers only);
    floating-point tensors at ``dtype``'s size unless it is ``auto`` (the file's)."""
    cast = ENGINE_DTYPE_BYTES.get(dtype)
    out: dict[str, int] = {}
    for f in sorted(Path(model_path).glob("*.safetensors")):
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            count = 1
            for dim in meta["shape"]:
                count *= dim
            size = DTYPE_BYTES[meta["dtype"]]
            out[name] = count * (cast if cast and meta["dtype"] in FLOAT_DTYPES else size)
    return out


def weight_bytes_per_token(model_path: str, dtype: str = "auto") -> int:
    """Bytes of weights one decode step reads at batch 1 (vision tower excluded), with the
    floating-point weights in ``dtype`` (the engine's; ``auto``: the checkpoint's)."""
    cfg = json.loads((Path(model_path) / "config.json").read_text())
    tied = cfg.get("tie_word_embeddings", cfg.get("text_config", {}).get("tie_word_embeddings"))
    total = 0
    for name, n in tensor_bytes(model_path, dtype).items():
        if "visual" in name:
            continue
        if "embed_tokens" in name and not tied:
            continue  # one row per token
        total += n
    return total
