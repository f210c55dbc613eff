"""One schema for every part of a table, after any sequence of runs.

A part's own columns are typed by the writer (:func:`vqpipe.schema.to_arrow`); carried input
columns take their types from the input, so two parts can disagree: a member or column absent
from one shard, a column all null in one part (written as Arrow's ``null`` type), a manifest
column that holds integers one night and text the next. At the end of every run the table's
schema is unified and the parts that differ are rewritten to it (atomically, fenced):

- a column missing from a part is added as nulls; a ``null``-typed column takes the table's
  type, or ``string`` when no part knows one;
- types that differ widen the same way every time: integers and floats → ``double``;
  anything else → ``string`` (numbers as their text, lists and structs as JSON);
- columns keep the order they first appear in (parts in name order).

The pass (:mod:`vqpipe.storage.schema_pass`) takes the parts' schemas from the resume scan
(which reads every part) and from the writers' summary rows, so it reads no footer of its own
and rewrites only parts that differ.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.compute as pc


def canonical_type(t: pa.DataType) -> pa.DataType:
    """``t`` as a Parquet round trip leaves it comparable: list items named ``item`` (Parquet
    names them ``element``, Arrow ``item``: the same column), nested fields nullable."""
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        value = canonical_type(t.value_type)
        return pa.list_(value) if pa.types.is_list(t) else pa.large_list(value)
    if pa.types.is_fixed_size_list(t):
        return pa.list_(canonical_type(t.value_type), t.list_size)
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, canonical_type(f.type)) for f in t])
    if pa.types.is_map(t):
        return pa.map_(canonical_type(t.key_type), canonical_type(t.item_type))
    return t


def canonical(schema: pa.Schema) -> pa.Schema:
    """``schema`` without metadata, every field nullable and of its canonical type."""
    return pa.schema([pa.field(f.name, canonical_type(f.type)) for f in schema])


def encode_schema(schema: pa.Schema) -> str:
    """A schema (:func:`canonical`) as text, to travel in summary rows."""
    return base64.b64encode(canonical(schema).serialize().to_pybytes()).decode()


def decode_schema(text: str) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text)))


def _numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t)


def widen(types: Iterable[pa.DataType]) -> pa.DataType:
    """The one type for a column the parts type as ``types`` (see the module docstring)."""
    known = {t for t in types if not pa.types.is_null(t)}
    if not known:
        return pa.string()
    if len(known) == 1:
        return known.pop()
    if all(_numeric(t) for t in known):
        return pa.float64()
    return pa.string()


def unified_schema(schemas: Iterable[pa.Schema]) -> pa.Schema:
    """The table's schema over its parts' ``schemas`` (in part order; types compared as
    :func:`canonical_type`)."""
    order: dict[str, list[pa.DataType]] = {}
    for schema in schemas:
        for field in schema:
            order.setdefault(field.name, []).append(canonical_type(field.type))
    return pa.schema([(name, widen(types)) for name, types in order.items()])


def _as_text(column: pa.ChunkedArray) -> pa.Array:
    try:
        return pc.cast(column, pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return pa.array(
            [None if v is None else json.dumps(v, default=str) for v in column.to_pylist()],
            pa.string(),
        )


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with exactly ``schema``'s columns, in its order and types (its metadata kept)."""
    arrays = []
    for field in schema:
        if field.name not in table.column_names:
            arrays.append(pa.nulls(len(table), field.type))
            continue
        column = table.column(field.name)
        if canonical_type(column.type) == field.type:
            arrays.append(column.cast(field.type))
        elif pa.types.is_string(field.type):
            arrays.append(_as_text(column))
        else:
            arrays.append(pc.cast(column, field.type))
    out = pa.Table.from_arrays(arrays, schema=schema)
    return out.replace_schema_metadata(table.schema.metadata)
