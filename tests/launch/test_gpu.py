"""GPU-only checks: skipped on CPU machines (marked, not deleted)."""

import pytest

from engine.config import load_config
from engine.vllm_args import engine_kwargs
from tests.utils import CONFIGS

pytestmark = [pytest.mark.gpu, pytest.mark.slow]


@pytest.mark.parametrize("name", ["qwen2-vl-2b-instruct.yaml", "qwen2-vl-7b-instruct.yaml"])
def test_real_checkpoint_engine_starts(name):
    """Starts vLLM (GPU build) on the real checkpoint with the config's engine arguments."""
    import torch
    from vllm import LLM, SamplingParams

    cfg = load_config(CONFIGS / name)
    if torch.cuda.device_count() < cfg.deployment.tensor_parallel_size:
        pytest.skip(f"needs {cfg.deployment.tensor_parallel_size} GPUs")
    llm = LLM(**engine_kwargs(cfg))
    out = llm.generate(["Hello"], SamplingParams(max_tokens=4, temperature=0))
    assert len(out[0].outputs[0].token_ids) == 4
