"""A scoring job's plan, made on the driver before Ray Data runs: the shards of sharded inputs
(with their byte offsets), the listing tasks of a folder of files, and the work left after what
the output already holds (:func:`plan_work`: committed shards skipped, written URIs dropped, on
the driver for small outputs, else by a distributed anti-join)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from typing import Any

from vqpipe.errors import UserError
from vqpipe.io.fs import is_local, join_uri, url_to_fs
from vqpipe.io.patterns import has_magic
from vqpipe.io.sources import list_level, sidecars
from vqpipe.pipeline import driver_resume, runner
from vqpipe.pipeline.cascade import SKIPPED
from vqpipe.pipeline.column_types import unified_types
from vqpipe.pipeline.config import JobConfig
from vqpipe.pipeline.runner import Work
from vqpipe.pipeline.shards import (
    LISTING,
    LISTING_PART_ROWS,
    SHARD_FRAGMENT_ROWS,
    SHARDED_FORMATS,
    Shard,
    listing_tables,
    shard_id,
)
from vqpipe.schema import (
    BYTES,
    CONTENT_VERSION,
    ERROR,
    ERROR_KIND,
    MEDIA_COLUMNS,
    MEDIA_TYPE,
    SHARD_COLUMNS,
    URI,
    extra_column,
    output_columns,
)
from vqpipe.storage import QualityTable
from vqpipe.storage.names import JOB_RECORD, is_job_artifact
from vqpipe.storage.parts import parse_part
from vqpipe.storage.retry import Scan, drop_retryable

log = logging.getLogger(__name__)


def fragment_rows(config: JobConfig, kind: str) -> int:
    """Rows per fragment (the output part of a commit unit): ``--rows-per-file``, else
    :data:`LISTING_PART_ROWS` for a listing of files and :data:`SHARD_FRAGMENT_ROWS` for a
    sharded input."""
    if config.rows_per_file is not None:
        return config.rows_per_file
    return SHARD_FRAGMENT_ROWS if kind in SHARDED_FORMATS else LISTING_PART_ROWS


JOIN_PARTITIONS = 64


DRIVER_RESUME_MAX_PARTS = 64


DRIVER_RESUME_MAX_ROWS = 100_000
"""A listing resumed over at most this many parts holding at most this many rows reads their
URIs on the driver and drops them in the listing tasks; past it, a distributed anti-join."""


def _driver_resumable(table: QualityTable, parts: list[str]) -> bool:
    """Whether the URIs of ``parts`` are few enough for the driver (their footers say)."""
    return len(parts) <= DRIVER_RESUME_MAX_PARTS and table.rows(parts) <= DRIVER_RESUME_MAX_ROWS


def read_options(config: JobConfig, rows: int) -> dict[str, Any]:
    """The readers' options of this job (:class:`vqpipe.io.readers.ReadOptions`' fields) with
    ``rows`` rows per table at most."""
    return {
        "spec": config.input,
        "include": list(config.include),
        "exclude": list(config.exclude),
        "since": config.since,
        "output": _output_uri(config),
        "limit": config.limit,
        "rows": rows,
        "max_bytes": config.limits.max_bytes,
        "read_timeout_s": config.limits.read_timeout_s,
        "uri_column": config.uri_column,
        "media_column": config.media_column,
        "key_column": config.key_column,
        "root": config.root,
        "reserved": sorted(output_names(config)),
    }


def _output_uri(config: JobConfig) -> str:
    """The output in the style listed inputs are written in (to keep it out of the input);
    a local one with symlinks resolved, as the input is (:func:`canonical_input`)."""
    fs, root = url_to_fs(config.output, config.storage_options)
    if is_local(fs):
        root = os.path.realpath(root)
    return join_uri(fs, root.rstrip("/"), config.output)


def _inside(uri: str, output: str) -> bool:
    base = output.rstrip("/")
    return uri == base or uri.startswith(base + "/")


def plan_shards(config: JobConfig, kind: str) -> list[Shard]:
    """The input's shards of ``kind`` (sorted, with their content versions), the job's own
    output excluded."""
    from vqpipe.io.input_format import input_shard_versions

    try:
        found = input_shard_versions(config.input, kind, config.storage_options)
    except (ValueError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from None
    output = _output_uri(config)
    shards = [
        Shard(u, kind, shard_id(u), version)
        for u, version in found.items()
        if not _inside(u, output) and not _inside(u, config.output)
    ]
    if not shards:  # nothing of that kind: say so before anything is written
        raise UserError(f"--input-format {kind}: {config.input} holds no {_kind_names(kind)}")
    return with_offsets(shards, config.storage_options) if kind == "parquet" else shards


def with_offsets(shards: list[Shard], storage_options: dict[str, Any]) -> list[Shard]:
    """Parquet / Arrow shards with the rows before each in its dataset (:func:`dataset_of`),
    so ``row_index`` numbers a dataset's rows over its files in URI order, as
    ``datasets.load_dataset`` / ``load_from_disk`` do. The offset is part of the shard's
    version: a file added before it moves its rows' indexes, so they are written again. When
    a file cannot be counted (its reading task gives it an error row), every shard indexes
    within its own file."""
    from vqpipe.io.input_format import shard_rows

    try:
        counts = shard_rows([s.uri for s in shards], storage_options)
    except Exception as exc:  # a shard that cannot be read: indexes within each file
        log.warning("row_index within each file: cannot count rows (%s)", exc)
        return shards
    out, offsets = [], {}
    for shard, count in zip(shards, counts, strict=True):
        group = dataset_of(shard.uri)
        offset = offsets.get(group, 0)
        version = None if shard.version is None else f"{shard.version};rows-before:{offset}"
        out.append(dataclasses.replace(shard, version=version, offset=offset, rows=count))
        offsets[group] = offset + count
    return out


_SPLIT_FILE = re.compile(r"^(.*?)-\d+-of-\d+\.[^/]*$")


def dataset_of(uri: str) -> tuple[str, str]:
    """The dataset (one split) a Parquet / Arrow file belongs to, as ``datasets`` groups files:
    its folder and, for files named ``<split>-00000-of-00004.parquet``, the split
    (``train-…`` and ``test-…`` beside each other are two)."""
    folder, _, name = uri.rpartition("/")
    match = _SPLIT_FILE.match(name)
    return folder, match.group(1) if match else ""


def _kind_names(kind: str) -> str:
    from vqpipe.io.input_format import FORMAT_SUFFIXES

    suffixes = ", ".join(FORMAT_SUFFIXES.get(kind) or ())
    what = {"webdataset": "WebDataset shards", "parquet": "Parquet files"}.get(kind, "tables")
    return f"{what} ({suffixes})"


def plan_listing(config: JobConfig) -> tuple[list[dict[str, str]], dict[str, int]]:
    """A ``files`` input as listing tasks, and what the driver counted: for a folder, one task
    for the files directly in it and one per subfolder (symlinked ones too; listed
    recursively by a Ray task, while scoring goes on), the driver reading only the top level,
    never a row per item below it; a single file or a glob is one task. The count is the top
    level's sidecars (:func:`~vqpipe.io.sources.listed_rows`)."""
    try:
        fs, root = url_to_fs(config.input, config.storage_options)
        named = has_magic(root) or (not fs.isdir(root) and fs.isfile(root))
        is_dir = named or fs.isdir(root)
    except Exception as exc:
        raise UserError(f"cannot list input {config.input}: {type(exc).__name__}: {exc}") from None
    if not is_dir:
        raise UserError(f"input is not a directory, a manifest or a shard: {config.input}")
    root = root.rstrip("/")
    if named:
        return [{"uri": config.input, "format": LISTING, "id": f"paths-{shard_id(root)}"}], {}
    output = _output_uri(config)
    tasks = [{"uri": config.input, "format": LISTING, "id": f"top-{shard_id(root)}"}]
    files, folders = list_level(fs, root)
    skipped = len(sidecars(files, folders))
    table_here = JOB_RECORD in {f.rsplit("/", 1)[-1] for f in files}
    for folder in folders:
        name = folder.rsplit("/", 1)[-1]
        if table_here and is_job_artifact(name):  # a quality table's own folders
            continue
        uri = join_uri(fs, folder, config.input)
        if not _inside(uri, output):
            tasks.append({"uri": uri, "format": LISTING, "id": f"dir-{shard_id(uri)}"})
    return tasks, {"sidecars_skipped": skipped} if skipped else {}


