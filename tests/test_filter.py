"""`vqpipe filter` as a user types it: every column and the provenance metadata kept, NULLs
never kept, one-line errors, `--out` as a directory."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vqpipe.cli import main
from vqpipe.pipeline.filtering import FILTER_METADATA_KEY
from vqpipe.schema import METADATA_KEY

SIGNATURE = {
    "vqpipe": "0.1.0",
    "scorers": [{"name": "gamma", "column": "gamma", "checkpoint_fingerprint": "sha256:x"}],
    "outputs": {"gamma": {"score_range": [0, 1], "checkpoint": "bundled-demo"}},
}


def _part(path, rows, node):
    probs = pa.array(
        [None if r["score"] is None else [0.1, 0.2, 0.3, 0.2, 0.2] for r in rows],
        type=pa.list_(pa.float32()),
    )
    table = pa.table(
        {
            "uri": [r["uri"] for r in rows],
            "media_type": [r.get("media", "image") for r in rows],
            "width": pa.array([r.get("width") for r in rows], type=pa.int64()),
            "gamma_score": pa.array([r["score"] for r in rows], type=pa.float32()),
            "gamma_probs": probs,
            "error": pa.array([r.get("error") for r in rows], type=pa.string()),
        }
    )
    record = {**SIGNATURE, "runtime": {"gamma": [{"device": "cpu", "node": node}]}}
    table = table.replace_schema_metadata({METADATA_KEY: json.dumps(record)})
    pq.write_table(table, path)


@pytest.fixture
def quality(tmp_path):
    """A job's output: two parts (scored on two nodes), a failed row, a NULL width and a
    NULL score on a row without an error."""
    out = tmp_path / "quality"
    out.mkdir()
    _part(
        out / "part-a.parquet",
        [
            {"uri": "a.jpg", "score": 0.9, "width": 640},
            {"uri": "b.jpg", "score": 0.7, "width": None},
            {"uri": "c.jpg", "score": None, "error": "decode: truncated"},
        ],
        "n1",
    )
    _part(
        out / "part-b.parquet",
        [
            {"uri": "d.mp4", "score": 0.5, "width": 1920, "media": "video"},
            {"uri": "e.jpg", "score": 0.3, "width": 320},
            {"uri": "f.jpg", "score": None, "width": 100},  # scored by no one: NULL
        ],
        "n2",
    )
    (out / ".tmp-part-c.parquet").write_bytes(b"partial")  # a part being written: ignored
    (out / "_job.json").write_text("{}")
    return out


def _filter(capsys, *argv):
    rc = main(["filter", *map(str, argv)])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_keeps_every_column_types_and_metadata(quality, tmp_path, capsys):
    out = tmp_path / "keep.parquet"
    rc, stdout, _ = _filter(capsys, quality, "--where", "gamma_score >= 0.5", "--out", out)
    assert rc == 0
    assert "kept 3 of 6 rows" in stdout and "1 failed" in stdout
    table = pq.read_table(out)
    assert table.column_names == [
        "uri",
        "media_type",
        "width",
        "gamma_score",
        "gamma_probs",
        "error",
    ]
    assert table.schema.field("gamma_probs").type == pa.list_(pa.float32())
    assert table.schema.field("width").type == pa.int64()  # not float64 as through pandas
    assert sorted(table.column("uri").to_pylist()) == ["a.jpg", "b.jpg", "d.mp4"]
    assert table.column("width").null_count == 1  # b.jpg's NULL width stays NULL
    metadata = pq.read_schema(out).metadata
    job = json.loads(metadata[METADATA_KEY])
    assert job["scorers"] == SIGNATURE["scorers"] and job["outputs"] == SIGNATURE["outputs"]
    assert {e["node"] for e in job["runtime"]["gamma"]} == {"n1", "n2"}  # merged over parts
    provenance = json.loads(metadata[FILTER_METADATA_KEY])
    assert provenance["where"] == "gamma_score >= 0.5" and provenance["source"] == str(quality)


def test_nulls_are_never_kept(quality, tmp_path, capsys):
    out = tmp_path / "k.parquet"
    rc, stdout, _ = _filter(capsys, quality, "--where", "gamma_score >= 0", "--out", out)
    assert rc == 0 and "kept 4 of 6" in stdout  # not c (failed) nor f (NULL score)
    rc, stdout, _ = _filter(capsys, quality, "--where", "width > 0", "--out", out)
    assert "kept 4 of 6" in stdout  # b's NULL width is not > 0
    rc, stdout, _ = _filter(capsys, quality, "--where", "not (width > 500)", "--out", out)
    assert sorted(pq.read_table(out).column("uri").to_pylist()) == ["e.jpg", "f.jpg"]
    rc, stdout, _ = _filter(capsys, quality, "--where", "gamma_score.isna()", "--out", out)
    assert pq.read_table(out).column("uri").to_pylist() == ["f.jpg"]
    # no --where: every row without an error, a NULL score included
    rc, stdout, _ = _filter(capsys, quality, "--out", out)
    assert "kept 5 of 6" in stdout


def test_where_syntax(quality, tmp_path, capsys):
    out = tmp_path / "k.parquet"
    cases = {
        "media_type == 'image' and width >= 300": ["a.jpg", "e.jpg"],
        "(media_type in ['video']) | (gamma_score > 0.8)": ["a.jpg", "d.mp4"],
        "0.4 < gamma_score < 0.8": ["b.jpg", "d.mp4"],
        "width * 2 >= 1280": ["a.jpg", "d.mp4"],
        "uri not in ('a.jpg', 'b.jpg') and ~gamma_score.isna()": ["d.mp4", "e.jpg"],
    }
    for where, expected in cases.items():
        rc, _, err = _filter(capsys, quality, "--where", where, "--out", out)
        assert rc == 0, err
        assert sorted(pq.read_table(out).column("uri").to_pylist()) == expected, where


def test_percentile_ignores_nulls(quality, tmp_path, capsys):
    out = tmp_path / "k.parquet"
    rc, _stdout, _ = _filter(capsys, quality, "--percentile", "gamma_score:50", "--out", out)
    assert rc == 0
    # median of 0.9, 0.7, 0.5, 0.3 (no NULL, no failed row) is 0.6
    assert sorted(pq.read_table(out).column("uri").to_pylist()) == ["a.jpg", "b.jpg"]
    provenance = json.loads(pq.read_schema(out).metadata[FILTER_METADATA_KEY])
    assert provenance["threshold"] == pytest.approx(0.6, abs=1e-6)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["{missing}"], "no quality table at"),
        (["{empty}"], "no part-*.parquet"),
        (["{quality}", "--where", "gamma_scor > 0.5"], "did you mean 'gamma_score'"),
        (["{quality}", "--where", "gamma_score >== 0.5"], "invalid syntax"),
        (["{quality}", "--where", "media_type > 3"], "--where"),
        (["{quality}", "--where", "__import__('os').system('true')"], "not supported"),
        (["{quality}", "--percentile", "gamma_scor:80"], "did you mean 'gamma_score'"),
        (["{quality}", "--percentile", "gamma_score:180"], "0 <= P <= 100"),
    ],
)
def test_mistakes_are_one_line(quality, tmp_path, capsys, argv, expected):
    empty = tmp_path / "empty"
    empty.mkdir()
    names = {"missing": tmp_path / "nope", "empty": empty, "quality": quality}
    argv = [a.format(**names) for a in argv]
    rc, stdout, err = _filter(capsys, *argv, "--out", tmp_path / "k.parquet")
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("vqpipe: error: "), err
    assert expected in err
    assert "kept" not in stdout
    assert not (tmp_path / "k.parquet").exists()


def test_out_directory(quality, tmp_path, capsys):
    rc, stdout, _ = _filter(capsys, quality, "--out", f"{tmp_path}/lists/")  # trailing slash
    assert rc == 0 and (tmp_path / "lists" / "keep.parquet").is_file()
    assert str(tmp_path / "lists" / "keep.parquet") in stdout
    existing = tmp_path / "existing"
    existing.mkdir()
    rc, _, _ = _filter(capsys, quality, "--out", existing)  # an existing directory
    assert rc == 0 and len(pq.read_table(existing / "keep.parquet")) == 5
    assert not [p for p in existing.iterdir() if p.name.startswith(".tmp")]


def test_one_parquet_file_as_table(quality, tmp_path, capsys):
    rc, stdout, _ = _filter(capsys, quality / "part-b.parquet", "--out", tmp_path / "k.parquet")
    assert rc == 0 and "kept 3 of 3" in stdout
