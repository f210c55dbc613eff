"""Memory and kernels: chunked vision tower, videos batched by length, no mask tensor where
causal alignment suffices, shared (not copied) anchor caches, compile at one batch shape,
default batch sizes per scorer and device."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.nn.attention.bias import CausalBias

from vqpipe.cli import build_parser, job_config_from_args, main
from vqpipe.defaults import DEFAULT_BATCH_SIZES, default_batch_size
from vqpipe.models.mplug_owl2.llama import after_prefix
from vqpipe.pipeline.config import ScorerOptions
from vqpipe.quality_math.levels import level_probs, level_score
from vqpipe.scorers.chunked import ChunkedCall
from vqpipe.scorers.compare2score import Compare2ScoreScorer
from vqpipe.scorers.gamma import GammaScorer
from vqpipe.scorers.qalign import QAlignScorer, equal_length_batches


def images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [
        Image.fromarray(rng.integers(0, 256, (30 + 3 * i, 40, 3), dtype=np.uint8)) for i in range(n)
    ]


@pytest.fixture(scope="module")
def qalign(qalign_checkpoint):
    return QAlignScorer(qalign_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def video(qalign_checkpoint, qalign):
    return QAlignScorer(qalign_checkpoint, task="video", model=qalign.model)


def frames_of(counts, seed=1):
    """One uint8 [T, 3, S, S] array per video, T from ``counts``."""
    rng = np.random.default_rng(seed)
    size = 28
    return [rng.integers(0, 256, (t, 3, size, size), dtype=np.uint8) for t in counts]


class SDPASpy:
    """Records the ``attn_mask`` of every SDPA call the layers make (not the calls a
    CausalBias makes for itself: on CPU it materialises, on CUDA it runs the flash or
    efficient kernel's bottom-right causal mode)."""

    def __init__(self, monkeypatch):
        self.masks = []
        real = F.scaled_dot_product_attention
        depth = [0]

        def spy(*args, **kwargs):
            mask = kwargs.get("attn_mask", args[3] if len(args) > 3 else None)
            if depth[0] == 0:
                self.masks.append(mask)
            if not isinstance(mask, CausalBias):
                return real(*args, **kwargs)
            depth[0] += 1  # what CausalBias.__torch_function__ does (it compares func with F's)
            try:
                return CausalBias._dispatch(*args, **kwargs)
            finally:
                depth[0] -= 1

        monkeypatch.setattr(F, "scaled_dot_product_attention", spy)

    def tensors(self):
        """The masks that were materialised tensors (a CausalBias is not one)."""
        return [m for m in self.masks if m is not None and not isinstance(m, CausalBias)]


# ---------------------------------------------------------------------- vision tower in chunks
def test_chunked_vision_tower_equals_one_call(qalign_checkpoint, qalign):
    pixels = np.concatenate(frames_of([3, 4]))  # 7 frames
    chunked = QAlignScorer(qalign_checkpoint, model=qalign.model, vision_chunk=2)
    calls = []
    inner = chunked._vision.fn
    chunked._vision.fn = lambda x: calls.append(len(x)) or inner(x)
    with torch.inference_mode():
        whole = qalign.model.encode_images(qalign.to_input(pixels))
        parts = chunked.encode_images(pixels)
    assert calls == [2, 2, 2, 1]
    torch.testing.assert_close(parts, whole, atol=1e-5, rtol=0)
    logits = chunked.level_logits(pixels, [3, 4])
    torch.testing.assert_close(logits, qalign.level_logits(pixels, [3, 4]), atol=1e-5, rtol=0)


# ---------------------------------------------------------------------- videos by frame count
def test_equal_length_batches():
    assert equal_length_batches([3, 1, 3, 2, 3, 1], 2) == [[1, 5], [3], [0, 2], [4]]
    assert equal_length_batches([], 4) == []


def test_grouped_video_batches_equal_the_padded_ones_in_order(video, monkeypatch):
    counts = [3, 1, 2, 3, 1, 2, 2, 3]
    videos = frames_of(counts)
    seen = []
    real = video.logits_from_features

    def spy(feats, frames, task=None):
        seen.append(list(frames))
        return real(feats, frames, task)

    monkeypatch.setattr(video, "logits_from_features", spy)
    grouped = video.predict_items(videos, batch_size=2)
    assert all(len(set(f)) == 1 and len(f) <= 2 for f in seen)  # one length per forward
    assert sorted(c for f in seen for c in f) == sorted(counts)
    monkeypatch.undo()
    # what predict_items did before: consecutive items, padded to the longest of each batch
    padded = []
    for i in range(0, len(videos), 2):
        logits = video.level_logits(np.concatenate(videos[i : i + 2]), counts[i : i + 2]).float()
        padded.append({"score": level_score(logits).numpy(), "probs": level_probs(logits).numpy()})
    for key in ("score", "probs"):
        expected = np.concatenate([p[key] for p in padded])
        np.testing.assert_allclose(grouped[key], expected, atol=1e-5)
    one_by_one = [video.predict_items([v])["score"][0] for v in videos]
    np.testing.assert_allclose(grouped["score"], one_by_one, atol=1e-5)


# ---------------------------------------------------------------------- no mask tensor
@pytest.mark.parametrize("q_len", [1, 5])
def test_mask_free_decode_equals_the_masked_one(qalign, q_len):
    decoder = qalign.model.model
    d = decoder.config.hidden_size
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        prefix = torch.randn(1, 4, d, generator=gen)
        _, cache = decoder.decode(prefix, 0, use_cache=True)
        new = torch.randn(3, q_len, d, generator=gen)
        free, _ = decoder.decode(new, 1, past_key_values=cache)
        ones = torch.ones(3, 4 + q_len, dtype=torch.bool)
        masked, _ = decoder.decode(new, 1, attention_mask=ones, past_key_values=cache)
        full = torch.cat([prefix.expand(3, -1, -1), new], dim=1)
        modality = torch.zeros(3, 4 + q_len, dtype=torch.long)
        modality[:, 4] = 1
        plain, _ = decoder.decode(full, modality)  # no cache: is_causal with equal lengths
    torch.testing.assert_close(free, masked, atol=1e-5, rtol=0)
    torch.testing.assert_close(free, plain[:, 4:], atol=1e-5, rtol=0)


def test_no_mask_tensor_reaches_sdpa_without_padding(qalign, video, monkeypatch):
    spy = SDPASpy(monkeypatch)
    qalign.score_items(images(3))  # images after the cached prefix
    video.predict_items(frames_of([2, 1, 2]), batch_size=4)  # videos grouped by length
    assert spy.masks and not spy.tensors()
    assert any(isinstance(m, CausalBias) for m in spy.masks)  # several queries after a prefix
    spy.masks.clear()
    video.level_logits(np.concatenate(frames_of([2, 1])), [2, 1])  # padded: a mask is needed
    assert spy.tensors() and spy.tensors()[0].dtype == torch.bool


# ---------------------------------------------------------------------- shared anchor caches
def test_tiled_cache_equals_the_repeated_one():
    gen = torch.Generator().manual_seed(0)
    past, new = torch.randn(3, 2, 4, 8, generator=gen), torch.randn(6, 2, 5, 8, generator=gen)
    expected = torch.cat([past.repeat(2, 1, 1, 1), new], dim=2)
    assert torch.equal(after_prefix(past, new), expected)
    assert torch.equal(
        after_prefix(past[:1], new), torch.cat([past[:1].expand(6, -1, -1, -1), new], 2)
    )
    with pytest.raises(ValueError, match="cannot be shared"):
        after_prefix(past[:2], torch.randn(3, 2, 5, 8))


def test_anchor_caches_are_shared_not_copied(qalign_checkpoint, tmp_path):
    scorer = Compare2ScoreScorer(
        qalign_checkpoint, temperature=1.0, cache_dir=str(tmp_path), device="cpu"
    )
    pixels = np.stack([scorer.processor.to_uint8(im) for im in images(3)])
    decoder, seen = scorer.model.model, []
    real = decoder.decode

    def spy(*args, **kwargs):
        seen.append(kwargs.get("past_key_values"))
        return real(*args, **kwargs)

    decoder.decode = spy
    try:
        logits = scorer.comparison_logits(pixels)
    finally:
        del decoder.decode
    cache = scorer._anchor_cache()
    (past,) = [p for p in seen if p is not None]
    for (k, v), (ck, cv) in zip(past, cache, strict=True):
        assert k.untyped_storage().data_ptr() == ck.untyped_storage().data_ptr()
        assert v.untyped_storage().data_ptr() == cv.untyped_storage().data_ptr()
    m, b = len(scorer.anchor_pixels), len(pixels)
    with torch.inference_mode():
        test = scorer.encode_images(pixels).repeat_interleave(m, 0)
        repeated = [(k.repeat(b, 1, 1, 1), v.repeat(b, 1, 1, 1)) for k, v in cache]
        expected = scorer._logits_after_prefix(repeated, test).view(b, m, -1)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)
    copied = sum(k.numel() * k.element_size() * 2 for k, _ in repeated)
    assert copied > 0  # what the repeat held for the whole forward, now 0 bytes


