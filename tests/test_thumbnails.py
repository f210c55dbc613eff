"""Thumbnails through vqpipe's reader and decoders: images, a video's first frame, any fsspec
URI, content sniffed before the name."""

import io

import fsspec
import numpy as np
import pytest
from PIL import Image

from vqpipe.data import make_video_dataset
from vqpipe.eval.thumbnails import MediaError, media_kind, thumbnail


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    table = make_video_dataset(tmp_path_factory.mktemp("v"), n_videos=1, seconds=0.5, fps=4)
    return table["path"][0]


def test_video_thumbnail_is_its_first_frame(clip):
    import av

    with av.open(clip) as container:
        first = next(container.decode(video=0)).to_image().convert("RGB")
    thumb = thumbnail(clip, size=1000)
    assert thumb.size == first.size == (160, 128)
    diff = np.abs(np.asarray(thumb, np.int16) - np.asarray(first, np.int16))
    assert diff.mean() < 2  # same frame (decoders may round YUV→RGB differently)
    assert max(thumbnail(clip, size=64).size) == 64


def test_any_fsspec_uri_and_content_before_name(clip, tmp_path):
    memory = fsspec.filesystem("memory")
    with open(clip, "rb") as fh:
        memory.pipe("/thumbs/clip.bin", fh.read())  # a video under a meaningless name
    buffer = io.BytesIO()
    Image.new("RGB", (300, 200), (10, 200, 30)).save(buffer, format="PNG")
    memory.pipe("/thumbs/still.mp4", buffer.getvalue())  # an image named like a video
    assert thumbnail("memory://thumbs/clip.bin").size == (160, 128)
    still = thumbnail("memory://thumbs/still.mp4", size=150)
    assert still.size == (150, 100) and still.getpixel((5, 5)) == (10, 200, 30)
    assert media_kind("s3://b/a.MP4") == "video" and media_kind("s3://b/a.jpg") == "image"


def test_undecodable_file_raises_media_error(tmp_path):
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all")
    with pytest.raises(MediaError):
        thumbnail(str(tmp_path / "broken.mp4"))
