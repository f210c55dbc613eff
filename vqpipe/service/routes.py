"""The service's HTTP routes as plain async code: a request's method, path, headers and body
stream in, ``(status, JSON payload)`` out. The Serve ingress (:mod:`vqpipe.service.app`) only
adapts Starlette's request to it; the scorers are reached through the callables given.

* ``GET /healthz`` — 200 ``{"status": "ok", ...}`` once every column's scorer has loaded, 503
  while one is loading or after one failed to (the payload says which).
* ``POST /score/<column>`` — the items (:mod:`vqpipe.service.body`) → ``{"scores", "errors",
  "score_range", "higher_better"}``, one score or error per item, in order.
* ``GET /columns`` — every column's scorer, score range and direction.
* ``GET /stats`` — per column, the sizes of the batches its scorer ran (one replica's).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict
from typing import Any

from vqpipe.service.body import (
    DEFAULT_MAX_ITEMS,
    DEFAULT_MAX_REQUEST_BYTES,
    REMOTE_SCHEMES,
    Item,
    RequestError,
    parse_items,
)
from vqpipe.service.column import ColumnInfo

READY = "ready"
LOADING = "loading"

Results = list[tuple[float | None, str | None]]
ScoreFn = Callable[[str, list[Item]], Awaitable[Results]]
StatesFn = Callable[[], Awaitable[dict[str, str]]]
StatsFn = Callable[[], Awaitable[dict[str, Any]]]


class UnavailableError(Exception):
    """A column's scorer cannot answer (it failed to load): the request is answered 503."""


class Routes:
    """The routes of one service: ``columns`` it scores, and how to reach their scorers.

    ``score(column, items)``: one ``(score, error)`` per item (raises :class:`UnavailableError`);
    ``states()``: column → ``"ready"``, ``"loading"`` or ``"failed: <why>"``; ``stats()``:
    column → batch statistics.
    """

    def __init__(
        self,
        columns: dict[str, ColumnInfo],
        score: ScoreFn,
        states: StatesFn,
        stats: StatsFn,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        max_items: int = DEFAULT_MAX_ITEMS,
        uri_prefixes: Sequence[str] = REMOTE_SCHEMES,
    ) -> None:
        self.columns = columns
        self.score = score
        self.states = states
        self.stats = stats
        self.max_request_bytes = max_request_bytes
        self.max_items = max_items
        self.uri_prefixes = tuple(uri_prefixes)
        self.ready_once: set[str] = set()  # a column ready once stays ready (a replica added
        # by autoscaling loads while the others answer: health does not flap to 503)

    async def handle(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        body: AsyncIterator[bytes],
    ) -> tuple[int, dict[str, Any]]:
        """Answer one request (``headers`` with lower-case names)."""
        try:
            return await self._route(method.upper(), "/" + path.strip("/"), headers, body)
        except RequestError as exc:
            return exc.status, {"error": exc.message}
        except UnavailableError as exc:
            return 503, {"error": str(exc)}

    async def _route(
        self, method: str, path: str, headers: dict[str, str], body: AsyncIterator[bytes]
    ) -> tuple[int, dict[str, Any]]:
        if path == "/healthz":
            _allow(method, "GET")
            return await self.health()
        if path == "/columns":
            _allow(method, "GET")
            return 200, {"columns": {c: asdict(info) for c, info in self.columns.items()}}
        if path == "/stats":
            _allow(method, "GET")
            return 200, {"columns": await self.stats()}
        if path.startswith("/score/") and path.count("/") == 2:
            column = path.removeprefix("/score/")
            if column not in self.columns:
                known = ", ".join(self.columns)
                raise RequestError(404, f"no column {column!r} here (columns: {known})")
            _allow(method, "POST")
            data = await read_limited(body, headers.get("content-length"), self.max_request_bytes)
            items = parse_items(
                data, headers.get("content-type"), self.max_items, self.uri_prefixes
            )
            return 200, answer(self.columns[column], await self.score(column, items))
        raise RequestError(404, f"no route {path}: use POST /score/<column>, GET /healthz")

    async def health(self) -> tuple[int, dict[str, Any]]:
        states = await self.states()
        for column, state in states.items():
            if state == READY:
                self.ready_once.add(column)
            elif not state.startswith("failed") and column in self.ready_once:
                states[column] = READY
        ready = all(state == READY for state in states.values())
        failed = any(state.startswith("failed") for state in states.values())
        status = "ok" if ready else "failed" if failed else LOADING
        return (200 if ready else 503), {"status": status, "columns": states}


def _allow(method: str, allowed: str) -> None:
    if method != allowed and not (allowed == "GET" and method == "HEAD"):
        raise RequestError(405, f"method {method} not allowed here: use {allowed}")


async def read_limited(body: AsyncIterator[bytes], length: str | None, limit: int) -> bytes:
    """The request body, refused with 413 past ``limit`` bytes: from its Content-Length before
    reading, else as soon as the stream goes past it (nothing more is held)."""
    if length is not None and length.strip().isdigit() and int(length) > limit:
        raise RequestError(413, f"request of {int(length)} bytes: the limit is {limit} bytes")
    chunks, size = [], 0
    async for chunk in body:
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"request over {limit} bytes: the limit is {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def answer(info: ColumnInfo, results: Results) -> dict[str, Any]:
    """The JSON of a score request: one score (or null) and one error (or null) per item."""
    return {
        "scores": [score for score, _ in results],
        "errors": [error for _, error in results],
        "score_range": list(info.score_range),
        "higher_better": info.higher_better,
    }
