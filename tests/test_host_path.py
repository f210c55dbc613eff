"""Pixels as tensor columns and the overlapped host path of a scorer actor (issue 26, items 1
and 2): one stable column type, frames stacked once into a reused buffer, two batches in
flight in one actor, and the same scores as the library API."""

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from vqpipe.cli import main
from vqpipe.data import make_image_dataset, make_video_dataset
from vqpipe.media.decode import MediaLimits
from vqpipe.pipeline.config import ScorerOptions
from vqpipe.pipeline.decode_stage import decode_score
from vqpipe.pipeline.pixels import column_items, pixel_array, to_block
from vqpipe.pipeline.score_stage import ScoreStage
from vqpipe.pipeline.stages import CALLS_PER_ACTOR, score_stage
from vqpipe.scorers.transfer import StagingBuffers
from vqpipe.scoring import create_scorer
from vqpipe.storage import read_quality_table

S = 8


def _frames(t: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (t, 3, S, S), dtype=np.uint8)


def test_pixel_column_has_one_type_and_round_trips_through_ray_batches():
    from ray.data._internal.arrow_ops.transform_pyarrow import concat
    from ray.data.block import BlockAccessor
    from ray.data.extensions import ArrowVariableShapedTensorType

    images = [_frames(1, i) for i in range(3)]
    mixed = [_frames(1, 5), None, _frames(3, 6)]  # an image, an error row, a video
    a = {"uri": np.array(["a", "b", "c"], object), "_in": _obj(images)}
    b = {"uri": np.array(["d", "e", "f"], object), "_in": _obj(mixed)}
    a, b = (to_block(x, ["_in"]) for x in (a, b))
    assert a.schema.field("_in").type == b.schema.field("_in").type  # images only or not
    assert isinstance(a.schema.field("_in").type, ArrowVariableShapedTensorType)
    for block, expected in ((a, images), (b, mixed), (concat([a, b]), images + mixed)):
        batch = BlockAccessor.for_block(block).to_batch_format("numpy")
        got = column_items(batch["_in"])
        assert len(got) == len(expected)
        for x, y in zip(got, expected, strict=True):
            assert (x is None and y is None) or np.array_equal(x, y)
    batch = BlockAccessor.for_block(a).to_batch_format("numpy")  # one block: views, no copy
    assert all(not x.flags.owndata for x in column_items(batch["_in"]))
    # the other forms a pool's column can take: in-process arrays, legacy .npy bytes, Arrow
    assert np.array_equal(column_items(pixel_array(mixed))[2], mixed[2])
    from vqpipe.pipeline.stages import _to_bytes

    legacy = column_items(np.array([_to_bytes(mixed[0]), b""], object))
    assert np.array_equal(legacy[0], mixed[0]) and legacy[1] is None


def _obj(items):
    out = np.empty(len(items), object)
    out[:] = items
    return out


