"""Inputs as users have them, in bounded memory: a Parquet zip bomb refused unread, decode
blocks cut by frames, Hugging Face layouts (``to_parquet`` cells that name files,
``save_to_disk`` folders of Arrow files, ``DatasetDict``), and the join back to the source
rows by ``(shard_path, row_index)``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.lake_data import image_bytes, mp4_bytes
from vqpipe.cli import main
from vqpipe.storage import read_quality_table

IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
BOMB_BYTES = 256 * 1024**2
JPEG_MAGIC = b"\xff\xd8\xff"


def write_bomb(path: Path, cell_bytes: int = BOMB_BYTES, **write: object) -> list[bytes]:
    """A small zstd Parquet file: six images and, at row 3, a cell of ``cell_bytes`` zeros
    behind a JPEG header (the cells as written, the bomb's as its first bytes)."""
    cells = [image_bytes(i) for i in range(3)] + [JPEG_MAGIC + bytes(cell_bytes)]
    cells += [image_bytes(i) for i in range(3, 6)]
    table = pa.table(
        {
            "image": pa.array([{"bytes": c, "path": None} for c in cells], IMAGE_TYPE),
            "caption": [f"c{i}" for i in range(len(cells))],
        }
    )
    pq.write_table(table, path, compression="zstd", compression_level=19, **write)
    cells[3] = JPEG_MAGIC
    return cells


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bomb")
    write_bomb(folder / "bomb.parquet")
    return folder


_READ_IN_CHILD = """
import json, resource, sys
from vqpipe.io.media_parquet import iter_parquet_media_batches
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
records = [
    {k: r[k] for k in ("key", "bytes", "error", "row_index")}
    for table in iter_parquet_media_batches(sys.argv[1], max_bytes=10_000_000)
    for r in table.to_pylist()
]
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps({"records": records, "grown_mb": grown / 1024}))
"""


@pytest.mark.parametrize("dictionary", [True, False])
def test_a_parquet_bomb_cell_is_refused_unread(tmp_path, dictionary):
    """pyarrow would decompress the 256 MiB page (dictionary page or data page) whole, a few
    times over; the reader streams it and keeps 16 bytes. Measured in a fresh process."""
    path = tmp_path / "bomb.parquet"
    cells = write_bomb(path, use_dictionary=dictionary)
    assert path.stat().st_size < 200_000
    run = subprocess.run(
        [sys.executable, "-c", _READ_IN_CHILD, str(path)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parents[1],
    )
    result = json.loads(run.stdout)
    records = result["records"]
    print(f"\nbomb read: peak RSS grew {result['grown_mb']:.0f} MB")
    assert [r["row_index"] for r in records] == list(range(7))
    assert records[3]["error"] == (
        f"read: media has {len(JPEG_MAGIC) + BOMB_BYTES} bytes, over the limit of 10000000"
    )
    assert all(r["error"] is None for i, r in enumerate(records) if i != 3)
    assert [r["bytes"] for i, r in enumerate(records) if i != 3] == [
        len(c) for i, c in enumerate(cells) if i != 3
    ]
    assert result["grown_mb"] < 100  # the cell alone is 256 MB


def test_the_bomb_through_the_cli_scores_the_other_rows(ray_local, bomb, tmp_path):
    out = tmp_path / "out"
    args = ["score", str(bomb), "--out", str(out), "--scorer", "brightness"]
    assert main([*args, "--max-bytes", "10000000"]) == 0
    table = read_quality_table(str(out)).sort_values("row_index")
    assert table["row_index"].tolist() == list(range(7))
    refused = table[table["row_index"] == 3].iloc[0]
    assert refused["error"].startswith(f"read: media has {len(JPEG_MAGIC) + BOMB_BYTES} bytes")
    scored = table[table["row_index"] != 3]
    assert scored["error"].isna().all() and scored["brightness_score"].notna().all()
    assert scored["caption"].tolist() == ["c0", "c1", "c2", "c4", "c5", "c6"]
    assert set(table["shard_path"]) == {"bomb.parquet"}


def test_decode_blocks_are_cut_by_frames_not_rows():
    from vqpipe.pipeline.shards import block_bounds

    videos = block_bounds(["video"] * 256, None, block_frames=256, max_frames=32)
    assert len(videos) == 32 and all(hi - lo == 8 for lo, hi in videos)
    images = block_bounds(["image"] * 256, None, block_frames=256, max_frames=32)
    assert images == [(0, 256)]  # image throughput: one block, as before
    mixed = block_bounds(["image"] * 200 + ["video"] * 4, None, 256, 32)
    assert mixed == [(0, 201), (201, 204)]  # 200 + 32 frames, then 3 × 32
    assert block_bounds(["video"], None, block_frames=4, max_frames=32) == [(0, 1)]
    carried = block_bounds(["image"] * 4, [60, 60, 60, None], 256, 32, block_bytes=100)
    assert carried == [(0, 1), (1, 2), (2, 4)]


def test_a_batch_of_videos_is_decoded_a_few_videos_at_a_time():
    from vqpipe.media.decode import MediaLimits
    from vqpipe.pipeline.config import ScorerOptions
    from vqpipe.pipeline.decode_stage import decode_score
    from vqpipe.pipeline.stages import DECODE_MEMORY, FRAME_BYTES

    n = 10
    video = mp4_bytes(frames=4)
    batch = {
        "uri": np.array([f"v{i}.mp4" for i in range(n)], dtype=object),
        "media_type": np.array(["video"] * n, dtype=object),
        "data": np.array([video] * n, dtype=object),
        "error": np.array([None] * n, dtype=object),
    }
    blocks = list(
        decode_score(
            batch,
            [ScorerOptions.parse("brightness")],
            {},
            video_fps=4.0,
            limits=MediaLimits(max_frames=4),
            block_frames=8,
        )
    )
    assert [len(b["uri"]) for b in blocks] == [2, 2, 2, 2, 2]
    assert all(b["error"][0] is None and b["frames"][0] == 4 for b in blocks)
    assert DECODE_MEMORY > 2 * 256 * FRAME_BYTES  # the request covers a block's frames


def _hf_images(folder: Path, n: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"{i}.png"
        path.write_bytes(image_bytes(i, "PNG"))
        paths.append(str(path))
    return paths


def test_hf_to_parquet_cells_that_name_files_are_read(ray_local, tmp_path):
    from datasets import Dataset, Image

    paths = _hf_images(tmp_path / "images", 5)
    data = tmp_path / "data"
    data.mkdir()
    dataset = Dataset.from_dict({"image": paths, "label": list(range(5))})
    dataset.cast_column("image", Image()).to_parquet(str(data / "train.parquet"))
    cells = pq.read_table(data / "train.parquet").column("image").to_pylist()
    assert all(c["bytes"] is None and c["path"] for c in cells)  # what HF writes
    # and a file whose cells name files relative to its folder, one of them missing
    rel = [{"bytes": None, "path": f"../images/{i}.png"} for i in range(2)]
    rel.append({"bytes": None, "path": "../images/absent.png"})
    pq.write_table(pa.table({"image": pa.array(rel, IMAGE_TYPE)}), data / "zrelative.parquet")
    out = tmp_path / "out"
    assert main(["score", str(data), "--out", str(out), "--scorer", "brightness"]) == 0
    table = read_quality_table(str(out))
    hf = table[table["shard_path"] == "train.parquet"].sort_values("row_index")
    assert len(hf) == 5 and hf["error"].isna().all() and hf["brightness_score"].notna().all()
    assert hf["width"].tolist() == [32] * 5 and hf["label"].tolist() == list(range(5))
    rows = table[table["shard_path"] == "zrelative.parquet"].sort_values("row_index")
    assert rows["error"].isna().tolist() == [True, True, False]
    assert "not found" in rows["error"].iloc[2]
    # --root confines the named files: ours are outside this one
    confined = tmp_path / "confined"
    args = ["score", str(data), "--out", str(confined), "--scorer", "brightness"]
    assert main([*args, "--root", str(data)]) == 0
    errors = read_quality_table(str(confined))["error"]
    assert errors.str.contains("outside the configured input root").all()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A ``save_to_disk`` folder of two Arrow files and a DatasetDict of two splits."""
    from datasets import Dataset, DatasetDict, Image

    root = tmp_path_factory.mktemp("hf")
    paths = _hf_images(root / "images", 6)
    captions = [f"caption {i}" for i in range(6)]
    dataset = Dataset.from_dict({"image": paths, "caption": captions})
    dataset = dataset.cast_column("image", Image())
    dataset.save_to_disk(str(root / "saved"), num_shards=2)
    splits = DatasetDict({"train": dataset.select(range(4)), "test": dataset.select(range(4, 6))})
    splits.save_to_disk(str(root / "dict"))
    return root


def test_save_to_disk_folders_are_detected_and_scored(ray_local, saved, tmp_path):
    from vqpipe.io.input_format import detect_format, input_shards

    assert detect_format(str(saved / "saved")) == "parquet"
    assert detect_format(str(saved / "dict")) == "parquet"
    assert [Path(s).name for s in input_shards(str(saved / "saved"), "auto")] == [
        "data-00000-of-00002.arrow",
        "data-00001-of-00002.arrow",
    ]
    out = tmp_path / "saved"
    assert main(["score", str(saved / "saved"), "--out", str(out), "--scorer", "brightness"]) == 0
    table = read_quality_table(str(out)).sort_values(["shard_path", "row_index"])
    assert len(table) == 6 and table["error"].isna().all()
    assert table["caption"].tolist() == [f"caption {i}" for i in range(6)]
    # row_index is the dataset's own: over its files, as load_from_disk numbers the rows
    assert table["row_index"].tolist() == list(range(6))
    from datasets import load_from_disk

    source = load_from_disk(str(saved / "saved")).remove_columns("image")
    assert [source[int(i)]["caption"] for i in table["row_index"]] == table["caption"].tolist()
    out = tmp_path / "dict"
    assert main(["score", str(saved / "dict"), "--out", str(out), "--scorer", "brightness"]) == 0
    table = read_quality_table(str(out))
    assert len(table) == 6 and table["error"].isna().all()
    assert table["brightness_score"].notna().all()
    assert sorted(set(table["shard_path"])) == [
        "test/data-00000-of-00001.arrow",
        "train/data-00000-of-00001.arrow",
    ]


def test_joining_back_to_the_source_rows_is_one_join(ray_local, saved, tmp_path):
    """Scores → the DatasetDict's rows: one merge on (shard_path, row_index)."""
    import pandas as pd
    from datasets import load_from_disk

    out = tmp_path / "out"
    assert main(["score", str(saved / "dict"), "--out", str(out), "--scorer", "brightness"]) == 0
    scores = read_quality_table(str(out))
    splits = load_from_disk(str(saved / "dict"))
    source = pd.concat(
        [
            splits[name]
            .remove_columns("image")
            .to_pandas()
            .assign(shard_path=f"{name}/data-00000-of-00001.arrow", row_index=range(len(split)))
            for name, split in splits.items()
        ]
    )
    joined = source.merge(
        scores[["shard_path", "row_index", "brightness_score", "caption"]],
        on=["shard_path", "row_index"],
        how="left",
        validate="one_to_one",
        suffixes=("", "_scored"),
    )
    assert len(joined) == 6 and joined["brightness_score"].notna().all()
    assert (joined["caption"] == joined["caption_scored"]).all()  # each row met its own score
