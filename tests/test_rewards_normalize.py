"""`vqpipe filter --normalize group-zscore|group-rank --group COLUMN`: per-group values equal
scipy's, NULLs and error rows stay out of the statistics, --where can use the result."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats

from vqpipe.cli import main


@pytest.fixture
def quality(tmp_path):
    rng = np.random.default_rng(0)
    n = 120
    prompt = rng.integers(0, 9, n).astype(object)
    gamma = np.round(rng.uniform(0, 1, n), 1)  # ties
    qalign = rng.uniform(1, 5, n)
    error = np.array([None] * n, dtype=object)
    error[[3, 50]] = "decode: truncated"
    gamma[[5, 6]] = np.nan  # NULL scores without an error
    prompt[[7]] = None  # a NULL group
    prompt[[8]] = 42  # a one-row group
    gamma[[3, 50]] = qalign[[3, 50]] = np.nan
    table = pa.table(
        {
            "uri": [f"{k}.jpg" for k in range(n)],
            "prompt": pa.array([None if p is None else f"p{p}" for p in prompt]),
            "gamma_score": pa.array(gamma, mask=np.isnan(gamma), type=pa.float32()),
            "qalign_score": pa.array(qalign, mask=np.isnan(qalign), type=pa.float32()),
            "error": pa.array(error.tolist(), type=pa.string()),
        }
    )
    out = tmp_path / "quality"
    out.mkdir()
    pq.write_table(table.slice(0, 60), out / "part-0.parquet")
    pq.write_table(table.slice(60), out / "part-1.parquet")
    return out


def _reference(frame, score, method):
    """scipy per group over the rows with a score and a group."""
    out = pd.Series(np.nan, index=frame.index)
    ok = frame[score].notna() & frame["prompt"].notna()
    for _, rows in frame[ok].groupby("prompt"):
        x = rows[score].to_numpy(np.float64)
        if method == "group-zscore":
            values = stats.zscore(x) if np.ptp(x) > 0 else np.zeros(len(x))
        else:
            values = (stats.rankdata(x) - 1) / (len(x) - 1) if len(x) > 1 else [0.5]
        out[rows.index] = values
    return out


@pytest.mark.parametrize("method", ["group-zscore", "group-rank"])
def test_normalised_per_group_like_scipy(quality, tmp_path, capsys, method):
    out = tmp_path / "keep.parquet"
    argv = ["filter", str(quality), "--normalize", method, "--group", "prompt", "--out", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    kept = pd.read_parquet(out)
    assert len(kept) == 118  # every row but the two errors
    for score, column in (
        ("gamma_score", "gamma_normalized"),
        ("qalign_score", "qalign_normalized"),
    ):
        ref = _reference(kept, score, method)
        assert kept[column].isna().equals(ref.isna())
        assert np.allclose(kept[column].dropna(), ref.dropna(), atol=1e-9)
    one = kept.set_index("uri").loc["8.jpg"]
    assert one["gamma_normalized"] == (0.0 if method == "group-zscore" else 0.5)
    assert np.isnan(kept.set_index("uri").loc["7.jpg", "gamma_normalized"])  # NULL group


def test_where_and_percentile_use_the_normalised_column(quality, tmp_path, capsys):
    out = tmp_path / "keep.parquet"
    argv = ["filter", str(quality), "--normalize", "group-rank", "--group", "prompt"]
    argv += ["--where", "gamma_normalized >= 0.5", "--percentile", "qalign_normalized:50"]
    assert main([*argv, "--out", str(out)]) == 0, capsys.readouterr().err
    kept = pd.read_parquet(out)
    assert len(kept) > 10 and (kept["gamma_normalized"] >= 0.5).all()
    everything = tmp_path / "all.parquet"
    base = ["filter", str(quality), "--normalize", "group-rank", "--group", "prompt"]
    assert main([*base, "--out", str(everything)]) == 0
    frame = pd.read_parquet(everything)
    frame = frame[frame["gamma_normalized"] >= 0.5]
    threshold = np.quantile(frame["qalign_normalized"].dropna(), 0.5)
    expected = frame[frame["qalign_normalized"] >= threshold]
    assert sorted(kept["uri"]) == sorted(expected["uri"])


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--normalize", "group-zscore"], "name the group column with --group"),
        (["--normalize", "group-zscore", "--group", "promt"], "did you mean 'prompt'"),
        (["--group", "prompt"], "give --normalize too"),
        (["--normalize", "zscore", "--group", "prompt"], "invalid choice"),
    ],
)
def test_mistakes_are_one_line(quality, tmp_path, capsys, argv, expected):
    rc = main(["filter", str(quality), *argv, "--out", str(tmp_path / "k.parquet")])
    err = capsys.readouterr().err
    assert rc == 2 and expected in err and len(err.splitlines()) == 1
    assert not (tmp_path / "k.parquet").exists()
