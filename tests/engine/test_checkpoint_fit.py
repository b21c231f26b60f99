"""Checks against the checkpoint (``engine.checkpoint_fit``): the declared quantization matches
what it holds, and the CPU engine has a kernel for it. They read the checkpoint, so they run
where the deploy step calls them, never while a config is parsed."""

import pytest

from engine.checkpoint_fit import check_checkpoint
from engine.config import ConfigError, load_config, parse_config
from engine.vllm_args import engine_kwargs
from tests.utils import AWQ_QUANT_CONFIG as AWQ
from tests.utils import CONFIGS, config_with, local_checkpoint


def _model(source, **kw):
    return {"source": source, "served_name": "m", **kw}


def checked(**sections):
    """The config ``config_with(**sections)`` after the deploy step's checkpoint check."""
    cfg = parse_config(config_with(**sections))
    check_checkpoint(cfg)
    return cfg


def test_parsing_a_config_reads_no_checkpoint(monkeypatch, tmp_path):
    """A replica rebuilds the config from the application's args: parsing compares fields only,
    so a checkpoint it cannot read (or one that would be refused) costs it nothing."""
    reads = []
    monkeypatch.setattr("engine.config.serving.read_config",
                        lambda *a: reads.append(a) or (None, "?"))
    path = local_checkpoint(tmp_path, {**AWQ, "bits": 8})
    cfg = parse_config(config_with(model=_model(path, dtype="bfloat16")))
    assert reads == []
    cfg.checkpoint_config()
    cfg.checkpoint_config()
    assert reads == [(path, None)]  # read once, on first need


def test_gptq_int8_on_cpu_is_refused():
    assert load_config(CONFIGS / "embedded-gptq-int8.yaml").deployment.device == "gpu"
    with pytest.raises(ConfigError) as err:
        checked(model=_model("embedded:qwen2-vl-tiny-gptq-int8"))
    msg = str(err.value)
    assert "GPTQ-Int8" in msg and "no CPU kernel" in msg and "device: gpu" in msg
    assert "GPTQ-Int4 or AWQ" in msg
    checked(model=_model("embedded:qwen2-vl-tiny-gptq-int8"), deployment={"device": "gpu"})


def test_official_release_names_are_recognised_when_not_cached():
    with pytest.raises(ConfigError, match="official release name.*GPTQ-Int8"):
        checked(model=_model("Qwen/Qwen2-VL-2B-Instruct-GPTQ-Int8"))
    for source in ("Qwen/Qwen2-VL-2B-Instruct-GPTQ-Int4", "Qwen/Qwen2-VL-7B-Instruct-AWQ"):
        checked(model=_model(source, dtype="bfloat16"))
    checked(model=_model("Qwen/Qwen2-VL-2B-Instruct-GPTQ-Int8"), deployment={"device": "gpu"})


def test_hub_cache_config_is_read(tmp_path, monkeypatch):
    """A cached hub checkpoint's own quantization_config decides, whatever its name."""
    import huggingface_hub.constants as hub

    repo = tmp_path / "models--acme--vl-small"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    snap = repo / "snapshots" / "abc123"
    local_checkpoint(snap, {"quant_method": "gptq", "bits": 8, "group_size": 128})
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ConfigError, match=r"acme/vl-small \(local Hugging Face cache\) is GPTQ-Int8"):
        checked(model=_model("acme/vl-small"))


def test_declared_method_must_match_the_checkpoint(tmp_path):
    path = local_checkpoint(tmp_path, AWQ)
    with pytest.raises(ConfigError, match="quantization: gptq, but .* is AWQ 4-bit; set it to auto"):
        checked(model=_model(path, quantization="gptq", dtype="bfloat16"))
    with pytest.raises(ConfigError, match="quantization: none, but .* is AWQ 4-bit-quantized"):
        checked(model=_model(path, quantization="none", dtype="bfloat16"))
    cfg = checked(model=_model(path, quantization="awq", dtype="bfloat16"))
    assert engine_kwargs(cfg, model_path=path)["quantization"] == "awq"


def test_declared_method_on_unquantized_checkpoint(tmp_path):
    path = local_checkpoint(tmp_path)
    with pytest.raises(ConfigError, match="quantization: awq, but .* has no quantization_config"):
        checked(model=_model(path, quantization="awq"))
    checked(model=_model(path, quantization="none"))


def test_float32_with_quantized_checkpoint_is_refused(tmp_path):
    path = local_checkpoint(tmp_path, AWQ)
    with pytest.raises(ConfigError, match="float32 is not supported with AWQ.*use bfloat16"):
        checked(model=_model(path, dtype="float32"))


def test_cpu_kernel_size_limits(tmp_path):
    path = local_checkpoint(tmp_path / "odd-size", AWQ, hidden=200)
    with pytest.raises(ConfigError, match=r"linear sizes .*hidden_size.: 200.*multiples of 32"):
        checked(model=_model(path, dtype="bfloat16"))
    odd_group = local_checkpoint(tmp_path / "odd-group", {**AWQ, "group_size": 33})
    with pytest.raises(ConfigError, match="group_size 33.*even group size"):
        checked(model=_model(odd_group, dtype="bfloat16"))
    checked(model=_model(local_checkpoint(tmp_path / "fits", AWQ), dtype="bfloat16"))