def plan_work(
    config: JobConfig,
    kind: str,
    sig: str,
    parts: list[str],
    scan: Scan | None = None,
    shards: list[Shard] | None = None,
) -> Work:
    """Shards not committed yet or changed (:func:`vqpipe.pipeline.runner.plan_sharded`), or
    the listing tasks of a prefix; a listing small enough for the driver is checked against
    the written parts here (URIs and content versions), so a resume with nothing to do never
    starts Ray. ``scan``: what the resume scan found (:mod:`vqpipe.storage.retry`);
    ``shards``: the input's, when the caller listed them already."""
    scan = scan or Scan()
    table = QualityTable(config.output, config.storage_options)
    if kind in SHARDED_FORMATS:
        shards = shards if shards is not None else plan_shards(config, kind)
        work = runner.plan_sharded(table, shards, sig, parts, scan)
        todo = work.source
        if kind == "manifest" and todo and len(shards) > 1:
            if not runner.all_parquet(shards):
                runner.start_ray(config)  # text manifests are read whole for their types
            options = read_options(config, fragment_rows(config, kind))
            types = unified_types(shards, options, config.storage_options)
            for record in todo if types else ():  # one type per column for every shard
                record["types"] = json.dumps(types)
        work.summary = {"input_format": kind, **work.summary}
        work.total = _planned_rows(config, kind, shards, {t["id"] for t in todo})
        if kind == "manifest" and len(shards) > 1:  # repeats across shards: removed after
            work.shard_ids = [s.id for s in shards]
        return work
    fs = table.fs
    source, counted = plan_listing(config)  # a prefix of files: resumed by an anti-join on uri
    done_parts = [p for p in parts if parse_part(p) is not None]
    # rows to score again are cut out of their parts first: their inputs are then not done
    retried = {p: drop_retryable(fs, p, config.retry_errors) for p in scan.retry if p in done_parts}
    done_parts = [p for p in done_parts if p not in retried or fs.exists(p)]
    work = Work(source, done_parts, None, {"input_format": kind, "listing_tasks": len(source)})
    work.summary.update(counted)
    work.replacing = bool(done_parts)
    if retried:
        work.summary["rows_retried"] = sum(retried.values())
    single = len(source) == 1 and source[0]["id"].startswith("top-")
    if done_parts and _listing_done(config, table, source, done_parts, work):
        work.source = []
        work.total = 0
    elif single:  # one level: its files left are the total (the status line's)
        try:
            done = {}
            if done_parts:
                done = (
                    table.uri_versions(done_parts) if _driver_resumable(table, done_parts) else None
                )
            left = None if done is None else _small_listing_left(config, done)
            work.total = _capped(left, config.limit)
        except Exception:  # the total is a courtesy; the listing task says what is wrong
            work.total = None
    return work


