"""Gamma: MoAE parity with plain CLIP, parameter sets, caches, batching, checkpoints, training."""

import copy

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

import vqpipe
from vqpipe.data import make_image_dataset
from vqpipe.models.gamma import (
    SCENES,
    GammaConfig,
    GammaModel,
    MoAEMLP,
    create_clip,
    scene_for_dataset,
    scene_prompts,
)
from vqpipe.models.gamma_checkpoint import (
    CheckpointMismatchError,
    infer_moae,
    load_gamma,
    save_gamma,
)
from vqpipe.scorers.gamma import GammaScorer
from vqpipe.train.gamma import build_model, dct_patch_init_, train_gamma

TINY = GammaConfig(clip_model="vqpipe-test-ViT", n_moae_layers=2, n_experts=3, adapter_hidden=16)


def tiny_model(seed: int = 0, scale: float = 0.0) -> GammaModel:
    torch.manual_seed(seed)
    model = GammaModel(copy.deepcopy(TINY)).eval()
    if scale:
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, MoAEMLP):
                    module.scale.fill_(scale)
                    for p in module.experts.parameters():  # experts differ from the shared MLP
                        p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    out = [
        Image.fromarray(rng.integers(0, 255, (40 + 7 * i, 50, 3), dtype=np.uint8)) for i in range(5)
    ]
    out.append(Image.new("L", (33, 60), 90))  # greyscale, portrait
    return out


def test_lambda_zero_is_exactly_plain_clip_in_both_towers():
    torch.manual_seed(0)
    clip = create_clip(TINY).eval()
    plain = copy.deepcopy(clip)
    model = GammaModel(copy.deepcopy(TINY), clip=clip).eval()
    x = torch.rand(3, 3, 32, 32)
    tokens = model.tokenizer(["a photo of a cat", "bad image"])
    with torch.no_grad():
        for fused in (True, False):
            for m in model.modules():
                if isinstance(m, MoAEMLP):
                    m.fused = fused
            assert torch.equal(model.clip_model.encode_image(x), plain.encode_image(x))
            assert torch.equal(model.clip_model.encode_text(tokens), plain.encode_text(tokens))


