"""The capacity planner's arithmetic, offline: architectures, weights against the built
checkpoints' own bytes, KV capacity as vLLM computes it, tokens per image against the
Qwen2-VL image processor, and the CLI. The engine check (a live vLLM) is in
test_capacity_check.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine import capacity, releases, vision
from engine.capacity import Architecture, Workload, architecture_for, make_plan
from engine.config import load_config, parse_config
from engine.devices import GPUS, gpu
from tests.utils import CONFIGS, run_cli


def config(**sections):
    import yaml

    data = yaml.safe_load((CONFIGS / "default.yaml").read_text())
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return parse_config(data)


def test_embedded_2b_matches_the_official_2b_config():
    emb, _ = architecture_for(config(model={"source": "embedded:qwen2-vl-2b-random"}))
    off = Architecture.from_config(capacity.official_config("Qwen/Qwen2-VL-2B-Instruct"))
    same = {k: v for k, v in vars(emb).items() if k != "checkpoint_dtype"}
    assert same == {k: v for k, v in vars(off).items() if k != "checkpoint_dtype"}
    assert off.num_kv_heads == 2 and off.head_dim == 128 and off.tied_embeddings


PUBLISHED = json.loads((Path(__file__).parent / "data" / "qwen2_vl_published_configs.json")
                       .read_text())


@pytest.mark.parametrize("release", [r for r in PUBLISHED if not r.startswith("_")])
def test_release_sizes_equal_the_published_config_json(release):
    """engine/releases.py against the releases' own config.json values (test data with its
    source), field by field: what the planner reads of a release it has not downloaded."""
    ours = capacity.official_config(f"Qwen/{release}")
    published = PUBLISHED[release]
    base = PUBLISHED[release.split("-Instruct")[0] + "-Instruct"]
    for key, value in {**base, **published}.items():
        if key == "vision_config":
            mine = {**ours["vision_config"], "in_chans": ours["vision_config"]["in_channels"]}
            assert {k: mine[k] for k in value} == value, release
        elif key == "quantization_config":
            assert {k: v for k, v in value.items() if k in ours[key]} == ours[key], release
            assert set(ours[key]) <= set(value), release
        else:
            assert ours[key] == value, (release, key)


def test_official_release_names():
    q = Architecture.from_config(capacity.official_config("Qwen/Qwen2-VL-7B-Instruct-GPTQ-Int8"))
    assert (q.quant_method, q.quant_bits, q.quant_group_size) == ("gptq", 8, 128)
    assert q.hidden_size == 3584 and not q.tied_embeddings and q.checkpoint_dtype == "float16"
    assert Architecture.from_config(capacity.official_config("Qwen/Qwen2-VL-2B-Instruct-AWQ")
                                    ).quant_method == "awq"
    assert capacity.official_config("someone/other-model") is None


def test_flat_and_nested_config_json_read_the_same():
    nested = capacity.official_config("Qwen/Qwen2-VL-2B-Instruct")
    text = {k: nested.pop(k) for k in list(releases.OFFICIAL_TEXT["2B"])}
    assert Architecture.from_config({**nested, "text_config": text}) == Architecture.from_config(
        {**nested, **text})


def test_not_a_qwen2_vl_config_is_a_clear_error():
    with pytest.raises(capacity.PlanError, match="not a Qwen2-VL configuration"):
        Architecture.from_config({"hidden_size": 8})


@pytest.mark.parametrize("name", ["qwen2-vl-tiny", "qwen2-vl-tiny-gptq-int4",
                                  "qwen2-vl-tiny-gptq-int8", "qwen2-vl-tiny-awq"])
def test_weight_bytes_equal_the_checkpoint(name):
    """Planned from config.json alone = the bytes of the checkpoint's tensors (headers)."""
    from engine.embedded_model import ensure_checkpoint
    from loadtest.bandwidth import tensor_bytes

    cfg = config(model={"source": f"embedded:{name}", "dtype": "auto"},
                 deployment={"device": "gpu" if "int8" in name else "cpu"})  # no CPU kernel
    arch, _ = architecture_for(cfg)
    stored = tensor_bytes(str(ensure_checkpoint(f"embedded:{name}")))
    # The checkpoint stores 16-bit non-quantized tensors for the quantized variants (what the
    # engine runs them in); the tiny float32 model stores float32.
    dtype = 4 if arch.quant_method is None else 2
    planned = capacity.weight_bytes(arch, dtype)
    assert planned["total"] == sum(stored.values())
    assert planned["vision_tower"] == sum(n for k, n in stored.items() if "visual" in k)


