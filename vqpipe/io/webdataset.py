"""WebDataset tar shards → one record per sample, streamed, errors as records.

Not Ray Data's ``read_webdataset``: a truncated or corrupt tar fails its whole read task there
(``tarfile.ReadError``, retried, then the dataset errors), and the samples read before the damage
are lost with it (seen with Ray 2.60). The job promises one row per sample and a trace for
every shard, so the tar is read here with ``tarfile`` in stream mode (``r|*``, plain or
gzip/bz2/xz) over an fsspec file: members are grouped into samples by WebDataset's key
rule, each sample is yielded as soon as its last member is read, and damage becomes one error
record for the shard. Memory holds one sample's members (media bounded by ``max_bytes``,
sidecars by ``max_sidecar_bytes``; other members are skipped unread), never the tar.

Record contract (every key always present):

- ``uri`` ``"<shard>#<key>"`` (unique per row), ``shard`` (the tar URI), ``key`` (``__key__``:
  the member path up to the first dot of its base name, like webdataset's ``base_plus_ext``)
- ``media_type`` ``"image"`` / ``"video"`` (from the media member's extension) or None
- ``media_member`` (its extension, e.g. ``"jpg"``), ``data`` (its bytes), ``bytes`` (its size)
- ``txt`` (``.txt`` as UTF-8 text), ``cls`` (``.cls`` as int, None when it does not parse),
  ``json`` (``.json`` raw text), opt-in ``json_<field>`` (``flatten_json``)
- ``members``: the sample's member extensions in tar order
- ``error``: None, or ``"read: …"`` (no media member, media over ``max_bytes``, a key that
  appears twice, the shard damaged or unreadable).

Shard-level damage (truncated tar, bad header, unreadable object, a store error that outlived
the retries of ``open_input`` and s3fs): after the records of every
sample read before it, ONE record with ``key = "@<offset>"`` and ``uri = "<shard>#@<offset>"``,
where ``<offset>`` is the byte offset in the (uncompressed) tar stream of the member header at
which reading failed (0 when the shard could not be opened at all). The error names the offset,
the member, how many samples came before, and the sample the damage cut (which gets no record
of its own). A tar that simply stops without the end-of-archive marker counts as truncated;
``tarfile`` alone would end silently there. The error text names the exception (``ReadError``,
``FileNotFoundError``, ``ConnectionError`` …), so a job can retry shards whose error is transient.
"""

from __future__ import annotations

import contextlib
import json
import posixpath
import re
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from vqpipe.io.fs import is_transient
from vqpipe.io.media_types import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS
from vqpipe.io.records import batched, describe, open_input

IMAGE_MEMBERS = frozenset(e.lstrip(".") for e in IMAGE_EXTENSIONS)
VIDEO_MEMBERS = frozenset(e.lstrip(".") for e in VIDEO_EXTENSIONS)
MEDIA_MEMBERS = IMAGE_MEMBERS | VIDEO_MEMBERS
SIDECAR_MEMBERS = frozenset({"txt", "cls", "json"})
DEFAULT_MAX_SIDECAR_BYTES = 16 * 1024 * 1024
DEFAULT_BATCH_BYTES = 128 * 1024 * 1024
LINK_HELD_BYTES = 4 * 1024 * 1024
"""Bytes of recently read members a compressed tar keeps for link members that name them
(see ``_LinkTargets``; an uncompressed tar reads a link's target again by its byte range)."""

WEBDATASET_TYPES: dict[str, pa.DataType] = {
    "uri": pa.string(),
    "shard": pa.string(),
    "key": pa.string(),
    "media_type": pa.string(),
    "media_member": pa.string(),
    "data": pa.binary(),
    "bytes": pa.int64(),
    "txt": pa.string(),
    "cls": pa.int64(),
    "json": pa.string(),
    "members": pa.list_(pa.string()),
    "error": pa.string(),
}
"""Arrow types of the fixed columns (``json_*`` columns are inferred)."""

_KEY_RE = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


def split_key(name: str) -> tuple[str | None, str | None]:
    """``(key, extension)`` of a member name, as webdataset's ``base_plus_ext``:
    ``"a/000.seg.png"`` → ``("a/000", "seg.png")``; ``(None, None)`` without a dot."""
    match = _KEY_RE.match(name)
    return (match.group(1), match.group(2)) if match else (None, None)


