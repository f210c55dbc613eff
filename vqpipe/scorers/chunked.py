"""A model callable run over a batch in slices, optionally always at one batch shape.

Two uses: bound peak memory (the Q-Align vision tower on a batch of videos runs
``vision_chunk`` frames per call instead of every frame at once), and keep a
``torch.compile``-d vision tower on one input shape (``fixed``): a graph compiled for a fixed
shape is specialised once; the last partial batch of every job would otherwise compile
another graph (or fall back to a dynamic-shape one).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch


def compile_model(fn: Callable[..., Any], compile: bool | str) -> Callable[..., Any]:
    """``fn`` itself (``compile`` false) or ``torch.compile(fn)`` with static shapes; a string
    names the mode (``"reduce-overhead"``: CUDA graphs, ``"max-autotune"``)."""
    if not compile:
        return fn
    import torch

    mode = compile if isinstance(compile, str) else None
    return torch.compile(fn, mode=mode, dynamic=False)


class ChunkedCall:
    """``fn(x, *per_row)`` on slices of at most ``chunk`` rows of ``x`` (dim 0), outputs (a
    tensor, or a dict of tensors) concatenated along dim 0; results equal one call on the
    whole batch for a row-wise ``fn``.

    ``fixed``: every call of ``fn`` gets the same number of rows, ``shape``: the first call fixes
    it (its row count, at most ``chunk``); a shorter slice is padded by repeating its last row
    and the outputs are sliced back; a longer batch later raises ``shape`` (one more graph).
    Outputs are cloned when ``fixed`` (a CUDA-graph output is overwritten by the next replay).
    ``per_row`` arguments that are sequences or arrays are sliced (and padded) with ``x``;
    others (a string) are passed as they are.
    """

    def __init__(
        self, fn: Callable[..., Any], chunk: int | None = None, fixed: bool = False
    ) -> None:
        if chunk is not None and int(chunk) < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        self.fn = fn
        self.chunk = int(chunk) if chunk else None
        self.fixed = bool(fixed)
        self.shape: int | None = None

    def __call__(self, x: torch.Tensor, *per_row: Any) -> Any:
        n = int(x.shape[0])
        step = n if self.chunk is None else min(n, self.chunk)
        if self.fixed:
            self.shape = max(self.shape or 0, step)
            step = self.shape
        if n <= step and not self.fixed:
            return self.fn(x, *per_row)
        outs = [self._call(x, per_row, i, min(i + step, n), step) for i in range(0, n, step)]
        if len(outs) == 1:
            return outs[0]
        return _concat(outs)

    def _call(
        self, x: torch.Tensor, per_row: Sequence[Any], start: int, stop: int, size: int
    ) -> Any:
        rows = stop - start
        args = [x[start:stop], *(_rows(a, start, stop) for a in per_row)]
        if self.fixed and rows < size:
            args = [_pad(a, size) if _sliceable(a) else a for a in args]
        out = self.fn(*args)
        if not self.fixed:
            return out
        return _map(out, lambda t: t[:rows].clone())


def _sliceable(a: Any) -> bool:
    return isinstance(a, (list, tuple, np.ndarray)) or hasattr(a, "shape")


def _rows(a: Any, start: int, stop: int) -> Any:
    return a[start:stop] if _sliceable(a) else a


def _pad(a: Any, size: int) -> Any:
    """``a`` with its last row repeated up to ``size`` rows (a tensor, array or list)."""
    missing = size - len(a)
    if missing <= 0:
        return a
    if isinstance(a, np.ndarray):
        return np.concatenate([a, np.repeat(a[-1:], missing, axis=0)])
    if isinstance(a, (list, tuple)):
        return type(a)([*a, *([a[-1]] * missing)])
    import torch

    return torch.cat([a, a[-1:].expand(missing, *a.shape[1:])])


def _map(out: Any, f: Callable[[Any], Any]) -> Any:
    return {k: f(v) for k, v in out.items()} if isinstance(out, dict) else f(out)


def _concat(outs: list[Any]) -> Any:
    import torch

    if isinstance(outs[0], dict):
        return {k: torch.cat([o[k] for o in outs]) for k in outs[0]}
    return torch.cat(outs)