def _capped(total: int | None, limit: int | None) -> int | None:
    return total if total is None or limit is None else min(total, limit)


def _planned_rows(config: JobConfig, kind: str, shards: list[Shard], todo: set[str]) -> int | None:
    """The rows left to score when the shards' footers tell them (Parquet / Arrow inputs and
    Parquet manifests); None otherwise (tar shards, text manifests: counted up)."""
    from vqpipe.io.input_format import shard_rows

    left = [s for s in shards if s.id in todo]
    if kind == "manifest" and left and runner.all_parquet(left):
        try:
            counts = shard_rows([s.uri for s in left], config.storage_options)
        except Exception:  # the total is a courtesy; the shard's read says what is wrong
            return None
        left = [dataclasses.replace(s, rows=n) for s, n in zip(left, counts, strict=True)]
    if kind not in ("parquet", "manifest") or any(s.rows is None for s in left):
        return None
    return _capped(sum(s.rows or 0 for s in left), config.limit)


DRIVER_LISTING_MAX = 10_000
"""A listing whose top level holds at most this many entries is checked on the driver for
inputs left (one listing page on an object store) before Ray starts."""
DRIVER_LISTING_MAX_TASKS = 4096
"""... and has at most this many listing tasks (subfolders; listed a few at a time)."""
DRIVER_CHECK_MAX_PARTS = 4096
"""Parts whose URIs the driver reads (footers first, a few at a time) for that check."""


