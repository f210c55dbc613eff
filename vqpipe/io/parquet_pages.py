"""One column chunk of a Parquet file read page by page, in bounded memory: the way around a
zip bomb in a media cell that pyarrow cannot take.

What pyarrow (26) allows, and why this module exists:

- The footer gives each column chunk's ``total_uncompressed_size`` (``metadata.row_group(i)
  .column(j)``): a row group whose media is small enough is safe to read with pyarrow.
- Below that, pyarrow has no per-value sizes (binary statistics are min/max only; size
  statistics and the page index are not exposed) and no page access: ``iter_batches`` and
  ``read_row_group`` decompress each page whole into one buffer of its uncompressed size
  (a 33 KB file with a 1 GiB zstd cell grew the reader by 4.2 GB), and pyarrow's default
  dictionary encoding puts every distinct cell of a row group in one dictionary page, so no
  row of such a row group can be read without decompressing the bomb.

So for a row group whose media chunk holds a page over the limit, the media leaf is read here:
page headers (Thrift compact protocol, a few dozen bytes each) for each page's sizes and value
count; page bodies decompressed as a stream (``pyarrow.CompressedInputStream``: zstd, gzip,
brotli), value by value: a value over ``max_bytes`` is read through in 1 MiB pieces and
dropped, keeping its length and first bytes. Values are PLAIN or dictionary-encoded
(PLAIN_DICTIONARY / RLE_DICTIONARY, what Arrow writers and ``datasets`` use for binary);
definition levels RLE / bit-packed; data pages v1 and v2. Snappy and LZ4_RAW pages cannot be
streamed: they are decompressed whole (their ratio, at most ~32:1 for snappy, keeps a bomb as
big as its file). Anything else raises :class:`UnsupportedPageError` (the caller refuses the rows).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

import pyarrow as pa

HEAD = 16
"""Leading bytes kept of a value over the limit (to name its media type)."""
SKIP_CHUNK = 1 << 20
STREAMING_CODECS = {"ZSTD": "zstd", "GZIP": "gzip", "BROTLI": "brotli"}
WHOLE_CODECS = {"SNAPPY": "snappy", "LZ4_RAW": "lz4_raw"}
_DATA_PAGE, _DICTIONARY_PAGE, _DATA_PAGE_V2 = 0, 2, 3
_PLAIN, _PLAIN_DICTIONARY, _RLE_DICTIONARY = 0, 2, 8


class UnsupportedPageError(ValueError):
    """A page this reader cannot decode (an encoding or codec it does not know)."""


@dataclass(frozen=True)
class Refused:
    """A value over the limit: its length and first bytes; the rest was never held."""

    size: int
    head: bytes


@dataclass(frozen=True)
class PageHeader:
    kind: int
    uncompressed: int
    compressed: int
    num_values: int
    encoding: int
    def_bytes: int = 0  # v2: definition levels, stored uncompressed before the values
    rep_bytes: int = 0
    compressed_values: bool = True


# ---- Thrift compact protocol: just enough to read a PageHeader ----------------------------


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, i


def _zigzag(n: int) -> int:
    return (n >> 1) ^ -(n & 1)


def _skip(buf: bytes, i: int, kind: int) -> int:
    if kind in (1, 2):  # booleans: in a struct field the type is the value (nothing follows)
        return i
    if kind == 3:
        return i + 1
    if kind in (4, 5, 6):
        return _varint(buf, i)[1]
    if kind == 7:
        return i + 8
    if kind == 8:
        n, i = _varint(buf, i)
        return i + n
    if kind in (9, 10):
        head = buf[i]
        i += 1
        n, item = head >> 4, head & 0x0F
        if n == 15:
            n, i = _varint(buf, i)
        for _ in range(n):
            i = i + 1 if item in (1, 2) else _skip(buf, i, item)
        return i
    if kind == 11:
        n, i = _varint(buf, i)
        if n:
            types = buf[i]
            i += 1
            for _ in range(n):
                i = _skip(buf, i, types >> 4)
                i = _skip(buf, i, types & 0x0F)
        return i
    if kind == 12:
        return _struct(buf, i)[1]
    raise UnsupportedPageError(f"Thrift type {kind} in a page header")


def _struct(buf: bytes, i: int) -> tuple[dict[int, Any], int]:
    """A Thrift compact struct → {field id: int | bool | nested dict}; other fields skipped."""
    out: dict[int, Any] = {}
    last = 0
    while True:
        head = buf[i]
        i += 1
        if head == 0:
            return out, i
        kind, delta = head & 0x0F, head >> 4
        if delta:
            field = last + delta
        else:
            raw, i = _varint(buf, i)
            field = _zigzag(raw)
        last = field
        if kind in (5, 6):
            raw, i = _varint(buf, i)
            out[field] = _zigzag(raw)
        elif kind in (1, 2):
            out[field] = kind == 1
        elif kind == 12:
            out[field], i = _struct(buf, i)
        else:
            i = _skip(buf, i, kind)


def read_page_header(fh: IO[bytes], offset: int) -> tuple[PageHeader, int]:
    """The page header at ``offset`` and its length in bytes."""
    want = 256
    while True:
        fh.seek(offset)
        buf = fh.read(want)
        try:
            fields, length = _struct(buf, 0)
            break
        except IndexError:  # the header is longer than what was read (big statistics)
            if len(buf) < want or want >= 1 << 24:
                raise ValueError(f"truncated Parquet page header at byte {offset}") from None
            want *= 4
    kind = fields.get(1)
    v1, dictionary, v2 = fields.get(5) or {}, fields.get(7) or {}, fields.get(8) or {}
    if kind == _DATA_PAGE_V2:
        header = PageHeader(
            kind,
            fields[2],
            fields[3],
            v2.get(1, 0),
            v2.get(4, _PLAIN),
            v2.get(5, 0),
            v2.get(6, 0),
            v2.get(7, True),
        )
    else:
        part = dictionary if kind == _DICTIONARY_PAGE else v1
        header = PageHeader(kind, fields[2], fields[3], part.get(1, 0), part.get(2, _PLAIN))
    return header, length


def page_headers(fh: IO[bytes], chunk: Any) -> Iterator[tuple[PageHeader, int]]:
    """(header, offset of its body) of each page of a column chunk (``ColumnChunkMetaData``);
    reads the headers only."""
    starts = [chunk.data_page_offset]
    if chunk.has_dictionary_page and chunk.dictionary_page_offset:
        starts.append(chunk.dictionary_page_offset)
    offset = min(starts)
    end = offset + chunk.total_compressed_size
    while offset < end:
        header, length = read_page_header(fh, offset)
        yield header, offset + length
        offset += length + header.compressed


# ---- page bodies -------------------------------------------------------------------------


class _Window:
    """``length`` bytes of ``fh`` from its current position, as a file to stream from."""

    closed = False

    def __init__(self, fh: IO[bytes], length: int) -> None:
        self.fh, self.left = fh, length

    def read(self, n: int = -1) -> bytes:
        n = self.left if n is None or n < 0 else min(n, self.left)
        data = self.fh.read(n) if n else b""
        self.left -= len(data)
        return data

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True


def _exact(stream: Any, n: int) -> bytes:
    parts, left = [], n
    while left:
        data = stream.read(left)
        if not data:
            raise ValueError(f"Parquet page ends {left} bytes early")
        parts.append(bytes(data))
        left -= len(data)
    return b"".join(parts)


def _rest(stream: Any) -> bytes:
    parts = []
    while data := stream.read(SKIP_CHUNK):
        parts.append(bytes(data))
    return b"".join(parts)


def rle_hybrid(buf: bytes, bit_width: int, count: int) -> list[int]:
    """``count`` values of Parquet's RLE / bit-packed hybrid encoding."""
    out: list[int] = []
    i, mask, width = 0, (1 << bit_width) - 1, (bit_width + 7) // 8
    while len(out) < count and i < len(buf):
        header, i = _varint(buf, i)
        if header & 1:  # bit-packed: groups of 8 values
            groups = header >> 1
            packed = int.from_bytes(buf[i : i + groups * bit_width], "little")
            i += groups * bit_width
            out.extend((packed >> (k * bit_width)) & mask for k in range(groups * 8))
        else:
            value = int.from_bytes(buf[i : i + width], "little")
            i += width
            out.extend([value] * (header >> 1))
    if len(out) < count:
        raise ValueError(f"RLE run holds {len(out)} of {count} values")
    return out[:count]


