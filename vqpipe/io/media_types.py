"""What a name or the first bytes say a file is: the one table of media extensions (and of
the suffixes of shard files).

Every reader takes its answer from here: a listed file (``photo.JPEG``), a WebDataset tar
member (``000.jpg``), a Parquet column named like a format (``jpg``, ``mp4``), a manifest
URI. Metadata files that producers write beside media (img2dataset's ``.json`` / ``.txt``,
its per-shard ``.parquet`` and ``_stats.json``) are *sidecars*: not media, not errors.
"""

from __future__ import annotations

import posixpath

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".jfif"}
)
VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi", ".mpg", ".mpeg"})
MEDIA_EXTENSIONS = IMAGE_EXTENSIONS | VIDEO_EXTENSIONS
SIDECAR_EXTENSIONS = frozenset({".json", ".txt", ".cls", ".parquet", ".csv", ".jsonl", ".xml"})
"""Metadata a producer writes beside its media (see :func:`sidecar_of`)."""

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
"""WebDataset shards."""
PARQUET_SUFFIXES = (".parquet", ".pq")
ARROW_SUFFIXES = (".arrow",)
"""Arrow IPC files (a Hugging Face ``save_to_disk`` folder's shards)."""
COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst")
TABLE_SUFFIXES = (*PARQUET_SUFFIXES, ".csv", ".jsonl", ".ndjson", ".json")
MANIFEST_SUFFIXES = (
    *TABLE_SUFFIXES,
    *(t + c for t in TABLE_SUFFIXES[2:] for c in COMPRESSION_SUFFIXES),
)
"""Manifests: tables, text ones also compressed."""

IMAGE = "image"
VIDEO = "video"
UNSUPPORTED = "unsupported"


def extension(name: str) -> str:
    """The lower-case extension of a path's last name, with its dot (``""`` when none)."""
    return posixpath.splitext(posixpath.basename(name.rstrip("/")))[1].lower()


def media_type_from_name(name: str) -> str:
    """``"image"``, ``"video"`` or ``"unsupported"`` from the file extension."""
    suffix = extension(name)
    if suffix in IMAGE_EXTENSIONS:
        return IMAGE
    if suffix in VIDEO_EXTENSIONS:
        return VIDEO
    return UNSUPPORTED


def sidecar_of(name: str, media_stems: set[str], folders: set[str]) -> bool:
    """Whether a non-media file is a producer's sidecar: its extension is a metadata one and
    it describes media beside it — a media file of the same stem in its folder
    (``000000001.json`` beside ``000000001.jpg``: img2dataset's per-image files) or a folder of
    the same stem beside it (``00000.parquet`` and ``00000_stats.json`` beside ``00000/``: its
    per-shard files). ``media_stems`` / ``folders``: full paths without extension of the media
    files listed, and of the folders beside the file. A lone ``notes.txt`` is not a sidecar."""
    suffix = extension(name)
    if suffix not in SIDECAR_EXTENSIONS:
        return False
    stem = name[: len(name) - len(suffix)]
    return (
        stem in media_stems
        or stem in folders
        or (stem.endswith("_stats") and stem[: -len("_stats")] in folders)
    )


def sniff_media_type(head: bytes) -> str | None:
    """Media type from the first bytes of a file (magic numbers); None when unknown."""
    if head.startswith(b"\xff\xd8\xff") or head.startswith(b"\x89PNG\r\n\x1a\n"):
        return IMAGE
    if head[:6] in (b"GIF87a", b"GIF89a") or head.startswith(b"BM"):
        return IMAGE
    if head[:4] in (b"II*\x00", b"MM\x00*") or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return IMAGE
    if head[4:8] == b"ftyp":  # ISO BMFF: mp4 / mov / heic
        brand = head[8:12]
        return IMAGE if brand in (b"heic", b"heix", b"avif", b"mif1") else VIDEO
    if head.startswith(b"\x1a\x45\xdf\xa3") or (head[:4] == b"RIFF" and head[8:12] == b"AVI "):
        return VIDEO
    if head[:4] in (b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3"):  # MPEG-PS / MPEG-1
        return VIDEO
    return None
