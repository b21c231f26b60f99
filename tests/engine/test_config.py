"""The typed config: loading, every key checked and named, the checks across sections, the
dtype chosen for the engine. Checks against the checkpoint: ``test_checkpoint_fit.py``."""

import pytest

from engine.config import ConfigError, load_config, parse_config
from engine.vllm_args import engine_kwargs
from tests.utils import AWQ_QUANT_CONFIG, CONFIGS, config_with, local_checkpoint


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert cfg.model.served_name
    # Engine kwargs are derived and name-checked without touching the weights.
    kwargs = engine_kwargs(cfg, model_path="/nonexistent/for-naming-only")
    assert kwargs["max_model_len"] == cfg.engine.max_model_len


def test_default_config_values():
    cfg = load_config(CONFIGS / "default.yaml")
    assert cfg.model.source == "embedded:qwen2-vl-tiny"
    assert cfg.deployment.device == "cpu"
    kw = engine_kwargs(cfg, model_path="/m")
    assert kw["limit_mm_per_prompt"] == {"image": 4, "video": 1}
    assert kw["mm_processor_kwargs"] == {"min_pixels": 3136, "max_pixels": 200704}
    assert kw["kv_cache_memory_bytes"] == 1 << 30
    assert "gpu_memory_utilization" not in kw
    assert kw["served_model_name"] == "qwen2-vl-tiny"


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"engine\.max_model_lenn: unknown key"):
        parse_config(config_with(engine={"max_model_lenn": 10}))


def test_unknown_top_level_key_is_named():
    data = dict(config_with(), servr={"port": 1})
    with pytest.raises(ConfigError, match=r"servr: unknown key"):
        parse_config(data)


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"server\.port: .*integer"):
        parse_config(config_with(server={"port": "eighty"}))


def test_max_pixels_below_min_pixels():
    with pytest.raises(ConfigError, match=r"multimodal: .*max_pixels \(1000\) must be >= min_pixels \(5000\)"):
        parse_config(config_with(multimodal={"min_pixels": 5000, "max_pixels": 1000}))


def test_tensor_parallel_zero():
    with pytest.raises(ConfigError, match=r"deployment\.tensor_parallel_size: .*greater than or equal to 1"):
        parse_config(config_with(deployment={"tensor_parallel_size": 0, "device": "gpu"}))


def test_tensor_parallel_needs_gpu():
    with pytest.raises(ConfigError, match=r"tensor_parallel_size 2 needs device: gpu"):
        parse_config(config_with(deployment={"tensor_parallel_size": 2}))


def test_cpu_block_size_multiple_of_32():
    with pytest.raises(ConfigError, match=r"engine\.block_size 16 is not supported on CPU"):
        parse_config(config_with(engine={"block_size": 16}))
    assert parse_config(config_with(engine={"block_size": 16}, deployment={"device": "gpu"}))


def test_autoscaling_bounds():
    with pytest.raises(ConfigError, match=r"max_replicas \(1\) must be >= min_replicas \(3\)"):
        parse_config(config_with(
            deployment={"autoscaling": {"min_replicas": 3, "max_replicas": 1}}))


def test_unknown_embedded_model():
    with pytest.raises(ConfigError, match=r"model: .*unknown embedded model 'embedded:nope'"):
        parse_config({"model": {"source": "embedded:nope", "served_name": "x"}})


def test_missing_model_is_named():
    with pytest.raises(ConfigError, match=r"model: Field required"):
        parse_config({})


def test_local_path_without_checkpoint(tmp_path):
    cfg = parse_config({"model": {"source": str(tmp_path), "served_name": "x"}})
    with pytest.raises(ConfigError, match=r"model.source: .* is not a checkpoint directory"):
        cfg.model_path()


def test_yaml_is_loaded_safely(tmp_path):
    p = tmp_path / "evil.yaml"
    p.write_text("model: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(p)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "nope.yaml")


# ------------------------------------------------------------------ quantization
def _model(source, **kw):
    return {"source": source, "served_name": "m", **kw}


@pytest.mark.parametrize("variant", ["gptq-int4", "awq"])
def test_four_bit_variants_run_on_cpu_in_bfloat16(variant):
    cfg = parse_config(config_with(model=_model(f"embedded:qwen2-vl-tiny-{variant}")))
    kw = engine_kwargs(cfg, model_path="/m")
    assert kw["dtype"] == "bfloat16"
    assert "quantization" not in kw  # auto: vLLM reads the checkpoint and picks the kernel


def test_one_line_switches_the_default_config(tmp_path):
    text = (CONFIGS / "default.yaml").read_text()
    for variant in ("gptq-int4", "awq"):
        path = tmp_path / f"{variant}.yaml"
        path.write_text(text.replace("source: embedded:qwen2-vl-tiny\n",
                                     f"source: embedded:qwen2-vl-tiny-{variant}\n"))
        assert load_config(path).engine_dtype() == "bfloat16"
    assert load_config(CONFIGS / "default.yaml").engine_dtype() == "float32"


def test_kernel_names_are_not_config_values():
    """Marlin is vLLM's choice, not a config value: the old kernel names are refused clearly."""
    with pytest.raises(ConfigError, match="model.quantization: Input should be 'auto', 'none', "
                                          "'gptq' or 'awq'"):
        parse_config(config_with(
            model=_model("embedded:qwen2-vl-tiny", quantization="gptq_marlin")))


@pytest.mark.parametrize("native", [False, True], ids=["cpu-without-bf16", "cpu-with-bf16"])
def test_auto_dtype_is_float32_for_unquantized_checkpoints_on_a_cpu_without_bf16(
        tmp_path, monkeypatch, native):
    monkeypatch.setattr("engine.config.serving.native_bf16", lambda: native)

    def dtype(source, **kw):
        return parse_config(config_with(model=_model(source), **kw)).engine_dtype()

    assert dtype("embedded:qwen2-vl-2b-random") == ("bfloat16" if native else "float32")
    assert dtype(local_checkpoint(tmp_path / "plain")) == ("auto" if native else "float32")
    # GPTQ/AWQ keep 16-bit activations; GPUs and checkpoints we cannot read keep vLLM's choice.
    assert dtype(local_checkpoint(tmp_path / "awq", AWQ_QUANT_CONFIG)) == "auto"
    assert dtype("embedded:qwen2-vl-2b-random-awq") == "bfloat16"
    assert dtype("embedded:qwen2-vl-2b-random", deployment={"device": "gpu"}) == "bfloat16"
    assert dtype("acme/not-in-the-cache") == "auto"
    explicit = parse_config(config_with(
        model=_model("embedded:qwen2-vl-2b-random", dtype="bfloat16")))
    assert engine_kwargs(explicit, model_path="/m")["dtype"] == "bfloat16"


def test_every_config_field_is_described():
    """The chart's schema and the docs are generated from these descriptions."""
    import inspect

    from pydantic import BaseModel

    import importlib
    import pkgutil

    from engine import config

    sections = [cls for module in pkgutil.iter_modules(config.__path__)
                for _, cls in inspect.getmembers(
                    importlib.import_module(f"{config.__name__}.{module.name}"), inspect.isclass)
                if issubclass(cls, BaseModel) and cls.__module__.startswith(config.__name__)]
    assert config.ServingConfig in sections and config.AccessSettings in sections
    missing = [f"{cls.__name__}.{name}" for cls in sections
               for name, info in cls.model_fields.items() if not info.description]
    assert missing == []
