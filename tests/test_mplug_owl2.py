"""Native mPLUG-Owl2: official key layout, loading rules, splicing, padding, preprocessing."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from vqpipe.models.mplug_owl2 import (
    IMAGE_TOKEN_INDEX,
    CheckpointMismatchError,
    MPLUGOwl2Config,
    MPLUGOwl2ForCausalLM,
    MPLUGOwl2ImageProcessor,
    PromptTokenizer,
    expand2square,
)
from vqpipe.models.mplug_owl2.tiny import tiny_config
from vqpipe.models.mplug_owl2.visual import sincos_1d, sincos_2d


def official_keys(cfg: MPLUGOwl2Config) -> set[str]:
    """Every state-dict key of the official MPLUGOwl2LlamaForCausalLM, written out from
    METHODS.md (not from our modules)."""
    keys = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        keys |= {p + f"self_attn.{n}.weight" for n in ("q_proj", "o_proj")}
        keys |= {
            p + f"self_attn.{n}.multiway.{m}.weight" for n in ("k_proj", "v_proj") for m in (0, 1)
        }
        keys |= {p + f"mlp.{n}.weight" for n in ("gate_proj", "up_proj", "down_proj")}
        keys |= {
            p + f"{n}.multiway.{m}.weight"
            for n in ("input_layernorm", "post_attention_layernorm")
            for m in (0, 1)
        }
    v = "model.vision_model."
    keys |= {
        v + "embeddings.patch_embed.weight",
        v + "embeddings.cls_token",
        v + "embeddings.position_embedding",
        v + "embeddings.pre_layernorm.weight",
        v + "embeddings.pre_layernorm.bias",
        v + "post_layernorm.weight",
        v + "post_layernorm.bias",
    }
    for i in range(cfg.vision.num_hidden_layers):
        p = f"{v}encoder.layers.{i}."
        for n in (
            "self_attn.query_key_value",
            "self_attn.dense",
            "mlp.fc1",
            "mlp.fc2",
            "input_layernorm",
            "post_attention_layernorm",
        ):
            keys |= {p + n + ".weight", p + n + ".bias"}
    a = "model.visual_abstractor."
    keys |= {a + "query_embeds", a + "vit_eos", a + "visual_fc.weight", a + "visual_fc.bias"}
    for i in range(cfg.abstractor.num_hidden_layers):
        p = f"{a}encoder.layers.{i}.crossattention."
        for n in (
            "attention.query",
            "attention.key",
            "attention.value",
            "output.out_proj",
            "output.norm2",
            "output.mlp.w1",
            "output.mlp.w2",
            "output.mlp.w3",
            "output.mlp.ffn_ln",
            "norm1",
            "normk",
        ):
            keys |= {p + n + ".weight", p + n + ".bias"}
    return keys


@pytest.fixture(scope="module")
def model(qalign_checkpoint):
    return MPLUGOwl2ForCausalLM.from_pretrained(qalign_checkpoint)


def copy_checkpoint(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_state_dict_keys_are_the_official_ones(qalign_checkpoint, model):
    expected = official_keys(model.config)
    assert set(model.state_dict()) == expected
    assert set(load_file(qalign_checkpoint / "model.safetensors")) == expected


def test_from_pretrained_loads_every_tensor(qalign_checkpoint, model):
    stored = load_file(qalign_checkpoint / "model.safetensors")
    state = model.state_dict()
    for key, tensor in stored.items():
        torch.testing.assert_close(state[key], tensor, rtol=0, atol=0, msg=key)


def test_config_keeps_official_fields_and_unknown_ones(qalign_checkpoint):
    data = json.loads((qalign_checkpoint / "config.json").read_text())
    data["some_future_field"] = {"x": 1}
    cfg = MPLUGOwl2Config.from_dict(data)
    assert cfg.vision.image_size == data["visual_config"]["visual_model"]["image_size"]
    assert cfg.abstractor.grid == data["visual_config"]["visual_abstractor"]["grid_size"]
    assert cfg.tokens_per_image == cfg.abstractor.num_learnable_queries + 1
    assert cfg.to_dict()["some_future_field"] == {"x": 1}
    assert MPLUGOwl2Config().abstractor.grid == 32  # official default: grid_size or 32


def test_legacy_buffers_in_the_checkpoint_are_accepted(qalign_checkpoint, tmp_path, model):
    ckpt = copy_checkpoint(qalign_checkpoint, tmp_path / "legacy")
    tensors = load_file(ckpt / "model.safetensors")
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)
    prefix = "model.visual_abstractor.encoder.layers.0.crossattention.attention."
    tensors[prefix + "q_pos_embed"] = torch.zeros(4, 32)
    tensors[prefix + "k_pos_embed"] = torch.zeros(5, 32)
    save_file(tensors, str(ckpt / "model.safetensors"))
    loaded = MPLUGOwl2ForCausalLM.from_pretrained(ckpt)
    attn = loaded.model.visual_abstractor.encoder.layers[0].crossattention.attention
    assert attn.q_pos_embed.abs().sum() > 0  # recomputed, not the stored zeros


@pytest.mark.parametrize("change", ["missing", "unexpected", "shape"])
def test_checkpoint_differences_fail_loudly_naming_the_key(qalign_checkpoint, tmp_path, change):
    ckpt = copy_checkpoint(qalign_checkpoint, tmp_path / change)
    tensors = load_file(ckpt / "model.safetensors")
    key = "model.layers.1.self_attn.v_proj.multiway.1.weight"
    if change == "missing":
        del tensors[key]
    elif change == "unexpected":
        key = "model.layers.1.self_attn.v_proj.multiway.2.weight"
        tensors[key] = torch.zeros(64, 64)
    else:
        tensors[key] = torch.zeros(3, 3)
    save_file(tensors, str(ckpt / "model.safetensors"))
    with pytest.raises(CheckpointMismatchError, match=key.replace(".", r"\.")):
        MPLUGOwl2ForCausalLM.from_pretrained(ckpt)


def test_sharded_safetensors_and_pickle_shards_load_the_same(qalign_checkpoint, tmp_path, model):
    sharded = tmp_path / "sharded"
    model.save_pretrained(sharded, max_shard_bytes=200_000)
    assert len(list(sharded.glob("model-*-of-*.safetensors"))) > 1
    assert (sharded / "model.safetensors.index.json").exists()
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(qalign_checkpoint / "config.json", pickled)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    names = sorted(state)
    half = len(names) // 2
    index = {"weight_map": {}}
    for i, part in enumerate((names[:half], names[half:]), 1):
        file = f"pytorch_model-0000{i}-of-00002.bin"
        torch.save({k: state[k] for k in part}, pickled / file)
        index["weight_map"].update(dict.fromkeys(part, file))
    (pickled / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    ids = torch.tensor([[1, 5, IMAGE_TOKEN_INDEX, 7, 8]])
    pixels = torch.randn(1, 3, 28, 28)
    ref = model(ids, images=pixels).logits
    for directory in (sharded, pickled):
        other = MPLUGOwl2ForCausalLM.from_pretrained(directory)
        torch.testing.assert_close(other(ids, images=pixels).logits, ref, rtol=0, atol=0)


class _Exploit:
    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').write('x')",))


def test_pickle_checkpoints_load_with_weights_only(qalign_checkpoint, tmp_path, monkeypatch):
    ckpt = tmp_path / "evil"
    ckpt.mkdir()
    shutil.copy(qalign_checkpoint / "config.json", ckpt)
    torch.save({"lm_head.weight": torch.zeros(2, 2), "x": _Exploit()}, ckpt / "pytorch_model.bin")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Exception, match=r"(?i)weights.only|unpickl"):
        MPLUGOwl2ForCausalLM.from_pretrained(ckpt)
    assert not (tmp_path / "PWNED").exists()


def test_from_pretrained_reads_an_s3_prefix_once(
    qalign_checkpoint, s3_bucket, s3_server, tmp_path, monkeypatch, model
):
    bucket, fs = s3_bucket
    for file in qalign_checkpoint.iterdir():
        fs.put(str(file), f"{bucket}/one-align/{file.name}")
    monkeypatch.setenv("VQPIPE_CACHE", str(tmp_path / "cache"))
    remote = MPLUGOwl2ForCausalLM.from_pretrained(
        f"s3://{bucket}/one-align", storage_options=s3_server
    )
    for key, tensor in model.state_dict().items():
        assert torch.equal(remote.state_dict()[key], tensor)
    cached = list((tmp_path / "cache").rglob("config.json"))
    assert len(cached) == 1


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        MPLUGOwl2ForCausalLM.from_pretrained(tmp_path / "nope")


def test_sincos_positions_match_the_formulas():
    d, g = 8, 3
    q = sincos_1d(d, np.arange(5, dtype=np.float32))
    omega = 1.0 / 10000 ** (np.arange(d // 2) / (d / 2))
    np.testing.assert_allclose(q[3, : d // 2], np.sin(3 * omega), rtol=1e-6)
    np.testing.assert_allclose(q[3, d // 2 :], np.cos(3 * omega), rtol=1e-6)
    k = sincos_2d(d, g)
    assert k.shape == (1 + g * g, d) and not k[0].any()  # a zero row for CLS
    row, col = 2, 1
    token = k[1 + row * g + col]
    np.testing.assert_allclose(token[: d // 2], sincos_1d(d // 2, np.array([col]))[0], rtol=1e-6)
    np.testing.assert_allclose(token[d // 2 :], sincos_1d(d // 2, np.array([row]))[0], rtol=1e-6)


def test_vision_qkv_is_split_per_head(model):
    """The fused QKV rows are [q_h, k_h, v_h] per head h, not [Q; K; V] blocks."""
    attn = model.model.vision_model.encoder.layers[0].self_attn
    x = torch.randn(2, 5, 32)
    heads, hd = 4, 8
    w, b = attn.query_key_value.weight, attn.query_key_value.bias
    qkv = (x @ w.T + b).view(2, 5, heads, 3 * hd)  # head h owns rows [3·hd·h, 3·hd·(h+1))
    q, k, v = qkv[..., :hd], qkv[..., hd : 2 * hd], qkv[..., 2 * hd :]
    att = torch.softmax(torch.einsum("bnhd,bmhd->bhnm", q, k) / hd**0.5, dim=-1)
    ctx = torch.einsum("bhnm,bmhd->bnhd", att, v).reshape(2, 5, 32)
    torch.testing.assert_close(attn(x), attn.dense(ctx), rtol=1e-5, atol=1e-6)


def test_image_yields_queries_plus_eos_tokens(model):
    feats = model.encode_images(torch.randn(3, 3, 28, 28))
    assert feats.shape == (3, model.config.tokens_per_image, model.config.hidden_size)
    torch.testing.assert_close(feats[:, -1], model.model.visual_abstractor.vit_eos[0].expand(3, -1))


def test_splice_matches_hand_built_embeddings(model):
    ids = torch.tensor([[1, 11, 12, IMAGE_TOKEN_INDEX, 13, IMAGE_TOKEN_INDEX, 14]])
    pixels = torch.randn(2, 3, 28, 28)
    feats = model.encode_images(pixels)
    emb = model.model.embed_tokens
    manual = torch.cat([emb(ids[0, :3]), feats[0], emb(ids[0, 4:5]), feats[1], emb(ids[0, 6:])])
    modality = torch.cat(
        [torch.zeros(3), torch.ones(5), torch.zeros(1), torch.ones(5), torch.zeros(1)]
    )
    out = model(inputs_embeds=manual[None], modality_indicators=modality[None].long()).logits
    torch.testing.assert_close(model(ids, images=pixels).logits, out, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="placeholders"):
        model(ids, images=pixels[:1])


def test_video_frames_share_one_placeholder(model):
    ids = torch.tensor([[1, 11, IMAGE_TOKEN_INDEX, 13]])
    frames = torch.randn(3, 3, 28, 28)
    out = model(ids, images=[frames]).logits
    assert out.shape[1] == 3 + 3 * model.config.tokens_per_image
    five_d = model(ids, images=frames[None]).logits
    torch.testing.assert_close(out, five_d)


def test_batched_forward_with_left_padding_equals_one_by_one(model):
    rows = [[1, 11, IMAGE_TOKEN_INDEX, 13, 14, 15], [1, IMAGE_TOKEN_INDEX, 16]]
    frames = [torch.randn(2, 3, 28, 28), torch.randn(1, 3, 28, 28)]
    singles = [
        model(torch.tensor([r]), images=[f]).logits[0, -1]
        for r, f in zip(rows, frames, strict=True)
    ]
    width = max(map(len, rows))
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    batched = model(ids, images=frames, attention_mask=mask).logits[:, -1]
    torch.testing.assert_close(batched, torch.stack(singles), rtol=1e-4, atol=1e-5)


def test_kv_cache_continuation_equals_full_forward(model):
    ids = torch.tensor([[1, 11, IMAGE_TOKEN_INDEX, 13, 14, 15]])
    pixels = torch.randn(1, 3, 28, 28)
    full = model(ids, images=pixels).logits
    head = model(ids[:, :4], images=pixels, use_cache=True)
    tail = model(ids[:, 4:], past_key_values=head.past_key_values).logits
    torch.testing.assert_close(tail, full[:, -2:], rtol=1e-4, atol=1e-5)


def test_labels_give_a_loss_on_text_only(model):
    ids = torch.tensor([[1, 11, IMAGE_TOKEN_INDEX, 13, 14]])
    out = model(ids, images=torch.randn(1, 3, 28, 28), labels=ids.clone())
    assert out.loss is not None and torch.isfinite(out.loss)
    out.loss.backward()
    assert model.model.visual_abstractor.vit_eos.grad is not None
    model.zero_grad()


def test_processor_expand_to_square_and_normalisation_by_hand():
    proc = MPLUGOwl2ImageProcessor(size=4)
    assert proc.background == (122, 116, 104)
    pixels = np.arange(4 * 2 * 3, dtype=np.uint8).reshape(2, 4, 3) * 10  # 4 wide, 2 high
    square = expand2square(Image.fromarray(pixels), proc.background)
    arr = np.asarray(square)
    assert arr.shape == (4, 4, 3)
    assert (arr[0] == (122, 116, 104)).all() and (arr[3] == (122, 116, 104)).all()
    assert (arr[1:3] == pixels).all()
    out = proc(Image.fromarray(pixels)).numpy()[0]  # already 4 px: no resampling
    mean = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
    std = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
    expected = ((arr.astype(np.float64) * (1 / 255)).astype(np.float32) - mean) / std
    np.testing.assert_array_equal(out, expected.transpose(2, 0, 1))


def test_processor_converts_to_rgb_and_resizes_bicubic():
    proc = MPLUGOwl2ImageProcessor(size=28)
    grey = Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 60), np.uint8), "L")
    out = proc.to_uint8(grey)
    rgb = expand2square(grey.convert("RGB"), proc.background).resize((28, 28), Image.BICUBIC)
    np.testing.assert_array_equal(out, np.asarray(rgb).transpose(2, 0, 1))
    rgba = Image.new("RGBA", (10, 10), (1, 2, 3, 0))
    assert proc(rgba).shape == (1, 3, 28, 28)


def test_prompt_tokenisation_follows_the_official_chunk_rule(qalign_checkpoint):
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(qalign_checkpoint / "tokenizer.model"))
    tok = PromptTokenizer.from_pretrained(qalign_checkpoint)
    prompt = "USER: How would you rate the quality of this image?\n<|image|>\nASSISTANT: The"
    ids = tok.encode_prompt(prompt)
    first, second = prompt.split("<|image|>")
    assert ids == [1, *sp.encode(first), IMAGE_TOKEN_INDEX, *sp.encode(second)]
    assert ids[ids.index(IMAGE_TOKEN_INDEX) + 1] == sp.piece_to_id("▁")  # LLaMA's 29871
    # A prompt opening with an image keeps BOS per chunk, as tokenizer_image_token does.
    assert tok.encode_prompt("<|image|>ab") == [IMAGE_TOKEN_INDEX, 1, *sp.encode("ab")]
    assert tok.first_piece("excellent") == sp.encode("excellent")[0]


def test_random_model_of_any_config_runs():
    cfg = tiny_config(image_size=42, num_key_value_heads=2)  # 3x3 grid, grouped K/V heads
    model = MPLUGOwl2ForCausalLM.from_config(cfg, seed=1)
    out = model(torch.tensor([[1, IMAGE_TOKEN_INDEX, 5]]), images=torch.randn(1, 3, 42, 42))
    assert out.logits.shape == (1, 2 + cfg.tokens_per_image, cfg.vocab_size)


def test_config_takes_unknown_keywords_like_transformers():
    cfg = MPLUGOwl2Config(
        hidden_size=64,
        num_attention_heads=4,
        torch_dtype="float32",
        visual_config={"visual_model": {"image_size": 28, "foo": 1}},
    )
    assert cfg.to_dict()["torch_dtype"] == "float32" and cfg.num_key_value_heads == 4
    assert cfg.vision.image_size == 28 and cfg.vision.to_dict()["foo"] == 1
