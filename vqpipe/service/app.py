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
import collections
import os
import threading
import warnings
from typing import Any

from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from vqpipe.errors import DemoCheckpointWarning
from vqpipe.pipeline.config import ScorerOptions
from vqpipe.service.body import Item
from vqpipe.service.column import ColumnInfo, ColumnScorer, Prepared, column_info
from vqpipe.service.config import DEFAULT_BATCH_WAIT_MS, ServiceConfig, config_from_args
from vqpipe.service.routes import LOADING, READY, Routes, UnavailableError

APP_NAME = "vqpipe"
INGRESS_ONGOING = 256  # requests in flight through the ingress (each up to max_request_bytes)
LOAD_WAIT_S = 1800.0  # a request that arrives while the scorer loads waits this long at most


@serve.deployment
class ScorerReplica:
    """One replica of a column's scorer. The scorer loads in a thread, so that the replica is
    up at once and ``/healthz`` can say "loading"; requests that come meanwhile wait for it.
    Items are read and decoded in threads (concurrently, as they arrive) and the decoded ones
    of every request in flight are scored together, ``max_batch_size`` at most, after waiting
    ``batch_wait_timeout_s`` for a batch to fill."""

    def __init__(self, spec: ScorerOptions, config: ServiceConfig) -> None:
        self.spec = spec
        self.config = config
        self.scorer: ColumnScorer | None = None
        self.failure: str | None = None
        self.loaded = threading.Event()
        self.batch_sizes: collections.Counter[int] = collections.Counter()
        self.score_batch.set_max_batch_size(spec.batch_size)
        self.score_batch.set_batch_wait_timeout_s(config.batch_wait_ms / 1000)
        threading.Thread(target=self._load, name="vqpipe-load", daemon=True).start()

    def _load(self) -> None:
        try:
            with warnings.catch_warnings():  # the CLI says so once, on its console
                warnings.simplefilter("ignore", DemoCheckpointWarning)
                self.scorer = ColumnScorer(
                    self.spec,
                    self.config.storage_options,
                    self.config.limits,
                    self.config.video_fps,
                )
        except Exception as exc:
            self.failure = f"{type(exc).__name__}: {exc}".splitlines()[0]
        finally:
            self.loaded.set()

    def state(self) -> str:
        """``ready``, ``loading`` or ``failed: <why>``."""
        if not self.loaded.is_set():
            return LOADING
        return READY if self.failure is None else f"failed: {self.failure}"

    def check_health(self) -> None:
        """Serve's health check: a replica whose scorer failed to load is replaced."""
        if self.failure is not None:
            raise RuntimeError(f"scorer {self.spec.column!r} failed to load: {self.failure}")

    def stats(self) -> dict[str, Any]:
        sizes = self.batch_sizes
        return {
            "replica": os.getpid(),
            "batches": sum(sizes.values()),
            "items": sum(k * v for k, v in sizes.items()),
            "max_batch_size": max(sizes, default=0),
            "batch_sizes": {str(k): v for k, v in sorted(sizes.items())},
            "configured_batch_size": self.spec.batch_size,
            "batch_wait_ms": self.config.batch_wait_ms,
        }

    async def score(self, items: list[Item]) -> dict[str, Any]:
        """``{"results": [(score, error), ...]}`` for ``items``, or ``{"unavailable": why}``
        (a plain answer, not an exception: it crosses the handle as it is)."""
        if not self.loaded.is_set():
            await asyncio.to_thread(self.loaded.wait, LOAD_WAIT_S)
        if self.scorer is None:
            why = self.failure or f"still loading after {LOAD_WAIT_S:g} s"
            return {"unavailable": f"scorer {self.spec.column!r} is not available: {why}"}
        scorer = self.scorer
        prepared = await asyncio.gather(*(asyncio.to_thread(scorer.prepare, i) for i in items))
        results = await asyncio.gather(*(self._score_one(p) for p in prepared))
        return {"results": list(results)}

    async def _score_one(self, prepared: Prepared) -> tuple[float | None, str | None]:
        if prepared[1] is not None:  # read / decode error: answered without the model
            return None, prepared[1]
        return await self.score_batch(prepared)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=DEFAULT_BATCH_WAIT_MS / 1000)
    async def score_batch(self, batch: list[Prepared]) -> list[tuple[float | None, str | None]]:
        self.batch_sizes[len(batch)] += 1
        assert self.scorer is not None
        return await asyncio.to_thread(self.scorer.score, batch)


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

    async def health(self) -> tuple[int, dict[str, Any]]:
        """``/healthz`` through a handle (what the CLI waits on)."""
        return await self.routes.health()

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


def replica_options(spec: ScorerOptions) -> dict[str, Any]:
    """A column's deployment options: fixed replicas (``actors=N``) or autoscaling between
    ``actors=MIN-MAX`` on requests in flight; GPUs and CPUs per replica; enough requests in
    flight per replica to fill a batch twice."""
    low, high = spec.actors
    options: dict[str, Any] = {
        "name": f"scorer_{spec.column}",
        "ray_actor_options": {
            "num_cpus": spec.num_cpus if spec.num_cpus is not None else 1.0,
            "num_gpus": spec.num_gpus,
        },
        "max_ongoing_requests": max(2 * spec.batch_size, 16),
    }
    if low == high:
        options["num_replicas"] = low
    else:
        options["autoscaling_config"] = {
            "min_replicas": low,
            "max_replicas": high,
            "target_ongoing_requests": max(spec.batch_size, 2),
        }
    return options


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
