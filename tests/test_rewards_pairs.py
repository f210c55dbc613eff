"""`vqpipe pairs` as a user types it: hand-worked groups (ties, margins, NULLs, error rows,
one-image groups, each strategy, sampled pairs), the same answer as a pandas reference, S3,
one-line errors."""

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vqpipe.cli import main
from vqpipe.rewards.pairs import group_seed, select_pairs

ROWS = [  # uri, group, score, error, width
    ("a", "p1", 0.9, None, 10),
    ("b", "p1", 0.7, None, 20),
    ("c", "p1", 0.7, None, 30),  # ties with b
    ("d", "p1", 0.2, None, 40),
    ("e", "p2", 0.5, None, 50),  # a one-image group
    ("f", "p3", 0.6, None, 60),
    ("g", "p3", None, None, 70),  # NULL score
    ("h", "p3", None, "decode: truncated", None),  # error row
    ("i", "p3", 0.6, None, 90),  # ties with f: p3 has no pair at margin 0
    ("j", None, 0.8, None, 100),  # NULL group
    ("k", "p4", 0.3, None, 110),
    ("l", "p4", 0.35, None, 120),
    ("m", "p4", 0.1, None, 130),
]


def _write_table(path, rows, group_type=None):
    path.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "uri": [r[0] for r in rows],
            "prompt": pa.array([r[1] for r in rows], type=group_type or pa.string()),
            "gamma_score": pa.array([r[2] for r in rows], type=pa.float32()),
            "error": pa.array([r[3] for r in rows], type=pa.string()),
            "width": pa.array([r[4] for r in rows], type=pa.int64()),
        }
    )
    half = len(rows) // 2  # two parts: a group's rows meet across parts
    pq.write_table(table.slice(0, half), path / "part-0.parquet")
    pq.write_table(table.slice(half), path / "part-1.parquet")
    return path


ALL_PAIRS = [
    ("p1", "a", "b"), ("p1", "a", "c"), ("p1", "a", "d"), ("p1", "b", "d"), ("p1", "c", "d"),
    ("p4", "k", "m"), ("p4", "l", "k"), ("p4", "l", "m"),
]  # fmt: skip
"""Every pair of the hand-worked groups at margin 0: (b, c) tie, e is alone, f and i tie."""


@pytest.fixture
def table(tmp_path):
    return _write_table(tmp_path / "quality", ROWS)


def _pairs(capsys, table, out, *argv):
    head = ["pairs", str(table), "--group", "prompt", "--score", "gamma_score"]
    rc = main([*head, "--out", str(out), *map(str, argv)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    frame = pd.read_parquet(out)
    return frame, captured.out


def _set(frame):
    return sorted(zip(frame["group"], frame["uri_chosen"], frame["uri_rejected"], strict=True))


def test_best_worst_counts_and_columns(ray_local, table, tmp_path, capsys):
    out = tmp_path / "pairs"
    frame, stdout = _pairs(capsys, table, out, "--carry", "width")
    assert _set(frame) == [("p1", "a", "d"), ("p4", "l", "m")]
    assert list(frame.columns) == [
        "group", "uri_chosen", "uri_rejected", "score_chosen", "score_rejected", "margin",
        "width_chosen", "width_rejected",
    ]  # fmt: skip
    p1 = frame.set_index("group").loc["p1"]
    assert p1["score_chosen"] == pytest.approx(0.9) and p1["margin"] == pytest.approx(0.7)
    assert (p1["width_chosen"], p1["width_rejected"]) == (10, 40)
    assert "2 pairs from 13 rows" in stdout
    assert "1 error rows, 1 NULL scores, 1 NULL groups" in stdout
    record = json.loads((out / "_pairs.json").read_text())
    assert record["counts"] == {
        "rows": 13, "error_rows": 1, "null_scores": 1, "null_groups": 1, "pairs": 2
    }  # fmt: skip
    assert all(p.name.startswith("part-") for p in out.glob("*.parquet"))


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["--strategy", "all"],
            ALL_PAIRS,
        ),
        (  # (l, k) has margin 0.05 <= 0.1
            ["--strategy", "all", "--margin", "0.1"],
            [("p1", "a", "b"), ("p1", "a", "c"), ("p1", "a", "d"), ("p1", "b", "d"),
             ("p1", "c", "d"), ("p4", "k", "m"), ("p4", "l", "m")],
        ),
        (  # b's nearest lower row is c, a tie: its pair is with d
            ["--strategy", "adjacent"],
            [("p1", "a", "b"), ("p1", "b", "d"), ("p1", "c", "d"), ("p4", "k", "m"),
             ("p4", "l", "k")],
        ),
        (  # margins 0.2 (a, b) and 0.25 (l, m) do not pass 0.3
            ["--strategy", "adjacent", "--margin", "0.3"],
            [("p1", "a", "d"), ("p1", "b", "d"), ("p1", "c", "d")],
        ),
    ],
)  # fmt: skip
def test_strategies_and_margins(argv, expected):
    """The selection rule on the hand-worked groups (the Ray Data job runs the same function
    per group: the CLI tests below compare the two)."""
    strategy, margin = argv[1], float(argv[3]) if len(argv) > 2 else 0.0
    usable = [r for r in ROWS if r[1] is not None and r[2] is not None and r[3] is None]
    found = []
    for group in sorted({r[1] for r in usable}):
        rows = [r for r in usable if r[1] == group]
        uris = np.array([r[0] for r in rows], dtype=object)
        scores = np.array([r[2] for r in rows], np.float32).astype(np.float64)
        chosen, rejected = select_pairs(uris, scores, strategy, margin)
        assert (scores[chosen] - scores[rejected] > margin).all()
        found += [(group, uris[i], uris[j]) for i, j in zip(chosen, rejected, strict=True)]
    assert sorted(found) == expected


