"""A column's scorer as a service replica runs it, without Ray Serve: :class:`ScorerWorker`
loads the scorer in a thread (so the replica is up at once and ``/healthz`` can say
"loading"), reads and decodes a request's items in threads as they arrive, and hands the
decoded ones one by one to :meth:`ScorerWorker.score_batch` — which the Serve deployment
(:class:`vqpipe.service.app.ScorerReplica`) wraps in ``@serve.batch``, so that the items of
every request in flight are scored together."""

from __future__ import annotations

import asyncio
import collections
import os
import threading
import warnings
from typing import Any

from vqpipe.errors import DemoCheckpointWarning
from vqpipe.pipeline.config import ScorerOptions
from vqpipe.service.body import Item
from vqpipe.service.column import ColumnScorer, Prepared
from vqpipe.service.config import ServiceConfig
from vqpipe.service.routes import LOADING, READY

LOAD_WAIT_S = 1800.0  # a request that arrives while the scorer loads waits this long at most
Result = tuple[float | None, str | None]


class ScorerWorker:
    """One replica's scorer (``spec``) and its bookkeeping (state, batch sizes)."""

    def __init__(self, spec: ScorerOptions, config: ServiceConfig) -> None:
        self.spec = spec
        self.config = config
        self.scorer: ColumnScorer | None = None
        self.failure: str | None = None
        self.loaded = threading.Event()
        self.batch_sizes: collections.Counter[int] = collections.Counter()
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
        """The sizes of the batches this replica scored."""
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
        (a plain answer, not an exception: it crosses a Serve handle as it is)."""
        if not self.loaded.is_set():
            await asyncio.to_thread(self.loaded.wait, LOAD_WAIT_S)
        if self.scorer is None:
            why = self.failure or f"still loading after {LOAD_WAIT_S:g} s"
            return {"unavailable": f"scorer {self.spec.column!r} is not available: {why}"}
        scorer = self.scorer
        prepared = await asyncio.gather(*(asyncio.to_thread(scorer.prepare, i) for i in items))
        results = await asyncio.gather(*(self._score_one(p) for p in prepared))
        return {"results": list(results)}

    async def _score_one(self, prepared: Prepared) -> Result:
        if prepared[1] is not None:  # read / decode error: answered without the model
            return None, prepared[1]
        return await self.score_batch(prepared)  # type: ignore[arg-type]

    async def score_batch(self, batch: list[Prepared]) -> list[Result]:
        """Score decoded items together (called with one item, it is the batching wrapper's:
        ``@serve.batch`` in the deployment)."""
        raise NotImplementedError("ScorerReplica batches with @serve.batch")

    async def run_batch(self, batch: list[Prepared]) -> list[Result]:
        """One model batch, in a thread (the replica's event loop keeps answering)."""
        self.batch_sizes[len(batch)] += 1
        assert self.scorer is not None
        return await asyncio.to_thread(self.scorer.score, batch)
