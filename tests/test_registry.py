"""Scorer protocol and registry, exercised with a small real scorer defined here."""

from importlib.metadata import EntryPoint

import numpy as np
import pytest
import torch
from PIL import Image

import vqpipe
from vqpipe.scorers import registry
from vqpipe.scoring import Scorer, UnknownScorerError


class ContrastScorer(Scorer):
    """RMS contrast of the luminance, in [0, 1]; 'probs' = a 5-bin luminance histogram."""

    name = "rms-contrast"
    prob_labels = ("b0", "b1", "b2", "b3", "b4")

    def __init__(self, checkpoint=None, device=None, dtype=None, size=32):
        super().__init__(checkpoint, device, dtype)
        self.size = size

    def preprocess(self, item):
        grey = item.convert("L").resize((self.size, self.size))
        return {"pixels": np.asarray(grey, dtype=np.float32) / 255.0}

    def predict(self, batch):
        x = torch.as_tensor(batch["pixels"], device=self.device, dtype=self.dtype)
        score = x.flatten(1).std(dim=1, unbiased=False) * 2
        hist = torch.stack([torch.histc(row, bins=5, min=0, max=1) for row in x.flatten(1)])
        return {"score": score.float().cpu().numpy(), "probs": (hist / hist.sum(1, True)).numpy()}


@pytest.fixture
def contrast_registered():
    vqpipe.register_scorer("rms-contrast", ContrastScorer, defaults={"size": 16})
    yield
    registry.unregister_scorer("rms-contrast")


def _images():
    flat = Image.new("RGB", (40, 30), (128, 128, 128))
    ramp = Image.fromarray(np.tile(np.linspace(0, 255, 40, dtype=np.uint8), (30, 1))).convert("RGB")
    checker = ((np.indices((30, 40)) // 10).sum(0) % 2 * 255).astype(np.uint8)
    return [flat, ramp, Image.fromarray(checker).convert("RGB")]


def test_create_scorer_builds_and_scores(contrast_registered):
    assert "rms-contrast" in vqpipe.list_scorers()
    scorer = vqpipe.create_scorer("rms-contrast", device="cpu", dtype="fp32")
    assert scorer.size == 16  # registry default applied
    scores = scorer.score(_images())
    assert scores.shape == (3,)
    assert scores[0] == pytest.approx(0.0, abs=1e-6)
    assert scores[0] < scores[1] < scores[2]
    details = scorer.score_details(_images())
    assert details["probs"].shape == (3, 5)
    np.testing.assert_allclose(details["probs"].sum(1), 1.0, rtol=1e-6)
    meta = scorer.metadata()
    assert meta["name"] == "rms-contrast" and meta["higher_better"] is True
    assert meta["device"] == "cpu" and meta["dtype"] == "float32"
    assert "checkpoint_fingerprint" in meta


def test_options_override_defaults_and_names_are_normalised(contrast_registered):
    scorer = vqpipe.create_scorer("RMS_Contrast", checkpoint="/x/y", size=8, dtype=torch.float64)
    assert scorer.size == 8 and scorer.checkpoint == "/x/y" and scorer.dtype == torch.float64


def test_unknown_scorer_lists_known_names(contrast_registered):
    with pytest.raises(UnknownScorerError, match=r"unknown scorer 'nope'.*rms-contrast"):
        vqpipe.create_scorer("nope")
    with pytest.raises(ValueError):  # it is a ValueError too
        vqpipe.create_scorer("nope")


def test_duplicate_registration_is_refused(contrast_registered):
    with pytest.raises(ValueError, match="already registered"):
        vqpipe.register_scorer("rms-contrast", ContrastScorer)


def test_lazy_target_and_bad_target():
    vqpipe.register_scorer("lazy-contrast", "tests.test_registry:ContrastScorer")
    vqpipe.register_scorer("not-a-scorer", "vqpipe.quality_math.levels:level_score")
    try:
        assert isinstance(vqpipe.create_scorer("lazy-contrast"), ContrastScorer)
        with pytest.raises(TypeError, match="not a Scorer"):
            vqpipe.create_scorer("not-a-scorer")
    finally:
        registry.unregister_scorer("lazy-contrast")
        registry.unregister_scorer("not-a-scorer")


def test_entry_point_plugins_are_discovered(monkeypatch):
    plugin = EntryPoint("plugin-contrast", "tests.test_registry:ContrastScorer", "vqpipe.scorers")
    monkeypatch.setattr(registry, "entry_points", lambda group: [plugin])
    monkeypatch.setattr(registry, "_ENTRY_POINTS_LOADED", False)
    try:
        assert "plugin-contrast" in vqpipe.list_scorers()
        assert isinstance(vqpipe.create_scorer("plugin-contrast"), ContrastScorer)
    finally:
        registry.unregister_scorer("plugin-contrast")


def test_empty_batch_and_bad_dtype(contrast_registered):
    scorer = vqpipe.create_scorer("rms-contrast")
    assert scorer.score([]).shape == (0,)
    with pytest.raises(ValueError, match="unknown dtype"):
        vqpipe.create_scorer("rms-contrast", dtype="int3")


def test_device_and_dtype_defaults():
    from vqpipe.scoring import resolve_device, resolve_dtype

    device = resolve_device(None)
    assert device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_dtype(None, torch.device("cpu")) == torch.float32
    assert resolve_dtype(None, torch.device("cuda")) == torch.bfloat16


def test_default_preprocessor_builds_a_cpu_scorer_whatever_the_device_option():
    prep = ContrastScorer.make_preprocessor(device="cuda", dtype="bf16", size=8)
    assert prep(Image.new("RGB", (10, 10)))["pixels"].shape == (8, 8)


def test_brightness_reference_scorer():
    from PIL import Image

    from vqpipe.scoring import create_scorer

    scorer = create_scorer("brightness")
    out = scorer.score_details(
        [Image.new("RGB", (9, 7), c) for c in ((0, 0, 0), (255, 255, 255), (128, 128, 128))]
    )
    np.testing.assert_allclose(out["score"], [0.0, 1.0, 128 / 255], atol=1e-6)
    np.testing.assert_allclose(out["probs"], [[1, 0, 0], [0, 0, 1], [0, 1, 0]])
