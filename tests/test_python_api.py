"""The Python API: scorers are callable and take one item or a batch of paths, URIs, PIL images,
numpy arrays, tensors and frame lists (vqpipe.scorers.inputs) — the same numbers every way."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vqpipe.data import make_video_dataset
from vqpipe.media.decode import MediaError, decode_video
from vqpipe.scorers.inputs import as_items
from vqpipe.scoring import create_scorer


def photo(seed=0, size=(80, 60)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def kinds(image: Image.Image, tmp_path: Path) -> dict:
    """One image in every accepted form."""
    array = np.asarray(image)
    path = tmp_path / "photo.png"
    image.save(path)
    chw = torch.from_numpy(array.copy()).permute(2, 0, 1)
    return {
        "pil": image,
        "path-str": str(path),
        "path-obj": path,
        "numpy-uint8": array,
        "numpy-float": array / 255.0,
        "tensor-uint8": chw,
        "tensor-float": chw.float() / 255,
        "tensor-float-from-float64": (chw.double() / 255).float(),
    }


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """An H.264 mp4 written with PyAV (3 s at 5 fps → 3 frames at the pipeline's 1 fps)."""
    root = tmp_path_factory.mktemp("video")
    table = make_video_dataset(root, n_videos=1, seconds=3.0, fps=5, size=(64, 48))
    return Path(table["path"][0])


@pytest.fixture(scope="module")
def gamma():
    return create_scorer("gamma", device="cpu")


def test_gamma_every_input_kind_gives_the_pil_score(gamma, tmp_path):
    image = photo()
    expected = gamma.score([image])[0]
    for name, x in kinds(image, tmp_path).items():
        single = gamma(x)
        assert isinstance(single, float), name
        assert single == pytest.approx(float(expected), abs=0), name
    batch = gamma(list(kinds(image, tmp_path).values()))
    assert isinstance(batch, np.ndarray) and batch.shape == (8,)
    np.testing.assert_allclose(batch, np.full(8, expected), atol=1e-6)


def test_gamma_batched_tensors_and_arrays(gamma):
    images = [photo(seed) for seed in range(3)]
    expected = gamma.score(images)
    stack = np.stack([np.asarray(im) for im in images])  # N×H×W×C
    np.testing.assert_array_equal(gamma(stack), expected)  # the same batch: the same numbers
    nchw = torch.from_numpy(stack).permute(0, 3, 1, 2)
    np.testing.assert_array_equal(gamma(nchw), expected)
    np.testing.assert_array_equal(gamma(tuple(images)), expected)
    assert not np.allclose(expected, expected[0])  # different images, different scores


def test_greyscale_and_rgba_follow_the_pil_conversion(gamma):
    grey = np.random.default_rng(1).integers(0, 256, (50, 70), dtype=np.uint8)
    as_pil = gamma(Image.fromarray(grey, mode="L"))
    assert gamma(grey) == as_pil
    assert gamma(grey[..., None]) == as_pil
    assert gamma(torch.from_numpy(grey)) == as_pil
    rgba = np.dstack([np.asarray(photo(2)), np.full((60, 80), 255, np.uint8)])
    assert gamma(rgba) == gamma(photo(2))


def test_score_details_single_item_is_its_row(gamma):
    image = photo(3)
    batch = gamma.score_details([image, photo(4)])
    single = gamma.score_details(image)
    assert isinstance(single["score"], float)
    assert single["score"] == pytest.approx(float(batch["score"][0]), abs=1e-6)  # batch of 1 vs 2
    np.testing.assert_allclose(single["probs"], batch["probs"][0], atol=1e-6)
    assert single["probs"].shape == (5,)
    scenes = ["natural-quality", "ai-generated-quality"]
    per_scene = gamma.score_details([image, image], scene=scenes)
    assert per_scene["score"][0] != per_scene["score"][1]
    assert gamma(image, scene=scenes[1]) == pytest.approx(float(per_scene["score"][1]), abs=1e-6)


def test_gamma_video_path_is_the_mean_of_its_decoded_frames(gamma, video):
    frames, info = decode_video(video.read_bytes(), 1.0)  # the pipeline's decoder and fps
    assert info.sampled == 3
    per_frame = gamma.score(frames)
    assert gamma(video) == pytest.approx(float(per_frame.mean()), abs=1e-6)
    assert gamma([frames])[0] == pytest.approx(float(per_frame.mean()), abs=1e-6)
    # a frame list of arrays and a video next to an image in one batch
    mixed = gamma([[np.asarray(f) for f in frames], frames[0]])
    np.testing.assert_allclose(mixed, [per_frame.mean(), per_frame[0]], atol=1e-6)
    # a 4-D tensor inside a batch is one video's frames
    tensor = torch.from_numpy(np.stack([np.asarray(f) for f in frames])).permute(0, 3, 1, 2)
    assert gamma([tensor])[0] == pytest.approx(float(per_frame.mean()), abs=1e-6)


def test_s3_uri_with_storage_options(gamma, s3_server, s3_bucket, tmp_path):
    bucket, fs = s3_bucket
    image = photo(5)
    image.save(tmp_path / "p.jpg", quality=90)
    fs.put(str(tmp_path / "p.jpg"), f"{bucket}/in/p.jpg")
    uri = f"s3://{bucket}/in/p.jpg"
    local = gamma(tmp_path / "p.jpg")
    assert gamma(uri, storage_options=s3_server) == local
    assert gamma.score_details([uri], storage_options=s3_server)["score"][0] == local
    # the scorer's own storage options (given at construction) are the default
    with_options = create_scorer("gamma", device="cpu", storage_options=s3_server)
    assert with_options(uri) == local


def test_wrong_types_and_values_get_one_clear_error(gamma):
    for bad in (3, None, {"path": "x.jpg"}, b"\xff\xd8", [photo(), 3.5]):
        with pytest.raises(TypeError, match="pass a path or fsspec URI, a PIL image"):
            gamma(bad)
    with pytest.raises(TypeError, match="item 1"):
        gamma([photo(), object()])
    with pytest.raises(TypeError, match="uint8 or float"):
        gamma(np.zeros((8, 8, 3), np.int64))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        gamma(np.full((8, 8, 3), 2.0))
    with pytest.raises(ValueError, match="looks like CxHxW"):
        gamma(np.zeros((3, 32, 32), np.uint8))
    with pytest.raises(ValueError, match="looks like HxWxC"):
        gamma(torch.zeros(32, 32, 3))
    with pytest.raises(ValueError, match="at least one frame"):
        gamma([[]])


def test_unreadable_path_names_the_file(gamma, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not a jpeg")
    with pytest.raises(MediaError, match=r"broken\.jpg"):
        gamma(broken)
    with pytest.raises(FileNotFoundError):
        gamma(tmp_path / "missing.png")


def test_as_items_shapes(tmp_path, video):
    items, single = as_items(photo())
    assert single and isinstance(items[0], Image.Image)
    items, single = as_items([video, photo()])
    assert not single and isinstance(items[0], list) and len(items[0]) == 3
    assert as_items([]) == ([], False)


def test_brightness_every_input_kind(tmp_path, video):
    scorer = create_scorer("brightness")
    grey = Image.new("RGB", (40, 30), (51, 51, 51))
    for name, x in kinds(grey, tmp_path).items():
        assert scorer(x) == pytest.approx(0.2, abs=1e-6), name
    assert scorer(np.full((30, 40), 255, np.uint8)) == pytest.approx(1.0)
    assert scorer(torch.zeros(3, 16, 16)) == 0.0
    frames, _ = decode_video(video.read_bytes(), 1.0)
    expected = np.mean([scorer(f) for f in frames])
    assert scorer(video) == pytest.approx(expected, abs=1e-6)
    assert scorer([frames, grey]) == pytest.approx([expected, 0.2], abs=1e-6)
    assert scorer.score_details(video)["probs"].shape == (3,)


@pytest.fixture(scope="module")
def qalign(qalign_checkpoint):
    return create_scorer("qalign", checkpoint=str(qalign_checkpoint), device="cpu")


def test_qalign_input_kinds(qalign, tmp_path):
    image = photo(6, size=(40, 30))
    expected = float(qalign.score([image])[0])
    for name, x in kinds(image, tmp_path).items():
        assert qalign(x) == pytest.approx(expected, abs=1e-5), name
    np.testing.assert_allclose(qalign([image, tmp_path / "photo.png"]), [expected] * 2, atol=1e-5)
    assert qalign.score_details(image)["probs"].shape == (5,)


def test_qalign_video_path_and_s3(qalign, qalign_checkpoint, video, s3_server, s3_bucket):
    from vqpipe.scorers.qalign import QAlignScorer

    frames, _ = decode_video(video.read_bytes(), 1.0)
    video_scorer = QAlignScorer(qalign_checkpoint, device="cpu", task="video", model=qalign.model)
    as_frames = float(video_scorer.score([frames])[0])
    assert video_scorer(video) == pytest.approx(as_frames, abs=1e-5)
    assert video_scorer(video) != pytest.approx(video_scorer(frames[0]), abs=1e-6)
    bucket, fs = s3_bucket
    fs.put(str(video), f"{bucket}/clip.mp4")
    uri = f"s3://{bucket}/clip.mp4"
    assert video_scorer(uri, storage_options=s3_server) == pytest.approx(as_frames, abs=1e-5)
