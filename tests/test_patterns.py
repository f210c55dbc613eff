"""Input patterns: brace expansion, globs, directories; local paths never URL chains."""

from __future__ import annotations

import pytest

from vqpipe.io.patterns import braceexpand, expand_inputs, is_url, peek_files, resolve


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        (
            "shard-{000..003}.tar",
            ["shard-000.tar", "shard-001.tar", "shard-002.tar", "shard-003.tar"],
        ),
        ("{a,b}-{1..2}", ["a-1", "a-2", "b-1", "b-2"]),
        ("x{a,{b,c}d}y", ["xay", "xbdy", "xcdy"]),
        ("{0..10..5}", ["0", "5", "10"]),
        ("{3..1}", ["3", "2", "1"]),
        ("{8..11}", ["8", "9", "10", "11"]),
        ("{08..11}", ["08", "09", "10", "11"]),
        ("{a..c}", ["a", "b", "c"]),
        ("lit{abc}", ["lit{abc}"]),
        (r"a\{1,2\}", ["a{1,2}"]),
        ("open{brace", ["open{brace"]),
        ("{,x}y", ["y", "xy"]),
        ("plain.tar", ["plain.tar"]),
    ],
)
def test_braceexpand(pattern, expected):
    assert braceexpand(pattern) == expected


def test_large_brace_range_is_zero_padded():
    names = braceexpand("s3://b/shard-{00000..00999}.tar")
    assert len(names) == 1000 and names[0] == "s3://b/shard-00000.tar"
    assert names[-1] == "s3://b/shard-00999.tar"


def test_is_url_and_resolve_keep_local_paths_plain(tmp_path):
    assert is_url("s3://b/k") and is_url("simplecache::s3://b/k") and is_url("file:///x")
    assert not is_url("a::b/c.tar") and not is_url("/data/x::y.tar") and not is_url("C:\\x")
    fs, path = resolve("rel/a::b.tar", {"key": "never used locally"})
    assert fs.protocol[0] == "file" and path.endswith("/rel/a::b.tar")
    fs, path = resolve(f"file://{tmp_path}/a::b.tar")
    assert path == f"{tmp_path}/a::b.tar"


@pytest.fixture
def lake(tmp_path):
    root = tmp_path / "lake::v1"  # `::` is a plain character in a local name
    for i in range(4):
        (root / f"shard-{i:05d}.tar").parent.mkdir(parents=True, exist_ok=True)
        (root / f"shard-{i:05d}.tar").write_bytes(b"x")
    (root / "shard-00000.parquet").write_bytes(b"x")
    (root / "_stats.json").write_bytes(b"{}")
    (root / ".hidden.tar").write_bytes(b"x")
    (root / "sub").mkdir()
    (root / "sub" / "shard-00010.tar").write_bytes(b"x")
    return root


def test_expand_local_file_dir_glob_and_braces(lake):
    tars = [str(lake / f"shard-{i:05d}.tar") for i in range(4)]
    assert expand_inputs(str(lake / "shard-00002.tar")) == [tars[2]]
    assert expand_inputs(str(lake / "shard-{00001..00003}.tar")) == tars[1:]
    assert expand_inputs(str(lake / "shard-{00000,00003}.tar")) == [tars[0], tars[3]]
    assert expand_inputs(str(lake / "*.tar")) == tars
    assert expand_inputs(str(lake / "**" / "*.tar")) == [*tars, str(lake / "sub/shard-00010.tar")]
    listed = expand_inputs(str(lake))
    assert str(lake / "_stats.json") not in listed and str(lake / ".hidden.tar") not in listed
    assert str(lake / "shard-00000.parquet") in listed
    assert expand_inputs(str(lake), suffixes=(".tar",)) == [
        *tars,
        str(lake / "sub/shard-00010.tar"),
    ]
    assert expand_inputs(f"file://{lake}/shard-0000{{0,1}}.tar") == [
        f"file://{t}" for t in tars[:2]
    ]
    # a list of specs, de-duplicated and sorted
    assert expand_inputs([tars[3], tars[0], tars[3]]) == [tars[0], tars[3]]


