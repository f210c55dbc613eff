"""Small helpers that let the math accept numpy arrays, Python sequences or torch tensors.

Every public math function returns the kind it was given: a torch tensor in gives a torch
tensor out (same device), anything else gives a numpy array (or a numpy scalar for 0-d input).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch


def is_tensor(x: Any) -> bool:
    """Whether ``x`` is a torch tensor (never true before torch is imported: no import here)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def as_float_tensor(x: Any, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Convert to a floating tensor (``dtype`` default float64); half-precision tensors are
    upcast to ``dtype``."""
    import torch

    dtype = torch.float64 if dtype is None else dtype
    if isinstance(x, torch.Tensor):
        return x.to(dtype)
    return torch.as_tensor(np.asarray(x, dtype=np.float64), dtype=dtype)


def like_input(result: torch.Tensor, original: Any) -> Any:
    """Return ``result`` as the same kind of array as ``original``."""
    import torch

    if isinstance(original, torch.Tensor):
        out_dtype = original.dtype if original.is_floating_point() else torch.float32
        # Reduced-precision inputs get float32 results: probabilities and scores should
        # not be rounded to bf16 after the math was done in full precision.
        if out_dtype in (torch.float16, torch.bfloat16):
            out_dtype = torch.float32
        return result.to(device=original.device, dtype=out_dtype)
    return result.detach().cpu().numpy()


def input_tensor(x: Any) -> torch.Tensor:
    """``torch.as_tensor(x)`` for model inputs, which are only read: a read-only numpy view
    (the pixel column's Arrow buffer, shared without a copy) is wrapped without torch's
    warning about non-writable arrays."""
    import warnings

    import torch

    if isinstance(x, np.ndarray) and not x.flags.writeable:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return torch.as_tensor(x)
    return torch.as_tensor(x)