def test_staging_reuses_its_buffer_and_keeps_item_order():
    buffers = StagingBuffers()
    items = [_frames(1, 0), _frames(2, 1), _frames(1, 2)]
    first = buffers.stage(items)
    assert np.array_equal(first.pixels, np.concatenate(items))
    assert first.counts.tolist() == [1, 2, 1]
    first.release()
    second = buffers.stage(items[:2])
    assert np.array_equal(second.pixels, np.concatenate(items[:2]))
    second.release()
    assert buffers.allocated == 1
    with pytest.raises(ValueError, match="differ"):
        buffers.stage([_frames(1, 0), np.zeros((1, 3, S + 1, S), np.uint8)])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("host-path") / "data"
    make_image_dataset(root, n_contents=1, size=(64, 48), distortions=("jpeg", "gaussian_blur"))
    make_video_dataset(root, n_videos=2, seconds=2.0, fps=5, size=(64, 48))
    (root / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return root


def _media(root: Path) -> list[str]:
    return sorted(str(p) for p in root.rglob("*") if p.suffix in (".jpg", ".png", ".mp4"))


def _batches(files: list[str], spec: ScorerOptions, per_batch: int) -> list[dict]:
    """The decode stage's blocks, as an actor receives them (numpy batches of Arrow blocks)."""
    from ray.data.block import BlockAccessor

    kinds = np.array(["video" if f.endswith(".mp4") else "image" for f in files], object)
    out = []
    for lo in range(0, len(files), per_batch):
        batch = {"uri": np.array(files[lo : lo + per_batch], object), "media_type": kinds[lo:]}
        batch["media_type"] = batch["media_type"][: len(batch["uri"])]
        for block in decode_score(batch, [spec], {}, 1.0, MediaLimits(), arrow=True):
            out.append(BlockAccessor.for_block(block).to_batch_format("numpy"))
    return out


def test_two_batches_in_flight_in_one_actor(corpus):
    """Batch 2 is stacked into its buffer while batch 1 runs: batch 1's device work waits (up
    to 60 s) for batch 2's staging, which only overlap lets happen; scores equal serial
    scoring and the library API's."""
    spec = ScorerOptions("gamma", {"device": "cpu"}, batch_size=4)
    files = [f for f in _media(corpus) if not f.endswith("broken.jpg")]
    batches = _batches(files, spec, (len(files) + 1) // 2)
    assert len(batches) == 2
    serial = [ScoreStage(spec)(dict(b)) for b in batches]

    stage = ScoreStage(spec)
    runner = stage.runner
    staged_two, overlapped = threading.Event(), []
    stage_calls = []
    plain_stage, plain_predict = runner.buffers.stage, stage.scorer.predict_stacked

    def stage_spy(items):
        out = plain_stage(items)
        stage_calls.append(len(items))
        if len(stage_calls) == 2:
            staged_two.set()
        return out

    def predict_spy(pixels, counts, batch_size):
        if not overlapped:  # the first batch on the device waits for the second's staging
            overlapped.append(staged_two.wait(60))
        return plain_predict(pixels, counts, batch_size)

    runner.buffers.stage = stage_spy
    stage.scorer.predict_stacked = predict_spy
    results: dict[int, dict] = {}
    threads = [
        threading.Thread(target=lambda i=i: results.__setitem__(i, stage(dict(batches[i]))))
        for i in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert overlapped == [True] and runner.max_in_flight == 2 and runner.in_flight == 0
    # on the CPU both batches are rows of one block each: scored in place, nothing staged
    # (a pinned buffer per batch in flight on CUDA: test_staging_reuses_its_buffer...)
    assert runner.buffers.allocated == 0
    for i in range(2):
        np.testing.assert_allclose(results[i]["gamma_score"], serial[i]["gamma_score"], atol=1e-6)
        np.testing.assert_allclose(results[i]["gamma_probs"], serial[i]["gamma_probs"], atol=1e-6)
    got = np.concatenate([results[i]["gamma_score"] for i in range(2)])
    uris = np.concatenate([results[i]["uri"] for i in range(2)])
    expected = create_scorer("gamma", device="cpu").score(list(uris))
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_a_numpy_scorer_scores_stacked_frames_without_torch():
    """The same stacked path for a numpy scorer (an actor, or in the decode tasks) on plain
    memory, importing no torch (its workers start without it)."""
    code = """
import sys
import numpy as np
from vqpipe.pipeline.config import ScorerOptions
from vqpipe.pipeline.pixels import pixel_array
from vqpipe.pipeline.score_stage import ScoreStage
stage = ScoreStage(ScorerOptions.parse("brightness:latency_s=0.01"))
items = [np.full((t, 3, 4, 4), v, np.uint8) for t, v in ((1, 0), (2, 255), (1, 51))]
out = stage({"error": np.full(3, None, object), "_input_brightness": pixel_array(items)})
assert np.allclose(out["brightness_score"], [0, 1, 0.2]), out["brightness_score"]
assert stage.runner.buffers.allocated == 0 and not stage.runner.buffers.pinned  # in place
assert "torch" not in sys.modules
"""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]


def test_score_pools_run_two_calls_per_actor():
    stage = score_stage(ScorerOptions("gamma", batch_size=4), [])
    assert stage.calls_per_actor == CALLS_PER_ACTOR == 2


def test_qalign_video_frames_stacked_score_as_predict_items(qalign_checkpoint):
    """The video task's own stacked path (frames thinned to ``max_frames``, one sequence per
    video, ``batch_size`` videos per forward) gives predict_items' scores."""
    spec = ScorerOptions(
        "qalign",
        {"checkpoint": str(qalign_checkpoint), "device": "cpu", "task": "video", "max_frames": 3},
        batch_size=2,
    )
    stage = ScoreStage(spec)
    size = stage.scorer.processor.size
    rng = np.random.default_rng(0)
    items = [rng.integers(0, 255, (t, 3, size, size), dtype=np.uint8) for t in (1, 5, 2, 3)]
    batch = {"uri": np.array(list("abcd"), object), "error": np.full(4, None, object)}
    batch["_input_" + spec.column] = pixel_array(items)
    out = stage(batch)
    expected = stage.scorer.predict_items(items, 2)
    np.testing.assert_allclose(out[f"{spec.column}_score"], expected["score"], atol=1e-5)
    np.testing.assert_allclose(out[f"{spec.column}_probs"], expected["probs"], atol=1e-5)


@pytest.mark.slow
def test_mixed_job_through_the_cli_scores_as_the_library(ray_local, corpus, tmp_path):
    """Images, videos and a broken file through ``vqpipe score`` with two actor pools (the
    second one's pixels pass through the first): the tensor columns and the two-call actors
    give the library API's scores; the broken file stays a row."""
    out = tmp_path / "out"
    pools = ["--scorer", "gamma:device=cpu", "--scorer", "brightness:latency_s=0.001"]
    assert main(["-q", "score", str(corpus), "--out", str(out), *pools]) == 0
    table = read_quality_table(str(out)).set_index("uri")
    media = _media(corpus)
    assert set(media) <= set(table.index) and table.index.is_unique
    assert table.drop(index=media)["error"].notna().all()  # the corpus's mos.csv: unsupported
    broken = str(corpus / "broken.jpg")
    assert table.loc[broken, "error"].startswith("decode:")
    ok = [u for u in media if u != broken]
    assert table.loc[ok, "error"].isna().all()
    assert (table.loc[ok, "media_type"] == "video").sum() == 2
    for name in ("gamma", "brightness"):
        expected = create_scorer(name, device="cpu").score(ok)
        np.testing.assert_allclose(table.loc[ok, f"{name}_score"].to_numpy(), expected, atol=1e-5)


@pytest.mark.gpu
def test_cuda_path_pins_copies_on_its_stream_and_scores_as_the_cpu(corpus):
    """On a GPU: the buffers are pinned, the frames reach the device on the copy stream, two
    batches in flight score as one batch at a time on the CPU (float32 on both)."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    files = [f for f in _media(corpus) if not f.endswith("broken.jpg")]
    gpu = ScorerOptions("gamma", {"device": "cuda", "dtype": "fp32"}, batch_size=4)
    cpu = ScorerOptions("gamma", {"device": "cpu"}, batch_size=4)
    batches = _batches(files, gpu, (len(files) + 1) // 2)
    stage = ScoreStage(gpu)
    results: dict[int, dict] = {}
    threads = [
        threading.Thread(target=lambda i=i: results.__setitem__(i, stage(dict(batches[i]))))
        for i in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert stage.runner.buffers.pinned and stage.runner.buffers.copy_stream("cuda") is not None
    reference = ScoreStage(cpu)
    for i in range(2):
        expected = reference(dict(batches[i]))
        np.testing.assert_allclose(results[i]["gamma_score"], expected["gamma_score"], atol=1e-4)


def test_rows_of_one_block_are_scored_in_place_on_the_cpu():
    """On the CPU (no device copy) a batch cut from one block of the pixel column is one view
    of the block's buffer, not a copy; arrays of their own are stacked into the buffer."""
    from ray.data.block import BlockAccessor

    from vqpipe.scorers.transfer import back_to_back

    items = [_frames(1, 0), _frames(2, 1), None, _frames(1, 2)]
    block = to_block({"uri": np.array(list("abcd"), object), "_in": _obj(items)}, ["_in"])
    batch = BlockAccessor.for_block(block.slice(1, 3)).to_batch_format("numpy")
    rows = [x for x in column_items(batch["_in"]) if x is not None]  # the error row: no bytes
    buffers = StagingBuffers()
    staged = buffers.stage(rows)
    assert np.array_equal(staged.pixels, np.concatenate([items[1], items[3]]))
    assert np.shares_memory(staged.pixels, rows[0]) and buffers.allocated == 0
    assert not staged.pixels.flags.writeable
    staged.release()
    own = [_frames(1, 5), _frames(1, 6)]  # separate arrays, even if adjacent in memory
    assert back_to_back(own) is None
    assert back_to_back([rows[1], rows[0]]) is None  # out of order: a copy
    copied = buffers.stage([rows[1], rows[0]])
    assert np.array_equal(copied.pixels, np.concatenate([items[3], items[1]]))
    assert buffers.allocated == 1


def test_frames_decoded_on_the_device_join_the_staged_ones_in_item_order():
    """decode=gpu rows reach the runner as tensors on the scorer's device: stacked there with
    the staged host rows in item order (no round trip through the host), scored as all-host."""
    import torch

    from vqpipe.scorers.transfer import BatchRunner

    class Mean:  # per-frame mean pixel, then frames averaged per item
        device, stacks_frames = torch.device("cpu"), True

        def predict_stacked(self, pixels, counts, batch_size):
            from vqpipe.scorers.base import average_frames

            x = torch.as_tensor(pixels).double()
            frames = {"score": x.flatten(1).mean(1), "first": x[:, 0, 0, 0]}
            return average_frames(frames, counts)

    items = [_frames(1, 0), _frames(2, 1), _frames(1, 2), _frames(3, 3)]
    mixed = [torch.from_numpy(items[0]), items[1], torch.from_numpy(items[2]), items[3]]
    runner = BatchRunner(Mean(), batch_size=4)
    expected, got = runner(items), runner(mixed)
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key])
    assert got["first"][0] == items[0][0, 0, 0, 0] and got["first"][2] == items[2][0, 0, 0, 0]
