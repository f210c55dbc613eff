"""Errors that vqpipe reports to its users."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence


class UserError(Exception):
    """A mistake of the user's: the CLI prints it as one line `vqpipe: error: …` and exits 2."""


class JobError(Exception):
    """A job that cannot go on for a reason outside the inputs (a node without CUDA, ...): the
    CLI prints it as one line `vqpipe: error: …` and exits 1."""


class DemoCheckpointWarning(UserWarning):
    """A scorer was built on a bundled demo checkpoint (trained on synthetic data only): its
    scores show the pipeline working, not the quality of real images. Silence it with
    ``warnings.filterwarnings("ignore", category=DemoCheckpointWarning)``."""


class Interrupted(KeyboardInterrupt):
    """A signal that ends a job as Ctrl-C does (``signum``: the exit code is 128 + it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


_INTERRUPTS: list[int] = []
"""Signals received while a job runs (:func:`note_interrupt`), newest last."""


def note_interrupt(signum: int) -> None:
    """Record a Ctrl-C / SIGTERM, then raise :class:`Interrupted` where the main thread is."""
    _INTERRUPTS.append(signum)
    raise Interrupted(signum)


def check_interrupted() -> None:
    """Raise :class:`Interrupted` if a signal came while the job ran: a library that caught
    the first ``KeyboardInterrupt`` (Ray Data's output iterators may) cannot swallow it."""
    if _INTERRUPTS:
        raise Interrupted(_INTERRUPTS[-1])


def clear_interrupts() -> None:
    _INTERRUPTS.clear()


class CheckpointMismatchError(ValueError):
    """A checkpoint's keys or shapes do not match the model built for it (strict loading:
    the message names every kind of difference, see :func:`key_report`)."""


def key_report(
    missing: Iterable[str],
    unexpected: Iterable[str],
    wrong_shape: Mapping[str, tuple[Sequence[int], Sequence[int]]],
    shown: int = 12,
) -> str:
    """How a checkpoint's keys differ from a model's, ``""`` when they match: one clause per
    kind (``N wrong shape: key: checkpoint (…), model (…); …``), the first ``shown`` keys of
    each named. ``wrong_shape``: key → (checkpoint shape, model shape)."""
    shapes = [
        f"{key}: checkpoint {tuple(ours)}, model {tuple(theirs)}"
        for key, (ours, theirs) in sorted(wrong_shape.items())
    ]
    clauses = []
    for label, keys in (
        ("wrong shape", shapes),
        ("missing", sorted(missing)),
        ("unexpected", sorted(unexpected)),
    ):
        if keys:
            more = f"; ... ({len(keys)} in all)" if len(keys) > shown else ""
            clauses.append(f"{len(keys)} {label}: " + "; ".join(keys[:shown]) + more)
    return "\n".join(clauses)
