"""The one Gaussian likelihood and the one variance fitter of calib's error models.

Every σ calib fits by likelihood is a variance v of a Gaussian error r, scored by the mean negative
log-likelihood ``½ ⟨log 2πv + r²/v⟩`` (nats per residual). The models of energy differences
(:class:`calib.uq.differences.DifferenceVarianceModel`: β·L + κ²ΔE² + τ²) and the force model of calib 0.5
artifacts (:class:`calib.uq.trust.ForceErrorModel`: κ₁²F_i² + κ₂²F_rms² + τ²) are both a sum of fixed bases
with positive weights, v = Σ_k exp(θ_k) B_k (+ a known part); :func:`fit_log_variance` fits the log-weights θ
by L-BFGS-B from the best point of a log grid (scipy), so that the non-convex start is searched, not guessed.
The LLPR's own (α², ς²) fit (:mod:`calib.uq.llpr`) profiles α² out in closed form and the per-atom error models
(:mod:`calib.uq.errormodel`) are gamma GLMs; both score with :func:`gaussian_nll`. A variance with many
parameters (the two-part force model, v = exp(a·x) F² + exp(b·x)) is fitted by :func:`minimize_nll`: the same
likelihood, its gradient (:func:`gaussian_nll_gradient`) and an L2 penalty, by L-BFGS-B.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import product

import numpy as np

#: the smallest variance the likelihood sees (a σ of exactly zero would make it infinite)
VARIANCE_FLOOR = 1e-300


def gaussian_nll(r2, variance, weights=None) -> float:
    """Mean Gaussian negative log-likelihood, nats per residual, of squared residuals ``r2`` under variances
    ``variance`` (same units, e.g. eV² or (eV/Å)²; broadcast), optionally ``weights``-averaged."""
    v = np.maximum(np.asarray(variance, dtype=float), VARIANCE_FLOOR)
    terms = 0.5 * (np.log(2 * np.pi * v) + np.asarray(r2, dtype=float) / v)
    return float(np.average(terms, weights=weights))


def fit_log_variance(bases: Sequence, r2, grid: Sequence[Sequence[float]], *, known=0.0,
                     bounds: Sequence[tuple[float, float]] | None = None) -> tuple[np.ndarray, float]:
    """θ minimising :func:`gaussian_nll` of ``r2`` under v = Σ_k exp(θ_k) bases[k] + ``known``.

    ``bases``: K arrays broadcastable to ``r2`` (units of r² each, or 1 for a floor); ``grid``: one 1-D array of
    start values of θ_k per basis; the search starts from the grid's best point (its full product) and
    L-BFGS-B refines it, within ``bounds`` when given. Returns (θ (K,), the NLL there, nats per residual).
    """
    from scipy.optimize import minimize

    r2 = np.asarray(r2, dtype=float).ravel()
    B = np.stack([np.broadcast_to(np.asarray(b, dtype=float).ravel() if np.ndim(b) else b, r2.shape)
                  for b in bases])
    known = np.broadcast_to(np.asarray(known, dtype=float).ravel() if np.ndim(known) else known, r2.shape)
    if len(grid) != len(B):
        raise ValueError(f"{len(B)} variance bases but {len(grid)} grid axes")

    def nll(theta) -> float:
        return gaussian_nll(r2, np.exp(np.asarray(theta)) @ B + known)

    start = min(product(*grid), key=lambda x: nll(np.array(x, dtype=float)))
    res = minimize(nll, np.array(start, dtype=float), method="L-BFGS-B", bounds=bounds)
    return np.asarray(res.x, dtype=float), float(res.fun)


def gaussian_nll_gradient(r2, variance, weights=None) -> np.ndarray:
    """∂ :func:`gaussian_nll` / ∂v of each residual (per unit of the variance, e.g. 1/eV² for eV²): ½ (1/v − r²/v²)
    times each residual's share of the (weighted) mean."""
    v = np.maximum(np.asarray(variance, dtype=float), VARIANCE_FLOOR)
    g = 0.5 * (1.0 / v - np.asarray(r2, dtype=float) / v**2)
    if weights is None:
        return g / g.size
    w = np.asarray(weights, dtype=float)
    return g * w / w.sum()


def minimize_nll(variance: Callable, r2, p0, *, weights=None, ridge: float = 0.0, penalized=None,
                 maxiter: int | None = None) -> tuple[np.ndarray, float]:
    """p minimising :func:`gaussian_nll` of ``r2`` under ``variance(p)`` + ½ ``ridge`` Σ p_j² over the ``penalized``
    (bool mask, default every) parameters, by L-BFGS-B with the analytic gradient (scipy).

    ``variance(p)`` returns (v, vjp): the variances (units of r²) and the function taking ∂NLL/∂v (one per
    residual) to ∂NLL/∂p. Returns (p, the penalised NLL there, nats per residual)."""
    from scipy.optimize import minimize

    r2 = np.asarray(r2, dtype=float).ravel()
    p0 = np.asarray(p0, dtype=float)
    mask = np.ones(p0.size, dtype=bool) if penalized is None else np.asarray(penalized, dtype=bool)

    def loss(p):
        v, vjp = variance(p)
        q = np.where(mask, p, 0.0)
        value = gaussian_nll(r2, v, weights) + 0.5 * ridge * float(q @ q)
        return value, vjp(gaussian_nll_gradient(r2, v, weights)) + ridge * q

    res = minimize(loss, p0, jac=True, method="L-BFGS-B", options={} if maxiter is None else {"maxiter": maxiter})
    return np.asarray(res.x, dtype=float), float(res.fun)
