"""MAP quality scores under Thurstone's Case V model from a (batch of) preference matrices.

Reference: Zhu et al., Compare2Score (NeurIPS 2024), Eq. (1) and (6); Tsukida & Gupta, "How to
analyze paired comparison data" (2011) for the MAP formulation. Solved exactly with a batched,
damped Newton method in float64 (the official release runs 100 Adam steps instead).
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Any

from vqpipe.quality_math.arrays import as_float_tensor, like_input

if TYPE_CHECKING:
    import torch

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
_ARMIJO = 1e-4


@functools.cache
def _step_sizes() -> torch.Tensor:
    """Backtracking candidates 1, 1/2, ..., 2^-30 (built on first use: no torch at import)."""
    import torch

    return 0.5 ** torch.arange(0, 31, dtype=torch.float64)


def thurstone_objective(q: Any, P: Any) -> Any:
    """Negative MAP objective ``-Σ_ij P_ij log Φ(q_i - q_j) + Σ_i q_i² / 2`` (to minimise).

    ``q``: (..., n), ``P``: (..., n, n). Exposed for tests and diagnostics.
    """
    qt, pt = as_float_tensor(q), as_float_tensor(P)
    return like_input(_objective(qt, pt), q)


def thurstone_map(P: Any, *, tol: float = 1e-10, max_iter: int = 100) -> Any:
    """Thurstone Case V MAP scores for a preference matrix ``P`` (n, n) or a batch (..., n, n).

    Solves  ``argmax_q  Σ_ij P_ij log Φ(q_i − q_j) − Σ_i q_i² / 2   s.t.  Σ_i q_i = 0``
    where ``P_ij`` is the probability (or count) that item *i* is preferred over item *j* and Φ
    is the standard normal CDF. The objective is strictly concave, so the optimum is unique;
    the unconstrained optimum already has ``Σ q = 0`` (the likelihood gradient sums to zero),
    and the result is re-centred to remove round-off.

    Entries may be exactly 0 or 1 (``log Φ`` is evaluated with ``log_ndtr``, so no NaN); they
    must be finite and ``>= 0``; the diagonal does not affect the result. Returns scores of
    shape (n,) or (..., n), as numpy unless a torch tensor was given. Vectorised over the batch:
    each Newton step solves all systems at once, with a per-matrix Armijo line search.
    """
    import torch

    p = as_float_tensor(P)
    if p.ndim < 2 or p.shape[-1] != p.shape[-2]:
        raise ValueError(f"thurstone_map: P must have shape (..., n, n), got {tuple(p.shape)}")
    if not torch.isfinite(p).all():
        raise ValueError("thurstone_map: P contains NaN or inf")
    if (p < 0).any():
        raise ValueError("thurstone_map: P must be non-negative")
    n = p.shape[-1]
    batch_shape = p.shape[:-2]
    p = p.reshape(-1, n, n)
    q = _newton(p, tol=tol, max_iter=max_iter)
    q = q - q.mean(dim=-1, keepdim=True)
    return like_input(q.reshape(*batch_shape, n), P)


def _differences(q: torch.Tensor) -> torch.Tensor:
    return q[..., :, None] - q[..., None, :]  # d_ij = q_i - q_j, [..., n, n]


def _objective(q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    import torch

    log_cdf = torch.special.log_ndtr(_differences(q))
    return -(p * log_cdf).sum(dim=(-1, -2)) + 0.5 * (q * q).sum(dim=-1)


def _newton(p: torch.Tensor, *, tol: float, max_iter: int) -> torch.Tensor:
    import torch

    batch, n, _ = p.shape
    q = torch.zeros(batch, n, dtype=p.dtype, device=p.device)
    eye = torch.eye(n, dtype=p.dtype, device=p.device)
    active = torch.arange(batch, device=p.device)  # matrices not yet converged
    for _ in range(max_iter):
        qa, pa = q[active], p[active]
        d = _differences(qa)  # [b, n, n]
        log_cdf = torch.special.log_ndtr(d)
        f0 = -(pa * log_cdf).sum(dim=(-1, -2)) + 0.5 * (qa * qa).sum(dim=-1)  # [b]
        # Inverse Mills ratio r(d) = φ(d)/Φ(d) = -(d/dd) log Φ(d), stable in log space.
        mills = torch.exp(-0.5 * d * d - _LOG_SQRT_2PI - log_cdf)
        weighted = pa * mills
        # ∂f/∂q_k = -Σ_j P_kj r(d_kj) + Σ_i P_ik r(d_ik) + q_k
        grad = -weighted.sum(dim=-1) + weighted.sum(dim=-2) + qa  # [b, n]
        # -(d²/dd²) log Φ(d) = r (r + d) ∈ (0, 1); each pair adds h·(e_i − e_j)(e_i − e_j)ᵀ.
        curvature = (mills * (mills + d)).clamp(0.0, 1.0) * pa
        sym = curvature + curvature.transpose(-1, -2)
        hessian = torch.diag_embed(sym.sum(dim=-1)) - sym + eye  # graph Laplacian + I, SPD
        direction = torch.linalg.solve(hessian, grad.unsqueeze(-1)).squeeze(-1)  # [b, n]
        decrement = (grad * direction).sum(dim=-1)  # Newton decrement² (>= 0)
        q[active] = qa - _line_search(qa, pa, direction, f0, decrement)[:, None] * direction
        converged = (grad.abs().amax(dim=-1) <= tol) | (decrement <= tol * tol)
        active = active[~converged]
        if active.numel() == 0:
            break
    return q


def _line_search(
    q: torch.Tensor, p: torch.Tensor, direction: torch.Tensor, f0: torch.Tensor, dec: torch.Tensor
) -> torch.Tensor:
    """Armijo backtracking, vectorised: the full Newton step first, smaller ones where it fails.

    A few ulps of slack in the test keep round-off from rejecting steps near the optimum.
    """
    import torch

    slack = 64 * torch.finfo(q.dtype).eps * (f0.abs() + 1)
    step = torch.ones_like(f0)
    ok = _objective(q - direction, p) <= f0 - _ARMIJO * dec + slack
    bad = (~ok).nonzero().squeeze(-1)
    if bad.numel():
        steps = _step_sizes().to(q.device)[1:]
        trial = q[bad, None, :] - steps[None, :, None] * direction[bad, None, :]  # [k, s, n]
        f_trial = _objective(trial, p[bad, None])  # [k, s]
        ok_trial = f_trial <= (f0[bad] + slack[bad])[:, None] - _ARMIJO * steps * dec[bad, None]
        first = torch.where(ok_trial.any(dim=-1), ok_trial.int().argmax(dim=-1), len(steps) - 1)
        step[bad] = steps[first]
    return step
