"""The parts of the scenarios that need no running engine."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from loadtest import hf_baseline
from loadtest.bandwidth import tensor_bytes, weight_bytes_per_token
from loadtest.deploy import vllm_serve_argv
from engine.embedded_model import VARIANTS, variant_source
from loadtest.config_check import check
from loadtest.scenarios.common import CARD_GRID, ROOT, card_row, card_rows, derive, load_base
from loadtest.scenarios.sweep import levels


def test_card_table_is_shipped_and_complete():
    rows = card_rows()
    assert len(rows) == 16
    assert {r["quantization"] for r in rows} == set(VARIANTS)
    assert {r["input_length"] for r in rows} == set(CARD_GRID.input_lengths)
    assert card_row(1, "BF16") == {"input_length": 1, "quantization": "BF16",
                                   "tokens_per_s": 35.29, "gpu_memory_gb": 4.68}


def test_variant_configs_and_skip_reasons_come_from_the_config_check():
    base = load_base(ROOT / "configs" / "default.yaml")
    data = derive(base, source=variant_source("2b", "GPTQ-Int4"), dtype="bfloat16",
                  max_model_len=6000 + 2048, prefix_caching=False)
    cfg, reason = check(data, "card")
    assert reason is None
    assert cfg.model.source == "embedded:qwen2-vl-2b-random-gptq-int4"
    assert cfg.engine.max_model_len == 8064 and cfg.engine.max_model_len % 32 == 0
    assert cfg.engine.max_num_batched_tokens >= cfg.engine.max_model_len
    assert cfg.engine.enable_prefix_caching is False
    _, reason = check(derive(base, source=variant_source("tiny", "GPTQ-Int8")), "card")
    assert "GPTQ-Int8" in reason and "no CPU kernel" in reason
    assert not reason.startswith("invalid config")


def test_sweep_levels_double_up_to_the_maximum():
    assert levels(16) == [1, 2, 4, 8, 16]
    assert levels(12) == [1, 2, 4, 8, 12]
    assert levels(1) == [1]


def test_bare_vllm_serve_gets_our_engine_arguments_and_vllm_accepts_them():
    """The overhead reference is `vllm serve` with exactly our engine args (parsed by vLLM)."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    from engine.config import parse_config
    from engine.vllm_args import engine_kwargs

    cfg = parse_config(load_base(ROOT / "configs" / "default.yaml"))
    argv = vllm_serve_argv(cfg, 8123)
    assert argv[2] == "vllm.entrypoints.openai.api_server"
    parser = make_arg_parser(FlexibleArgumentParser())
    ns = parser.parse_args(argv[3:])
    engine = AsyncEngineArgs.from_cli_args(ns)
    expected = engine_kwargs(cfg)
    assert ns.model == expected["model"] and ns.port == 8123
    for key, value in expected.items():
        if key == "model":
            continue
        got = getattr(engine, key, getattr(ns, key, None))
        if key == "served_model_name":
            value = [value]  # vLLM keeps a list of names
        if hasattr(got, "model_dump"):
            got = got.model_dump(exclude_unset=True)
        elif isinstance(value, dict) and not isinstance(got, dict):  # a config dataclass
            got = {k: getattr(got, k) for k in value}
        assert got == value, f"{key}: vllm serve would get {got!r}, our config says {value!r}"


def _write_safetensors(path, tensors: dict[str, tuple[str, list[int]]]) -> None:
    header, offset = {}, 0
    sizes = {"BF16": 2, "F32": 4, "I32": 4}
    for name, (dtype, shape) in tensors.items():
        n = sizes[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + b"\0" * offset)


@pytest.mark.parametrize("tied", [True, False])
def test_weight_bytes_per_token(tmp_path, tied):
    _write_safetensors(tmp_path / "model.safetensors", {
        "model.language_model.embed_tokens.weight": ("BF16", [100, 8]),     # 1600 B
        "model.language_model.layers.0.mlp.qweight": ("I32", [2, 8]),      # 64 B
        "model.language_model.norm.weight": ("F32", [8]),                  # 32 B
        "model.visual.blocks.0.attn.qkv.weight": ("BF16", [24, 8]),        # 384 B
    })
    (tmp_path / "config.json").write_text(json.dumps({"tie_word_embeddings": tied}))
    assert sum(tensor_bytes(str(tmp_path)).values()) == 1600 + 64 + 32 + 384
    assert weight_bytes_per_token(str(tmp_path)) == 96 + (1600 if tied else 0)
    # Served in float32 (a CPU without BF16): float weights at 4 bytes, packed ints unchanged.
    assert weight_bytes_per_token(str(tmp_path), "float32") == 64 + 32 + (3200 if tied else 0)
    assert weight_bytes_per_token(str(tmp_path), "bfloat16") == 64 + 16 + (1600 if tied else 0)


def test_hf_baseline_names_why_quantized_checkpoints_are_skipped(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(
        {"quantization_config": {"quant_method": "awq", "bits": 4}}))
    reason = hf_baseline.quantized_unsupported_reason(str(tmp_path))
    assert "'awq' package" in reason and "AWQ" in reason
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_vl"}))
    assert hf_baseline.quantized_unsupported_reason(str(tmp_path)) is None


