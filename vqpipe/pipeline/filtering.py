"""``vqpipe filter``: the keep list of a quality table, as one Parquet file.

Built on ``pyarrow.dataset`` and ``pyarrow.compute`` expressions rather than pandas: the table
is streamed part by part (no whole-table DataFrame), every column keeps its Arrow type
(``list<float>`` probabilities, int64 sizes with nulls — pandas would turn those into objects
and floats), and SQL-style null semantics come for free: a comparison with a null is null and
the row is not kept. ``--where`` takes a Python / pandas-``query``-style expression that is
parsed (never evaluated) into such an expression.
"""

from __future__ import annotations

import ast
import difflib
import json
import os
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from vqpipe.errors import UserError
from vqpipe.io.fs import is_local, url_to_fs
from vqpipe.schema import ERROR, METADATA_KEY
from vqpipe.storage.table_files import table_parts, table_schema

FILTER_METADATA_KEY = b"vqpipe.filter"
"""Key-value metadata of a keep list: source table, ``--where``, percentile and counts."""
KEEP_FILE = "keep.parquet"
"""The file written when ``--out`` is a directory."""

_COMPARE = {
    ast.Eq: lambda a, b: a == b,
    ast.NotEq: lambda a, b: a != b,
    ast.Lt: lambda a, b: a < b,
    ast.LtE: lambda a, b: a <= b,
    ast.Gt: lambda a, b: a > b,
    ast.GtE: lambda a, b: a >= b,
}
_ARITH = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
}
_METHODS = {
    "isna": lambda e: e.is_null(),
    "isnull": lambda e: e.is_null(),
    "notna": lambda e: ~e.is_null(),
    "notnull": lambda e: ~e.is_null(),
}