def test_kv_capacity_as_vllm_computes_it():
    # tiny: 2 layers x 1 KV head x 128 x 2 x float32 = 2048 bytes per token
    cfg = config(engine={"cpu_kv_cache_gib": 0.25, "max_model_len": 1000, "block_size": 32})
    arch, origin = architecture_for(cfg)
    p = make_plan(cfg, arch, origin, None, Workload(), cpu_bandwidth_gbs=10)
    assert p.kv_cache["bytes_per_token"] == 2048
    blocks = (1 << 28) // (2048 * 32)
    assert p.kv_cache["blocks"] == blocks and p.kv_cache["tokens"] == blocks * 32
    # vLLM logs int(blocks / ceil(max_model_len / block_size) * max_model_len)
    assert p.kv_cache["tokens_reported_by_vllm"] == int(blocks / 32 * 1000)


def test_gpu_plan_tp_and_warnings():
    cfg = load_config(CONFIGS / "qwen2-vl-7b-instruct.yaml")
    arch, origin = architecture_for(cfg)
    assert "official release" in origin or "cache" in origin
    one = make_plan(cfg, arch, origin, gpu("A100-80GB"), Workload(requests_per_s=4))
    assert one.model["tensor_parallel_size"] == cfg.deployment.tensor_parallel_size
    assert one.memory["weights_per_gpu_bytes"] * 2 >= one.model["weights_bytes"]["total"]
    tp1 = cfg.model_copy(update={"deployment": cfg.deployment.model_copy(
        update={"tensor_parallel_size": 1})})
    l4 = make_plan(tp1, arch, origin, gpu("L4"), Workload())
    assert l4.memory["weights_per_gpu_bytes"] > 15 << 30 and not l4.warnings, l4.warnings
    assert 32768 <= l4.kv_cache["tokens"] < 64000  # 7B BF16 just fits one L4
    tight = tp1.model_copy(update={"engine": tp1.engine.model_copy(
        update={"gpu_memory_utilization": 0.6})})
    p = make_plan(tight, arch, origin, gpu("L4"), Workload())
    assert any(w.startswith("cannot start: the weights") for w in p.warnings), p.warnings
    assert any("fewer than engine.max_model_len" in w for w in p.warnings), p.warnings
    assert "replicas_needed_min" in one.load and one.load["replicas_needed_min"] >= 1


def test_replicas_scale_with_load():
    cfg = load_config(CONFIGS / "qwen2-vl-2b-instruct-gptq-int4.yaml")
    arch, origin = architecture_for(cfg)
    small, big = (make_plan(cfg, arch, origin, gpu("L4"), Workload(requests_per_s=r))
                  for r in (1, 200))
    assert small.load["replicas_needed_min"] == 1 < big.load["replicas_needed_min"]
    assert big.load["gpus_needed_min"] == big.load["replicas_needed_min"]
    assert small.speed["decode_tokens_per_s_batch1_max"] < small.speed[
        "decode_tokens_per_s_at_fit_max"]


def test_too_many_image_tokens_for_max_model_len_warns():
    cfg = config(engine={"max_model_len": 1024},
                 multimodal={"max_images_per_prompt": 8, "max_pixels": 200704})
    arch, origin = architecture_for(cfg)
    p = make_plan(cfg, arch, origin, None, Workload(), cpu_bandwidth_gbs=10)
    assert any("max_images_per_prompt (8)" in w for w in p.warnings), p.warnings


