"""Per-epoch progress of a Ray Train run on the driver's console.

Ray Train (v2) calls a ``UserCallback`` on its controller actor, not on the driver, after each
``ray.train.report``; :func:`reported_epochs` hands rank 0's metrics from there to the driver
through a ``ray.util.queue.Queue`` and calls ``progress(metrics)`` on a driver thread.
Printing from the controller or a worker instead would reach the console only through Ray's
log forwarding, prefixed ``(TrainController pid=…)`` and mixed into the command's stdout.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any


def epoch_line(metrics: dict[str, Any], epochs: int) -> str:
    """``epoch 2/5  step 340  loss 0.123  val SRCC 0.812  PLCC 0.830`` (``epoch`` in
    ``metrics`` counts from 0; the validation part only where the run validated)."""

    def number(value: Any) -> str:
        return f"{value:.3f}" if isinstance(value, (int, float)) and math.isfinite(value) else "nan"

    line = f"epoch {int(metrics['epoch']) + 1}/{epochs}  step {metrics.get('steps', '?')}"
    line += f"  loss {number(metrics.get('loss'))}"
    if "val_srcc" in metrics:
        line += f"  val SRCC {number(metrics['val_srcc'])}"
        if "val_plcc" in metrics:
            line += f"  PLCC {number(metrics['val_plcc'])}"
    return line


def forward_reports(queue: Any) -> Any:
    """A ``UserCallback`` that puts rank 0's reported metrics into ``queue`` (it runs on the
    Ray Train controller). Built here so that importing this module does not import Ray."""
    import ray.train

    class ForwardReports(ray.train.UserCallback):
        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any):
            if not metrics:
                return
            # a driver that went away (Ctrl-C) must not fail the run's bookkeeping
            with contextlib.suppress(Exception):
                queue.put_nowait(dict(metrics[0]))

    return ForwardReports()


@contextlib.contextmanager
def reported_epochs(
    progress: Callable[[dict[str, Any]], None] | None,
) -> Iterator[list[Any]]:
    """The callbacks for ``RunConfig(callbacks=...)`` that call ``progress(metrics)`` on the
    driver for every report, until the block ends (reports still queued then included)."""
    if progress is None:
        yield []
        return
    from ray.util.queue import Empty, Queue

    queue = Queue(actor_options={"num_cpus": 0})
    done = threading.Event()

    def drain() -> None:
        while True:
            try:
                item = queue.get(timeout=0.5)
            except Exception as exc:  # Empty, or the queue's actor gone with Ray
                if done.is_set():
                    return
                if not isinstance(exc, Empty):
                    time.sleep(0.5)
                continue
            progress(item)

    thread = threading.Thread(target=drain, name="vqpipe-train-progress", daemon=True)
    thread.start()
    try:
        yield [forward_reports(queue)]
    finally:
        done.set()
        thread.join(timeout=5)
        with contextlib.suppress(Exception):
            while not queue.empty():
                progress(queue.get_nowait())
        with contextlib.suppress(Exception):
            queue.shutdown()