# ---------------------------------------------------------------------- compile, fixed shape
def test_fixed_shape_call_pads_the_last_batch_and_slices():
    shapes = []

    def fn(x, scenes):
        shapes.append((tuple(x.shape), len(scenes) if isinstance(scenes, list) else scenes))
        return {"y": x.sum(1), "s": torch.arange(len(x))}

    call = ChunkedCall(fn, fixed=True)
    out = call(torch.ones(4, 3), ["a"] * 4)
    out2 = call(torch.ones(3, 3) * 2, ["b"] * 3)
    out3 = call(torch.ones(2, 3), "one scene")
    assert shapes == [((4, 3), 4), ((4, 3), 4), ((4, 3), "one scene")]
    assert out["y"].tolist() == [3.0] * 4 and out2["y"].tolist() == [6.0] * 3
    assert out3["s"].tolist() == [0, 1]
    chunked = ChunkedCall(lambda x: x * 2, chunk=3, fixed=True)
    assert chunked(torch.arange(7.0)).tolist() == [2.0 * i for i in range(7)]
    assert chunked.shape == 3


def test_gamma_compile_option_runs_one_shape(monkeypatch):
    """The compiled callable (here a recorder: compiling is the slow test's) sees one input
    shape across batches of different lengths, and the scores are those of plain calls."""
    import vqpipe.scorers.gamma as gamma_module

    shapes = []

    def fake_compile(fn, compile):
        def record(x):
            shapes.append(tuple(x.shape))
            return fn(x)

        return record

    monkeypatch.setattr(gamma_module, "compile_model", fake_compile)
    compiled = GammaScorer(device="cpu", compile=True)
    plain = GammaScorer(device="cpu", model=compiled.model)
    items = images(5)
    pixels = [compiled.preprocess(im)["pixels"][None] for im in items]
    out = compiled.predict_items(pixels, batch_size=2)  # batches of 2, 2, 1
    assert len(shapes) == 3 and len(set(shapes)) == 1 and shapes[0][0] == 2
    expected = plain.predict_items(pixels, batch_size=2)
    np.testing.assert_allclose(out["score"], expected["score"], atol=1e-6)


