"""Cascaded scoring: the ``when=`` predicate that sends a row on to a scorer pool.

``--scorer 'qalign:when=gamma_score between 0.35 and 0.65'`` scores with Q-Align only the rows
whose Gamma score lies in the band; the others get NULL in the pool's columns and
``<column>_skipped`` = True. The grammar (keywords in any case)::

    expr  := term ("or" term)*
    term  := factor ("and" factor)*
    factor:= "not" factor | "(" expr ")" | COLUMN test
    test  := OP NUMBER | "between" NUMBER "and" NUMBER | "is" ["not"] "null"
    OP    := "<" | "<=" | ">" | ">=" | "==" | "=" | "!="

over the float columns of the pools listed *earlier* on the command line (``gamma_score``,
``qalign_quality_score``, …). Logic is SQL's three-valued one: a comparison with a NULL is
unknown, ``not`` of unknown is unknown, and a row matches only where the predicate is true, so a
row whose earlier scorer failed (NULL) is not sent on unless the predicate asks ``is null``.

Hand-written rather than :mod:`ast`: ``between`` and ``is null`` are not Python, and a
twenty-line recursive descent accepts exactly this grammar and nothing else (no ``eval``).
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vqpipe.errors import UserError

SKIPPED = "skipped"
"""``<column>_skipped``: True where the pool's ``when=`` was not true for the row."""

_TOKEN = re.compile(
    r"\s*(?:(?P<num>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)|(?P<op><=|>=|==|!=|<|>|=)"
    r"|(?P<paren>[()])|(?P<word>[A-Za-z_][A-Za-z0-9_]*))"
)
_KEYWORDS = {"and", "or", "not", "between", "is", "null"}
_OPS = {
    "<": np.less,
    "<=": np.less_equal,
    ">": np.greater,
    ">=": np.greater_equal,
    "==": np.equal,
    "=": np.equal,
    "!=": np.not_equal,
}

Node = tuple  # ("cmp", column, op, value) | ("between", column, lo, hi) | ("null", column,
# negated) | ("not", node) | ("and", a, b) | ("or", a, b)


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise ValueError(f"unexpected {text[pos:].strip()[:20]!r}")
        kind = match.lastgroup or ""
        value = match.group(kind)
        if kind == "word" and value.lower() in _KEYWORDS:
            kind, value = "kw", value.lower()
        out.append((kind, value))
        pos = match.end()
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens, self.at = _tokens(text), 0

    def peek(self) -> tuple[str, str]:
        return self.tokens[self.at] if self.at < len(self.tokens) else ("end", "")

    def take(self, kind: str, value: str | None = None) -> str:
        got = self.peek()
        if got[0] != kind or (value is not None and got[1] != value):
            want = value or {"num": "a number", "word": "a column", "op": "a comparison"}[kind]
            raise ValueError(f"expected {want}, got {got[1] or 'the end'!r}")
        self.at += 1
        return got[1]

    def parse(self) -> Node:
        node = self.expr()
        if self.peek()[0] != "end":
            raise ValueError(f"unexpected {self.peek()[1]!r}")
        return node

    def expr(self) -> Node:
        node = self.term()
        while self.peek() == ("kw", "or"):
            self.at += 1
            node = ("or", node, self.term())
        return node

    def term(self) -> Node:
        node = self.factor()
        while self.peek() == ("kw", "and"):
            self.at += 1
            node = ("and", node, self.factor())
        return node

    def factor(self) -> Node:
        if self.peek() == ("kw", "not"):
            self.at += 1
            return ("not", self.factor())
        if self.peek() == ("paren", "("):
            self.at += 1
            node = self.expr()
            self.take("paren", ")")
            return node
        column = self.take("word")
        kind, value = self.peek()
        if kind == "op":
            self.at += 1
            return ("cmp", column, value, float(self.take("num")))
        if (kind, value) == ("kw", "between"):
            self.at += 1
            lo = float(self.take("num"))
            self.take("kw", "and")
            return ("between", column, lo, float(self.take("num")))
        if (kind, value) == ("kw", "is"):
            self.at += 1
            negated = self.peek() == ("kw", "not")
            self.at += negated
            self.take("kw", "null")
            return ("null", column, negated)
        raise ValueError(f"expected a comparison, 'between' or 'is null' after {column!r}")


def _columns(node: Node) -> list[str]:
    if node[0] in ("and", "or"):
        return _columns(node[1]) + _columns(node[2])
    if node[0] == "not":
        return _columns(node[1])
    return [node[1]]


