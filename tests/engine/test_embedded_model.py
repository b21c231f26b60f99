import json

import pytest
from safetensors import safe_open

from engine import embedded_model as em


@pytest.fixture(scope="module")
def ckpt():
    return em.ensure_checkpoint("embedded:qwen2-vl-tiny")


def test_files_present(ckpt):
    names = {p.name for p in ckpt.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "vocab.json", "merges.txt",
            "tokenizer_config.json", "preprocessor_config.json", "generation_config.json",
            "chat_template.json"} <= names


def test_architecture(ckpt):
    cfg = json.loads((ckpt / "config.json").read_text())
    assert cfg["architectures"] == ["Qwen2VLForConditionalGeneration"]
    text = cfg["text_config"]
    assert text["hidden_size"] // text["num_attention_heads"] == 128  # CPU attention needs it
    assert text["rope_parameters"]["mrope_section"] == [16, 24, 24]
    assert text["vocab_size"] == 151936
    assert (cfg["image_token_id"], cfg["video_token_id"]) == (151655, 151656)
    assert (cfg["vision_start_token_id"], cfg["vision_end_token_id"]) == (151652, 151653)
    vision = cfg["vision_config"]
    assert (vision["patch_size"], vision["spatial_merge_size"], vision["temporal_patch_size"]) == (14, 2, 2)


def test_preprocessor(ckpt):
    pp = json.loads((ckpt / "preprocessor_config.json").read_text())
    assert pp["image_mean"] == em.IMAGE_MEAN and pp["image_std"] == em.IMAGE_STD
    assert (pp["patch_size"], pp["merge_size"], pp["temporal_patch_size"]) == (14, 2, 2)


def test_tokenizer_and_template(ckpt):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ckpt)
    ids = tok.convert_tokens_to_ids(
        ["<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"])
    assert ids == [151652, 151653, 151654, 151655, 151656]
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "video"},
                                         {"type": "text", "text": "hi"}]}]
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|><|vision_start|><|image_pad|><|vision_end|>"
        "<|vision_start|><|video_pad|><|vision_end|>hi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_weights_seeded_and_reproducible(ckpt, tmp_path, monkeypatch):
    """A rebuild from the same spec gives the same weights, bit for bit."""
    monkeypatch.setenv("QWEN_VL_CACHE", str(tmp_path))
    again = em.ensure_checkpoint("embedded:qwen2-vl-tiny")
    assert again != ckpt
    with safe_open(ckpt / "model.safetensors", "pt") as a, safe_open(again / "model.safetensors", "pt") as b:
        assert set(a.keys()) == set(b.keys())
        for key in list(a.keys())[:20]:
            assert a.get_tensor(key).equal(b.get_tensor(key)), key


def test_spec_change_changes_directory():
    import dataclasses

    spec = em.SPECS["qwen2-vl-tiny"]
    assert dataclasses.replace(spec, seed=1).digest() != spec.digest()


def test_unknown_name():
    with pytest.raises(em.EmbeddedModelError, match="unknown embedded model 'nope'"):
        em.spec_for("embedded:nope")


def test_real_size_spec_matches_model_card():
    s = em.SPECS["qwen2-vl-2b-random"]
    assert (s.hidden_size, s.intermediate_size, s.num_hidden_layers) == (1536, 8960, 28)
    assert (s.num_attention_heads, s.num_key_value_heads) == (12, 2)
    assert (s.vision_depth, s.vision_embed_dim, s.vision_num_heads, s.vision_mlp_ratio) == (32, 1280, 16, 4)