@pytest.mark.slow
def test_gamma_compile_on_cpu_gives_the_same_scores():
    gamma = GammaScorer(device="cpu")
    compiled = GammaScorer(device="cpu", compile=True)
    pixels = [gamma.preprocess(im)["pixels"][None] for im in images(5)]
    np.testing.assert_allclose(
        compiled.predict_items(pixels, batch_size=2)["score"],
        gamma.predict_items(pixels, batch_size=2)["score"],
        atol=1e-4,
    )
    assert compiled._vision.shape == 2


@pytest.mark.slow
def test_qalign_compile_on_cpu_gives_the_same_scores(qalign_checkpoint, qalign):
    owl = QAlignScorer(qalign_checkpoint, model=qalign.model, compile=True, vision_chunk=2)
    videos = frames_of([3, 2])
    np.testing.assert_allclose(
        owl.level_logits(np.concatenate(videos), [3, 2]).numpy(),
        qalign.level_logits(np.concatenate(videos), [3, 2]).numpy(),
        atol=1e-4,
    )
    assert owl._vision.shape == 2


# ---------------------------------------------------------------------- default batch sizes
def test_default_batch_sizes_per_scorer_and_device():
    assert default_batch_size("gamma", "cuda") == 512
    assert default_batch_size("gamma", "cpu") == 64
    assert default_batch_size("qalign", "cuda:1") == 64
    assert default_batch_size("qalign", "cuda", task="video") == 8
    assert default_batch_size("qalign", "cpu", task="aesthetics") == 8
    assert default_batch_size("compare2score", "cuda") == 16
    assert default_batch_size("brightness", "cuda") == 64  # not in the table
    assert ScorerOptions("gamma", num_gpus=1).batch_size == 512
    assert ScorerOptions("gamma", {"device": "cuda"}).batch_size == 512
    assert ScorerOptions("gamma", num_gpus=1, batch_size=7).batch_size == 7

    def pools(*argv):
        args = build_parser().parse_args(["score", "in", "--out", "o", *argv])
        return [(s.name, s.batch_size) for s in job_config_from_args(args).scorers]

    assert pools("--scorer", "qalign", "--scorer", "compare2score") == [
        ("qalign", 8),
        ("compare2score", 4),
    ]
    assert pools("--scorer", "qalign:task=video,num_gpus=1") == [("qalign", 8)]
    assert pools("--scorer", "gamma", "--num-gpus-per-actor", "1") == [("gamma", 512)]
    assert pools("--scorer", "gamma:device=cpu", "--num-gpus-per-actor", "1") == [("gamma", 64)]
    assert pools("--scorer", "qalign", "--batch-size", "3") == [("qalign", 3)]
    assert set(DEFAULT_BATCH_SIZES) >= {"gamma", "qalign", "qalign/video", "compare2score"}


