"""Names are exact: `::`, `#`, `?`, `%` and spaces in local paths and object keys are plain
characters, never fsspec URL chaining (a job once scored `a::b.png` with the bytes of `a`)."""

import io
import json

import pandas as pd
from PIL import Image

from vqpipe.cli import main
from vqpipe.io.fs import read_bytes, url_to_fs
from vqpipe.storage import read_quality_table

NAMES = ["a::b.png", "only::c.png", "hash#1.png", "what?.png", "100%.png", "with space.png"]


def _png(size: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (200, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()


def test_local_names_with_url_characters_are_scored_from_their_own_bytes(ray_local, tmp_path):
    corpus = tmp_path / "names"
    corpus.mkdir()
    (corpus / "a").write_bytes(_png(3))  # what `a::b.png` used to be read as
    for i, name in enumerate(NAMES):
        (corpus / name).write_bytes(_png(10 + i))
    for name in NAMES:
        assert read_bytes(str(corpus / name)) == (corpus / name).read_bytes()
        assert url_to_fs(str(corpus / name))[1] == str(corpus / name)
    out = tmp_path / "out"
    assert main(["score", str(corpus), "--out", str(out), "--scorer", "brightness"]) == 0
    table = read_quality_table(str(out)).set_index("uri")
    for i, name in enumerate(NAMES):
        row = table.loc[str(corpus / name)]
        assert pd.isna(row["error"]) and row["width"] == 10 + i, name


def test_object_keys_with_url_characters(ray_local, s3_server, s3_bucket, tmp_path):
    bucket, fs = s3_bucket
    for i, name in enumerate(NAMES):
        fs.pipe(f"{bucket}/in/{name}", _png(10 + i))
    assert read_bytes(f"s3://{bucket}/in/a::b.png", s3_server) == _png(10)
    out = tmp_path / "out"
    args = ["score", f"s3://{bucket}/in/", "--out", str(out), "--scorer", "brightness"]
    assert main([*args, "--storage-options", json.dumps(s3_server)]) == 0
    table = read_quality_table(str(out)).set_index("uri")
    for i, name in enumerate(NAMES):
        assert table.loc[f"s3://{bucket}/in/{name}", "width"] == 10 + i, name