def _listing_done(
    config: JobConfig,
    table: QualityTable,
    source: list[dict[str, str]],
    parts: list[str],
    work: Work,
) -> bool:
    """Whether every input of the listing ``source`` is in ``parts`` already, settled on the
    driver without Ray (:mod:`vqpipe.pipeline.driver_resume`): the top level and each
    subfolder listed as its listing task would, stopping at the first input left. False when
    the table or the tree is too big for the driver (the listing tasks then resume on Ray)."""
    if len(parts) > DRIVER_CHECK_MAX_PARTS or len(source) > DRIVER_LISTING_MAX_TASKS:
        return False
    if source and source[0]["id"].startswith("paths-"):
        return False  # a file or glob: listed by its task
    fs, root = url_to_fs(config.input, config.storage_options)
    if len(fs.ls(root.rstrip("/"), detail=False)) > DRIVER_LISTING_MAX:
        return False
    done = driver_resume.done_uris(table, parts, DRIVER_RESUME_MAX_ROWS)
    if done is None:
        return False
    options = {**read_options(config, fragment_rows(config, LISTING)), "done": done}
    if driver_resume.listing_left(source, options, config.storage_options):
        return False
    work.summary["already_done"] = len(done)
    return True


def _small_listing_left(config: JobConfig, done: dict[str, str | None]) -> int | None:
    """Files of a prefix without subdirectories not written yet, counted on the driver by
    the listing task's own code; None when the prefix is too big for the driver."""
    fs, root = url_to_fs(config.input, config.storage_options)
    if len(fs.ls(root.rstrip("/"), detail=False)) > DRIVER_LISTING_MAX:
        return None
    options = {**read_options(config, fragment_rows(config, LISTING)), "done": done, "top": True}
    return sum(len(t) for t in listing_tables(config.input, options, config.storage_options))


def resume_filter(config: JobConfig, work: Work) -> tuple[Any, dict[str, str | None], int]:
    """The rows a listing already wrote: few parts → their URIs and content versions, dropped
    in the listing tasks (no shuffle); many → a Ray dataset of them for a distributed
    anti-join on both (on the URI alone when a part predates versions), and its partitions."""
    import ray

    table = QualityTable(config.output, config.storage_options)
    parts = work.done_parts
    if not parts:
        return None, {}, 1
    if _driver_resumable(table, parts):
        done_set = table.uri_versions(parts)
        work.summary["already_done"] = len(done_set)
        return None, done_set, 1
    keys = [URI, CONTENT_VERSION] if table.all_have(parts, CONTENT_VERSION) else [URI]
    done = ray.data.read_parquet(parts, filesystem=table.fs).select_columns(keys)
    work.summary["already_done"] = done.count()
    return done, {}, max(1, min(JOIN_PARTITIONS, len(parts) // 64))


def output_names(config: JobConfig) -> set[str]:
    """The quality table's own column names for this job (a carried column with one of them
    is kept as ``input_<name>``)."""
    names = {URI, MEDIA_TYPE, BYTES, CONTENT_VERSION, ERROR, ERROR_KIND}
    names.update(MEDIA_COLUMNS, SHARD_COLUMNS)
    for spec in config.scorers:
        names.update(output_columns(spec.column, spec.outputs()))
        if spec.when:
            names.add(extra_column(spec.column, SKIPPED))
    return names