class _TracingTarInfo(tarfile.TarInfo):
    """Records why ``tarfile`` stopped: past offset 0 it treats a missing, short or invalid
    header as the end of the archive without raising, which would hide a truncated shard."""

    @classmethod
    def fromtarfile(cls, tarfile_obj):  # type: ignore[override]
        try:
            return super().fromtarfile(tarfile_obj)
        except tarfile.EOFHeaderError:  # a zero block: the proper end-of-archive marker
            raise
        except (
            tarfile.EmptyHeaderError,
            tarfile.TruncatedHeaderError,
            tarfile.InvalidHeaderError,
        ) as exc:
            kind = {
                "EmptyHeaderError": "archive ends without an end-of-archive marker",
                "TruncatedHeaderError": "truncated header",
            }.get(type(exc).__name__, f"invalid header ({exc})")
            tarfile_obj._vqpipe_stop = (tarfile_obj.offset, kind)
            raise


@dataclass
class _Sample:
    key: str  # the record's key (``<key>@<offset>`` for a key seen before in the shard)
    raw_key: str  # the key in the member names
    offset: int
    order: list[str] = field(default_factory=list)
    payload: dict[str, bytes] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    error: str | None = None


def _flatten(value: Any, name: str, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(v, f"{name}_{k}", out)
    elif isinstance(value, list):
        out[name] = json.dumps(value)
    else:
        out[name] = value


def _json_fields(text: str | None, fields: bool | Sequence[str], prefix: str) -> dict[str, Any]:
    if isinstance(fields, str):
        fields = [fields]
    wanted = None if fields is True else list(fields)  # type: ignore[arg-type]
    out: dict[str, Any] = {} if wanted is None else {prefix + f: None for f in wanted}
    try:
        parsed = json.loads(text) if text is not None else None
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        for k, v in parsed.items():
            if wanted is None or k in wanted:
                _flatten(v, prefix + str(k), out)
    return out


def _record(
    shard: str,
    sample: _Sample,
    *,
    media_member: str | None,
    max_bytes: int | None,
    flatten_json: bool | Sequence[str],
    json_prefix: str,
) -> dict[str, Any]:
    payload = sample.payload
    record: dict[str, Any] = {
        "uri": f"{shard}#{sample.key}",
        "shard": shard,
        "key": sample.key,
        "media_type": None,
        "media_member": None,
        "data": None,
        "bytes": None,
        "txt": None,
        "cls": None,
        "json": None,
        "members": list(sample.order),
        "error": sample.error,
    }
    if "txt" in payload:
        record["txt"] = payload["txt"].decode("utf-8", errors="replace")
    if "cls" in payload:
        with contextlib.suppress(ValueError):
            record["cls"] = int(payload["cls"].decode("utf-8", errors="replace").strip())
    if "json" in payload:
        record["json"] = payload["json"].decode("utf-8", errors="replace")
    if flatten_json:
        record.update(_json_fields(record["json"], flatten_json, json_prefix))
    media = [e for e in sample.order if e in MEDIA_MEMBERS]
    if media_member is not None:
        media = [e for e in sample.order if e == media_member]
    if not media:
        wanted = f"{media_member!r} member" if media_member else "media member"
        have = ", ".join(sample.order) or "none"
        record["error"] = record["error"] or f"read: sample has no {wanted} (members: {have})"
        return record
    ext = media[0]
    record["media_member"] = ext
    record["media_type"] = "video" if ext in VIDEO_MEMBERS else "image"
    record["bytes"] = sample.sizes[ext]
    if ext in payload:
        record["data"] = payload[ext]
    elif record["error"] is None:
        record["error"] = (
            f"read: member {sample.key}.{ext} has {sample.sizes[ext]} bytes, "
            f"over the limit of {max_bytes}"
        )
    return record


def _compressed(tar: tarfile.TarFile) -> bool:
    """Whether a stream-mode tar is compressed (then a member cannot be read by its offset)."""
    return getattr(tar.fileobj, "comptype", "tar") != "tar"


class _LinkTargets:
    """The members a tar's link members can name: hard links (``tar`` writes one for a file
    already in the archive) and symbolic links (relative to the link's folder). A stream is
    read once: a target is read again by its byte range (uncompressed tars: one ranged read)
    or, in a compressed tar, taken from the members read last (at most
    :data:`LINK_HELD_BYTES` held); a target that is not earlier in the tar, or gone by in a
    compressed one, is an error."""

    def __init__(self, shard: str, storage_options: dict[str, Any] | None, compressed: bool):
        self.shard, self.storage_options, self.compressed = shard, storage_options, compressed
        self.where: dict[str, tuple[int, int]] = {}  # member name → (data offset, size)
        self.held: dict[str, bytes] = {}  # the members read last, oldest first
        self.held_bytes = 0

    def hold(self, name: str, data: bytes) -> None:
        if not self.compressed or len(data) > LINK_HELD_BYTES:
            return
        self.held[name] = data
        self.held_bytes += len(data)
        while self.held_bytes > LINK_HELD_BYTES and self.held:
            self.held_bytes -= len(self.held.pop(next(iter(self.held))))

    def note(self, info: tarfile.TarInfo) -> None:
        self.where[info.name] = (info.offset_data, info.size)

    def resolve(self, info: tarfile.TarInfo) -> tuple[bytes, str | None]:
        """The target's bytes, or why there are none."""
        target = info.linkname
        if info.issym():
            target = posixpath.normpath(posixpath.join(posixpath.dirname(info.name), target))
        kind = "hard link" if info.islnk() else "symlink"
        if target in self.held:
            return self.held[target], None
        if target not in self.where:
            return b"", f"is a {kind} to {info.linkname!r}, not a file earlier in the tar"
        if self.compressed:
            return b"", f"is a {kind} to {target!r}, too far back in a compressed tar"
        offset, size = self.where[target]
        with open_input(self.shard, self.storage_options) as fh:
            fh.seek(offset)
            data = fh.read(size)
        if len(data) != size:
            return b"", f"is a {kind} to {target!r}, whose data is cut short"
        return data, None


def _damage_record(shard: str, offset: int, message: str) -> dict[str, Any]:
    record = dict.fromkeys(WEBDATASET_TYPES)
    record.update(
        uri=f"{shard}#@{offset}", shard=shard, key=f"@{offset}", members=[], error=message
    )
    return record


def iter_webdataset(
    shard_uri: str,
    storage_options: dict[str, Any] | None = None,
    *,
    max_bytes: int | None = None,
    max_sidecar_bytes: int | None = DEFAULT_MAX_SIDECAR_BYTES,
    media_member: str | None = None,
    flatten_json: bool | Sequence[str] = False,
    json_prefix: str = "json_",
    open_kwargs: dict[str, Any] | None = None,
) -> Iterator[dict[str, Any]]:
    """One record per sample of a WebDataset tar (contract in the module docstring).

    ``media_member``: the extension to score (``"mp4"``); default: the sample's first media
    member in tar order. ``flatten_json``: True → every ``.json`` field as ``json_<field>``
    (nested objects joined with ``_``, lists as JSON text); a list of names → only those, always
    present (a stable schema). ``open_kwargs`` go to ``fs.open`` (``block_size``, …).
    """
    if flatten_json and not json_prefix:
        raise ValueError("json_prefix must not be empty (it keeps json fields off our columns)")
    media_member = media_member.lower().lstrip(".") if media_member else None
    if media_member is not None and media_member not in MEDIA_MEMBERS:
        known = ", ".join(sorted(MEDIA_MEMBERS))
        raise ValueError(f"media_member {media_member!r}: one of {known}")
    shard = str(shard_uri)
    opts = dict(
        media_member=media_member,
        max_bytes=max_bytes,
        flatten_json=flatten_json,
        json_prefix=json_prefix,
    )
    sample: _Sample | None = None
    seen: set[str] = set()
    count = 0
    current: tarfile.TarInfo | None = None  # the member last started
    in_data = False
    tar: tarfile.TarFile | None = None
    try:
        with (
            open_input(shard, storage_options, **(open_kwargs or {})) as fh,
            tarfile.open(fileobj=fh, mode="r|*", tarinfo=_TracingTarInfo) as tar_,
        ):
            tar = tar_  # kept for the error handler below (offset, why it stopped)
            links = _LinkTargets(shard, storage_options, _compressed(tar_))
            for info in tar:
                tar.members = []  # stream mode keeps every TarInfo otherwise (as webdataset)
                if not (info.isreg() or info.islnk() or info.issym()):
                    continue
                current = info
                name = info.name
                if "/" not in name and name.startswith("__") and name.endswith("__"):
                    continue  # webdataset's metadata members
                key, ext = split_key(name)
                if key is None or ext is None:
                    continue
                ext = ext.lower()
                if sample is None or key != sample.raw_key:
                    if sample is not None:
                        yield _record(shard, sample, **opts)
                        count += 1
                    sample = _Sample(key=key, raw_key=key, offset=info.offset)
                    if key in seen:
                        sample.key = f"{key}@{info.offset}"
                        sample.error = (
                            f"read: key {key!r} appears again at byte offset {info.offset} "
                            "(its members are not contiguous in the tar)"
                        )
                    seen.add(key)
                if ext in sample.sizes:
                    sample.error = sample.error or f"read: duplicate member {name} in the sample"
                    continue
                sample.order.append(ext)
                sample.sizes[ext] = info.size
                limit = (
                    max_bytes
                    if ext in MEDIA_MEMBERS
                    else max_sidecar_bytes
                    if ext in SIDECAR_MEMBERS
                    else -1
                )
                if not info.isreg():  # a hard or symbolic link: the member it names
                    data, why = links.resolve(info)
                    if why is not None:
                        sample.error = sample.error or f"read: member {name} {why}"
                        continue
                    sample.sizes[ext] = len(data)
                    if limit != -1 and (limit is None or len(data) <= limit):
                        sample.payload[ext] = data
                    continue
                links.note(info)
                if limit == -1 or (limit is not None and info.size > limit):
                    continue  # not read: tarfile skips its data on the next header
                in_data = True
                member = tar.extractfile(info)
                sample.payload[ext] = member.read() if member is not None else b""
                links.hold(name, sample.payload[ext])
                in_data = False
            stop = getattr(tar, "_vqpipe_stop", None)
            if stop is not None:
                raise tarfile.ReadError(stop[1]) from None
            if sample is not None:
                yield _record(shard, sample, **opts)
                count += 1
            return
    except Exception as exc:
        if is_transient(exc):  # a store outage or stall: the job's shard error row, transient
            raise
        damage = exc
    # Where it broke: inside a member's data (that sample is cut), or at a header.
    message = describe(damage)
    stop = getattr(tar, "_vqpipe_stop", None) if tar is not None else None
    cut_data = in_data or (
        current is not None and stop is None and "unexpected end of data" in message
    )
    if tar is None:
        offset, where = 0, "cannot open or read the shard"
    elif cut_data and current is not None:
        offset, where = current.offset, f"in member {current.name}"
    else:
        offset = stop[0] if stop is not None else tar.offset
        where = "at a member header"
    if stop is not None:
        message = stop[1]
    lost = ""
    if sample is not None and cut_data and split_key(current.name)[0] == sample.raw_key:
        lost = f"; sample {sample.key!r} cut"
    elif sample is not None:
        yield _record(shard, sample, **opts)
        count += 1
    yield _damage_record(
        shard,
        offset,
        f"read: tar damaged at byte offset {offset} ({where}): {message}; "
        f"{count} sample(s) read before it{lost}",
    )


def iter_webdataset_batches(
    shard_uri: str,
    storage_options: dict[str, Any] | None = None,
    *,
    batch_rows: int = 256,
    batch_bytes: int = DEFAULT_BATCH_BYTES,
    **kwargs: Any,
) -> Iterator[pa.Table]:
    """``iter_webdataset`` as Arrow tables of at most ``batch_rows`` rows (cut early past
    ``batch_bytes`` of media); fixed columns typed as ``WEBDATASET_TYPES``."""
    records = iter_webdataset(shard_uri, storage_options, **kwargs)
    yield from batched(
        records, batch_rows=batch_rows, batch_bytes=batch_bytes, types=WEBDATASET_TYPES
    )
