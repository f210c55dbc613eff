"""Inputs as users have them, through the CLI: photo trees, site mirrors, symlinked folders,
tars with link members, single files and globs, manifests with relative entries and filters,
``--root``, img2dataset's files layout, wrong ``--input-format`` and Ray Client addresses."""

import json
import os
import tarfile

import pandas as pd

from tests.lake_data import image_bytes
from vqpipe.cli import main
from vqpipe.storage import read_quality_table

SCORER = ["--scorer", "brightness"]


def _score(capsys, *args: str) -> dict:
    capsys.readouterr()
    assert main(["score", *args, *SCORER, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _png(path, i: int = 0) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image_bytes(i, "PNG"))
    return str(path)


def _refused(capsys, args: list[str]) -> str:
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vqpipe: error:") and "Traceback" not in err
    return err


def test_photo_tree_with_a_stray_tar_is_photos(ray_local, tmp_path, capsys):
    photos = [
        _png(tmp_path / "in" / f"20{y}" / f"{m:02d}" / f"{d:02d}" / f"{k}.png", k)
        for y in (24, 25)
        for m in (1, 2, 3)
        for d in (1, 2)
        for k in range(2)
    ]
    with tarfile.open(tmp_path / "in" / "old_backup.tar", "w") as tar:
        tar.add(photos[0], arcname="0.png")
    summary = _score(capsys, str(tmp_path / "in"), "--out", str(tmp_path / "q"))
    assert summary["input_format"] == "files"
    table = read_quality_table(tmp_path / "q")
    assert len(table) == len(photos) + 1  # every photo, and the tar as an error row
    scored = table[table["error"].isna()]
    assert sorted(scored["uri"]) == sorted(photos)
    assert table.loc[table["uri"].str.endswith(".tar"), "error"].str.contains("unsupported").all()


def test_folders_named_like_job_files_are_inputs_outside_a_table(ray_local, tmp_path, capsys):
    names = ["_next/static/media/a.png", "_quarantine/b.png", "_lock/c.png", "_COMMITTED/d.png"]
    names += ["_job.json/e.png", "x/_next/f.png", "part-0123abcd-x.parquet/g.png"]
    files = [_png(tmp_path / "site" / n, i) for i, n in enumerate(names)]
    _score(capsys, str(tmp_path / "site"), "--out", str(tmp_path / "q"))
    table = read_quality_table(tmp_path / "q")
    assert sorted(table["uri"]) == sorted(files) and table["error"].isna().all()

    # an output inside the input is never read back; a rerun has nothing to do
    inner = str(tmp_path / "site" / "quality")
    _score(capsys, str(tmp_path / "site"), "--out", inner)
    assert sorted(read_quality_table(inner)["uri"]) == sorted(files)
    assert _score(capsys, str(tmp_path / "site"), "--out", inner)["scored_rows"] == 0


def test_symlinked_folders_are_followed_and_loops_are_error_rows(ray_local, tmp_path, capsys):
    disk2 = [_png(tmp_path / "disk2" / "batch1" / f"{i}.png", i) for i in range(3)]
    (tmp_path / "in").mkdir()
    os.symlink(tmp_path / "disk2" / "batch1", tmp_path / "in" / "batch1")  # a top-level link
    own = _png(tmp_path / "in" / "deep" / "own.png", 7)
    os.symlink(tmp_path / "in", tmp_path / "in" / "deep" / "back")  # a loop
    os.symlink("self", tmp_path / "in" / "self")  # a link to itself
    summary = _score(capsys, str(tmp_path / "in"), "--out", str(tmp_path / "q"))
    assert summary["input_format"] == "files"
    table = read_quality_table(tmp_path / "q").set_index("uri")
    linked = [str(tmp_path / "in" / "batch1" / f"{i}.png") for i in range(3)]
    assert table.loc[[*linked, own], "error"].isna().all()
    assert len(disk2) == 3
    loop = table.loc[str(tmp_path / "in" / "deep" / "back"), "error"]
    assert loop.startswith("read:") and "loop" in loop
    assert isinstance(table.loc[str(tmp_path / "in" / "self"), "error"], str)
    assert len(table) == 6  # 3 linked + own + the loop + the self link: nothing else


def test_tar_link_members_read_the_member_they_name(ray_local, tmp_path, capsys):
    src = tmp_path / "src"
    _png(src / "a.png", 1)
    os.link(src / "a.png", src / "b.png")  # tar stores the second name as a hard link
    os.symlink("a.png", src / "c.png")
    os.symlink("missing.png", src / "d.png")
    for name, mode in (("plain.tar", "w"), ("packed.tar.gz", "w:gz")):
        (tmp_path / "wds").mkdir(exist_ok=True)
        with tarfile.open(tmp_path / "wds" / name, mode) as tar:
            for member in ("a.png", "b.png", "c.png", "d.png"):
                tar.add(src / member, arcname=member)
    summary = _score(capsys, str(tmp_path / "wds"), "--out", str(tmp_path / "q"))
    assert summary["input_format"] == "webdataset"
    table = read_quality_table(tmp_path / "q")
    table["name"] = table["uri"].str.rsplit("/", n=1).str[-1]
    assert len(table) == 8
    by = table.set_index("name")
    for shard in ("plain.tar", "packed.tar.gz"):
        scores = by.loc[[f"{shard}#{k}" for k in "abc"], "brightness_score"]
        assert scores.notna().all() and scores.nunique() == 1  # the same bytes each time
        missing = by.loc[f"{shard}#d", "error"]
        assert "symlink" in missing and "missing.png" in missing


def test_explicit_format_that_finds_nothing_is_one_line(tmp_path, capsys):
    _png(tmp_path / "imgs" / "a.png")
    out = tmp_path / "q"
    for fmt in ("webdataset", "parquet", "manifest"):
        args = ["score", str(tmp_path / "imgs"), "--out", str(out), "--input-format", fmt]
        err = _refused(capsys, [*args, *SCORER])
        assert fmt in err and "holds no" in err
    assert not out.exists()  # refused before anything is written


def test_ray_client_address_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    _png(tmp_path / "imgs" / "a.png")
    base = ["score", str(tmp_path / "imgs"), "--out", str(tmp_path / "q"), *SCORER]
    err = _refused(capsys, [*base, "--address", "ray://head:10001"])
    assert "ray job submit" in err
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    assert "RAY_ADDRESS" in _refused(capsys, base)
    assert not (tmp_path / "q").exists()


def test_single_files_and_globs_are_inputs(ray_local, tmp_path, capsys):
    files = [_png(tmp_path / "d" / f"{i}_{k}.png", i) for i in range(3) for k in ("ref", "dist")]
    one = files[0]
    _score(capsys, one, "--out", str(tmp_path / "q1"))
    assert read_quality_table(tmp_path / "q1")["uri"].tolist() == [one]
    _score(capsys, str(tmp_path / "d" / "*_ref.png"), "--out", str(tmp_path / "q2"))
    refs = sorted(f for f in files if f.endswith("_ref.png"))
    assert sorted(read_quality_table(tmp_path / "q2")["uri"]) == refs
    # a rerun of the glob resumes: nothing scored again
    again = _score(capsys, str(tmp_path / "d" / "*_ref.png"), "--out", str(tmp_path / "q2"))
    assert again["scored_rows"] == 0


def test_manifest_entries_relative_to_the_manifest_and_filtered(
    ray_local, tmp_path, capsys, monkeypatch
):
    lake = tmp_path / "lake"
    for name in ("a.png", "b.png", "sub/c.png", "skip/d.png"):
        _png(lake / "images" / name, len(name))
    rows = ["images/a.png", "images/b.png", "images/sub/c.png", "images/skip/d.png"]
    pd.DataFrame({"uri": rows, "caption": list("abcd")}).to_parquet(lake / "m.parquet")
    monkeypatch.chdir(tmp_path)  # not the manifest's folder: entries must not resolve here
    args = [str(lake / "m.parquet"), "--out", str(tmp_path / "q"), "--exclude", "images/skip/*"]
    _score(capsys, *args)
    table = read_quality_table(tmp_path / "q")
    expected = [str(lake / r) for r in rows[:3]]
    assert sorted(table["uri"]) == expected and table["error"].isna().all()
    assert sorted(table["caption"]) == ["a", "b", "c"]
    _score(capsys, str(lake / "m.parquet"), "--out", str(tmp_path / "q2"), "--include", "*/a.png")
    assert read_quality_table(tmp_path / "q2")["uri"].tolist() == [str(lake / "images/a.png")]


def test_root_confines_folder_inputs(ray_local, tmp_path, capsys):
    inside = _png(tmp_path / "root" / "in" / "a.png")
    secret = _png(tmp_path / "secret" / "s.png", 3)
    os.symlink(secret, tmp_path / "root" / "in" / "leak.png")
    root = str(tmp_path / "root")
    _score(capsys, str(tmp_path / "root" / "in"), "--out", str(tmp_path / "q"), "--root", root)
    table = read_quality_table(tmp_path / "q").set_index("uri")
    assert pd.isna(table.loc[inside, "error"])
    leak = table.loc[str(tmp_path / "root" / "in" / "leak.png")]
    assert pd.isna(leak["brightness_score"]) and "outside" in leak["error"]
    args = ["score", str(tmp_path / "secret"), "--out", str(tmp_path / "q3"), "--root", root]
    assert "not inside" in _refused(capsys, [*args, *SCORER])


def test_another_spelling_of_the_input_folder_resumes(ray_local, tmp_path, capsys):
    files = [_png(tmp_path / "real" / f"{i}.png", i) for i in range(3)]
    os.symlink(tmp_path / "real", tmp_path / "alias")
    _score(capsys, str(tmp_path / "alias"), "--out", str(tmp_path / "q"))
    assert sorted(read_quality_table(tmp_path / "q")["uri"]) == files  # canonical paths
    again = _score(capsys, str(tmp_path / "real") + "/", "--out", str(tmp_path / "q"))
    assert again["scored_rows"] == 0


def test_img2dataset_files_layout_scores_images_and_counts_sidecars(ray_local, tmp_path, capsys):
    out = tmp_path / "i2d"
    images = []
    for shard in ("00000", "00001"):
        for k in range(3):
            key = f"{shard}{k:04d}"
            images.append(_png(out / shard / f"{key}.png", k))
            (out / shard / f"{key}.json").write_text(json.dumps({"key": key, "status": "ok"}))
            (out / shard / f"{key}.txt").write_text("a caption")
        pd.DataFrame({"key": [f"{shard}{k:04d}" for k in range(3)]}).to_parquet(
            out / f"{shard}.parquet"
        )
        (out / f"{shard}_stats.json").write_text("{}")
    (out / "notes.md").write_text("not a sidecar: an error row")
    summary = _score(capsys, str(out), "--out", str(tmp_path / "q"))
    assert summary["sidecars_skipped"] == 6 * 2 + 2 * 2
    table = read_quality_table(tmp_path / "q")
    assert sorted(table.loc[table["error"].isna(), "uri"]) == sorted(images)
    assert table["error"].notna().sum() == 1 and table["uri"].str.endswith("notes.md").any()


def test_globs_single_objects_and_sidecars_on_s3(ray_local, s3_server, s3_bucket, capsys):
    bucket, fs = s3_bucket
    for i in range(3):
        for kind in ("ref", "dist"):
            fs.pipe(f"{bucket}/d/{i}_{kind}.png", image_bytes(i, "PNG"))
        fs.pipe(f"{bucket}/d/{i}_ref.json", b"{}")  # a sidecar of its image
    options = ["--storage-options", json.dumps(s3_server)]
    out = f"s3://{bucket}/q"
    _score(capsys, f"s3://{bucket}/d/*_ref.png", "--out", out, *options)
    table = read_quality_table(out, s3_server)
    assert sorted(table["uri"]) == [f"s3://{bucket}/d/{i}_ref.png" for i in range(3)]
    one = f"s3://{bucket}/d/0_dist.png"
    _score(capsys, one, "--out", f"s3://{bucket}/q1", *options)
    assert read_quality_table(f"s3://{bucket}/q1", s3_server)["uri"].tolist() == [one]
    summary = _score(capsys, f"s3://{bucket}/d/", "--out", f"s3://{bucket}/q2", *options)
    assert summary["sidecars_skipped"] == 3
    assert read_quality_table(f"s3://{bucket}/q2", s3_server)["error"].isna().all()


def test_row_index_numbers_a_datasets_rows_and_follows_a_file_added_before(
    ray_local, tmp_path, capsys
):
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = tmp_path / "data"
    data.mkdir()

    def write(name: str, first: int, n: int) -> None:
        images = [image_bytes(first + i, "PNG") for i in range(n)]
        captions = [f"c{first + i}" for i in range(n)]
        pq.write_table(pa.table({"image": images, "caption": captions}), data / name)

    write("train-00001-of-00002.parquet", 2, 3)
    write("test-00000-of-00001.parquet", 100, 2)
    out = str(tmp_path / "q")
    _score(capsys, str(data), "--out", out)
    table = read_quality_table(out)
    train = table[table["shard_path"].str.startswith("train")]
    assert sorted(train["row_index"]) == [0, 1, 2]  # the only train file so far
    test = table[table["shard_path"].str.startswith("test")].sort_values("row_index")
    assert test["row_index"].tolist() == [0, 1] and test["caption"].tolist() == ["c100", "c101"]

    write("train-00000-of-00002.parquet", 0, 2)  # the split's first file arrives
    _score(capsys, str(data), "--out", out)
    table = read_quality_table(out)
    assert len(table) == 7 and table["uri"].is_unique and table["error"].isna().all()
    train = table[table["shard_path"].str.startswith("train")].sort_values("row_index")
    assert train["row_index"].tolist() == list(range(5))
    assert train["caption"].tolist() == [f"c{i}" for i in range(5)]  # as datasets numbers them
    test = table[table["shard_path"].str.startswith("test")]
    assert sorted(test["row_index"]) == [0, 1]
