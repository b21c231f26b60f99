"""``engine.vllm_args``: a config as vLLM's engine arguments, each name checked against the
installed vLLM."""

import pytest

from engine.config import ConfigError, load_config, parse_config
from engine.vllm_args import check_engine_arg_names, engine_kwargs, vllm_engine_arg_names
from tests.utils import CONFIGS, config_with


def test_engine_arg_names_exist_in_vllm():
    names = vllm_engine_arg_names()
    assert {"max_model_len", "block_size", "limit_mm_per_prompt", "kv_cache_memory_bytes"} <= names


def test_renamed_vllm_flag_fails_loudly():
    """If vLLM renamed a field we set, loading fails with the key named."""
    known = vllm_engine_arg_names() - {"limit_mm_per_prompt"}
    kwargs = engine_kwargs(load_config(CONFIGS / "default.yaml"), model_path="/m")
    with pytest.raises(ConfigError, match=r"\['limit_mm_per_prompt'\] are not fields of vLLM's EngineArgs"):
        check_engine_arg_names(kwargs, known)


def test_extra_args_checked_and_passed():
    cfg = parse_config(config_with(engine={"extra_args": {"max_logprobs": 5}}))
    assert engine_kwargs(cfg, model_path="/m")["max_logprobs"] == 5
    bad = parse_config(config_with(engine={"extra_args": {"max_logprobz": 5}}))
    with pytest.raises(ConfigError, match=r"\['max_logprobz'\]"):
        engine_kwargs(bad, model_path="/m")
    clash = parse_config(config_with(engine={"extra_args": {"max_model_len": 5}}))
    with pytest.raises(ConfigError, match=r"\['max_model_len'\] are set by dedicated config keys"):
        engine_kwargs(clash, model_path="/m")


@pytest.mark.parametrize("compact", [True, False])
def test_compact_json_sets_vllms_structured_output_config(compact):
    """engine.compact_json becomes vLLM's StructuredOutputsConfig (which accepts it only with
    the xgrammar or guidance backend); the e2e tests see its effect on the answers."""
    from vllm.config import StructuredOutputsConfig

    kw = engine_kwargs(parse_config(config_with(engine={"compact_json": compact})), model_path="/m")
    assert kw["structured_outputs_config"] == {"backend": "xgrammar",
                                               "disable_any_whitespace": compact}
    assert StructuredOutputsConfig(**kw["structured_outputs_config"]).disable_any_whitespace \
        is compact


def test_gpu_uses_memory_fraction():
    cfg = parse_config(config_with(deployment={"device": "gpu", "tensor_parallel_size": 2},
                             engine={"gpu_memory_utilization": 0.8}))
    kw = engine_kwargs(cfg, model_path="/m")
    assert kw["gpu_memory_utilization"] == 0.8
    assert kw["tensor_parallel_size"] == 2
    assert "kv_cache_memory_bytes" not in kw
