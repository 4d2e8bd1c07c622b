"""Last-layer prediction rigidity (LLPR): the posterior from H, its fit, and σ of energies, differences and forces.

For a model whose energy is linear in its last-layer weights w,
``E/N = w·f + b + offset`` (per-atom models such as CHGNet) or
``E = w·f + b + offset`` (total models), the Gauss–Newton pseudo-Hessian of
the squared energy loss over the training distribution is

    H = Σ_n f_n f_nᵀ                          (+ optional force rows, see below)

and the approximate posterior covariance of w is α² Σ with
``Σ = (H + ς² I)⁻¹``. We never invert: H = U Λ Uᵀ is diagonalised once in
float64 and every quantity is a weighted sum over eigen-directions,

    var(E_i)  = α² s_i² Σ_k (u_k·f_i)² / (λ_k + ς²)                    [eV²]
    cov(E_i, E_j) = α² s_i s_j Σ_k (u_k·f_i)(u_k·f_j) / (λ_k + ς²)     [eV²]
    var(F_ax) = α² s² Σ_k (∂(u_k·f)/∂r_ax)² / (λ_k + ς²)               [eV²/Å²]

with s_i = N_i for per-atom models and 1 for total ones (``total_scale``),
so E here is always the *total* energy in eV. Any ς² then costs O(d²), which
makes the 1-D NLL search over ς² cheap. A singular H is fine: ς² > 0.

This module works on arrays: the Hessian comes from :mod:`calib.uq.hessian`, the
feature gradients from :mod:`calib.models.gradients`, and the fitted state is
saved by the artifact through :meth:`LLPR.to_variables`.

References: Bigi, Chong, Ceriotti, Grasselli, "A prediction rigidity
formalism for low-cost uncertainties in trained neural networks" (2024);
Batatia et al., MACE-MP-0, J. Chem. Phys. 163, 184110 (2025), App. D.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from calib.data.units import total_scale
from calib.errors import CalibWarning
from calib.uq.variance import VARIANCE_FLOOR, gaussian_nll

# =========================================================================== posterior


@dataclass
class CalibrationReport:
    """How α² and ς² were chosen (returned in :attr:`LLPR.report_`)."""

    target: str
    n_rows: int
    alpha2: float
    sigma2: float
    nll: float
    rank: int
    sigma2_grid: list = field(default_factory=list)
    nll_grid: list = field(default_factory=list)
    note: str = ""


@dataclass
class LLPRFit:
    """What :meth:`LLPR.fit_residuals` measured on the calibration set.

    Energies are total eV (``energy_rmse_per_atom`` eV/atom), forces eV/Å, NLL in nats per residual;
    NaN where an observable was not given. ``force_sigma`` and ``force_live`` are per force component
    (flattened (Σ N_i) × 3); ``force_live`` is False where σ is zero by symmetry.
    """

    target: str
    energy_sigma: np.ndarray | None = None
    energy_nll: float = float("nan")
    energy_spearman: float = float("nan")
    energy_rmse_per_atom: float = float("nan")
    energy_excluded: int = 0
    force_sigma: np.ndarray | None = None
    force_live: np.ndarray | None = None
    force_nll: float = float("nan")
    force_spearman: float = float("nan")
    force_mae: float = float("nan")
    approx_force_directions: int = 0
    force_components_zero_sigma: int = 0


class LLPR:
    """Posterior over the readout weights from a pseudo-Hessian, in the style of scikit-learn.

    Parameters
    ----------
    energy_convention : "per_atom" | "total"
        How the model's features pool (mean → energy per atom, sum → total).
    sigma2 : float, optional
        Regulariser ς² (feature units²). None: chosen by :meth:`calibrate`,
        or, before calibration, 1e-6 · λ_max (reported in ``regularisation_note_``).
    alpha2 : float
        Scale α² of the posterior (dimensionless); fitted by :meth:`calibrate`,
        which can fit a separate α²_F for forces (``force_alpha2_``).
    rank_tol : float
        Eigenvalues below ``rank_tol · λ_max`` count as null directions in the
        reported rank (they are kept and regularised, never dropped).

    Attributes (after :meth:`fit`)
    -------------------------------
    eigenvalues_ : (d,) float64, ascending, clipped at 0.
    eigenvectors_ : (d, d) float64, columns u_k.
    rank_ : int
    n_structures_ : int
    sigma2_, alpha2_ : float — energies
    force_sigma2_, force_alpha2_ : float — forces (equal to the above unless calibrated on both)
    """

    def __init__(self, energy_convention: str = "per_atom", sigma2: float | None = None,
                 alpha2: float = 1.0, rank_tol: float = 1e-6):
        self.energy_convention = energy_convention
        self.sigma2 = sigma2
        self.alpha2 = alpha2
        self.rank_tol = rank_tol

    # ------------------------------------------------------------------ fitting
    def fit(self, hessian: np.ndarray, n_structures: int = 0) -> LLPR:
        """Diagonalise H (float64). Never fails on a singular or rank-deficient H."""
        H = np.asarray(hessian, dtype=np.float64)
        if H.ndim != 2 or H.shape[0] != H.shape[1]:
            raise ValueError(f"hessian must be square, got shape {H.shape}")
        if not np.all(np.isfinite(H)):
            raise ValueError("hessian contains non-finite values")
        H = 0.5 * (H + H.T)
        lam, U = np.linalg.eigh(H)
        lam = np.clip(lam, 0.0, None)
        self.hessian_ = H
        self.eigenvalues_ = lam
        self.eigenvectors_ = U
        lam_max = float(lam[-1]) if lam.size else 0.0
        self.rank_ = int(np.sum(lam > self.rank_tol * lam_max)) if lam_max > 0 else 0
        self.n_structures_ = int(n_structures)
        if self.sigma2 is not None:
            self.sigma2_ = float(self.sigma2)
            self.regularisation_note_ = f"sigma2 = {self.sigma2_:.3g} given by the user"
        else:
            self.sigma2_ = max(1e-6 * lam_max, 1e-12)
            self.regularisation_note_ = (
                f"sigma2 = 1e-6 * lambda_max = {self.sigma2_:.3g} (default before calibration); "
                f"rank {self.rank_}/{H.shape[0]} at tolerance {self.rank_tol:g}"
            )
        self.alpha2_ = float(self.alpha2)
        self.force_alpha2_, self.force_sigma2_ = self.alpha2_, self.sigma2_
        return self

    @property
    def n_features(self) -> int:
        return int(self.eigenvalues_.shape[0])

    def _weights(self, sigma2: float | None = None) -> np.ndarray:
        s2 = self.sigma2_ if sigma2 is None else sigma2
        return 1.0 / (self.eigenvalues_ + s2)

    def _force_weights(self) -> np.ndarray:
        return self._weights(self.force_sigma2_)

    def covariance(self, sigma2: float | None = None) -> np.ndarray:
        """Σ = (H + ς² I)⁻¹ (without α²), via the eigendecomposition."""
        U = self.eigenvectors_
        return (U * self._weights(sigma2)) @ U.T

    def _scale(self, n_atoms) -> np.ndarray:
        return total_scale(n_atoms, self.energy_convention)

    # ------------------------------------------------------------------ energies
    def energy_rows(self, features: np.ndarray, n_atoms) -> np.ndarray:
        """P_ik = s_i² (u_k·f_i)²: var(E_i) = α² P @ 1/(λ+ς²)."""
        proj = np.asarray(features, dtype=np.float64) @ self.eigenvectors_
        return (self._scale(n_atoms)[:, None] * proj) ** 2

    def energy_variance(self, features: np.ndarray, n_atoms) -> np.ndarray:
        """Variance of the total energy of each structure, eV²."""
        return self.alpha2_ * self.energy_rows(features, n_atoms) @ self._weights()

    def energy_sigma(self, features: np.ndarray, n_atoms) -> np.ndarray:
        """σ of the total energy of each structure, eV (per atom: divide by N)."""
        return np.sqrt(self.energy_variance(features, n_atoms))

    def energy_covariance(self, features: np.ndarray, n_atoms) -> np.ndarray:
        """Full covariance matrix of the total energies of a list of structures, eV²."""
        A = (self._scale(n_atoms)[:, None] * np.asarray(features, dtype=np.float64)) @ self.eigenvectors_
        return self.alpha2_ * (A * self._weights()) @ A.T

    def energy_difference_sigma(self, features_a, n_atoms_a, features_b, n_atoms_b) -> np.ndarray:
        """σ of E_a − E_b (total energies, eV) for paired rows of a and b.

        σ² = α² (s_a f_a − s_b f_b)ᵀ Σ (s_a f_a − s_b f_b): correlated errors cancel.
        """
        fa = self._scale(n_atoms_a)[:, None] * np.atleast_2d(features_a)
        fb = self._scale(n_atoms_b)[:, None] * np.atleast_2d(features_b)
        proj = (fa - fb) @ self.eigenvectors_
        return np.sqrt(self.alpha2_ * (proj**2) @ self._weights())

    def local_energy_sigma(self, atom_features: np.ndarray) -> np.ndarray:
        """σ of each atom's energy contribution E_a = w·φ_a + b, eV (local prediction rigidity).

        var(E_a) = α² φ_aᵀ Σ φ_a with the per-atom features φ_a before pooling and the energy α², ς²:
        for a per-atom model the total is E = Σ_a E_a (f = mean φ_a, so N f = Σ_a φ_a) and for a total
        model likewise, hence no N scale here, and var(E) = α² (Σ_a φ_a)ᵀ Σ (Σ_a φ_a) ties the two
        together. Following Chong, Grasselli, Ben Mahmoud, Morrow, Deringer, Ceriotti, JCTC 2023: the
        one atom that is out of distribution is not averaged away as in the pooled σ.
        """
        proj = np.asarray(atom_features, dtype=np.float64) @ self.eigenvectors_
        return np.sqrt(self.alpha2_ * (proj**2) @ self._weights())

    # ------------------------------------------------------------------ forces
    def force_rows(self, gradients: Sequence[np.ndarray], n_atoms, directions: np.ndarray | None = None):
        """Rows P[(i,a,x), k] = s_i² (∂(u_k·f_i)/∂r_ax)², stacked over structures.

        ``gradients[i]`` has shape (k, N_i, 3) for the eigen-directions (all, or
        the subset ``directions`` indexes).
        """
        scale = self._scale(n_atoms)
        rows = [((s * g).reshape(g.shape[0], -1).T) ** 2 for g, s in zip(gradients, scale)]
        return np.concatenate(rows) if rows else np.zeros((0, self.n_features))

    def force_directions(self, mode: str = "exact") -> tuple[np.ndarray, float]:
        """(eigen-direction indices, bias factor) the force σ of ``mode`` sums over.

        ``"exact"``: all d directions, factor 1. ``"approx"``: the directions kept by
        :meth:`fit_force_truncation` (by measured contribution) and the measured factor total/kept.
        """
        if mode == "exact":
            return np.arange(self.n_features), 1.0
        if mode == "approx":
            if not hasattr(self, "force_directions_"):
                raise ValueError("approx force σ needs fit_force_truncation() first (or a calibrated artifact)")
            return self.force_directions_, self.force_truncation_factor_
        raise ValueError(f"mode must be 'exact' or 'approx', got {mode!r}")

    def force_variance(self, gradients: Sequence[np.ndarray], n_atoms, mode: str = "exact") -> list[np.ndarray]:
        """Variance of every force component, eV²/Å², as a list of (N_i, 3) arrays.

        ``gradients[i]`` is ∂(u_k·f_i)/∂r of structure i, shape (k, N_i, 3), for the eigen-directions
        :meth:`force_directions` of ``mode`` gives, in that order (:func:`calib.models.gradients.
        force_variance` runs the model for them). var(F_ax) = α²_F · factor · s² Σ_k g_kax² / (λ_k + ς²_F).
        """
        dirs, factor = self.force_directions(mode)
        w = self._force_weights()[dirs]
        return [self.force_alpha2_ * factor * np.einsum("k,kax->ax", w, (s * g) ** 2)
                for g, s in zip(gradients, self._scale(n_atoms))]

    def fit_force_truncation(self, gradients: Sequence[np.ndarray], n_atoms, coverage: float = 0.95) -> LLPR:
        """Choose the fewest eigen-directions carrying ``coverage`` of the summed force variance.

        ``gradients`` are exact (d, N_i, 3) gradients on a probe set (e.g. the
        calibration structures). Also stores the factor total/kept measured on
        that set, which removes the truncation bias on average.
        """
        P = self.force_rows(gradients, n_atoms)
        contrib = P.sum(axis=0) * self._force_weights()
        order = np.argsort(contrib)[::-1]
        cum = np.cumsum(contrib[order]) / contrib.sum()
        m = int(np.searchsorted(cum, coverage) + 1)
        self.force_directions_ = np.sort(order[:m])
        self.force_truncation_factor_ = float(contrib.sum() / contrib[self.force_directions_].sum())
        self.force_contributions_ = contrib
        return self

    # ------------------------------------------------------------------ calibration
    def _profile_fit(self, P: np.ndarray, r2: np.ndarray, sigma2_grid=None):
        """(α², ς², NLL, grid, NLL on grid, note) minimising the mean Gaussian NLL of one observable."""
        from scipy.optimize import minimize_scalar

        lam_max = max(float(self.eigenvalues_[-1]), 1e-12)

        def profile(log_s2: float) -> tuple[float, float]:
            v = np.maximum(P @ (1.0 / (self.eigenvalues_ + 10.0**log_s2)), VARIANCE_FLOOR)
            a2 = float(np.mean(r2 / v))  # the closed-form α² at this ς²
            return a2, gaussian_nll(r2, a2 * v)

        if self.sigma2 is not None:
            log_best, grid, nlls, note = np.log10(self.sigma2), [], [], "sigma2 fixed by the user; "
        else:
            grid = np.log10(lam_max) + (np.linspace(-12, 2, 57) if sigma2_grid is None
                                        else np.log10(np.asarray(sigma2_grid)) - np.log10(lam_max))
            nlls = [profile(x)[1] for x in grid]
            i = int(np.argmin(nlls))
            lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
            res = minimize_scalar(lambda x: profile(x)[1], bounds=(lo, hi), method="bounded",
                                  options={"xatol": 1e-3})
            log_best = float(res.x) if res.fun <= nlls[i] else float(grid[i])
            note = ""
            if i in (0, len(grid) - 1):
                note = "NLL minimum at the edge of the sigma2 grid; "
                warnings.warn(f"LLPR calibration: the NLL minimum lies at the edge of the sigma2 grid "
                              f"(sigma2 = {10**log_best:.3g}); the features barely rank the errors",
                              CalibWarning, stacklevel=3)
        a2, nll = profile(log_best)
        return a2, float(10.0**log_best), nll, [float(10.0**x) for x in grid], [float(x) for x in nlls], note

    def calibrate(self, rows: np.ndarray, residuals: np.ndarray, *, target: str = "energy",
                  groups: np.ndarray | None = None, sigma2_grid: np.ndarray | None = None) -> LLPR:
        """Fit α² and ς² by minimising the Gaussian NLL of ``residuals`` (eV or eV/Å).

        ``rows`` are :meth:`energy_rows` and/or :meth:`force_rows`. With
        ``groups`` (0 = energy row, 1 = force row) each observable gets its own
        (α², ς²): ``alpha2_, sigma2_`` for energies and ``force_alpha2_,
        force_sigma2_`` for forces, fitted independently (measured on the
        shipped GPAW data, one shared pair miscalibrates one of the two; see
        docs/llpr.md). Without groups one pair serves both. For each ς²,
        α² = mean(r²/v) is the closed-form minimiser; ς² is searched on a log
        grid spanning 1e-12…1e2 · λ_max and refined by a bounded 1-D
        minimisation. A ς² given in the constructor is kept.
        """
        P = np.asarray(rows, dtype=np.float64)
        r2 = np.asarray(residuals, dtype=np.float64).reshape(-1) ** 2
        if P.shape[0] != r2.shape[0]:
            raise ValueError(f"{P.shape[0]} rows but {r2.shape[0]} residuals")
        g = np.zeros(len(r2), dtype=int) if groups is None else np.asarray(groups, dtype=int).reshape(-1)
        if g.shape != r2.shape:
            raise ValueError(f"{len(g)} group labels but {len(r2)} residuals")
        fits = {}
        for k in (0, 1):
            m = g == k
            if np.any(m):
                what, unit = (("energy", "eV"), ("force", "eV/Å"))[k]
                if m.sum() < 2:
                    raise ValueError(f"calibration needs at least 2 {what} residuals, got {int(m.sum())}")
                if np.max(r2[m]) <= 1e-12:
                    raise ValueError(f"all {int(m.sum())} {what} residuals are below 1e-6 {unit}: the data cannot "
                                     f"determine α² and ς² for {what}s (α² would collapse to 0)")
                fits[k] = self._profile_fit(P[m], r2[m], sigma2_grid)
        e = fits.get(0, fits.get(1))
        f = fits.get(1, e)
        self.alpha2_, self.sigma2_ = e[0], e[1]
        self.force_alpha2_, self.force_sigma2_ = f[0], f[1]
        lam_max = max(float(self.eigenvalues_[-1]), 1e-12)
        parts = []
        for k, name in ((0, "energies"), (1, "forces")):
            if k in fits:
                a2, s2, _, _, _, note = fits[k]
                parts.append(f"{name}: {note}alpha2 = {a2:.3g}, sigma2 = {s2:.3g} ({s2 / lam_max:.2g} lambda_max), "
                             f"{int(np.sum(g == k))} residuals")
        self.regularisation_note_ = (f"Gaussian NLL ({target}); " + "; ".join(parts)
                                     + f"; rank {self.rank_}/{self.n_features}")
        self.report_ = CalibrationReport(
            target=target, n_rows=len(r2), alpha2=e[0], sigma2=e[1], nll=sum(x[2] for x in fits.values()),
            rank=self.rank_, sigma2_grid=e[3], nll_grid=e[4], note=self.regularisation_note_,
        )
        return self

    def fit_residuals(self, *, features=None, n_atoms=None, energy_residuals=None, gradients=None,
                      force_n_atoms=None, force_residuals=None, target: str = "both",
                      approx_coverage: float = 0.95) -> LLPRFit:
        """Fit (α², ς²) of energies and forces from arrays, and measure the fit: the one calibration step.

        Parameters
        ----------
        features : (S, d) pooled features; n_atoms : (S,)
        energy_residuals : (S,) reference − model total energies, eV, after the element reference;
            NaN leaves a structure out of the energy fit (e.g. a shift the other folds do not determine).
        gradients : list of (d, N_i, 3) exact feature gradients ∂(u_k·f)/∂r for every eigen-direction;
            force_n_atoms : (S_F,) atoms of those structures
        force_residuals : (Σ N_i, 3) reference − model forces, eV/Å
        target : "energy" | "forces" | "both" — which residuals the NLL is taken over ("both": one
            (α², ς²) per observable). The other observable's data, when given, is only measured.
        approx_coverage : fraction of the summed force variance the approximate force σ keeps
            (:meth:`fit_force_truncation` on these gradients).

        Force components whose σ is zero by symmetry (f·∂f/∂x = 0: a dimer's transverse forces, an atom on
        an inversion centre) carry no information and are left out of the fit and the force NLL.
        """
        from calib.uq.metrics import spearman

        if target not in ("energy", "forces", "both"):
            raise ValueError(f"target must be 'energy', 'forces' or 'both', got {target!r}")
        has_e, has_f = energy_residuals is not None, force_residuals is not None
        if (target != "forces" and not has_e) or (target != "energy" and not has_f):
            raise ValueError(f"target={target!r} needs the residuals of what it fits")
        rows, res, groups = [], [], []
        if has_e:
            e_res = np.asarray(energy_residuals, dtype=float)
            e_ok = np.isfinite(e_res)
            e_rows = self.energy_rows(features, n_atoms)
            if target != "forces":
                rows.append(e_rows[e_ok])
                res.append(e_res[e_ok])
                groups.append(np.zeros(int(e_ok.sum()), dtype=int))
        if has_f:
            f_rows = self.force_rows(gradients, force_n_atoms)
            f_res = np.asarray(force_residuals, dtype=float).reshape(-1)
            amax = np.abs(f_rows).max(axis=1)
            live = amax > 1e-12 * max(float(amax.max(initial=0.0)), 1e-300)
            if target != "energy":
                rows.append(f_rows[live])
                res.append(f_res[live])
                groups.append(np.ones(int(live.sum()), dtype=int))
        self.calibrate(np.concatenate(rows), np.concatenate(res), target=target, groups=np.concatenate(groups))
        out = LLPRFit(target=target)
        if has_e:
            out.energy_sigma = self.energy_sigma(features, n_atoms)
            e = e_res[e_ok]
            out.energy_nll = self.nll(e_rows[e_ok], e)
            out.energy_spearman = spearman(out.energy_sigma[e_ok], np.abs(e)) if len(e) >= 3 else float("nan")
            out.energy_rmse_per_atom = float(np.sqrt(np.mean((e / np.asarray(n_atoms)[e_ok]) ** 2)))
            out.energy_excluded = int((~e_ok).sum())
        if has_f:
            self.fit_force_truncation(gradients, force_n_atoms, coverage=approx_coverage)
            out.force_sigma = np.sqrt(self.force_alpha2_ * f_rows @ self._force_weights())
            out.force_live = live
            out.force_nll = self.nll(f_rows[live], f_res[live], observable="forces")
            out.force_spearman = (spearman(out.force_sigma[live], np.abs(f_res[live])) if live.sum() >= 3
                                  else float("nan"))
            out.force_mae = float(np.mean(np.abs(f_res)))
            out.approx_force_directions = int(len(self.force_directions_))
            out.force_components_zero_sigma = int((~live).sum())
        return out

    def nll(self, rows: np.ndarray, residuals: np.ndarray, observable: str = "energy") -> float:
        """Mean Gaussian NLL of residuals under the current α² (of ``observable``) and ς², nats per residual."""
        a2, w = (self.force_alpha2_, self._force_weights()) if observable == "forces" \
            else (self.alpha2_, self._weights())
        return gaussian_nll(np.asarray(residuals).reshape(-1) ** 2, a2 * np.asarray(rows) @ w)

    # ------------------------------------------------------------------ persistence
    def to_variables(self) -> dict:
        """netCDF variables (name -> (dims, values, attrs)) of the fitted state; see calib.artifact."""
        out = {
            "hessian": (("feature", "feature_b"), self.hessian_, {"units": "feature units^2",
                                                                 "description": "sum_n f_n f_n^T"}),
            "eigenvalues": (("eig",), self.eigenvalues_, {"units": "feature units^2"}),
            "eigenvectors": (("feature", "eig"), self.eigenvectors_, {"units": "1"}),
            "alpha2": ((), float(self.alpha2_), {"units": "1", "description": "posterior scale for energies"}),
            "sigma2": ((), float(self.sigma2_), {"units": "feature units^2", "description": "regulariser for energies"}),
            "force_alpha2": ((), float(self.force_alpha2_), {"units": "1", "description": "posterior scale for forces"}),
            "force_sigma2": ((), float(self.force_sigma2_), {"units": "feature units^2",
                                                             "description": "regulariser for forces"}),
        }
        if hasattr(self, "force_directions_"):
            out["force_directions"] = (("force_direction",), np.asarray(self.force_directions_, dtype=np.int64), {})
            out["force_truncation_factor"] = ((), float(self.force_truncation_factor_), {"units": "1"})
        return out

    def to_attrs(self) -> dict:
        return {"n_structures": int(self.n_structures_), "rank": int(self.rank_),
                "energy_convention": self.energy_convention,
                "regularisation_note": str(getattr(self, "regularisation_note_", ""))}

    @classmethod
    def from_variables(cls, ds) -> LLPR:
        """Rebuild a fitted LLPR from the variables and attributes written by :meth:`to_variables`."""
        attrs = ds.attrs
        self = cls(energy_convention=attrs["energy_convention"])
        self.hessian_ = ds["hessian"].values.astype(np.float64)
        self.eigenvalues_ = ds["eigenvalues"].values.astype(np.float64)
        self.eigenvectors_ = ds["eigenvectors"].values.astype(np.float64)
        lam_max = self.eigenvalues_[-1] if self.eigenvalues_.size else 0.0
        self.rank_ = int(attrs.get("rank", np.sum(self.eigenvalues_ > self.rank_tol * lam_max)))
        self.n_structures_ = int(attrs.get("n_structures", 0))
        self.alpha2_ = float(ds["alpha2"].values)
        self.sigma2_ = float(ds["sigma2"].values)
        self.force_alpha2_ = float(ds["force_alpha2"].values) if "force_alpha2" in ds else self.alpha2_
        self.force_sigma2_ = float(ds["force_sigma2"].values) if "force_sigma2" in ds else self.sigma2_
        self.regularisation_note_ = str(attrs.get("regularisation_note", ""))
        if "force_directions" in ds:
            self.force_directions_ = ds["force_directions"].values.astype(int)
            self.force_truncation_factor_ = float(ds["force_truncation_factor"].values)
        return self