class _Page:
    """The decompressed body of one page as a stream (``read``)."""

    def __init__(self, fh: IO[bytes], body: int, header: PageHeader, codec: str) -> None:
        fh.seek(body)
        raw = _Window(fh, header.compressed)
        self.levels = _exact(raw, header.def_bytes + header.rep_bytes)[header.rep_bytes :]
        if codec == "UNCOMPRESSED" or not header.compressed_values:
            self.stream: Any = raw
        elif codec in STREAMING_CODECS:
            self.stream = pa.CompressedInputStream(
                pa.PythonFile(raw, mode="r"), STREAMING_CODECS[codec]
            )
        elif codec in WHOLE_CODECS:
            size = header.uncompressed - len(self.levels) - header.rep_bytes
            data = pa.Codec(WHOLE_CODECS[codec]).decompress(
                _rest(raw), decompressed_size=size, asbytes=True
            )
            self.stream = pa.BufferReader(data)
        else:
            raise UnsupportedPageError(f"Parquet codec {codec} on a page over the read budget")

    def read(self, n: int) -> bytes:
        return _exact(self.stream, n)

    def value(self, max_bytes: int | None) -> bytes | Refused:
        """The next PLAIN BYTE_ARRAY value (4-byte length, then the bytes); one over
        ``max_bytes`` is read through and dropped."""
        (size,) = struct.unpack("<I", self.read(4))
        if max_bytes is None or size <= max_bytes:
            return self.read(size)
        head = self.read(min(HEAD, size))
        left = size - len(head)
        while left:
            left -= len(self.read(min(SKIP_CHUNK, left)))
        return Refused(size, head)

    def rest(self) -> bytes:
        return _rest(self.stream)