@pytest.mark.slow
def test_a_job_without_batch_size_records_the_tables(ray_local, qalign_checkpoint, tmp_path):
    corpus = tmp_path / "in"
    corpus.mkdir()
    for i, im in enumerate(images(2)):
        im.save(corpus / f"img{i}.png")
    out = tmp_path / "out"
    scorer = f"qalign:checkpoint={qalign_checkpoint}"
    assert main(["score", str(corpus), "--out", str(out), "--scorer", scorer]) == 0
    job = json.loads((out / "_job.json").read_text())
    assert [s["batch_size"] for s in job["config"]["scorers"]] == [8]  # CPU Q-Align, not 64


# ---------------------------------------------------------------------- on a GPU
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@cuda
def test_gamma_on_cuda_holds_bf16_weights_and_scores_like_fp32():
    items = images(6)
    gpu = GammaScorer(device="cuda")  # bf16 by default on CUDA
    cpu = GammaScorer(device="cpu")
    visual = gpu.model.clip_model.visual
    assert visual.conv1.weight.dtype == torch.bfloat16
    assert gpu.model.score_level.dtype == torch.float32
    np.testing.assert_allclose(gpu.score(items), cpu.score(items), atol=5e-3)


@pytest.mark.gpu
@cuda
def test_mask_free_forward_after_a_prefix_on_cuda(qalign_checkpoint):
    scorer = QAlignScorer(qalign_checkpoint, device="cuda", dtype="bfloat16")
    decoder = scorer.model.model
    d = decoder.config.hidden_size
    with torch.inference_mode():
        prefix = torch.randn(1, 8, d, device="cuda", dtype=torch.bfloat16)
        _, cache = decoder.decode(prefix, 0, use_cache=True)
        new = torch.randn(4, 70, d, device="cuda", dtype=torch.bfloat16)
        free, _ = decoder.decode(new, 1, past_key_values=cache)
        ones = torch.ones(4, 78, dtype=torch.bool, device="cuda")
        masked, _ = decoder.decode(new, 1, attention_mask=ones, past_key_values=cache)
    torch.testing.assert_close(free.float(), masked.float(), atol=3e-2, rtol=0)


def test_lower_right_causal_falls_back_to_the_mask_it_stands_for(monkeypatch):
    """Where the bias cannot be made intact (DeepSpeed ZeRO-3's patched tensor creation strips
    its attributes; FlopCounterMode refuses the subclass), the same boolean mask is used."""
    from vqpipe.models.mplug_owl2 import llama

    bias = llama.lower_right_causal(3, 7, torch.device("cpu"))
    assert isinstance(bias, CausalBias)
    expected = bias._materialize()

    class Stripped:  # what ZeRO-3's tensor creation hands back: no seq_len_q / seq_len_kv
        pass

    monkeypatch.setattr(llama, "causal_lower_right", lambda q, k: Stripped())
    mask = llama.lower_right_causal(3, 7, torch.device("cpu"))
    assert mask.dtype == torch.bool and torch.equal(mask, expected)

    def refused(q, k):
        raise RuntimeError("Creating a new Tensor subclass CausalBias but ...")

    monkeypatch.setattr(llama, "causal_lower_right", refused)
    assert torch.equal(llama.lower_right_causal(3, 7, torch.device("cpu")), expected)


def test_a_bias_stripped_on_its_way_to_the_attention_is_made_again(qalign):
    """DeepSpeed ZeRO-3's forward hooks hand tensor arguments on rebuilt: a CausalBias without
    its lengths. The attention makes it again from the query and key lengths."""
    from vqpipe.models.mplug_owl2 import llama

    decoder = qalign.model.model
    attention = decoder.layers[0].self_attn
    d = decoder.config.hidden_size
    gen = torch.Generator().manual_seed(1)
    with torch.inference_mode():
        x = torch.randn(2, 5, d, generator=gen)
        past = (torch.randn(1, attention.num_kv_heads, 4, attention.head_dim, generator=gen),) * 2
        rope = decoder.rotary_emb(x, torch.arange(4, 9)[None].expand(2, -1))
        intact = llama.lower_right_causal(5, 9, torch.device("cpu"))
        stripped = torch.Tensor._make_subclass(CausalBias, torch.empty(0))
        assert not hasattr(stripped, "seq_len_q")
        want, _ = attention(x, 1, rope, intact, past)
        got, _ = attention(x, 1, rope, stripped, past)
    torch.testing.assert_close(got, want)
