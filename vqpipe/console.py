"""What a vqpipe command shows on the terminal: its own notices and one status line, with Ray's
output kept out of the way.

By default Ray's own output (its Python loggers, Ray Data's execution and progress logs, the
driver core worker's native ``E … core_worker.cc`` lines) is written to a log file for the
duration of the job instead of the terminal: Ray's log directory
(``/tmp/ray/session_latest/logs``: ``ray-data/``, ``python-core-driver-*.log``) keeps its own
copy as always, and the file is kept (and named) when the command fails. ``--verbose`` leaves
Ray's output on the terminal; ``--quiet`` shows neither Ray's output nor vqpipe's status line.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any, TextIO

QUIET, NORMAL, VERBOSE = 0, 1, 2


@contextlib.contextmanager
def ray_output_kept_out(verbosity: int, command: str = "vqpipe") -> Iterator[str | None]:
    """Send everything written to file descriptor 2 (Ray's loggers and its native logging) to
    a log file while the block runs, unless ``verbosity`` is :data:`VERBOSE`; yields its path.

    The file is removed when the block succeeds (Ray's log directory has the same lines) and
    kept, with a line naming it, when it raises. Write vqpipe's own lines to a stream from
    :func:`terminal` opened *before* entering.
    """
    if verbosity >= VERBOSE:
        yield None
        return
    # Ray Data's progress bars / progress log lines would only fill the file.
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    if "ray.data" in sys.modules:  # already imported (DataContext read the variable then)
        sys.modules["ray.data"].DataContext.get_current().enable_progress_bars = False
    folder = os.path.join(tempfile.gettempdir(), f"vqpipe-{os.getuid()}")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{command}-{os.getpid()}.log")
    sys.stderr.flush()
    saved = os.dup(2)
    log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(log, 2)
    os.close(log)
    failed = False
    try:
        yield path
    except KeyboardInterrupt:  # Ctrl-C / SIGTERM: the caller says so in one line; file kept
        raise
    except BaseException:
        failed = True
        raise
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        if failed and os.path.getsize(path):
            print(f"vqpipe: Ray's output of this run: {path}", file=sys.stderr, flush=True)
        else:  # success, or a failure before Ray said anything (a user mistake)
            with contextlib.suppress(OSError):
                os.remove(path)


def terminal() -> TextIO:
    """A stream on the terminal's stderr that stays there while fd 2 is redirected (when
    ``sys.stderr`` is not a real file, e.g. captured in a test, ``sys.stderr`` itself)."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return sys.stderr
    return os.fdopen(os.dup(fd), "w", buffering=1, encoding="utf-8")


def format_eta(seconds: float | None) -> str:
    """``45 s``, ``12 min``, ``3.2 h``; ``?`` when unknown."""
    if seconds is None:
        return "?"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def format_progress(p: dict[str, Any]) -> str:
    """A job's progress record (:func:`vqpipe.pipeline.runner.job_progress`) as one line:
    ``scored 1200/5000, 3 errors, 85.2 items/s, ETA 45 s`` (``scored 1200 so far`` when the
    total is not known); before a second part is in, the rate is not known yet (``ETA after
    warm-up``)."""
    total = p["total"]
    count = f"{p['done']} so far" if total is None else f"{p['done']}/{total}"
    head = f"scored {count}, {p['errors']} errors"
    rate = p.get("scoring_items_per_s")
    if total is None:  # no ETA without a total: counting up, the rate once it is known
        return head if rate is None else f"{head}, {rate} items/s"
    if p["done"] >= total:
        return f"{head}, {p['items_per_s']} items/s overall"
    if rate is None:
        return f"{head}, ETA after warm-up"
    return f"{head}, {rate} items/s, ETA {format_eta(p['eta_s'])}"


class StatusLine:
    """vqpipe's one status line: redrawn in place (``\\r``) about once a second on a TTY;
    otherwise printed as a new line every ``every_s`` seconds (a heartbeat while nothing
    happens, and at each forced update). Notices print above it. Nothing is printed before
    ``every_s`` has passed or an update is forced, so a quick mistake stays one line.

    Thread-safe; use it as a context manager (or call :meth:`close`).
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        verbosity: int = NORMAL,
        every_s: float = 10.0,
        tty: bool | None = None,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.verbosity = verbosity
        self.every_s = every_s
        isatty = getattr(self.stream, "isatty", lambda: False)
        # In place only on a terminal, and not under --verbose (Ray's lines would cut into it).
        self.tty = (isatty() if tty is None else tty) and verbosity < VERBOSE
        self.started = time.monotonic()
        self.text = "starting"
        self._last_print = self.started
        self._drawn = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if verbosity > QUIET:
            self._thread = threading.Thread(target=self._tick, daemon=True)
            self._thread.start()

    def __enter__(self) -> StatusLine:
        return self

    def __exit__(self, kind: Any, *exc: Any) -> None:
        self.close(failed=kind is not None)

    def _tick(self) -> None:
        # TTY: redraw each second (the elapsed time moves); else a heartbeat every every_s.
        while not self._stop.wait(1.0 if self.tty else min(self.every_s, 1.0)):
            with self._lock:
                if self._stop.is_set():
                    return
                if self.tty and time.monotonic() - self.started >= 1.0:
                    self._draw()
                elif not self.tty and time.monotonic() - self._last_print >= self.every_s:
                    self._print()

    def _line(self) -> str:
        return f"vqpipe: {self.text} [{time.monotonic() - self.started:.0f} s]"

    def _draw(self) -> None:
        self.stream.write(f"\r\033[K{self._line()}")
        self.stream.flush()
        self._drawn = True

    def _print(self) -> None:
        self._last_print = time.monotonic()
        print(self._line(), file=self.stream, flush=True)

    def _clear(self) -> None:
        if self._drawn:
            self.stream.write("\r\033[K")
            self._drawn = False

    def update(self, text: str, force: bool = False) -> None:
        """Show ``text`` as the status: redrawn on a TTY; else printed now when ``force``,
        by the next heartbeat otherwise."""
        if self.verbosity <= QUIET:
            return
        with self._lock:
            self.text = text
            if self.tty:
                self._draw()
            elif force:
                self._print()

    def notice(self, line: str) -> None:
        """A one-off line (``vqpipe: …``) printed above the status line."""
        if self.verbosity <= QUIET:
            return
        with self._lock:
            self._clear()
            print(f"vqpipe: {line}", file=self.stream, flush=True)
            if self.tty:
                self._draw()

    def progress(self, p: dict[str, Any]) -> None:
        """A job's progress record (:func:`vqpipe.pipeline.runner.job_progress`) as the
        status; ``run_job`` already calls it at most every ``progress_every_s``."""
        self.update(format_progress(p), force=True)

    def close(self, failed: bool = False) -> None:
        """Stop redrawing; end the line (a failed command's status is erased, so its error
        line stands alone)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        with self._lock:
            if self._drawn:
                self.stream.write("\r\033[K" if failed else "\n")
                self.stream.flush()
                self._drawn = False


class RateMeter:
    """Items per second after warm-up, steady under bursts: the first commit starts the clock
    (its items were made during start-up and do not count), and the rate is an exponentially
    weighted count of the items since then over the equally weighted time, so a burst of parts
    committed together adds its items (``n / tau`` at most) instead of ``n / dt``; no rate
    before ``warmup_s`` seconds have passed since the first commit.

    Hand-written: a sliding window of ``items / dt`` samples reads a burst as a spike.
    """

    def __init__(self, tau_s: float = 60.0, warmup_s: float = 5.0) -> None:
        self.tau_s = tau_s
        self.warmup_s = warmup_s
        self.first: float | None = None
        self._weighted = 0.0
        self._at = 0.0

    def add(self, items: float, t: float) -> None:
        """``items`` committed at time ``t`` (seconds, non-decreasing)."""
        if self.first is None:
            self.first = self._at = t
            return
        self._weighted = self._weighted * math.exp(-(t - self._at) / self.tau_s) + items
        self._at = max(self._at, t)

    def rate(self, t: float) -> float | None:
        """Items per second at time ``t``; None during warm-up."""
        if self.first is None or t - self.first < self.warmup_s:
            return None
        span = t - self.first
        weighted = self._weighted * math.exp(-max(0.0, t - self._at) / self.tau_s)
        return weighted / (self.tau_s * -math.expm1(-span / self.tau_s))


def progress_text(
    what: str, done: int, total: int | None, rate: float | None, unit: str = "items"
) -> str:
    """``pairs: 1200/5000 groups, 85.2 groups/s, ETA 45 s`` (``1200 groups so far`` without
    a total; no rate or ETA before the rate is known)."""
    head = f"{what}: {done:,}/{total:,} {unit}" if total is not None else f"{what}: {done:,} {unit}"
    if total is None:
        head += " so far"
    if rate is None:
        return head
    text = f"{head}, {rate:,.1f} {unit.split()[0]}/s"  # "rows written" → rows/s
    if total is not None and done < total and rate > 0:
        text += f", ETA {format_eta((total - done) / rate)}"
    return text


_CURRENT: Progress | None = None


def current_progress() -> Progress | None:
    """The progress line of the command running now (entered as a context manager), for code
    deep in a command to report its phase or counts; None when there is none."""
    return _CURRENT


def phase(note: str) -> None:
    """Show ``note`` (what is under way) on the running command's progress line, if any."""
    if _CURRENT is not None:
        _CURRENT.step(note)


class Progress:
    """A command's progress line on ``stream`` (default: the terminal's stderr): counting up
    or of a known ``total``, with a rate and ETA after warm-up (:class:`RateMeter`). On a TTY
    it rewrites itself (at most every ``tty_every_s``); otherwise it prints a line at the
    first update, then at most every ``every_s`` seconds, and one at the end. ``quiet``: silent.

    Use it as a context manager; call :meth:`advance` (or :meth:`step` with a note)."""

    def __init__(
        self,
        what: str,
        total: int | None = None,
        unit: str = "items",
        stream: TextIO | None = None,
        every_s: float = 10.0,
        tty: bool | None = None,
        quiet: bool = False,
        warmup_s: float = 2.0,
    ) -> None:
        self.what, self.total, self.unit = what, total, unit
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", lambda: False)
        self.tty = isatty() if tty is None else tty
        self.every_s = every_s
        self.tty_every_s = 0.2
        self.quiet = quiet
        self.done = 0
        self.note = ""
        self.started = time.monotonic()
        self.meter = RateMeter(warmup_s=warmup_s)
        self.meter.add(0, self.started)
        self._last: float | None = None
        self._drawn = False
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Progress:
        global _CURRENT
        self._outer, _CURRENT = _CURRENT, self
        return self

    def __exit__(self, kind: Any, *exc: Any) -> None:
        global _CURRENT
        _CURRENT = getattr(self, "_outer", None)
        self.close(failed=kind is not None)

    def line(self) -> str:
        now = time.monotonic()
        if self.done == 0 and self.total is None:  # phases only (a heartbeat): no counts
            text = f"{self.what}: {self.note or 'running'}"
        else:
            final = self.note == "done"  # the count is final: no rate, no ETA
            rate = None if final or not self.done else self.meter.rate(now)
            text = progress_text(self.what, self.done, self.total, rate, self.unit)
            if final:
                text = text.replace(" so far", "")
            text += f" — {self.note}" if self.note else ""
        return f"vqpipe: {text} [{now - self.started:.0f} s]"

    def heartbeat(self) -> Progress:
        """Show the line again while nothing is counted (TTY: each second, so the time moves;
        else every ``every_s``), from a daemon thread until :meth:`close`."""

        def beat() -> None:
            while not self._stop.wait(1.0 if self.tty else min(self.every_s, 1.0)):
                with self._lock:
                    if not self._stop.is_set():
                        self._show(time.monotonic())

        self._thread = threading.Thread(target=beat, daemon=True)
        self._thread.start()
        return self

    def advance(self, n: int = 1, note: str | None = None) -> None:
        """``n`` more done (``note``: what is under way, shown after the counts)."""
        now = time.monotonic()
        self.done += n
        if n:
            self.meter.add(n, now)
        with self._lock:
            if note is not None:
                self.note = note
            self._show(now)

    def count(self, done: int, total: int | None = None, unit: str | None = None) -> None:
        """Set the count done so far (and the total and unit, when given)."""
        with self._lock:
            if total is not None:
                self.total = total
            if unit is not None:
                self.unit = unit
            self.advance(done - self.done)

    def step(self, note: str) -> None:
        """Show ``note`` as what is under way now, without counting anything."""
        self.advance(0, note)

    def _show(self, now: float, final: bool = False) -> None:
        if self.quiet:
            return
        wait = self.tty_every_s if self.tty else self.every_s
        if not final and self._last is not None and now - self._last < wait:
            return
        self._last = now
        if self.tty:
            self.stream.write(f"\r\033[K{self.line()}")
            self._drawn = True
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def close(self, failed: bool = False) -> None:
        """The last line (a failed command's is erased on a TTY)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self.quiet:
            return
        if failed:
            if self._drawn:
                self.stream.write("\r\033[K")
                self.stream.flush()
            return
        self.note = "done"
        self._show(time.monotonic(), final=True)
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


def summary_table(summary: dict[str, Any], output: str) -> str:
    """A score job's summary (``_job.json``'s) as a short table for people: rows written,
    errors, what was skipped or resumed, duplicates, time, rate and where the table is."""
    rows = [("rows written", f"{summary.get('scored_rows', 0):,}")]
    rows.append(("errors", f"{summary.get('errors', 0):,}"))
    resumed = [
        f"{summary[k]:,} {label}"
        for k, label in (
            ("already_done", "inputs already scored"),
            ("shards_already_done", "shards already committed"),
            ("rows_retried", "rows retried"),
            ("sidecars_skipped", "sidecar files skipped"),
        )
        if summary.get(k)
    ]
    if resumed:
        rows.append(("skipped/resumed", ", ".join(resumed)))
    if summary.get("duplicates_dropped"):
        rows.append(("duplicates", f"{summary['duplicates_dropped']:,} dropped"))
    seconds = summary.get("seconds")
    if seconds is not None:
        rows.append(("elapsed", format_eta(float(seconds))))
    rate = summary.get("items_per_s")
    if rate:
        rows.append(("rate", f"{rate:,.1f} items/s (start-up included)"))
    rows.append(("output", output))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
