"""What the scenarios share: the model families, the model card's rows, configs per variant."""

from __future__ import annotations

import copy
import csv
import functools
import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from engine.config import RAY_FAST_PATH_ENV, ServingConfig
from engine.embedded_model import EMBEDDED_PREFIX, is_embedded

ROOT = Path(__file__).resolve().parents[2]
CARD_CSV = Path(__file__).resolve().parents[1] / "data" / "qwen2-vl-2b-instruct-speed.csv"



@dataclass(frozen=True)
class Grid:
    input_lengths: tuple[int, ...]
    output_tokens: int
    requests_per_cell: int


# The card's grid; the default on GPUs.
CARD_GRID = Grid((1, 6144, 14336, 30720), 2048, 3)
# The default on a CPU: what a 2-core machine finishes in a few minutes per variant with the
# 2B-size model. There the stack decodes it at about 2.4 tokens/s (float32, both cores) and
# prefills about 46 tokens/s, so the card's 30720-token inputs and 2048-token outputs would take
# over an hour per request (and the 4-bit variants, without AVX-512, far longer).
CPU_GRID = Grid((1, 256), 32, 2)
# --quick: seconds per cell with the embedded tiny model (CI).
QUICK_GRID = Grid((1, 32), 16, 1)


@functools.lru_cache(maxsize=1)
def card_rows() -> tuple[dict, ...]:
    """The model card's speed table (tokens/s and GPU memory, HF transformers on one A100)."""
    lines = [ln for ln in CARD_CSV.read_text().splitlines() if not ln.startswith("#")]
    return tuple({"input_length": int(r["input_length"]), "quantization": r["quantization"],
                  "tokens_per_s": float(r["tokens_per_s"]),
                  "gpu_memory_gb": float(r["gpu_memory_gb"])} for r in csv.DictReader(lines))


def card_row(input_length: int, quantization: str) -> dict | None:
    for r in card_rows():
        if r["input_length"] == input_length and r["quantization"] == quantization:
            return r
    return None


def load_base(path: Path) -> dict:
    return yaml.safe_load(Path(path).read_text())


def derive(base: dict, *, source: str | None = None, dtype: str | None = None,
           max_model_len: int | None = None, prefix_caching: bool | None = None) -> dict:
    """A copy of ``base`` with the settings a scenario needs (everything else unchanged)."""
    data = copy.deepcopy(base)
    model, engine = data.setdefault("model", {}), data.setdefault("engine", {})
    if source is not None:
        model["source"] = source
        if is_embedded(source):
            model["served_name"] = source.removeprefix(EMBEDDED_PREFIX)
    if dtype is not None:
        model["dtype"] = dtype
    if max_model_len is not None:
        block = engine.get("block_size", 32)
        mml = int(math.ceil(max_model_len / block) * block)
        engine["max_model_len"] = max(mml, engine.get("max_model_len", 0))
        batched = engine.get("max_num_batched_tokens")
        if batched is not None and batched < engine["max_model_len"]:
            engine["max_num_batched_tokens"] = engine["max_model_len"]
    if prefix_caching is not None:
        engine["enable_prefix_caching"] = prefix_caching
    limits = data.setdefault("limits", {})
    if limits.get("max_tokens") is not None and max_model_len is not None:
        limits["max_tokens"] = max(limits["max_tokens"], max_model_len)
    return data


def hf_dtype(cfg: ServingConfig) -> str:
    """The dtype HF transformers runs the baseline in: the engine's, like for like
    (``auto``, which leaves it to vLLM: bfloat16, the Qwen2-VL releases' dtype)."""
    dtype = cfg.engine_dtype()
    return "bfloat16" if dtype == "auto" else dtype


def with_fast_paths(data: dict) -> dict:
    """A copy of a scenario's config with every Ray Serve fast path on (``server.ray_*``)."""
    out = copy.deepcopy(data)
    out.setdefault("server", {}).update(dict.fromkeys(RAY_FAST_PATH_ENV, True))
    return out
