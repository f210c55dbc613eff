"""Q-Align ``tasks=``: several prompts from one visual encoding per frame, equal (fp32) to one
scorer / pool per task; in the library and through the CLI job."""

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from vqpipe.cli import _score_outputs, main
from vqpipe.pipeline.config import ScorerOptions
from vqpipe.schema import METADATA_KEY
from vqpipe.scorers.qalign import QAlignScorer, check_tasks
from vqpipe.storage import read_quality_table


def images(n, seed=0):
    rng = np.random.default_rng(seed)
    sizes = [(40, 30), (30, 40), (28, 28), (97, 61), (13, 50)]
    return [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        for w, h in (sizes[i % len(sizes)] for i in range(n))
    ]


@pytest.fixture(scope="module")
def quality(qalign_checkpoint):
    return QAlignScorer(qalign_checkpoint, device="cpu", dtype="fp32")


def sibling(quality, qalign_checkpoint, **options):
    """Another scorer on the same weights (fp32, CPU)."""
    return QAlignScorer(
        qalign_checkpoint, device="cpu", dtype="fp32", model=quality.model, **options
    )


class EncodeCounter:
    """Counts the frames that go through ``model.encode_images`` (vision tower + abstractor)."""

    def __init__(self, monkeypatch, model):
        self.calls, self.frames = 0, 0
        original = model.encode_images

        def counted(pixels, *args, **kwargs):
            self.calls += 1
            self.frames += len(pixels)
            return original(pixels, *args, **kwargs)

        monkeypatch.setattr(model, "encode_images", counted)


def assert_same(got, want, keys):
    for mine, theirs in keys:
        np.testing.assert_allclose(got[mine], want[theirs], atol=1e-5, rtol=0, err_msg=mine)


def test_tasks_equal_one_scorer_per_task(quality, qalign_checkpoint):
    both = sibling(quality, qalign_checkpoint, tasks=("quality", "aesthetics"))
    aesthetics = sibling(quality, qalign_checkpoint, task="aesthetics")
    frames = images(3, seed=1)
    items = [*images(4), frames, frames[:1]]  # images, a 3-frame video, a 1-frame video
    out = both.score_details(items, batch_size=3)  # chunks that split the video's frames
    assert sorted(out) == [
        "aesthetics_probs",
        "aesthetics_score",
        "quality_probs",
        "quality_score",
    ]
    q, a = quality.score_details(items), aesthetics.score_details(items)
    assert_same(out, q, [("quality_score", "score"), ("quality_probs", "probs")])
    assert_same(out, a, [("aesthetics_score", "score"), ("aesthetics_probs", "probs")])
    assert not np.allclose(out["quality_score"], out["aesthetics_score"])
    one = both.score_details(items[0])  # one item: that row, floats and [5] rows
    assert one["quality_score"] == pytest.approx(float(q["score"][0]), abs=1e-5)
    assert one["aesthetics_probs"].shape == (5,)


def test_the_vision_tower_runs_once_per_frame(quality, qalign_checkpoint, monkeypatch):
    both = sibling(quality, qalign_checkpoint, tasks="quality,aesthetics")
    aesthetics = sibling(quality, qalign_checkpoint, task="aesthetics")
    items = [*images(5), images(3, seed=2)]  # 8 frames
    counter = EncodeCounter(monkeypatch, quality.model)
    both.score_details(items)
    assert (counter.calls, counter.frames) == (1, 8)
    quality.score_details(items)
    aesthetics.score_details(items)
    assert (counter.calls, counter.frames) == (3, 24)  # two pools: every frame twice