@pytest.mark.parametrize("seconds, size", [(60, (640, 360)), (1200, (320, 240)),
                                           (1500, (360, 640))])
def test_videos_count_as_the_front_door_samples_them(seconds, size):
    """A workload's videos cost the tokens the front door's own plan gives them (frames at the
    configured fps up to the cap, fitted into the per-video budget), in the prompt and the KV
    estimate alike."""
    from engine.vision import video_frames

    cfg = config(multimodal={"video_max_frames": None})
    arch, origin = architecture_for(cfg)
    base = make_plan(cfg, arch, origin, None, Workload(images=0), cpu_bandwidth_gbs=10)
    p = make_plan(cfg, arch, origin, None, Workload(images=0, videos=1, video_seconds=seconds,
                                                    video_fps=25, video_size=size),
                  cpu_bandwidth_gbs=10)
    vp = video_frames(seconds * 25, 25, size[1], size[0], cfg.video_budget(),
                    min_pixels=cfg.multimodal.min_pixels, max_pixels=cfg.multimodal.max_pixels)
    assert p.videos["frames"] == vp.frames and p.videos["video_tokens"] == vp.tokens
    assert p.videos["video_tokens"] <= cfg.video_budget().max_tokens == 2048
    assert p.load["prompt_tokens"] == base.load["prompt_tokens"] + vp.tokens + 2
    assert not p.warnings, p.warnings


def test_videos_over_the_limits_warn():
    cfg = config(multimodal={"video_max_frames": 64, "video_max_tokens": 100})
    arch, origin = architecture_for(cfg)
    p = make_plan(cfg, arch, origin, None, Workload(videos=2, video_seconds=7200),
                  cpu_bandwidth_gbs=10)
    text = " ".join(p.warnings)
    assert "max_videos_per_prompt 1" in text and "limits.max_video_seconds 3600" in text
    assert "over multimodal.video_max_tokens 100" in text


SIZES = [(28, 28), (30, 40), (200, 300), (1000, 800), (56, 1400), (1400, 56), (28, 5000),
         (5000, 28), (3000, 2000), (57, 57), (768, 1024), (333, 777)]


@pytest.mark.parametrize("h,w", SIZES)
def test_tokens_per_image_equal_the_image_processor(h, w):
    """Qwen2-VL's own processor (transformers) with the same min/max pixels: its patch grid,
    merged 2x2, is the planned image token count."""
    import numpy as np
    from transformers import Qwen2VLImageProcessor

    from engine.embedded_model import preprocessor_config

    mm = config().multimodal
    proc = Qwen2VLImageProcessor(**{**preprocessor_config(), "min_pixels": mm.min_pixels,
                                    "max_pixels": mm.max_pixels,
                                    "size": {"shortest_edge": mm.min_pixels,
                                             "longest_edge": mm.max_pixels}})
    out = proc(images=[np.zeros((h, w, 3), dtype=np.uint8)], return_tensors="np")
    t, gh, gw = (int(v) for v in out["image_grid_thw"][0])
    planned = vision.image_tokens(h, w, mm.min_pixels, mm.max_pixels)
    assert planned["image_tokens"] == t * gh * gw // 4
    assert planned["prompt_tokens"] == planned["image_tokens"] + 2