def _reference(frame, strategy, margin, max_pairs, seed):
    """Pairs by the documented rules, written plainly over pandas groups."""
    usable = frame[frame["error"].isna() & frame["gamma_score"].notna()]
    usable = usable[usable["prompt"].notna()]
    found = []
    for group, rows in usable.groupby("prompt"):
        ranked = sorted(
            zip(rows["uri"], rows["gamma_score"].astype(np.float64), strict=True),
            key=lambda r: (-r[1], r[0]),
        )
        n, candidates = len(ranked), []
        if strategy == "best-worst" and n >= 2:
            candidates = [(0, n - 1)]
        elif strategy == "all":
            candidates = [(i, j) for i in range(n) for j in range(i + 1, n)]
        elif strategy == "adjacent":
            for i in range(n):
                below = [j for j in range(i + 1, n) if ranked[i][1] - ranked[j][1] > margin]
                candidates += [(i, below[0])] if below else []
        candidates = [(i, j) for i, j in candidates if ranked[i][1] - ranked[j][1] > margin]
        if max_pairs is not None and len(candidates) > max_pairs:
            pick = group_seed(seed, group).choice(len(candidates), max_pairs, replace=False)
            candidates = [candidates[k] for k in sorted(pick)]
        found += [(group, ranked[i][0], ranked[j][0]) for i, j in candidates]
    return sorted(found)


@pytest.mark.parametrize(
    ("strategy", "margin", "max_pairs"),
    [
        ("all", 0.1, 3),
        pytest.param("adjacent", 0.0, 2, marks=pytest.mark.slow),
        pytest.param("best-worst", 0.0, None, marks=pytest.mark.slow),
    ],
)
def test_same_pairs_as_a_pandas_reference(ray_local, tmp_path, capsys, strategy, margin, max_pairs):
    rng = np.random.default_rng(7)
    rows = []
    for group in range(40):
        for k in range(int(rng.integers(1, 8))):
            score = round(float(rng.uniform(0, 1)), 1)  # one decimal: many ties
            error = "score[gamma]: oom" if rng.uniform() < 0.05 else None
            null = error is not None or rng.uniform() < 0.05
            rows.append((f"s3://x/{group}/{k}.jpg", group, None if null else score, error, k))
    order = rng.permutation(len(rows))  # a group's rows spread over both parts
    table = _write_table(tmp_path / "q", [rows[k] for k in order], group_type=pa.int64())
    argv = ["--strategy", strategy, "--margin", margin, "--seed", 5]
    argv += ["--max-pairs-per-group", max_pairs] if max_pairs else []
    frame, _ = _pairs(capsys, table, tmp_path / "pairs", *argv)
    expected = _reference(pd.read_parquet(table), strategy, margin, max_pairs, 5)
    assert len(expected) > 20
    assert _set(frame) == expected
    if max_pairs:
        assert frame.groupby("group").size().max() == max_pairs


def test_max_pairs_is_seeded(ray_local, table, tmp_path, capsys):
    argv = ["--strategy", "all", "--max-pairs-per-group", 2]
    first, _ = _pairs(capsys, table, tmp_path / "a", *argv, "--seed", 1)
    again, _ = _pairs(capsys, table, tmp_path / "b", *argv, "--seed", 1)
    assert _set(first) == _set(again)
    assert (first.groupby("group").size() == 2).all()  # p1: 2 of 5, p4: 2 of 3
    assert set(_set(first)) <= set(ALL_PAIRS)  # a sample of the hand-worked "all" pairs


def test_pairs_on_s3(ray_local, s3_bucket, s3_server, tmp_path, capsys):
    bucket, fs = s3_bucket
    local = _write_table(tmp_path / "quality", ROWS)
    for part in local.glob("*.parquet"):
        fs.put(str(part), f"{bucket}/quality/{part.name}")
    options = json.dumps(s3_server)
    rc = main(
        [
            "pairs",
            f"s3://{bucket}/quality/",
            "--group",
            "prompt",
            "--score",
            "gamma_score",
            "--out",
            f"s3://{bucket}/pairs/",
            "--storage-options",
            options,
        ]
    )
    assert rc == 0, capsys.readouterr().err
    frame = pd.read_parquet(f"s3://{bucket}/pairs/", storage_options=s3_server)
    assert _set(frame) == [("p1", "a", "d"), ("p4", "l", "m")]
    assert fs.exists(f"{bucket}/pairs/_pairs.json")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--group", "promt"], "--group 'promt': no such column"),
        (["--score", "gamma"], "--score 'gamma': no such column"),
        (["--carry", "height"], "--carry 'height'"),
        (["--score", "uri"], "not numeric"),
        (["--margin", "-1"], "--margin"),
        (["--strategy", "best"], "invalid choice"),
        (["--max-pairs-per-group", "0"], "--max-pairs-per-group"),
    ],
)
def test_mistakes_are_one_line(table, tmp_path, capsys, argv, expected):
    base = {"--group": "prompt", "--score": "gamma_score", "--out": str(tmp_path / "p")}
    for flag, value in zip(argv[::2], argv[1::2], strict=True):
        base[flag] = value
    rest = [x for k, v in base.items() for x in (k, v)]
    rest += [x for x in argv if x not in rest and x not in base.values()]
    rc = main(["pairs", str(table), *rest])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("vqpipe: error:") and expected in err and len(err.splitlines()) == 1
    assert not (tmp_path / "p").exists()
