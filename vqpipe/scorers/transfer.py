"""Host → device path of a scorer actor: items' frames stacked once into a reused (pinned)
buffer, copied to the device on a stream of their own, scored one batch at a time while the
next batch is stacked and copied, results copied back without a device-wide sync.

Per batch on CUDA: one host copy (the items' frames → a pinned buffer that is kept and reused),
one host → device copy (``non_blocking`` on a dedicated stream, an event marks its end), the
forward on the compute stream after that event, outputs copied to pinned host memory
``non_blocking`` with an event that only this batch's caller waits on. On the CPU (or for a
numpy scorer) the same steps run: the buffer is plain memory, the device copy is the buffer
itself and there is nothing to wait for. torch is imported only for a scorer that uses it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np

from vqpipe.quality_math.arrays import input_tensor, is_tensor

if TYPE_CHECKING:
    import torch


def _torch() -> Any:
    import torch

    return torch


class Staged:
    """One batch's frames stacked in a buffer of :class:`StagingBuffers`: ``pixels`` [N, ...]
    (a numpy view of the buffer), ``counts`` frames per item (Σ = N)."""

    def __init__(self, owner: StagingBuffers, buffer: Any, pixels: np.ndarray, counts: np.ndarray):
        self.owner, self.buffer, self.pixels, self.counts = owner, buffer, pixels, counts
        self.event: Any = None  # the end of this batch's host → device copy (CUDA)

    def to_device(self, device: Any) -> Any:
        """The frames on ``device``: on CUDA a copy on the buffers' copy stream (the buffer's
        tensor is pinned, so it is asynchronous), else the buffer itself (no copy)."""
        if device is None or getattr(device, "type", "cpu") != "cuda":
            return self.pixels
        torch = _torch()
        host = self.buffer[: self.pixels.nbytes].view(_torch_dtype(self.pixels.dtype))
        host = host.view(self.pixels.shape)
        stream = self.owner.copy_stream(device)
        with torch.cuda.stream(stream):
            out = host.to(device, non_blocking=True)
        self.event = stream.record_event()
        return out

    def ready_on(self, tensor: Any) -> None:
        """Make the current (compute) stream wait for the copy of ``tensor``, and tell the
        caching allocator that stream uses it (it was allocated on the copy stream)."""
        if self.event is None:
            return
        stream = _torch().cuda.current_stream(tensor.device)
        stream.wait_event(self.event)
        tensor.record_stream(stream)

    def release(self) -> None:
        """Give the buffer back once nothing reads it (the copy has ended)."""
        if self.buffer is None:
            return
        if self.event is not None:
            self.event.synchronize()
        self.owner.give_back(self.buffer)
        self.buffer = None


class StagingBuffers:
    """Reused host buffers for stacking frames: page-locked (pinned) when ``pinned`` (a CUDA
    scorer) so that the host → device copy is asynchronous, plain memory otherwise. A buffer
    is taken per batch in flight and grown when a batch needs more; they are kept, since
    pinning memory costs far more than copying into it."""

    def __init__(self, pinned: bool = False) -> None:
        self.pinned = pinned
        self._free: list[Any] = []
        self._lock = threading.Lock()
        self._stream: Any = None
        self.allocated = 0  # buffers made (a test and the benchmark read it)

    def stage(self, items: Sequence[np.ndarray]) -> Staged:
        """Copy the items' frames ([T_i, ...] each, same frame shape and dtype) into one
        buffer: [Σ T_i, ...]. The one host copy of the path."""
        first = np.asarray(items[0])
        shape, dtype = first.shape[1:], first.dtype
        counts = np.array([len(x) for x in items], np.int64)
        total = int(counts.sum())
        if not self.pinned:  # no device copy follows: rows back to back need no stacking
            view = back_to_back(items)
            if view is not None:
                return Staged(self, None, view, counts)
        nbytes = total * int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        buffer = self._take(nbytes)
        flat = buffer.numpy() if self.pinned else buffer
        pixels = flat[:nbytes].view(dtype).reshape(total, *shape)
        at = 0
        for item in items:
            item = np.asarray(item)
            if item.shape[1:] != shape or item.dtype != dtype:
                self.give_back(buffer)
                raise ValueError(
                    f"items' frames differ: {item.dtype}{list(item.shape[1:])} and "
                    f"{dtype}{list(shape)}; stack them as a list instead"
                )
            pixels[at : at + len(item)] = item
            at += len(item)
        return Staged(self, buffer, pixels, counts)

    def copy_stream(self, device: Any) -> Any:
        """The stream host → device copies go on (one per buffers object, made once)."""
        if self._stream is None:
            self._stream = _torch().cuda.Stream(device)
        return self._stream

    def give_back(self, buffer: Any) -> None:
        with self._lock:
            self._free.append(buffer)

    def _take(self, nbytes: int) -> Any:
        with self._lock:
            fits = [b for b in self._free if _size(b) >= nbytes]
            if fits:
                best = min(fits, key=_size)
                self._free.remove(best)
                return best
            if self._free:  # too small: drop the largest free one, a bigger one replaces it
                self._free.remove(max(self._free, key=_size))
            self.allocated += 1
        size = max(nbytes, 1 << 20) * 5 // 4  # headroom: a slightly larger batch fits
        if self.pinned:
            torch = _torch()
            return torch.empty(size, dtype=torch.uint8, pin_memory=True)
        return np.empty(size, np.uint8)


def in_item_order(items: Sequence[Any], host_pixels: Any) -> Any:
    """One [Σ T_i, ...] tensor of the items' frames in item order, on the device of the items
    that are tensors: host items' frames come from ``host_pixels`` (their staged frames, in
    order, already on that device or on the CPU), the rest are the items themselves."""
    torch = _torch()
    device = next(x.device for x in items if is_tensor(x))
    pieces, at = [], 0
    for x in items:
        if is_tensor(x):
            pieces.append(x.to(device))
        else:
            pieces.append(input_tensor(host_pixels[at : at + len(x)]).to(device))
            at += len(x)
    return torch.cat(pieces)


def back_to_back(items: Sequence[np.ndarray]) -> np.ndarray | None:
    """The items' frames as one read-only [Σ T_i, ...] view when they already lie back to back
    in one buffer (the rows of one Arrow block of the pixel column: a batch that is a slice of a
    block), else None. No copy: what the CPU path scores, where a staging copy would only
    move the bytes to where they already are."""
    first = np.asarray(items[0])
    owner = _owner(first)
    if owner is None or not first.flags.c_contiguous:  # views of one buffer only
        return None
    frame, at = first[0].nbytes if len(first) else 0, first.ctypes.data
    for item in items:
        item = np.asarray(item)
        if (
            _owner(item) is not owner
            or item.ctypes.data != at
            or not item.flags.c_contiguous
            or item.shape[1:] != first.shape[1:]
            or item.dtype != first.dtype
        ):
            return None
        at += item.nbytes
    total = sum(len(x) for x in items)
    if frame == 0 or total == 0:
        return None
    view = np.lib.stride_tricks.as_strided(
        first, shape=(total, *first.shape[1:]), strides=first.strides, writeable=False
    )
    return view


def _owner(array: np.ndarray) -> Any:
    """The object that owns ``array``'s memory (an Arrow buffer, a bigger array), or None when
    the array owns it: a view of several arrays is only safe within one owner, which the view
    keeps alive."""
    base = array.base
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    return base


def _size(buffer: Any) -> int:
    return int(buffer.numel()) if hasattr(buffer, "numel") else int(buffer.size)


def _torch_dtype(dtype: np.dtype) -> Any:
    torch = _torch()
    return torch.from_numpy(np.zeros(0, dtype)).dtype


def to_host_async(outputs: dict[str, Any]) -> Callable[[], dict[str, np.ndarray]]:
    """Start copying ``outputs`` (device tensors, CPU tensors or numpy arrays) to host memory;
    the returned function waits for this copy only (an event on the current stream, not a
    device-wide sync) and gives numpy arrays."""
    torch = None
    event = None
    copies: dict[str, Any] = {}
    for key, value in outputs.items():
        if getattr(value, "is_cuda", False):
            torch = torch or _torch()
            host = torch.empty(value.shape, dtype=value.dtype, pin_memory=True)
            host.copy_(value, non_blocking=True)
            copies[key] = host
        else:
            copies[key] = value
    if torch is not None:
        event = torch.cuda.Event()
        event.record()

    def result() -> dict[str, np.ndarray]:
        if event is not None:
            event.synchronize()
        return {k: v.numpy() if hasattr(v, "numpy") else np.asarray(v) for k, v in copies.items()}

    return result


class BatchRunner:
    """Score batches of items ([T, ...] frames each) with up to ``calls`` batches in flight:
    stacking a batch into its buffer and copying it to the device need no lock, so they run
    while another batch holds the device; the device work of each batch runs under one lock
    (:meth:`~vqpipe.scorers.base.Scorer.predict_stacked`: queued kernels, no sync), and the
    caller waits for its own outputs' copy only after letting go of the lock.

    ``in_flight`` / ``max_in_flight``: batches between :meth:`__call__`'s start and end."""

    def __init__(self, scorer: Any, batch_size: int) -> None:
        self.scorer, self.batch_size = scorer, batch_size
        device = getattr(scorer, "device", "cpu")
        self.device = device if getattr(device, "type", None) == "cuda" else None
        self.buffers = StagingBuffers(pinned=self.device is not None)
        self._device_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self.in_flight = self.max_in_flight = 0

    def __call__(self, items: Sequence[Any]) -> dict[str, np.ndarray]:
        """Per-item outputs of ``items``: host arrays [T, ...] (staged), or tensors already on
        the scorer's device (JPEGs it decoded: ``decode=gpu``), in item order."""
        with self._counted():
            host = [x for x in items if not is_tensor(x)]
            staged = self.buffers.stage(host) if host else None
            try:
                pixels = staged.to_device(self.device) if staged is not None else None
                with self._device_lock:
                    if staged is not None and self.device is not None:
                        staged.ready_on(pixels)
                    if len(host) < len(items):
                        pixels = in_item_order(items, pixels)
                    counts = np.array([len(x) for x in items], np.int64)
                    out = self.scorer.predict_stacked(pixels, counts, self.batch_size)
                    done = to_host_async(out)
                    del pixels
                return done()
            finally:
                if staged is not None:
                    staged.release()

    @contextmanager
    def _counted(self) -> Any:
        with self._count_lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            yield
        finally:
            with self._count_lock:
                self.in_flight -= 1


def device_input(x: Any, device: torch.device) -> torch.Tensor:
    """Model input ``x`` (numpy, or a tensor) on ``device``: host memory goes to a CUDA device
    through pinned memory without blocking the host; a tensor already there stays as it is."""
    t = input_tensor(x)
    if device.type == "cuda" and not t.is_cuda:
        t = (t if t.is_pinned() else t.pin_memory()).to(device, non_blocking=True)
    return t.to(device)