@pytest.mark.parametrize("argv, message", [
    (["card", "--variants", "BF17"], "unknown variant 'BF17'"),
    (["card", "--input-lengths", "1,x"], "expected comma-separated integers"),
    (["card", "--input-lengths", "0"], "expected positive integers"),
    (["sweep", "--image-size", "448"], "expected WIDTHxHEIGHT"),
    (["overhead", "--image-size", "0x448"], "width and height must be >= 1"),
    (["sweep", "--model", "7b"], "invalid choice: '7b'"),
    (["affinity", "--repeats", "0,1.5"], "each ratio must be between 0 and 1"),
    (["affinity", "--repeats", "x"], "expected numbers, e.g. 0,0.9"),
    (["affinity", "--session-turns", "0"], "must be at least 1"),
    (["sweep", "--video-frames", "1"], "a video needs at least 2 frames"),
    (["calibrate", "--video-fraction", "1.5"], "each ratio must be between 0 and 1"),
    (["calibrate", "--repeats", "0.5,0.9"], "expected one ratio between 0 and 1"),
    (["calibrate", "--request-rate", "0"], "must be above 0"),
    (["calibrate", "--min-request-rate", "x"], "expected requests/s"),
])
def test_cli_rejects_bad_flags_with_a_clear_message(argv, message, capsys):
    from loadtest.cli import build_parser

    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_unreachable_url_is_one_line_not_a_traceback(tmp_path, capsys):
    from launch.cluster.local_cluster import free_port
    from loadtest.cli import main

    code = main(["sweep", "--url", f"http://127.0.0.1:{free_port()}", "--quick",
                 "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("qwen-vl-loadtest sweep: ")
    assert "Traceback" not in err and "Connection refused" in err


@pytest.mark.parametrize("argv, message", [
    (["sweep", "--url", "http://h:8000", "--run-dir", "r"], "--url and --run-dir"),
    (["soak", "--model", "2b", "--run-dir", "r"], "--model picks a model to deploy"),
    (["ceiling", "--fast-paths", "--run-dir", "r"], "the running stack's config"),
])
def test_cli_run_dir_conflicts_are_usage_errors(argv, message, capsys):
    from loadtest.cli import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("scenario", ["sweep", "soak", "ceiling", "overhead"])
def test_cli_run_dir_without_a_stack_is_one_line(scenario, tmp_path, capsys):
    """--run-dir names a folder where no stack runs: one line saying so, exit 2, nothing
    deployed (no deploy/ folder in the results)."""
    from loadtest.cli import main

    code = main([scenario, "--run-dir", str(tmp_path / "run"), "--quick",
                 "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"qwen-vl-loadtest {scenario}: no stack runs from ")
    assert "Traceback" not in err and not (tmp_path / "r" / "deploy").exists()


def test_cli_run_dir_is_taken_from_where_the_command_runs(tmp_path, monkeypatch, capsys):
    """A relative --run-dir names a folder under the caller's directory, not under the project
    root the command moves to."""
    from loadtest.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["sweep", "--run-dir", "run", "--quick", "--out", "r"]) == 2
    assert f"no stack runs from {tmp_path / 'run'}:" in capsys.readouterr().err


def test_every_documented_flag_parses():
    from loadtest.cli import build_parser

    p = build_parser()
    p.parse_args(["card", "--model", "2b", "--variants", "BF16,awq", "--input-lengths", "1,256",
                  "--output-tokens", "32", "--requests", "2", "--no-baseline", "--quick"])
    p.parse_args(["sweep", "--url", "http://h:8000", "--api-key", "k", "--max-concurrency", "8",
                  "--min-requests", "4", "--image-fraction", "0.25", "--images-per-request",
                  "2", "--image-size", "224x448", "--slo-ttft-ms", "500", "--slo-tpot-ms", "50"])
    a = p.parse_args(["overhead", "--concurrency", "4", "--rounds", "3", "--requests", "16",
                      "--image-fraction", "1", "--image-size", "224x224", "--ray-serve-llm"])
    assert a.ray_serve_llm and not p.parse_args(["overhead"]).ray_serve_llm
    p.parse_args(["baseline", "--model", "2b", "--input-tokens", "32", "--output-tokens", "32",
                  "--min-requests", "2", "--concurrency", "1,16"])
    a = p.parse_args(["soak", "--duration", "600", "--concurrency", "4", "--image-fraction",
                      "0.5", "--url", "http://h:8000", "--api-key", "k"])
    assert (a.duration, a.concurrency, a.url) == (600, 4, "http://h:8000")
    for scenario in ("sweep", "soak", "ceiling", "overhead"):
        assert p.parse_args([scenario, "--run-dir", "r"]).run_dir == Path("r")


def test_checkpoint_dtype(tmp_path):
    from loadtest.hf_baseline import checkpoint_dtype

    assert checkpoint_dtype(str(tmp_path)) is None  # no config.json
    for key, value, expected in [("dtype", "bfloat16", "bfloat16"),
                                 ("torch_dtype", "float32", "float32"), ("dtype", "int8", None)]:
        (tmp_path / "config.json").write_text(json.dumps({key: value}))
        assert checkpoint_dtype(str(tmp_path)) == expected


def test_cpu_table_keeps_a_request_path_process_that_read_zero(tmp_path):
    """A process's CPU counters tick every 10 ms, so in a short block HAProxy may read 0: its
    row stays (the process was found), while a daemon that cost nothing anywhere is left out."""
    from loadtest.cpu_usage import CpuReading
    from loadtest.report import Report
    from loadtest.scenarios.overhead import cpu_report

    report = Report("overhead", tmp_path, {})
    stack = CpuReading(2.0, {"HAProxy": 0.0, "engine replica (Python)": 0.1,
                             "Ray log monitor": 0.0}, {})
    bare = CpuReading(2.0, {"API server (vllm serve)": 0.05}, {})
    cpu_report(report, {("stack", "text"): stack, ("vllm-serve", "text"): bare}, requests=8)
    rows = {r["group"]: r for r in report.data["cpu_per_request_ms"]}
    assert rows["HAProxy"]["stack text"] == 0.0 and rows["HAProxy"]["vllm-serve text"] is None
    assert rows["engine replica (Python)"]["stack text"] == 12.5
    assert "Ray log monitor" not in rows