@dataclass
class _Where:
    text: str
    columns: list[str]

    def fail(self, why: str) -> UserError:
        return UserError(f"--where {self.text!r}: {why}")

    def column(self, name: str) -> pc.Expression:
        if name not in self.columns:
            close = difflib.get_close_matches(name, self.columns, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise self.fail(f"no column {name!r}{hint} (columns: {', '.join(self.columns)})")
        return pc.field(name)

    def value(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            return [self.value(e) for e in node.elts]
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -self.value(node.operand)
        raise self.fail(f"expected a constant, got {ast.unparse(node)!r}")

    def build(self, node: ast.AST) -> Any:
        if isinstance(node, ast.BoolOp):
            parts = [self.build(v) for v in node.values]
            out = parts[0]
            for part in parts[1:]:
                out = (out & part) if isinstance(node.op, ast.And) else (out | part)
            return out
        if isinstance(node, ast.BinOp) and type(node.op) in (ast.BitAnd, ast.BitOr):
            left, right = self.build(node.left), self.build(node.right)
            return (left & right) if isinstance(node.op, ast.BitAnd) else (left | right)
        if isinstance(node, ast.BinOp) and type(node.op) in _ARITH:
            return _ARITH[type(node.op)](self.build(node.left), self.build(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.Invert)):
            return ~self.build(node.operand)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            operand = self.build(node.operand)
            return pc.negate(operand) if isinstance(operand, pc.Expression) else -operand
        if isinstance(node, ast.Compare):
            return self.compare(node)
        if isinstance(node, ast.Name):
            return self.column(node.id)
        if isinstance(node, ast.Constant):
            return node.value
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in _METHODS
            and not node.args
        ):
            return _METHODS[node.func.attr](self.build(node.func.value))
        raise self.fail(
            f"{ast.unparse(node)!r} is not supported (use columns, constants, comparisons, "
            "in [...], and/or/not, + - * /, COLUMN.isna(), COLUMN.notna())"
        )

    def compare(self, node: ast.Compare) -> pc.Expression:
        out, left = None, node.left
        for op, right in zip(node.ops, node.comparators, strict=True):
            if isinstance(op, (ast.In, ast.NotIn)):
                values = self.value(right)
                if not isinstance(values, list):
                    raise self.fail(f"'in' needs a list, e.g. [1, 2], not {ast.unparse(right)!r}")
                test = self.build(left).isin(values)
                test = ~test if isinstance(op, ast.NotIn) else test
            elif type(op) in _COMPARE:
                test = _COMPARE[type(op)](self.build(left), self.build(right))
            else:
                raise self.fail(f"operator {type(op).__name__} is not supported")
            out = test if out is None else out & test
            left = right
        return out


def parse_where(text: str, columns: list[str]) -> pc.Expression:
    """``"gamma_score >= 0.6 and media_type == 'image'"`` → a ``pyarrow.compute`` expression
    (pandas ``query`` syntax: ``and``/``&``, ``or``/``|``, ``not``/``~``, chained comparisons,
    ``in [..]``, arithmetic, ``col.isna()``). Unknown columns and syntax errors are a
    :class:`UserError`; nothing is evaluated as Python."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        where = f" at character {exc.offset}" if exc.offset and exc.offset > 1 else ""
        raise UserError(f"--where {text!r}: {exc.msg}{where}") from None
    try:
        expression = _Where(text, columns).build(tree.body)
    except (TypeError, pa.ArrowException) as exc:
        raise UserError(f"--where {text!r}: {str(exc).splitlines()[0]}") from None
    if not isinstance(expression, pc.Expression):
        raise UserError(f"--where {text!r}: not a condition on a column")
    return expression


def _merged_metadata(schemas: list[pa.Schema]) -> dict[bytes, bytes]:
    """The parts' ``vqpipe.job`` record, with the ``runtime`` of every part merged."""
    records = [
        json.loads(s.metadata[METADATA_KEY])
        for s in schemas
        if s.metadata and METADATA_KEY in s.metadata
    ]
    if not records:
        return {}
    merged = dict(records[0])
    runtime: dict[str, list[Any]] = {}
    for record in records:
        for column, entries in (record.get("runtime") or {}).items():
            seen = runtime.setdefault(column, [])
            seen.extend(e for e in entries if e not in seen)
    merged["runtime"] = runtime
    return {METADATA_KEY: json.dumps(merged, sort_keys=True).encode()}


def output_path(out: str, storage_options: dict[str, Any] | None = None) -> str:
    """``--out`` as a file: an existing directory or a trailing ``/`` means ``out/keep.parquet``."""
    if out.endswith(("/", os.sep)):
        return out + KEEP_FILE
    fs, path = url_to_fs(out, storage_options)
    try:
        is_dir = fs.isdir(path)
    except Exception:
        is_dir = False
    return f"{out.rstrip('/')}/{KEEP_FILE}" if is_dir else out


def _percentile(text: str, columns: list[str]) -> tuple[str, float]:
    column, sep, value = text.rpartition(":")
    try:
        p = float(value)
    except ValueError:
        p = -1.0
    if not sep or not 0 <= p <= 100:
        raise UserError(f"--percentile {text!r}: use COLUMN:P with 0 <= P <= 100")
    if column not in columns:
        close = difflib.get_close_matches(column, columns, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UserError(f"--percentile {text!r}: no column {column!r}{hint}")
    return column, p


def filter_table(
    table: str,
    out: str,
    where: str | None = None,
    percentile: str | None = None,
    storage_options: dict[str, Any] | None = None,
    normalize: str | None = None,
    group: str | None = None,
) -> dict[str, Any]:
    """Write the rows of ``table`` (a job's output directory or one Parquet file) that have no
    error and pass ``where`` and ``percentile`` (``COLUMN:P``: at or above the P-th percentile
    of that column among those rows; nulls are never kept) to ``out`` with every column and the
    parts' ``vqpipe.job`` metadata; returns ``{kept, rows, failed, threshold, out}``.

    ``normalize`` (``group-zscore`` | ``group-rank``, per ``group``) first adds
    ``<column>_normalized`` for every ``<column>_score`` over the rows without an error (see
    :mod:`vqpipe.rewards.normalize`); ``where`` and ``percentile`` may use those columns."""
    fs, parts = table_parts(table, storage_options)
    schema, schemas = table_schema(fs, parts, table)
    data = pads.dataset(parts, schema=schema, format="parquet", filesystem=fs)
    clean = pc.field(ERROR).is_null() if ERROR in schema.names else pc.scalar(True)
    normalizer = _normalizer(data, schema, clean, normalize, group)
    if normalizer is not None:
        for name in normalizer.outputs:
            schema = schema.append(pa.field(name, pa.float64()))
    columns = schema.names
    keep = parse_where(where, columns) if where else None
    threshold = None
    try:
        rows = data.count_rows()
        failed = data.count_rows(filter=~pc.field(ERROR).is_null()) if ERROR in columns else 0
        if percentile:
            column, p = _percentile(percentile, columns)
            if normalizer is None:  # one column read, filtered by the scan
                full = clean if keep is None else clean & keep
                values = data.to_table(columns=[column], filter=full).column(column)
            else:
                picked = [t.select([column]) for t in _rows(data, clean, keep, normalizer)]
                empty = pa.chunked_array([], type=schema.field(column).type)
                values = pa.concat_tables(picked).column(column) if picked else empty
            if values.null_count == len(values):
                raise UserError(f"--percentile {percentile!r}: {column} has no values to rank")
            threshold = pc.quantile(values, q=p / 100.0, skip_nulls=True)[0].as_py()
            cut = pc.field(column) >= threshold
            keep = cut if keep is None else keep & cut
        target = output_path(out, storage_options)
        provenance = {
            "source": table,
            "where": where,
            "percentile": percentile,
            "threshold": threshold,
            **({"normalize": normalize, "group": group} if normalize else {}),
        }
        batches = _rows(data, clean, keep, normalizer)
        kept = _write(batches, schema, schemas, target, storage_options, provenance)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        what = f"--where {where!r}" if where else "filter"
        raise UserError(f"{what}: {str(exc).splitlines()[0]}") from None
    return {"kept": kept, "rows": rows, "failed": failed, "threshold": threshold, "out": target}


def _normalizer(
    data: pads.Dataset,
    schema: pa.Schema,
    clean: pc.Expression,
    method: str | None,
    group: str | None,
) -> Any:
    """``--normalize`` with ``--group``: the per-group statistics, read from the group and
    score columns of the rows without an error."""
    if method is None:
        if group is not None:
            raise UserError("--group is the grouping of --normalize: give --normalize too")
        return None
    from vqpipe.rewards.normalize import GroupNormalizer

    if group is None:
        raise UserError(f"--normalize {method}: name the group column with --group")
    if group not in schema.names:
        close = difflib.get_close_matches(group, schema.names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UserError(f"--group {group!r}: no such column{hint}")
    scores = [c for c in schema.names if c.endswith("_score")]
    if not scores:
        raise UserError("--normalize: the table has no <scorer>_score column")
    stats = data.to_table(columns=[group, *scores], filter=clean)
    return GroupNormalizer(stats, group, scores, method)


def _rows(
    data: pads.Dataset, clean: pc.Expression, keep: pc.Expression | None, normalizer: Any
) -> Iterator[pa.RecordBatch | pa.Table]:
    """The rows without an error that pass ``keep``, batch by batch; with ``normalizer``
    its columns are added before ``keep`` is applied (so it can use them)."""
    if normalizer is None:
        full = clean if keep is None else clean & keep
        yield from data.scanner(filter=full).to_batches()
        return
    for batch in data.scanner(filter=clean).to_batches():
        table = normalizer(batch)
        yield table if keep is None else table.filter(keep)


def _write(
    batches: Iterable[pa.RecordBatch | pa.Table],
    schema: pa.Schema,
    schemas: list[pa.Schema],
    target: str,
    storage_options: dict[str, Any] | None,
    provenance: dict[str, Any],
) -> int:
    """Stream ``batches`` into ``target`` (local: a temporary file renamed into place);
    returns the rows written."""
    fs, path = url_to_fs(target, storage_options)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    kept = 0
    metadata = _merged_metadata(schemas)
    provenance_bytes = json.dumps(provenance, sort_keys=True, default=str).encode()
    local = is_local(fs)
    tmp = f"{parent}/.tmp-{uuid.uuid4().hex}.parquet" if local and parent else path
    try:
        if parent:
            fs.makedirs(parent, exist_ok=True)
    except Exception as exc:
        raise UserError(f"cannot write {target}: {type(exc).__name__}: {exc}") from None
    try:
        with fs.open(tmp if local else path, "wb") as fh:
            final = schema.with_metadata({**metadata, FILTER_METADATA_KEY: provenance_bytes})
            with pq.ParquetWriter(fh, final) as writer:
                for batch in batches:
                    if batch.num_rows:
                        writer.write(batch)
                        kept += batch.num_rows
        if local and tmp != path:
            os.replace(tmp, path)
    except (IsADirectoryError, PermissionError, NotADirectoryError, FileNotFoundError) as exc:
        raise UserError(f"cannot write {target}: {type(exc).__name__}: {exc}") from None
    finally:
        if local and tmp != path and os.path.exists(tmp):
            os.remove(tmp)
    return kept
