"""The one trust rule: a verdict per structure, with its reasons, from arrays.

A structure is **trusted** when the model is expected to be right there, by three checks that the
per-element energy offset does not change (a missing offset removes the absolute energy interval, never
the trust):

1. **domain**: its largest atomic Q residual is within the threshold of the structures the Hessian was built
   from (:mod:`calib.uq.ood`), which stand in for the model's training set;
2. **forces**: the calibrated bound on its largest force error, U (eV/Å), is within ``force_tol``;
3. **energy**: the calibrated energy half-width per atom (conformal, eV/atom) is within ``energy_tol``.

The force bound comes from :class:`ForceErrorModel`. Universal potentials are soft: their force error grows
with the force (the softening scale, Deng et al. 2025), and a distorted structure errs on every atom. The
model gives each component a scale σ_i² = κ₁² F_i² + κ₂² F_rms² + τ² (F_i the model's force component,
F_rms the structure's RMS force, eV/Å), fitted by Gaussian NLL on calibration structures, and bounds the
structure's largest error: with the score t = max_i |e_i| / (g(n) max_i σ_i) (n components, g(n) =
Φ⁻¹(1 − 1/(4n)) the typical largest |z| of n standard normals, which makes scores of structures of different
sizes comparable) and q the conformal quantile of t over the calibration structures, U = q g(n) max_i σ_i
bounds the largest error of a structure like those with probability ≥ 1 − α (split conformal).

Being outside the calibration structures (a Q score above the largest the calibration structures had) is
reported as information: the intervals there are extrapolated, not measured; it is not a reason by itself.
The verdict's score, max(Q, U / force_tol, h_E / energy_tol), is ≤ 1 exactly when a structure is trusted;
it ranks structures for the quality measures of ``calib evaluate`` (AUROC).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: default tolerances, chosen from the errors CHGNet makes on the shipped GPAW data (docs/screening.md)
FORCE_TOL = 0.3  # eV/Å, largest force error
ENERGY_TOL = 0.1  # eV/atom, conformal energy half-width per atom


@dataclass(frozen=True)
class TrustPolicy:
    """Tolerances of the verdict: ``force_tol`` (eV/Å) on the bound of the largest force error,
    ``energy_tol`` (eV/atom) on the energy half-width per atom (None: not checked), and whether a structure
    out of the model's domain is untrusted (``domain``)."""

    force_tol: float | None = FORCE_TOL
    energy_tol: float | None = ENERGY_TOL
    domain: bool = True


def _g(n) -> np.ndarray:
    """Φ⁻¹(1 − 1/(4n)): the typical largest |z| of n standard normals (size normalisation of the bound)."""
    from scipy.stats import norm

    return norm.ppf(1.0 - 1.0 / (4.0 * np.maximum(np.asarray(n, dtype=float), 1.0)))