def test_video_task_joins_image_tasks(quality, qalign_checkpoint, monkeypatch):
    """The video task reads the features of its thinned frames from the image tasks' one
    encoding of every frame; equal to a video scorer and an image scorer."""
    joined = sibling(quality, qalign_checkpoint, tasks=["video", "aesthetics"], max_frames=3)
    video = sibling(quality, qalign_checkpoint, task="video", max_frames=3)
    aesthetics = sibling(quality, qalign_checkpoint, task="aesthetics")
    frames = images(7, seed=4)
    items = [frames, frames[:2], images(1, seed=5)[0], frames[2:6]]  # 7, 2, 1 and 4 frames
    counter = EncodeCounter(monkeypatch, quality.model)
    out = joined.score_details(items, batch_size=2)
    assert counter.frames == 14  # every frame once, not once more for the video task
    assert_same(
        out, video.score_details(items), [("video_score", "score"), ("video_probs", "probs")]
    )
    want = aesthetics.score_details(items)
    assert_same(out, want, [("aesthetics_score", "score"), ("aesthetics_probs", "probs")])
    # thinning happens in one place: the video task of a 7-frame item sees frames 0, 3, 6
    kept = video.score_details([[frames[i] for i in (0, 3, 6)]])
    np.testing.assert_allclose(out["video_score"][0], kept["score"][0], atol=1e-5)


def test_outputs_names_and_checks(quality, qalign_checkpoint):
    assert QAlignScorer.outputs() == {"score": "float", "probs": "probs"}  # the default pool
    assert QAlignScorer.outputs(task="aesthetics") == {"score": "float", "probs": "probs"}
    assert list(QAlignScorer.outputs(tasks="quality")) == ["quality_score", "quality_probs"]
    assert check_tasks(tasks=" quality , video") == ("quality", "video")
    for task, tasks, match in [
        ("sharpness", None, "unknown Q-Align task 'sharpness'"),
        (None, "quality,sharp", "unknown Q-Align task 'sharp'"),
        ("quality", "aesthetics", "not both"),
        (None, "quality,quality", "twice"),
        (None, "", "one or more"),
    ]:
        with pytest.raises(ValueError, match=match):
            QAlignScorer.check_options(task=task, tasks=tasks)
    both = sibling(quality, qalign_checkpoint, tasks=("quality", "aesthetics"))
    with pytest.raises(ValueError, match="score_details"):
        both.score(images(1))
    meta = both.metadata()
    assert (
        list(meta["tasks"]) == ["quality", "aesthetics"]
        and "aesthetics" in meta["tasks"]["aesthetics"]
    )
    assert "tasks" not in quality.metadata()


def test_default_outputs_keep_the_column_order_of_older_tables():
    """Extras, then score and probs, as ScoreStage always wrote them (a resumed table's parts
    keep one column order: no rewrite)."""
    from vqpipe.scorers.compare2score import Compare2ScoreScorer

    assert list(Compare2ScoreScorer.outputs()) == ["thurstone", "score_100", "score", "probs"]


def test_scorer_option_lists_parse():
    spec = ScorerOptions.parse("qalign:checkpoint=/m,tasks=quality,aesthetics,batch_size=8")
    assert spec.options == {"checkpoint": "/m", "tasks": "quality,aesthetics"}
    assert spec.batch_size == 8
    assert list(spec.outputs()) == [
        "quality_score",
        "quality_probs",
        "aesthetics_score",
        "aesthetics_probs",
    ]
    as_json = ScorerOptions.parse('qalign:tasks=["quality","aesthetics"]')
    assert as_json.outputs() == spec.outputs()
    # --calibration may map the per-task score columns
    assert _score_outputs(spec) == ["quality_score", "aesthetics_score"]
    assert _score_outputs(ScorerOptions.parse("qalign")) == ["score"]


@pytest.fixture
def no_ray(monkeypatch):
    import ray

    def refuse(*_, **__):
        raise AssertionError("Ray was started for a user mistake")

    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)