def test_expand_names_missing_inputs(lake):
    with pytest.raises(FileNotFoundError, match=r"1 of 2 input\(s\) not found.*shard-00007"):
        expand_inputs(str(lake / "shard-{00003,00007}.tar"))
    with pytest.raises(FileNotFoundError, match="no input matches"):
        expand_inputs(str(lake / "*.zip"))
    with pytest.raises(FileNotFoundError):
        expand_inputs(str(lake / "absent.tar"))


def test_braces_across_folders_and_schemes(lake, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "shard-00000.tar").write_bytes(b"x")
    spec = f"{{{lake},file://{other}}}/shard-00000.tar"
    assert expand_inputs(spec) == [f"{lake}/shard-00000.tar", f"file://{other}/shard-00000.tar"]


def test_url_chains_take_single_files(tmp_path):
    (tmp_path / "shard-00001.tar").write_bytes(b"x")
    chained = f"simplecache::file://{tmp_path}/shard-00001.tar"
    assert expand_inputs(chained) == [chained]
    with pytest.raises(ValueError, match="only single files inside URL chains"):
        expand_inputs(f"simplecache::file://{tmp_path}/*.tar")


def test_glob_characters_in_a_real_name_are_literal(tmp_path):
    odd = tmp_path / "shard[1].tar"
    odd.write_bytes(b"x")
    assert expand_inputs(str(odd)) == [str(odd)]


def test_peek_is_bounded_and_descends(tmp_path):
    for i in range(50):
        (tmp_path / f"{i:03d}.jpg").write_bytes(b"x")
    assert len(peek_files(resolve(str(tmp_path))[0], str(tmp_path), limit=10)) == 10
    hive = tmp_path / "hive"
    (hive / "date=2026-01-01").mkdir(parents=True)
    (hive / "date=2026-01-01" / "part-0.parquet").write_bytes(b"x")
    fs, path = resolve(str(hive))
    assert peek_files(fs, path) == [str(hive / "date=2026-01-01" / "part-0.parquet")]


def test_expand_on_s3(s3_server, s3_bucket):
    bucket, fs = s3_bucket
    for i in range(5):
        fs.pipe(f"{bucket}/wds/shard-{i:05d}.tar", b"x")
    fs.pipe(f"{bucket}/wds/_SUCCESS", b"")
    fs.pipe(f"{bucket}/wds/deeper/shard-00100.tar", b"x")
    tars = [f"s3://{bucket}/wds/shard-{i:05d}.tar" for i in range(5)]
    assert expand_inputs(f"s3://{bucket}/wds/shard-{{00001..00003}}.tar", s3_server) == tars[1:4]
    assert expand_inputs(f"s3://{bucket}/wds/*.tar", s3_server) == tars
    assert expand_inputs(f"s3://{bucket}/wds/", s3_server) == [
        f"s3://{bucket}/wds/deeper/shard-00100.tar",
        *tars,
    ]
    assert expand_inputs(f"s3://{bucket}/wds/shard-00004.tar", s3_server) == tars[4:]
    with pytest.raises(FileNotFoundError, match=r"5 of 6 .*shard-00005"):
        expand_inputs(f"s3://{bucket}/wds/shard-{{00004..00009}}.tar", s3_server)
    s3, path = resolve(f"s3://{bucket}/wds", s3_server)
    peeked = peek_files(s3, path, limit=3)  # one page of 3 entries, then the subdirectory
    assert peeked == [f"{bucket}/wds/shard-00000.tar", f"{bucket}/wds/deeper/shard-00100.tar"]
    # the bounded peek must not leave a partial listing in s3fs's cache
    assert len(s3.ls(f"{bucket}/wds")) == 7