def _unparse(node: Node) -> str:
    kind = node[0]
    if kind in ("and", "or"):
        return f"({_unparse(node[1])} {kind} {_unparse(node[2])})"
    if kind == "not":
        return f"not {_unparse(node[1])}"
    if kind == "cmp":
        op = "==" if node[2] == "=" else node[2]
        return f"{node[1]} {op} {node[3]!r}"
    if kind == "between":
        return f"{node[1]} between {node[2]!r} and {node[3]!r}"
    return f"{node[1]} is {'not ' if node[2] else ''}null"


@dataclass(frozen=True)
class Predicate:
    """A parsed ``when=``: :attr:`columns` it reads, :attr:`canonical` text (what the job
    signature records, so ``0.35`` and ``.350`` are one predicate) and :meth:`evaluate`."""

    text: str
    node: Node

    @property
    def columns(self) -> list[str]:
        return list(dict.fromkeys(_columns(self.node)))

    @property
    def canonical(self) -> str:
        return _unparse(self.node)

    def evaluate(self, batch: Mapping[str, Any]) -> np.ndarray:
        """Bool per row: True where the predicate is true (NULL / NaN inputs: unknown → False)."""
        value, _ = _eval(self.node, batch)
        return value


def _floats(values: Any) -> np.ndarray:
    array = np.asarray(values)
    if array.dtype == object:
        array = np.array([np.nan if v is None else v for v in array], dtype=np.float64)
    return array.astype(np.float64, copy=False)