@pytest.mark.parametrize(
    "options, expected",
    [
        ("tasks=quality,sharpness", "unknown Q-Align task 'sharpness'"),
        ("task=quality,tasks=quality,aesthetics", "give task= or tasks=, not both"),
        ("tasks=quality,quality", "named twice"),
    ],
)
def test_task_mistakes_are_one_line_exit_2_before_ray(
    options, expected, qalign_checkpoint, tmp_path, capsys, no_ray
):
    folder = tmp_path / "in"
    folder.mkdir()
    images(1)[0].save(folder / "a.png")
    argv = ["score", str(folder), "--out", str(tmp_path / "out")]
    assert main([*argv, "--scorer", f"qalign:checkpoint={qalign_checkpoint},{options}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
    assert not (tmp_path / "out").exists()


def test_pools_writing_the_same_column_are_refused(qalign_checkpoint, tmp_path, capsys, no_ray):
    folder = tmp_path / "in"
    folder.mkdir()
    images(1)[0].save(folder / "a.png")
    ckpt = f"qalign:checkpoint={qalign_checkpoint}"
    argv = ["score", str(folder), "--out", str(tmp_path / "out")]
    argv += ["--scorer", f"{ckpt},tasks=quality,aesthetics"]
    argv += ["--scorer", f"{ckpt},column=qalign_quality"]  # would write qalign_quality_score
    assert main(argv) == 2
    assert "'qalign_quality_score'" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_tasks_pool_equals_one_pool_per_task(ray_local, qalign_checkpoint, tmp_path):
    """One pool with ``tasks=quality,aesthetics`` against a quality pool and an aesthetics
    pool in the same job: the same scores and probabilities (fp32), per-task columns, the
    tasks in the job's record, and ``vqpipe filter`` finds the per-task columns."""
    from vqpipe.data import make_image_dataset, make_video_dataset

    folder = tmp_path / "in"
    make_image_dataset(folder, n_contents=1, size=(64, 48), distortions=("jpeg",))
    make_video_dataset(folder, n_videos=1, seconds=2.0, fps=4, size=(64, 48))
    ckpt = f"qalign:checkpoint={qalign_checkpoint}"
    out = tmp_path / "out"
    argv = ["score", str(folder), "--out", str(out), "--exclude", "*.csv", "--exclude", "*.parquet"]
    argv += ["--scorer", f"{ckpt},tasks=quality,aesthetics,batch_size=3"]
    argv += ["--scorer", f"{ckpt},task=quality,column=qa_q"]
    argv += ["--scorer", f"{ckpt},task=aesthetics,column=qa_aes"]
    assert main(argv) == 0
    table = read_quality_table(str(out))
    assert table["error"].isna().all() and (table["media_type"] == "video").any()
    assert "qalign_score" not in table.columns
    for task, pool in (("quality", "qa_q"), ("aesthetics", "qa_aes")):
        np.testing.assert_allclose(
            table[f"qalign_{task}_score"], table[f"{pool}_score"], atol=1e-5, rtol=0
        )
        np.testing.assert_allclose(
            np.stack(table[f"qalign_{task}_probs"]),
            np.stack(table[f"{pool}_probs"]),
            atol=1e-5,
            rtol=0,
        )
    record = json.loads((out / "_job.json").read_text())
    (pool,) = [s for s in record["signature"]["scorers"] if s["column"] == "qalign"]
    assert pool["options"]["tasks"] == "quality,aesthetics"
    facts = record["scorers"]["qalign"]
    columns = [
        "qalign_quality_score",
        "qalign_quality_probs",
        "qalign_aesthetics_score",
        "qalign_aesthetics_probs",
    ]
    assert facts["columns"] == columns
    assert record["scorers"]["qa_aes"]["columns"] == ["qa_aes_score", "qa_aes_probs"]
    schema = pq.read_schema(next(out.glob("part-*.parquet")))
    assert json.loads(schema.metadata[METADATA_KEY])["outputs"]["qalign"]["columns"] == columns
    assert schema.field("qalign_aesthetics_probs").type == schema.field("qa_aes_probs").type
    assert schema.field("qalign_aesthetics_score").type == schema.field("qa_aes_score").type
    threshold = float(table["qalign_aesthetics_score"].median())
    keep = tmp_path / "keep.parquet"
    where = f"qalign_aesthetics_score >= {threshold}"
    assert main(["filter", str(out), "--where", where, "--out", str(keep)]) == 0
    kept = pd.read_parquet(keep)
    want = table.loc[table["qalign_aesthetics_score"] >= threshold, "uri"]
    assert sorted(kept["uri"]) == sorted(want)
