"""Which quality-table row each MOS row is about: one rule for ``eval``, ``calibrate``, ``fuse``.

MOS tables name their items as they ship: full URIs, paths relative to the dataset's folder
(KonIQ, SPAQ, KADID), or bare file names. A MOS key matches a table URI, in this order, each
step on the rows still unmatched on both sides:

1. ``uri``: the same string;
2. ``path``: the same location once both are canonical — a relative key joined to
   ``mos_root`` (a local folder or a URI prefix), ``file://`` stripped, local paths absolute
   with the symlinks of their folders resolved;
3. ``basename``: the same file name, when that name is unique among the table's URIs *and*
   among the MOS keys; a name held by several rows on either side is not matched
   (``ambiguous``: counted and reported, never guessed).
"""

from __future__ import annotations

import functools
import os
import posixpath
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

STEPS = ("uri", "path", "basename")


@dataclass
class MosMatch:
    """Index pairs (table row, MOS row) and how many matched by each rule."""

    table_index: np.ndarray
    mos_index: np.ndarray
    by: dict[str, int] = field(default_factory=dict)  # rule → matched pairs
    ambiguous: int = 0  # MOS keys left unmatched because their basename is not unique
    table_rows: int = 0
    mos_rows: int = 0

    def __len__(self) -> int:
        return len(self.mos_index)

    def note(self) -> str:
        """One line: matched counts by rule, what is left over on each side."""
        rules = ", ".join(f"{n} by {rule}" for rule, n in self.by.items() if n)
        text = (
            f"matched {len(self)} of {self.mos_rows} MOS rows ({rules or 'none'}); "
            f"{self.mos_rows - len(self)} MOS rows and {self.table_rows - len(self)} table "
            "rows without a match"
        )
        if self.ambiguous:
            text += f"; {self.ambiguous} MOS keys with a basename held by several rows"
        return text


def canonical(location: str, root: str | None = None) -> str:
    """``location`` as one spelling: joined to ``root`` when relative, ``file://`` stripped,
    local paths absolute with the folders' symlinks resolved, URIs as they are."""
    text = str(location)
    if text.startswith("file://"):
        text = text[len("file://") :]
    if "://" in text:
        return text
    if root is not None and not os.path.isabs(text):
        base = str(root)
        if base.startswith("file://"):
            base = base[len("file://") :]
        if "://" in base:
            return base.rstrip("/") + "/" + posixpath.normpath(text).lstrip("/")
        text = os.path.join(base, text)
    if root is None and not os.path.isabs(text):
        return text  # a relative key without a root: only its basename can match
    head, tail = os.path.split(os.path.abspath(text))
    return os.path.join(_real_dir(head), tail)


@functools.lru_cache(maxsize=4096)
def _real_dir(folder: str) -> str:
    """Symlinks resolved once per folder (a table of a million files has few folders)."""
    return os.path.realpath(folder)


def basename(location: str) -> str:
    return posixpath.basename(str(location).rstrip("/").split("?", 1)[0])


def match_mos(
    table_uris: Sequence[str] | Iterable[str],
    mos_keys: Sequence[str] | Iterable[str],
    mos_root: str | None = None,
) -> MosMatch:
    """Match MOS keys to table URIs by the rules of the module docstring; each row is matched
    at most once."""
    uris = [str(u) for u in table_uris]
    keys = [str(k) for k in mos_keys]
    pairs: list[tuple[int, int]] = []
    by = dict.fromkeys(STEPS, 0)
    free_t = set(range(len(uris)))
    free_m = list(range(len(keys)))

    def take(rule: str, table_key: dict[str, int], key_of: dict[int, str]) -> None:
        nonlocal free_m
        left = []
        for m in free_m:
            t = table_key.get(key_of[m]) if m in key_of else None
            if t is not None and t in free_t:
                pairs.append((t, m))
                free_t.discard(t)
                by[rule] += 1
            else:
                left.append(m)
        free_m = left

    exact = {u: i for i, u in enumerate(uris)}
    take("uri", exact, {m: keys[m] for m in free_m})
    if free_m:
        canon_t = _unique({t: canonical(uris[t]) for t in free_t})
        canon_m = {m: canonical(keys[m], mos_root) for m in free_m}
        take("path", canon_t, canon_m)
    ambiguous = 0
    if free_m and free_t:
        names_t = Counter(basename(u) for u in uris)
        names_m = Counter(basename(k) for k in keys)
        by_name = {basename(uris[t]): t for t in free_t if names_t[basename(uris[t])] == 1}
        unique_m = {}
        for m in free_m:
            name = basename(keys[m])
            if names_m[name] == 1 and names_t[name] == 1:
                unique_m[m] = name
            elif names_t[name] >= 1 and (names_m[name] > 1 or names_t[name] > 1):
                ambiguous += 1
        take("basename", by_name, unique_m)
    pairs.sort(key=lambda p: p[1])
    return MosMatch(
        np.array([p[0] for p in pairs], dtype=np.int64),
        np.array([p[1] for p in pairs], dtype=np.int64),
        by,
        ambiguous,
        len(uris),
        len(keys),
    )


def _unique(values: dict[int, str]) -> dict[str, int]:
    """Value → row for values held by one row only (two URIs of one file match nothing)."""
    counts = Counter(values.values())
    return {v: k for k, v in values.items() if counts[v] == 1}


def no_match_message(uris: Sequence[str], keys: Sequence[str], mos_root: str | None) -> str:
    """The one-line error of zero matches: an example of each side and what to try."""
    table_example = next(iter(uris), "(no rows)")
    mos_example = next(iter(keys), "(no rows)")
    hint = (
        f"--mos-root {mos_root} did not help: check that it is the folder the MOS paths are "
        "relative to"
        if mos_root
        else "if the MOS table lists paths relative to a dataset folder, give --mos-root FOLDER"
    )
    return (
        f"no MOS row matches a table row (by uri, by path or by unique basename): the table "
        f"has e.g. {table_example!r}, the MOS table e.g. {mos_example!r}; {hint}"
    )