def test_cli_plan_table_and_json():
    r = run_cli("plan", "--config", str(CONFIGS / "qwen2-vl-2b-instruct-gptq-int4.yaml"),
                "--device", "L4", "--rps", "2", timeout=300)
    assert r.returncode == 0, r.stderr
    for row in ("weights", "KV capacity", "image", "decode bound", "replicas needed"):
        assert row in r.stdout
    r = run_cli("plan", "--config", str(CONFIGS / "default.yaml"), "--bandwidth-gbs", "10",
                "--json", "--image-size", "640x480", timeout=300)
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    assert plan["device"]["name"] == "cpu" and plan["images"]["size"] == "640x480"
    assert plan["kv_cache"]["tokens_reported_by_vllm"] == 524288
    r = run_cli("plan", "--config", str(CONFIGS / "default.yaml"), "--bandwidth-gbs", "10",
                "--videos", "1", "--video-seconds", "1200", timeout=300)
    assert r.returncode == 0, r.stderr
    assert "1200 s 640x360 at 30 fps -> 16 frames" in r.stdout and "budget 2,048" in r.stdout


@pytest.mark.parametrize("args,message", [
    (["--device", "B200"], "unknown GPU 'B200'"),
    (["--image-size", "big"], "expected WIDTHxHEIGHT"),
    (["--image-size", "0x768"], "width and height must be >= 1"),
    (["--video-size", "wide"], "--video-size 'wide': expected WIDTHxHEIGHT"),
    (["--videos", "1", "--video-seconds", "0"], "--video-seconds must be > 0"),
])
def test_cli_plan_bad_input(args, message):
    r = run_cli("plan", "--config", str(CONFIGS / "default.yaml"), "--bandwidth-gbs", "10",
                *args, timeout=300)
    assert r.returncode == 1 and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_gpu_config_needs_a_device():
    r = run_cli("plan", "--config", str(CONFIGS / "qwen2-vl-2b-instruct.yaml"), timeout=300)
    assert r.returncode == 1 and "--device" in r.stderr and "L4" in r.stderr


def test_gpu_table():
    assert {"A10G", "L4", "L40S", "A100-40GB", "A100-80GB", "H100", "H200"} == set(GPUS)
    assert gpu("h100").memory_bytes > 80e9


def test_repeated_images_skip_the_encoder_and_their_prefill_where_they_are_cached():
    """--image-repeat: the repeats whose replica's caches hold the image (all of them with the
    image-affinity router or one replica, one in N replicas without) skip the vision encoder
    and the prefill of the image's tokens; the prefill bound falls by exactly that."""
    def plan(repeat, **deployment):
        cfg = config(model={"source": "embedded:qwen2-vl-2b-random", "served_name": "m"},
                     deployment=deployment)
        arch, origin = architecture_for(cfg)
        return make_plan(cfg, arch, origin, gpu("L4"), Workload(image_repeat=repeat)).to_dict()

    base = plan(0.0, replicas=2)
    cfg = config(model={"source": "embedded:qwen2-vl-2b-random", "served_name": "m"})
    text_only = make_plan(cfg, *architecture_for(cfg), gpu("L4"), Workload(images=0)).to_dict()
    per_token_ms = text_only["speed"]["prefill_ms_min"] / text_only["load"]["prompt_tokens"]
    image_ms = (base["speed"]["vision_ms_per_image_min"]
                + per_token_ms * base["images"]["prompt_tokens"])
    for repeat, deployment, share in [
            (0.9, {"replicas": 2}, 0.45),
            (0.9, {"replicas": 2, "routing": {"image_affinity": True}}, 0.9),
            (0.9, {"replicas": 1}, 0.9), (0.5, {"replicas": 4}, 0.125), (0.0, {}, 0.0)]:
        p = plan(repeat, **deployment)
        assert p["images"]["cached_share"] == pytest.approx(share, abs=1e-12), deployment
        assert p["speed"]["prefill_ms_min"] == pytest.approx(
            base["speed"]["prefill_ms_min"] - share * image_ms, rel=1e-9), deployment
    r = run_cli("plan", "--config", str(CONFIGS / "default.yaml"), "--bandwidth-gbs", "10",
                "--image-repeat", "1.5", timeout=300)
    assert r.returncode == 1 and "--image-repeat must be between 0 and 1" in r.stderr, r.stderr