def _eval(node: Node, batch: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(true, known) per row: SQL's three-valued logic as two masks (true implies known)."""
    kind = node[0]
    if kind in ("cmp", "between", "null"):
        x = _floats(batch[node[1]])
        known = ~np.isnan(x)
        if kind == "null":
            isnull = ~known
            return (~isnull if node[2] else isnull), np.ones(len(x), bool)
        with np.errstate(invalid="ignore"):
            if kind == "cmp":  # noqa: SIM108
                true = _OPS[node[2]](x, node[3])
            else:  # between: both ends included, as SQL's
                true = (x >= node[2]) & (x <= node[3])
        return true & known, known
    if kind == "not":
        true, known = _eval(node[1], batch)
        return ~true & known, known
    (a, ka), (b, kb) = _eval(node[1], batch), _eval(node[2], batch)
    if kind == "and":
        return a & b, (ka & kb) | (ka & ~a) | (kb & ~b)
    return a | b, (ka & kb) | a | b


def parse_when(text: str) -> Predicate:
    """Parse a ``when=`` predicate; a syntax error is a one-line :class:`UserError`."""
    try:
        return Predicate(text, _Parser(text).parse())
    except ValueError as exc:
        raise UserError(f"when={text!r}: {exc} (see docs/cascade.md for the grammar)") from None


def check_cascades(scorers: Sequence[Any]) -> None:
    """Every ``when=`` reads only float columns of the pools listed before its own (a
    probabilities column, its own, a later pool's or an unknown column is a one-line
    :class:`UserError`), checked on the driver before Ray starts."""
    from vqpipe.schema import extra_column

    earlier: dict[str, str] = {}  # float column → its pool
    for index, spec in enumerate(scorers):
        if spec.when:
            later = {
                extra_column(s.column, key)
                for s in scorers[index:]
                for key in [*s.outputs(), *([SKIPPED] if s.when else [])]
            }
            for column in parse_when(spec.when).columns:
                if column in earlier:
                    continue
                if column in later:
                    why = "is written by this pool or one listed after it; list its pool first"
                elif any(column.startswith(f"{pool}_") for pool in set(earlier.values())):
                    why = "is not a score column (probabilities and flags cannot be compared)"
                else:
                    why = "is not a score column of an earlier pool"
                known = ", ".join(earlier) or "none: a when= pool needs another pool before it"
                raise UserError(
                    f"--scorer {spec.column}: when={spec.when!r}: column {column!r} {why} "
                    f"(columns: {known})"
                )
        for key, kind in spec.outputs().items():
            if kind == "float":
                earlier[extra_column(spec.column, key)] = spec.column


def gate(spec: Any, batch: Mapping[str, Any]) -> np.ndarray | None:
    """Rows ``spec``'s ``when=`` does not send on (bool per row), None for a pool without one."""
    if not getattr(spec, "when", None):
        return None
    from vqpipe.schema import extra_column

    flag = batch.get(extra_column(spec.column, SKIPPED))  # set by its gate stage
    if flag is not None:
        return np.asarray(flag, dtype=bool)
    return ~parse_when(spec.when).evaluate(batch)


CARRIED = "_cascade_rows"
"""Column in transit: on a block's one carrier row, the rows a ``when=`` gate held back from
its pool (pickled columns); empty bytes on every other row."""


def gate_batch(batch: dict[str, np.ndarray], spec: Any) -> Any:
    """Task stage before a ``when=`` pool: the rows its predicate does not send on leave the
    block, so the pool's actors never receive them (nor their pixels) and its batches are
    full of rows to score. They travel packed on one *carrier* row (:data:`CARRIED`; marked
    skipped, so no pool scores it) and are put back by :func:`restore_rows` before writing.
    Rows held back by an earlier gate are unpacked first: this predicate sees every row.

    Pickled, not an Arrow column of their own: the held rows keep whatever they hold (pixel
    arrays of later pools, probabilities) between our own stages, as Ray's object transfer
    would; nothing read from outside is unpickled."""
    from vqpipe.pipeline.pixels import to_block
    from vqpipe.schema import DEFER_PREFIX, INPUT_PREFIX, JPEG_PREFIX, extra_column

    batch = restore_rows(batch)
    n = len(batch["uri"])
    flag = extra_column(spec.column, SKIPPED)
    skipped = ~parse_when(spec.when).evaluate(batch)
    batch[flag] = skipped
    own = {INPUT_PREFIX + spec.column, JPEG_PREFIX + spec.column, DEFER_PREFIX + spec.column}
    out: dict[str, Any] = {}
    if skipped.any():
        held = {k: _take(v, skipped) for k, v in batch.items() if k not in own}
        keep = np.flatnonzero(~skipped)
        carrier = int(np.flatnonzero(skipped)[0])  # any row: its values stand in, it is dropped
        rows = np.append(keep, carrier)
        out = {k: _take(v, rows) for k, v in batch.items()}
        for name in own & set(out):  # the carrier sends the pool nothing to score
            column = np.empty(len(rows), dtype=object)
            column[:] = list(out[name])
            column[-1] = None if name.startswith(INPUT_PREFIX) else b""
            out[name] = column
        carried = np.full(len(rows), b"", dtype=object)
        carried[-1] = pickle.dumps(held, protocol=5)
        out[CARRIED] = carried
    else:
        out = dict(batch)
        out[CARRIED] = np.full(n, b"", dtype=object)
    return to_block(out, [k for k in out if k.startswith(INPUT_PREFIX)])


def restore_rows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The batch with its carrier rows replaced by the rows they hold (see
    :func:`gate_batch`): each held row keeps its own values, and takes the carrier's for the
    columns added since it was held (the pools it skipped: not scored, NULL)."""
    carried = batch.pop(CARRIED, None)
    if carried is None:
        return batch
    marks = [i for i, v in enumerate(carried) if v is not None and len(v)]
    if not marks:
        return batch
    keep = np.setdiff1d(np.arange(len(carried)), marks)
    parts = [{k: _take(v, keep) for k, v in batch.items()}]
    for i in marks:
        held = pickle.loads(bytes(carried[i]))
        m = len(held["uri"])
        parts.append(
            {
                k: held[k] if k in held else _take(v, np.full(m, i, np.int64))
                for k, v in batch.items()
            }
        )
    return {k: _concat([p[k] for p in parts]) for k in batch}


def _take(values: Any, rows: np.ndarray) -> Any:
    """Rows of a column (a boolean mask or indices), a list of arrays for a ragged pixel
    column (an object array of arrays, or a dense [B, T, ...] one)."""
    from vqpipe.pipeline.pixels import column_items

    array = np.asarray(values) if not hasattr(values, "to_numpy") else None
    if array is None:  # an Arrow array
        array = np.asarray(column_items(values), dtype=object)
    index = np.flatnonzero(rows) if rows.dtype == bool else rows
    if array.dtype == object:
        out = np.empty(len(index), dtype=object)
        out[:] = [array[i] for i in index]
        return out
    return array[index]


def _concat(columns: list[Any]) -> np.ndarray:
    """One column of several parts (object arrays stay object arrays of per-row values)."""
    if (
        any(np.asarray(c).dtype == object for c in columns)
        or len({np.asarray(c).shape[1:] for c in columns}) > 1
    ):
        values = [v for c in columns for v in c]
        out = np.empty(len(values), dtype=object)
        out[:] = values
        return out
    return np.concatenate([np.asarray(c) for c in columns])