def test_nonzero_lambda_changes_features_and_fused_equals_loop():
    model = tiny_model(scale=0.7)
    plain = create_clip(TINY)
    x = torch.rand(2, 3, 32, 32)
    moae = [m for m in model.modules() if isinstance(m, MoAEMLP)]
    with torch.no_grad():
        fused = model.clip_model.encode_image(x)
        for m in moae:
            m.fused = False
        loop = model.clip_model.encode_image(x)
        # load the backbone into a plain CLIP: MoAE must make a difference now
        state = {k: v for k, v in model.clip_model.state_dict().items() if "mlp" not in k}
        plain.load_state_dict(state, strict=False)
    torch.testing.assert_close(fused, loop, rtol=1e-5, atol=1e-6)
    h = torch.randn(4, 7, 48)
    m = moae[0]
    with torch.no_grad():
        manual = m.useful_experts(h) + m.scale * sum(
            torch.softmax(m.gating.layer1(h), -1)[..., k : k + 1] * e(h)
            for k, e in enumerate(m.experts.values())
        )
        m.fused = True
        torch.testing.assert_close(m(h), manual, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(m(h), m.useful_experts(h))


def test_moae_only_in_the_last_blocks_of_both_towers():
    model = tiny_model()
    for blocks in (
        model.clip_model.visual.transformer.resblocks,
        model.clip_model.transformer.resblocks,
    ):
        kinds = [isinstance(b.mlp, MoAEMLP) for b in blocks]
        assert kinds == [False] * (len(blocks) - 2) + [True] * 2
    assert all(len(m.experts) == 3 for m in model.modules() if isinstance(m, MoAEMLP))


def test_official_key_layout_and_vit_b16_size():
    keys = set(tiny_model().state_dict())
    assert {"score_level", "adapter.fc.0.weight", "adapter.fc.2.weight"} <= keys
    assert "clip_model.visual.transformer.resblocks.2.mlp.useful_experts.c_fc.weight" in keys
    assert "clip_model.transformer.resblocks.2.mlp.experts.expert_2.c_proj.bias" in keys
    assert "clip_model.transformer.resblocks.2.mlp.gating.layer1.bias" in keys
    assert "clip_model.visual.transformer.resblocks.2.mlp.scale" in keys
    assert "clip_model.visual.transformer.resblocks.0.mlp.c_fc.weight" in keys
    # The real shape: 485 tensors and 272.7 M parameters, as the official checkpoint and paper say.
    big = GammaModel(GammaConfig())
    assert len(big.state_dict()) == 485
    assert round(sum(p.numel() for p in big.parameters()) / 1e6, 1) == 272.7


def test_trainable_parameter_sets():
    model = tiny_model()
    names = set(model.set_trainable())
    params = dict(model.named_parameters())
    assert names == {n for n, p in params.items() if p.requires_grad}
    assert "score_level" in names and "adapter.fc.0.weight" in names
    assert any(".mlp.experts.expert_0." in n for n in names)
    assert any(".mlp.gating.layer1." in n for n in names)
    assert any(n.endswith(".mlp.scale") for n in names)
    assert not any("useful_experts" in n for n in names)
    assert "clip_model.visual.conv1.weight" not in names
    assert "clip_model.token_embedding.weight" not in names
    assert "clip_model.logit_scale" not in names
    everything = set(model.set_trainable(train_backbone=True))
    assert everything == set(params)


def test_text_features_cache_equals_recomputation_and_is_invalidated():
    model = tiny_model()
    for scene in [None, *SCENES]:
        with torch.no_grad():
            fresh = model.encode_prompts(scene_prompts(scene))
        torch.testing.assert_close(model.text_features(scene), fresh)
        assert model.text_features(scene) is model.text_features(scene)  # cached
    before = model.text_features("face-quality")
    state = model.state_dict()
    state["clip_model.ln_final.bias"] = state["clip_model.ln_final.bias"] + 1.0
    model.load_state_dict(state)
    assert not torch.allclose(model.text_features("face-quality"), before)


def test_scene_prompts_and_dataset_scenes():
    assert scene_prompts("ai-generated-quality")[0] == "AI-generated bad-quality image"
    assert scene_prompts("natural-aesthetics")[4] == "natural perfect-aesthetics image"
    assert scene_prompts(None) == (
        "bad image",
        "poor image",
        "fair image",
        "good image",
        "perfect image",
    )
    assert scene_for_dataset("KonIQ-10k") == "natural-quality"
    assert scene_for_dataset("AGIQA-3K") == "ai-generated-quality"
    assert scene_for_dataset("AVA") == "natural-aesthetics"
    with pytest.raises(ValueError, match="unknown Gamma scene"):
        scene_prompts("cartoon-quality")


def test_scorer_batched_equals_one_by_one_and_mixed_scenes(images):
    scorer = GammaScorer(model=tiny_model(scale=0.5), device="cpu")
    batched = scorer.score_details(images)
    single = np.concatenate([scorer.score([im]) for im in images])
    np.testing.assert_allclose(batched["score"], single, rtol=1e-5, atol=1e-6)
    assert batched["probs"].shape == (len(images), 5)
    np.testing.assert_allclose(batched["probs"].sum(1), 1.0, rtol=1e-5)
    scenes = ["natural-quality", "face-quality"] * 3
    mixed = scorer.score(images, scene=scenes)
    for scene in set(scenes):
        idx = [i for i, s in enumerate(scenes) if s == scene]
        alone = scorer.score([images[i] for i in idx], scene=scene)
        np.testing.assert_allclose(mixed[idx], alone, rtol=1e-5, atol=1e-6)
    assert not np.allclose(mixed, batched["score"])  # the scene matters


def test_preprocessing_matches_open_clip(images):
    scorer = GammaScorer(model=tiny_model(), device="cpu")
    reference = open_clip.image_transform(32, is_train=False)
    for image in images:
        ours = scorer.pixels_to_input(scorer.preprocess(image)["pixels"][None])[0]
        torch.testing.assert_close(ours, reference(image), rtol=0, atol=1e-5)


def test_checkpoint_round_trip_and_formats(tmp_path, images):
    model = tiny_model(seed=3, scale=0.3)
    expected = GammaScorer(model=model, device="cpu").score(images)
    path = save_gamma(model, tmp_path / "gamma.safetensors")
    scorer = vqpipe.create_scorer("gamma", checkpoint=str(path), device="cpu")
    np.testing.assert_array_equal(scorer.score(images), expected)
    assert scorer.checkpoint_fingerprint.startswith("sha256:")
    # official layout: torch.save({"params": state_dict}) of a .pth, loaded with weights_only
    torch.save({"params": model.state_dict()}, tmp_path / "gamma_weight.pth")
    official, _ = load_gamma(tmp_path / "gamma_weight.pth", config=copy.deepcopy(TINY))
    np.testing.assert_allclose(
        GammaScorer(model=official, device="cpu").score(images), expected, rtol=1e-6
    )
    # without a stored config, the MoAE sizes are read off the keys
    assert infer_moae({f"clip_model.{k}": v for k, v in model.clip_model.state_dict().items()}) == (
        2,
        3,
    )


def test_plain_clip_weights_become_backbone_and_experts(tmp_path):
    torch.manual_seed(5)
    clip = create_clip(TINY)
    state = {**clip.state_dict(), "input_resolution": torch.tensor(32)}  # OpenAI-style extras
    torch.save(state, tmp_path / "uniqa.pt")
    model, _ = load_gamma(tmp_path / "uniqa.pt", config=copy.deepcopy(TINY))
    block = model.clip_model.visual.transformer.resblocks[-1]
    original = clip.visual.transformer.resblocks[-1].mlp.c_fc.weight
    assert torch.equal(block.mlp.useful_experts.c_fc.weight, original)
    assert torch.equal(block.mlp.experts["expert_1"].c_fc.weight, original)
    assert torch.equal(model.clip_model.visual.conv1.weight, clip.visual.conv1.weight)


def test_fsspec_uri_checkpoint(tmp_path, monkeypatch, images):
    import fsspec

    monkeypatch.setenv("VQPIPE_CACHE", str(tmp_path / "cache"))
    model = tiny_model(seed=4)
    path = save_gamma(model, tmp_path / "m.safetensors")
    with fsspec.open("memory://models/gamma/m.safetensors", "wb") as fh:
        fh.write(path.read_bytes())
    scorer = GammaScorer(checkpoint="memory://models/gamma/m.safetensors", device="cpu")
    np.testing.assert_array_equal(
        scorer.score(images), GammaScorer(model=model, device="cpu").score(images)
    )
    assert list((tmp_path / "cache" / "checkpoints").rglob("m.safetensors"))


def test_wrong_shape_checkpoint_fails_clearly(tmp_path):
    model = tiny_model()
    state = model.state_dict()
    state["clip_model.visual.conv1.weight"] = torch.zeros(48, 3, 4, 4)
    torch.save({"params": state}, tmp_path / "bad.pth")
    with pytest.raises(
        CheckpointMismatchError, match=r"visual\.conv1\.weight: checkpoint \(48, 3, 4, 4\)"
    ):
        load_gamma(tmp_path / "bad.pth", config=copy.deepcopy(TINY))
    # a ViT-B-16 checkpoint meeting a tiny config: a clear message, not a crash deep in torch
    with pytest.raises(CheckpointMismatchError, match="wrong shape"):
        load_gamma(
            tmp_path / "bad.pth", config=GammaConfig(clip_model="vqpipe-test-ViT", n_moae_layers=1)
        )


@pytest.mark.slow
def test_short_training_run_lowers_the_loss(tmp_path):
    table = make_image_dataset(
        tmp_path / "data", n_contents=1, size=(40, 32), seed=2, split_fractions=(1.0, 0.0, 0.0)
    )
    images = [Image.open(p).convert("RGB") for p in table["path"]]
    target = ((table["mos"] - 1) / 4).to_numpy()
    start = tiny_model(seed=1)
    path = save_gamma(start, tmp_path / "start.safetensors")
    before = np.mean((GammaScorer(model=start, device="cpu").score(images) - target) ** 2)
    history = train_gamma(
        {
            "checkpoint": str(path),
            "datasets": [{"table": table, "scene": "natural-quality"}],
            "train_backbone": True,
            "augment": False,
            "epochs": 25,
            "batch_size": 13,
            "lr": 1e-3,
            "seed": 0,
            "output": str(tmp_path / "trained.safetensors"),
        }
    )
    trained, _ = load_gamma(tmp_path / "trained.safetensors")
    after = np.mean((GammaScorer(model=trained, device="cpu").score(images) - target) ** 2)
    assert after < 0.75 * before  # measured here: 0.56x after 25 short epochs
    assert history["epoch_loss"][-1] < history["epoch_loss"][0]
    assert trained.config.clip_model == "vqpipe-test-ViT"


def test_recipe_training_only_moves_the_recipe_parameters(tmp_path):
    table = make_image_dataset(tmp_path / "data", n_contents=3, size=(64, 48), seed=1)
    torch.manual_seed(0)
    start = tiny_model()
    path = save_gamma(start, tmp_path / "start.safetensors")
    history = train_gamma(
        {
            "checkpoint": str(path),
            "datasets": [{"table": table}],
            "max_steps": 3,
            "batch_size": 8,
            "lr": 1e-3,
        }
    )
    after = history["model"].state_dict()
    for name, value in start.state_dict().items():
        moved = not torch.equal(value, after[name])
        recipe = name.startswith(("adapter.", "score_level")) or any(
            s in name for s in (".mlp.experts.", ".mlp.gating.", ".mlp.scale")
        )
        if moved:
            assert recipe, f"{name} moved but is frozen in Gamma's recipe"
    assert not torch.equal(start.score_level, after["score_level"])


def test_freeze_patch_embed_keeps_the_dct_basis_while_the_backbone_trains(tmp_path):
    table = make_image_dataset(tmp_path / "data", n_contents=2, size=(40, 32), seed=1)
    config = {
        "model_config": {"clip_model": "vqpipe-test-ViT", "n_moae_layers": 1, "n_experts": 2},
        "datasets": [{"table": table}],
        "train_backbone": True,
        "patch_init": "dct",
        "freeze_patch_embed": True,
        "max_steps": 2,
        "batch_size": 4,
        "lr": 1e-3,
        "validate": False,
        "device": "cpu",
    }
    history = train_gamma(config)
    model = history["model"]
    basis = torch.nn.Conv2d(3, model.clip_model.visual.conv1.out_channels, 8, 8, bias=False)
    dct_patch_init_(basis)
    assert torch.equal(model.clip_model.visual.conv1.weight, basis.weight)
    torch.manual_seed(0)  # the start train_gamma drew (seed 0)
    fresh = build_model(config)
    assert torch.equal(fresh.clip_model.visual.conv1.weight, basis.weight)
    assert not torch.equal(
        fresh.clip_model.visual.transformer.resblocks[0].mlp.c_fc.weight,
        model.clip_model.visual.transformer.resblocks[0].mlp.c_fc.weight,
    )  # the rest of the backbone did train
