"""The Ray Serve application of ``vqpipe serve``: one deployment per scorer column
(:class:`ScorerReplica`, dynamic batching with ``@serve.batch``, its own replicas, GPUs and
autoscaling) behind one ingress (:class:`Ingress`, the HTTP routes of
:mod:`vqpipe.service.routes`).

:func:`build_app` makes the application from a
:class:`~vqpipe.service.config.ServiceConfig` (what the CLI builds);
:func:`app_builder` makes it from a Serve config file's ``args`` (a RayService's
``serveConfigV2``: ``import_path: vqpipe.service.app:app_builder``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from vqpipe.pipeline.config import ScorerOptions
from vqpipe.service.body import Item
from vqpipe.service.column import ColumnInfo, Prepared, column_info
from vqpipe.service.config import (
    DEFAULT_BATCH_WAIT_MS,
    ServiceConfig,
    config_from_args,
    replica_options,
)
from vqpipe.service.replica import Result, ScorerWorker
from vqpipe.service.routes import Routes, UnavailableError

APP_NAME = "vqpipe"
INGRESS_ONGOING = 256  # requests in flight through the ingress (each up to max_request_bytes)


@serve.deployment
class ScorerReplica(ScorerWorker):
    """One replica of a column's scorer (:class:`~vqpipe.service.replica.ScorerWorker`): the
    decoded items of every request in flight are scored together, ``max_batch_size`` at most
    (the pool's ``batch_size``), after waiting ``batch_wait_timeout_s`` for a batch to fill."""

    def __init__(self, spec: ScorerOptions, config: ServiceConfig) -> None:
        super().__init__(spec, config)
        self.score_batch.set_max_batch_size(spec.batch_size)
        self.score_batch.set_batch_wait_timeout_s(config.batch_wait_ms / 1000)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=DEFAULT_BATCH_WAIT_MS / 1000)
    async def score_batch(self, batch: list[Prepared]) -> list[Result]:  # type: ignore[override]
        return await self.run_batch(batch)


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=INGRESS_ONGOING)
class Ingress:
    """The HTTP entry: :class:`~vqpipe.service.routes.Routes` over the columns' handles. It
    only waits on the scorers, so it takes many requests at once (Serve's default of 5 would
    keep the scorers' batches at 5 one-item requests)."""

    def __init__(self, scorers: dict[str, Any], infos: dict[str, ColumnInfo], config: Any) -> None:
        self.handles = scorers
        self.routes = Routes(
            infos,
            self._score,
            self._states,
            self._stats,
            config.max_request_bytes,
            config.max_items,
            config.uri_prefixes,
        )

    async def __call__(self, request: Request) -> JSONResponse:
        headers = {k.lower(): v for k, v in request.headers.items()}
        status, payload = await self.routes.handle(
            request.method, request.url.path, headers, request.stream()
        )
        return JSONResponse(payload, status_code=status)

    async def _score(self, column: str, items: list[Item]) -> list[Any]:
        answer = await self.handles[column].score.remote(items)
        if "unavailable" in answer:
            raise UnavailableError(answer["unavailable"])
        return answer["results"]

    async def _states(self) -> dict[str, str]:
        columns = list(self.handles)
        states = await asyncio.gather(
            *(self.handles[c].state.remote() for c in columns), return_exceptions=True
        )
        return {
            c: s if isinstance(s, str) else f"failed: {type(s).__name__}: {s}".splitlines()[0]
            for c, s in zip(columns, states, strict=True)
        }

    async def _stats(self) -> dict[str, Any]:
        columns = list(self.handles)
        stats = await asyncio.gather(*(self.handles[c].stats.remote() for c in columns))
        return dict(zip(columns, stats, strict=True))


def build_app(config: ServiceConfig) -> Any:
    """The Serve application (``serve.run`` it): a scorer deployment per column, the ingress."""
    infos = {spec.column: column_info(spec) for spec in config.scorers}
    scorers = {
        spec.column: ScorerReplica.options(**replica_options(spec)).bind(spec, config)
        for spec in config.scorers
    }
    return Ingress.bind(scorers, infos, config)


def app_builder(args: dict[str, Any]) -> Any:
    """:func:`build_app` from a Serve config's ``args`` (a RayService's ``serveConfigV2``; the
    keys: :func:`~vqpipe.service.config.config_from_args`)."""
    return build_app(config_from_args(args))