def chunk_values(
    fh: IO[bytes], chunk: Any, max_def: int, max_bytes: int | None
) -> Iterator[bytes | Refused | None]:
    """Each row's value of one BYTE_ARRAY column chunk (not repeated): its bytes, ``None``
    (null at any level) or :class:`Refused` (over ``max_bytes``), read page by page with at
    most one value held (plus a dictionary's kept values)."""
    codec = str(chunk.compression).upper()
    dictionary: list[bytes | Refused] = []
    for header, body in page_headers(fh, chunk):
        if header.kind not in (_DATA_PAGE, _DICTIONARY_PAGE, _DATA_PAGE_V2):
            continue  # an index page: nothing to read
        page = _Page(fh, body, header, codec)
        if header.kind == _DICTIONARY_PAGE:
            if header.encoding not in (_PLAIN, _PLAIN_DICTIONARY):
                raise UnsupportedPageError(f"dictionary page encoding {header.encoding}")
            dictionary = [page.value(max_bytes) for _ in range(header.num_values)]
            continue
        n = header.num_values
        if max_def == 0:
            present = [True] * n
        else:
            width = max_def.bit_length()
            if header.kind == _DATA_PAGE:
                (length,) = struct.unpack("<I", page.read(4))
                levels = rle_hybrid(page.read(length), width, n)
            else:
                levels = rle_hybrid(page.levels, width, n)
            present = [level == max_def for level in levels]
        if header.encoding == _PLAIN:
            for here in present:
                yield page.value(max_bytes) if here else None
        elif header.encoding in (_PLAIN_DICTIONARY, _RLE_DICTIONARY):
            rest = page.rest()
            indices = rle_hybrid(rest[1:], rest[0], sum(present)) if rest else []
            values = iter(indices)
            for here in present:
                yield dictionary[next(values)] if here else None
        else:
            raise UnsupportedPageError(f"data page encoding {header.encoding} over the read budget")


def largest_page(fh: IO[bytes], chunk: Any) -> int:
    """The largest uncompressed page of a column chunk, from its page headers."""
    return max((h.uncompressed for h, _ in page_headers(fh, chunk)), default=0)
