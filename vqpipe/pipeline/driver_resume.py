"""A resume of a ``files`` listing with nothing left, settled on the driver without Ray: the
URIs already written read from the parts' footers and columns, the input tree listed by the
listing tasks' own code, both with bounded concurrency (threads: the work is I/O, and an
object store answers each request in tens of milliseconds)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Any, TypeVar

from vqpipe.pipeline.shards import listing_tables
from vqpipe.storage import QualityTable

THREADS = 16
"""Listings and part reads in flight at once on the driver."""

T = TypeVar("T")


def _each(fn: Callable[[Any], T], items: Iterable[Any]) -> list[T]:
    items = list(items)
    if len(items) <= 1:
        return [fn(i) for i in items]
    with ThreadPoolExecutor(min(THREADS, len(items))) as pool:
        return list(pool.map(fn, items))


def done_uris(table: QualityTable, parts: list[str], max_rows: int) -> dict[str, str | None] | None:
    """URI → content version over ``parts`` (:meth:`QualityTable.uri_versions`), or None when
    their footers count more than ``max_rows`` rows (too many for the driver)."""
    rows = 0
    with ThreadPoolExecutor(THREADS) as pool:
        for count in pool.map(lambda p: table.rows([p]), parts):
            rows += count
            if rows > max_rows:  # the footers not read yet are not waited for
                pool.shutdown(wait=False, cancel_futures=True)
                return None
    done: dict[str, str | None] = {}
    for versions in _each(lambda p: table.uri_versions([p]), parts):
        done.update(versions)
    return done


def listing_left(
    tasks: list[dict[str, str]], options: dict[str, Any], storage_options: dict[str, Any]
) -> int:
    """Input rows of the listing ``tasks`` not in ``options["done"]``: each task listed as its
    Ray task would list it (the ``top-`` one: only the files directly in the folder), a few
    at a time; stops at the first task that has any (a positive count, not the total)."""

    def left(task: dict[str, str]) -> int:
        task_options = {**options, "top": task["id"].startswith("top-")}
        return sum(len(t) for t in listing_tables(task["uri"], task_options, storage_options))

    if len(tasks) <= 1:
        return sum(left(t) for t in tasks)
    with ThreadPoolExecutor(min(THREADS, len(tasks))) as pool:
        pending = {pool.submit(left, t) for t in tasks}
        try:
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                found = sum(f.result() for f in finished)
                if found:
                    return found
        finally:
            for future in pending:
                future.cancel()
    return 0
