"""Tests for ``vqpipe.data.synthetic``."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from vqpipe.data import (
    DISTORTIONS,
    MOS_COLUMNS,
    SEVERITIES,
    VIDEO_COLUMNS,
    distort,
    make_content_image,
    make_corpus,
    make_image_dataset,
    make_video_dataset,
)

N_CONTENTS = 5
VIDEO_KW = {"n_videos": 5, "seconds": 2.0, "fps": 10, "size": (96, 64)}


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def image_builds(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, pd.DataFrame]:
    a = make_image_dataset(tmp_path_factory.mktemp("img_a"), n_contents=N_CONTENTS, seed=3)
    b = make_image_dataset(tmp_path_factory.mktemp("img_b"), n_contents=N_CONTENTS, seed=3)
    return a, b


@pytest.fixture(scope="module")
def image_table(image_builds: tuple[pd.DataFrame, pd.DataFrame]) -> pd.DataFrame:
    return image_builds[0]


@pytest.fixture(scope="module")
def video_builds(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, pd.DataFrame]:
    pytest.importorskip("av")
    a = make_video_dataset(tmp_path_factory.mktemp("vid_a"), **VIDEO_KW)
    b = make_video_dataset(tmp_path_factory.mktemp("vid_b"), **VIDEO_KW)
    return a, b


def _without_paths(table: pd.DataFrame) -> pd.DataFrame:
    out = table.copy()
    out["path"] = [Path(p).name for p in out["path"]]
    return out


def _gray(image: Image.Image) -> np.ndarray:
    arr = np.asarray(image.convert("RGB"), dtype=np.float64)
    return arr @ np.array([0.299, 0.587, 0.114])


def _laplacian_var(image: Image.Image) -> float:
    y = _gray(image)
    lap = 4 * y[1:-1, 1:-1] - y[:-2, 1:-1] - y[2:, 1:-1] - y[1:-1, :-2] - y[1:-1, 2:]
    return float(lap.var())


def _mad(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).mean())


# ---------------------------------------------------------------------------- content


def test_content_image_deterministic_and_varied() -> None:
    a = make_content_image(2, size=(120, 90), seed=1)
    b = make_content_image(2, size=(120, 90), seed=1)
    assert a.mode == "RGB" and a.size == (120, 90)
    assert a.tobytes() == b.tobytes()
    assert make_content_image(3, size=(120, 90), seed=1).tobytes() != a.tobytes()
    assert make_content_image(2, size=(120, 90), seed=2).tobytes() != a.tobytes()


@pytest.mark.parametrize("content_id", range(8))
def test_content_image_has_detail(content_id: int) -> None:
    image = make_content_image(content_id)
    y = _gray(image)
    assert y.std() > 25  # global contrast
    assert _laplacian_var(image) > 100  # edges / texture
    assert len(np.unique(np.asarray(image).reshape(-1, 3), axis=0)) > 200  # colourful


# ---------------------------------------------------------------------------- distortions


@pytest.mark.parametrize("content_id", [0, 1, 2, 3])
@pytest.mark.parametrize("kind", DISTORTIONS)
def test_distortion_monotone_in_pixels(content_id: int, kind: str) -> None:
    ref = make_content_image(content_id)
    images = [distort(ref, kind, s) for s in SEVERITIES]
    assert all(im.size == ref.size and im.mode == "RGB" for im in images)
    mads = [_mad(ref, im) for im in images]
    assert mads[0] > 0.5
    assert all(x < y for x, y in itertools.pairwise(mads)), mads
    if kind == "gaussian_blur":
        sharp = [_laplacian_var(ref)] + [_laplacian_var(im) for im in images]
        assert all(x > y for x, y in itertools.pairwise(sharp)), sharp
    if kind == "contrast":
        spread = [_gray(ref).std()] + [_gray(im).std() for im in images]
        assert all(x > y for x, y in itertools.pairwise(spread)), spread


def test_distort_deterministic() -> None:
    ref = make_content_image(1, size=(64, 48))
    for kind in DISTORTIONS:
        assert distort(ref, kind, 3, seed=5).tobytes() == distort(ref, kind, 3, seed=5).tobytes()
    noisy = distort(ref, "gaussian_noise", 3, seed=5)
    assert noisy.tobytes() != distort(ref, "gaussian_noise", 3, seed=6).tobytes()


def test_distort_accepts_non_rgb() -> None:
    gray = make_content_image(0, size=(64, 48)).convert("L")
    assert distort(gray, "jpeg", 2).mode == "RGB"


@pytest.mark.parametrize(
    ("kind", "severity"),
    [("bogus", 1), ("blur", 1), ("jpeg", 0), ("jpeg", 6), ("jpeg", 2.5), ("jpeg", True)],
)
def test_distort_rejects_bad_arguments(kind: str, severity: object) -> None:
    with pytest.raises(ValueError, match="valid values"):
        distort(make_content_image(0, size=(32, 24)), kind, severity)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- image dataset


def test_image_dataset_layout(image_table: pd.DataFrame) -> None:
    table = image_table
    assert list(table.columns) == list(MOS_COLUMNS)
    assert len(table) == N_CONTENTS * (1 + len(DISTORTIONS) * len(SEVERITIES))
    root = Path(table["path"].iloc[0]).parent.parent
    for path in table["path"]:
        assert Path(path).is_absolute() and Path(path).is_file()
    assert (root / "images" / "c003_jpeg_s4.png").is_file()
    assert (root / "images" / "c003_ref.png").is_file()
    refs = table[table["distortion"] == "reference"]
    assert (refs["severity"] == 0).all() and len(refs) == N_CONTENTS
    assert set(table["distortion"]) == {"reference", *DISTORTIONS}
    assert (table["scale_low"] == 1.0).all() and (table["scale_high"] == 5.0).all()
    assert not table["lower_better"].any()
    assert (table["dataset"] == "synthetic-iqa").all()
    with Image.open(table["path"].iloc[0]) as im:
        assert im.size == (256, 192)
    pd.testing.assert_frame_equal(pd.read_parquet(root / "mos.parquet"), table)
    pd.testing.assert_frame_equal(pd.read_csv(root / "mos.csv"), table)


def test_image_dataset_deterministic(image_builds: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    a, b = image_builds
    pd.testing.assert_frame_equal(_without_paths(a), _without_paths(b))
    for pa, pb in zip(a["path"], b["path"], strict=True):
        assert pa != pb
        assert Path(pa).read_bytes() == Path(pb).read_bytes()


def test_image_dataset_seed_changes_content(tmp_path: Path) -> None:
    kw = {"n_contents": 2, "distortions": ("jpeg",), "severities": (2,), "size": (48, 32)}
    a = make_image_dataset(tmp_path / "a", seed=0, **kw)
    b = make_image_dataset(tmp_path / "b", seed=1, **kw)
    assert Path(a["path"][0]).read_bytes() != Path(b["path"][0]).read_bytes()


def test_mos_model(image_table: pd.DataFrame) -> None:
    table = image_table
    assert table["mos"].between(1.0, 5.0).all()
    assert table["std"].between(0.29, 0.91).all()
    refs = table[table["distortion"] == "reference"].set_index("content_id")["mos"]
    assert refs.between(4.3, 4.8).all()
    assert refs.nunique() > 1  # content-dependent
    worst = table[table["severity"] == 5]["mos"]
    assert worst.between(1.15, 2.05).all()
    distorted = table[table["distortion"] != "reference"]
    for (content_id, _kind), group in distorted.groupby(["content_id", "distortion"]):
        mos = group.sort_values("severity")["mos"].to_numpy()
        assert (np.diff(mos) < 0).all(), mos
        assert mos[0] < refs[content_id]
    # rating spread is larger mid-scale than at the ends (inverted U)
    mid = table[table["mos"].between(2.5, 3.5)]["std"].mean()
    ends = table[(table["mos"] > 4.3) | (table["mos"] < 1.6)]["std"].mean()
    assert mid > ends + 0.15


def test_mos_explained_by_pixels(image_table: pd.DataFrame) -> None:
    """Within each distortion, MOS tracks the measured pixel damage (rank correlation)."""
    table = image_table
    refs = {
        row.content_id: Image.open(row.path).convert("RGB")
        for row in table[table["distortion"] == "reference"].itertuples()
    }
    for kind in DISTORTIONS:
        part = table[table["distortion"] == kind]
        damage = [
            _mad(refs[row.content_id], Image.open(row.path).convert("RGB"))
            for row in part.itertuples()
        ]
        rho = pd.Series(damage).rank().corr(part["mos"].reset_index(drop=True).rank())
        assert rho < -0.6, (kind, rho)  # observed -0.74 .. -0.98


def test_splits_by_content(image_table: pd.DataFrame) -> None:
    per_content = image_table.groupby("content_id")["split"].nunique()
    assert (per_content == 1).all()
    assert set(image_table["split"]) == {"train", "val", "test"}


@pytest.mark.parametrize("n_contents", [3, 4, 7, 12])
def test_splits_nonempty_and_deterministic(tmp_path: Path, n_contents: int) -> None:
    kw = {"distortions": ("jpeg",), "severities": (1,), "size": (32, 24), "seed": 7}
    a = make_image_dataset(tmp_path / "a", n_contents=n_contents, **kw)
    b = make_image_dataset(tmp_path / "b", n_contents=n_contents, **kw)
    splits = a.groupby("split")["content_id"].unique()
    assert set(splits.index) == {"train", "val", "test"}
    owners: dict[int, str] = {}
    for split, ids in splits.items():
        for cid in ids:
            assert owners.setdefault(int(cid), str(split)) == split
    assert len(owners) == n_contents
    assert (a["split"] == b["split"]).all()
    if n_contents == 12:
        assert splits.map(len).to_dict() == {"train": 9, "val": 1, "test": 2}


def test_image_dataset_options(tmp_path: Path) -> None:
    table = make_image_dataset(
        tmp_path,
        n_contents=3,
        distortions=("contrast", "jpeg"),
        severities=(2, 5),
        include_references=False,
        size=(40, 30),
        dataset="tiny",
        split_fractions=(1, 0, 0),
        image_format="jpg",
    )
    assert len(table) == 3 * 2 * 2
    assert set(table["distortion"]) == {"contrast", "jpeg"}
    assert set(table["severity"]) == {2, 5}
    assert (table["split"] == "train").all() and (table["dataset"] == "tiny").all()
    assert all(p.endswith(".jpg") for p in table["path"])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_contents": 0},
        {"n_contents": 2.5},
        {"distortions": ("bogus",)},
        {"distortions": ("jpeg", "jpeg")},
        {"severities": (0,)},
        {"severities": ()},
        {"distortions": (), "include_references": False},
        {"split_fractions": (0.5, 0.5)},
        {"split_fractions": (0.5, -0.1, 0.6)},
        {"split_fractions": (0, 0, 0)},
        {"image_format": "gif"},
        {"size": (0, 10)},
        {"size": (10,)},
        {"seed": -1},
    ],
)
def test_image_dataset_rejects_bad_arguments(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        make_image_dataset(tmp_path, **kwargs)


# ---------------------------------------------------------------------------- videos


def test_video_dataset_table(video_builds: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    table, other = video_builds
    assert list(table.columns) == list(VIDEO_COLUMNS)
    assert len(table) == VIDEO_KW["n_videos"]
    assert (table["frames"] == 20).all() and (table["fps"] == 10).all()
    assert np.allclose(table["duration_s"], 2.0)
    assert table["mos"].between(1.0, 5.0).all() and table["std"].between(0.29, 0.91).all()
    assert set(table["distortion"]) == {
        "reference",
        "gaussian_blur",
        "gaussian_noise",
        "compression",
        "stutter",
    }
    ref_mos = table.loc[table["distortion"] == "reference", "mos"].min()
    assert (table.loc[table["distortion"] != "reference", "mos"] < ref_mos).all()
    assert table.groupby("content_id")["split"].nunique().eq(1).all()
    assert set(table["split"]) == {"train", "val", "test"}
    root = Path(table["path"][0]).parent.parent
    pd.testing.assert_frame_equal(pd.read_parquet(root / "mos.parquet"), table)
    pd.testing.assert_frame_equal(pd.read_csv(root / "mos.csv"), table)
    pd.testing.assert_frame_equal(_without_paths(table), _without_paths(other))


def test_video_files_decode_with_pyav(video_builds: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    import av

    table, other = video_builds
    for row, path_b in zip(table.itertuples(), other["path"], strict=True):
        with av.open(row.path) as container:
            stream = container.streams.video[0]
            assert stream.codec_context.name == "h264"
            assert stream.codec_context.pix_fmt == "yuv420p"
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        assert abs(len(frames) - row.frames) <= 1
        assert frames[0].shape == (64, 96, 3)
        # single-threaded, asm-free x264 gives byte-identical files
        assert Path(row.path).read_bytes() == Path(path_b).read_bytes()
        steps = [np.abs(a.astype(int) - b).mean() for a, b in itertools.pairwise(frames)]
        if row.distortion == "stutter":
            assert min(steps) < 1.0 < max(steps)  # frozen frames, then a jump
        else:
            assert min(steps) > 1.0  # content moves every frame


def test_video_files_decode_with_decord(video_builds: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    decord = pytest.importorskip("decord")
    for row in video_builds[0].itertuples():
        reader = decord.VideoReader(row.path)
        assert abs(len(reader) - row.frames) <= 1
        batch = reader.get_batch(list(range(len(reader)))).asnumpy()
        assert batch.shape[1:] == (64, 96, 3)
        assert reader.get_avg_fps() == pytest.approx(row.fps, rel=0.01)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"size": (95, 64)},
        {"size": (96, 63)},
        {"seconds": 0},
        {"seconds": float("nan")},
        {"fps": 0},
        {"n_videos": 0},
    ],
)
def test_video_dataset_rejects_bad_arguments(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        make_video_dataset(tmp_path, **kwargs)


# ---------------------------------------------------------------------------- corpus


def test_make_corpus(tmp_path: Path) -> None:
    pytest.importorskip("av")
    table = make_corpus(tmp_path, n_contents=3, n_videos=3, seed=1)
    assert list(table.columns) == [*VIDEO_COLUMNS, "media_type"]
    images = table[table["media_type"] == "image"]
    videos = table[table["media_type"] == "video"]
    assert len(images) == 3 * 26 and len(videos) == 3
    assert all(Path(p).parent == tmp_path / "images" for p in images["path"])
    assert all(Path(p).parent == tmp_path / "videos" for p in videos["path"])
    assert not set(images["content_id"]) & set(videos["content_id"])
    assert table.groupby("content_id")["split"].nunique().eq(1).all()
    assert (images["frames"] == 1).all() and images["fps"].isna().all()
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "mos.parquet"), table)
    # per-media sub-tables live next to their media and are not clobbered
    sub_images = pd.read_parquet(tmp_path / "images" / "mos.parquet")
    sub_videos = pd.read_parquet(tmp_path / "videos" / "mos.parquet")
    assert len(sub_images) == len(images) and list(sub_images.columns) == list(MOS_COLUMNS)
    assert len(sub_videos) == len(videos) and list(sub_videos.columns) == list(VIDEO_COLUMNS)
