"""Dataset utilities for ``vqpipe`` (synthetic quality data)."""

from vqpipe.data.synthetic import (
    DISTORTIONS,
    MOS_COLUMNS,
    SEVERITIES,
    SPLITS,
    VIDEO_COLUMNS,
    VIDEO_DISTORTIONS,
    distort,
    make_content_image,
    make_corpus,
    make_image_dataset,
    make_video_dataset,
)

__all__ = [
    "DISTORTIONS",
    "MOS_COLUMNS",
    "SEVERITIES",
    "SPLITS",
    "VIDEO_COLUMNS",
    "VIDEO_DISTORTIONS",
    "distort",
    "make_content_image",
    "make_corpus",
    "make_image_dataset",
    "make_video_dataset",
]