class ForceErrorModel:
    """σ_i² = κ₁² F_i² + κ₂² F_rms² + τ² per force component, and a conformal bound on a structure's largest
    force error (eV/Å). See the module docstring.

    Attributes (after :meth:`fit`)
    ------------------------------
    kappa1_, kappa2_ : float (1) ; tau_ : float, eV/Å ; quantile_ : float (1), at ``alpha`` ;
    nll_ : float, nats per component ; n_structures_ : int
    """

    def __init__(self, alpha: float = 0.1):
        self.alpha = float(alpha)

    def sigma(self, forces) -> np.ndarray:
        """σ_i (eV/Å) of every component of one structure's model forces (N, 3)."""
        f = np.asarray(forces, dtype=float).reshape(-1)
        return np.sqrt(self.kappa1_**2 * f**2 + self.kappa2_**2 * np.mean(f**2) + self.tau_**2)

    def fit(self, model_forces, errors) -> ForceErrorModel:
        """Fit on calibration structures: one (N_i, 3) array of model forces and of reference − model errors
        (eV/Å) per structure."""
        from scipy.optimize import minimize

        from calib.uq.conformal import conformal_quantile

        f = [np.asarray(x, dtype=float).reshape(-1) for x in model_forces]
        e = [np.asarray(x, dtype=float).reshape(-1) for x in errors]
        if len(f) < 2 or len(f) != len(e):
            raise ValueError(f"the force error model needs ≥ 2 structures with forces and errors, got {len(f)}")
        F, E = np.concatenate(f), np.concatenate(e)
        R = np.concatenate([np.full(x.size, np.mean(x**2)) for x in f])
        scale = max(float(np.mean(E**2)), 1e-30)

        def nll(x):
            v = np.maximum(np.exp(x[0]) * F**2 + np.exp(x[1]) * R + np.exp(x[2]), 1e-300)
            return 0.5 * float(np.mean(np.log(2 * np.pi * v) + E**2 / v))

        grid = [(a, b, c) for a in np.linspace(-9, 1, 6) for b in np.linspace(-9, 1, 6)
                for c in np.log(scale) + np.linspace(-8, 0, 5)]
        res = minimize(nll, np.array(min(grid, key=lambda x: nll(np.array(x)))), method="L-BFGS-B")
        self.kappa1_, self.kappa2_, self.tau_ = (float(np.sqrt(np.exp(x))) for x in res.x)
        self.nll_ = float(res.fun)
        t = np.sort([np.max(np.abs(ei)) / (_g(fi.size) * np.max(self.sigma(fi))) for fi, ei in zip(f, e)])
        self.quantile_ = conformal_quantile(t, self.alpha, what="force error bound")
        self.n_structures_ = len(f)
        return self

    def bound(self, forces) -> float:
        """U (eV/Å): the bound on the largest force-component error of one structure (model forces (N, 3))."""
        f = np.asarray(forces, dtype=float)
        return float(self.quantile_ * _g(f.size) * np.max(self.sigma(f))) if f.size else float("nan")

    # -- persistence (calib.artifact)
    def to_variables(self, prefix: str = "force_error") -> dict:
        return {f"{prefix}_kappa1": ((), self.kappa1_, {"units": "1", "description": "scale of sigma with |F_i|"}),
                f"{prefix}_kappa2": ((), self.kappa2_, {"units": "1", "description": "scale of sigma with F_rms"}),
                f"{prefix}_tau": ((), self.tau_, {"units": "eV/Å", "description": "floor of sigma"}),
                f"{prefix}_quantile": ((), self.quantile_, {"units": "1", "alpha": self.alpha,
                                                            "n_structures": int(self.n_structures_),
                                                            "description": "conformal quantile of the "
                                                            "structure-level score"})}

    @classmethod
    def from_variables(cls, ds, prefix: str = "force_error") -> ForceErrorModel:
        q = ds[f"{prefix}_quantile"]
        self = cls(alpha=float(q.attrs.get("alpha", 0.1)))
        self.kappa1_, self.kappa2_ = float(ds[f"{prefix}_kappa1"].values), float(ds[f"{prefix}_kappa2"].values)
        self.tau_, self.quantile_ = float(ds[f"{prefix}_tau"].values), float(q.values)
        self.n_structures_ = int(q.attrs.get("n_structures", 0))
        return self


def verdict(policy: TrustPolicy, *, q_score=None, force_bound=None, energy_halfwidth=None):
    """(trusted (S,) bool, reasons (S,) str, score (S,) float) from per-structure arrays (NaN: not known).

    ``q_score`` is the largest atomic Q over the domain threshold (1), ``force_bound`` U (eV/Å),
    ``energy_halfwidth`` the conformal half-width per atom (eV/atom). A check whose input is missing or NaN
    is not made (its part of the score is 0). Reasons are " | "-joined words with the numbers."""
    arrays = [np.asarray(x, dtype=float) for x in (q_score, force_bound, energy_halfwidth) if x is not None]
    n = len(arrays[0]) if arrays else 0
    parts, words = [], []
    checks = [(q_score, 1.0 if policy.domain else None,
               lambda v: f"out of the model's domain (Q = {v:.3g} × the threshold of the Hessian's structures)"),
              (force_bound, policy.force_tol,
               lambda v: f"force error may reach {v:.3g} eV/Å (calibrated bound) > {policy.force_tol:g} eV/Å"),
              (energy_halfwidth, policy.energy_tol,
               lambda v: f"calibrated energy error ±{v:.3g} eV/atom > {policy.energy_tol:g} eV/atom")]
    for values, tol, word in checks:
        if values is None or tol is None:
            continue
        v = np.asarray(values, dtype=float)
        parts.append(np.where(np.isfinite(v), v / tol, 0.0))
        words.append((v, tol, word))
    score = np.max(parts, axis=0) if parts else np.zeros(n)
    reasons = [" | ".join(word(v[k]) for v, tol, word in words if np.isfinite(v[k]) and v[k] > tol)
               for k in range(n)]
    return score <= 1.0, np.array(reasons, dtype=object), score
