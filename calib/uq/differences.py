"""Energy differences within a chemistry: a variance model that includes the softening.

LLPR gives var_LLPR(E_a − E_b) = α² (s_a f_a − s_b f_b)ᵀ Σ (s_a f_a − s_b f_b). Frames of one
chemistry have nearly identical pooled features, so that variance is tiny, while a softened model's
error on a difference grows with the difference itself: ΔE_ref ≈ ΔE_model / s. Measured on the
shipped GPAW data, raw LLPR difference σ is ~50× too small. The model here is

    var(ΔE) = β · var_LLPR + κ² · ΔE_model² + τ²                              [eV²]

with β (1), κ² (1) and τ² (eV²) fitted by the Gaussian NLL of labelled pairs' errors
r = ΔE_ref − ΔE_model. τ² is the floor that neither LLPR nor the
softening explains: measured on the shipped data, pairs with |ΔE_model| ≈ 1 meV still err by
50–80 meV, while the LLPR variance of such pairs spans orders of magnitude and cannot stand in for a
floor. Conformal prediction on |r| / σ then gives the intervals.

When a scalar correction c (calib.softening.scale) is applied, the corrected difference c·ΔE_model has
error r_c = ΔE_ref − c·ΔE_model, and its variance

    var_c(ΔE) = β_c · c² var_LLPR + κ_c² · ΔE_model² + τ_c² + σ_c² · ΔE_model²

uses the uncertainty of c itself (σ_c from its bootstrap CI, calib.softening.correction.correction_sigma:
a known term) and a residual κ_c² fitted on the corrected errors (:func:`corrected_errors`): what the
one scalar does not fix.

**One pair definition.** Two structures make an energy-difference pair exactly when they have the same
composition (:func:`composition`: the formula with its counts, Si8 ≠ Si16), so that the per-element reference
cancels. The variance model is fitted on all such pairs (:func:`difference_pairs`), the conformal target is
scored on disjoint random ones (``disjoint=True``: independent scores), and the predictor and the NEB band
serve the pairs of one reference structure (:func:`reference_pairs`); :func:`difference_sigmas` gives the raw
and the corrected σ of any of them.
"""

from __future__ import annotations

import dataclasses

import numpy as np


class DifferenceVarianceModel:
    """var(ΔE) = β · c² v_LLPR + (κ² + σ_c²) · ΔE² + τ², fitted by the Gaussian NLL (eV², total energies).

    The one place where the variance of an energy difference is derived: pairs (:meth:`variance`), paths
    (:meth:`covariance`, whose diagonal is :meth:`variance`) and the fit (:meth:`fit`) share it. For the
    raw model c = 1 and σ_c = 0; for the corrected one c is the chemistry's scalar correction and σ_c its
    uncertainty (known terms, not fitted).

    Attributes (after :meth:`fit`)
    ------------------------------
    beta_ : float — scale of the LLPR difference variance (1)
    kappa2_ : float — softening term: relative variance per unit ΔE² (1)
    tau2_ : float — floor, eV²
    nll_ : float — mean NLL at the optimum (nats per pair)
    n_pairs_ : int
    """

    def __init__(self, beta: float = 1.0, kappa2: float = 0.0, tau2: float = 0.0):
        self.beta_ = float(beta)
        self.kappa2_ = float(kappa2)
        self.tau2_ = float(tau2)

    def variance(self, llpr_variance, delta_model, c=1.0, c_sigma=0.0) -> np.ndarray:
        """var(ΔE) in eV² for LLPR difference variances (eV²) and model differences ΔE (eV); ``c`` and
        ``c_sigma`` (scalars or per pair) scale the LLPR part and add σ_c² ΔE² (the corrected model)."""
        d = np.asarray(delta_model, dtype=float)
        c, cs = np.asarray(c, dtype=float), np.asarray(c_sigma, dtype=float)
        return self.beta_ * c**2 * np.asarray(llpr_variance, dtype=float) + (self.kappa2_ + cs**2) * d**2 + self.tau2_

    def sigma(self, llpr_variance, delta_model, c=1.0, c_sigma=0.0) -> np.ndarray:
        """σ(ΔE) in eV (:meth:`variance`)."""
        return np.sqrt(self.variance(llpr_variance, delta_model, c, c_sigma))

    def covariance(self, llpr_covariance, delta_model, c: float = 1.0, c_sigma: float = 0.0) -> np.ndarray:
        """Covariance (eV²) of the differences D_i = E_i − E_0 of one path, i = 1 … M:

            C_ij = β c² L_ij + (κ² + σ_c²) ΔE_i ΔE_j + τ²/2 · (1 + δ_ij)

        with L the LLPR covariance of the differences (M × M). The softening term is fully correlated
        along the path (a scale error has one sign) and the floor is independent per-image noise of
        variance τ²/2, so that the diagonal equals :meth:`variance` of each pair (i, 0)."""
        d = np.asarray(delta_model, dtype=float)
        M = len(d)
        return (self.beta_ * c**2 * np.asarray(llpr_covariance, dtype=float) + (self.kappa2_ + c_sigma**2)
                * np.outer(d, d) + self.tau2_ / 2 * (np.ones((M, M)) + np.eye(M)))

    def fit(self, llpr_variance, delta_model, errors, c=1.0, c_sigma=0.0) -> DifferenceVarianceModel:
        """Minimise the mean Gaussian NLL of ``errors`` (eV) under :meth:`variance` over log β, log κ²,
        log τ² (L-BFGS-B from the best point of a log grid); ``c``, ``c_sigma`` as in :meth:`variance`."""
        from calib.uq.variance import fit_log_variance

        d2 = np.asarray(delta_model, dtype=float) ** 2
        r2 = np.asarray(errors, dtype=float) ** 2
        v = np.asarray(c, dtype=float) ** 2 * np.asarray(llpr_variance, dtype=float)
        ex = np.broadcast_to(np.asarray(c_sigma, dtype=float) ** 2 * d2, r2.shape)
        if not (v.shape == d2.shape == r2.shape) or r2.size < 2:
            raise ValueError(f"need ≥ 2 pairs with matching shapes, got {v.shape}, {d2.shape}, {r2.shape}")

        scale = max(float(np.mean(r2)), 1e-30)  # the floor's grid spans the errors' own scale
        theta, self.nll_ = fit_log_variance(
            [v, d2, 1.0], r2, [np.linspace(-10, 14, 9), np.linspace(-14, 4, 10), np.log(scale) + np.linspace(-14, 2, 9)],
            known=ex, bounds=[(-40, 40), (-40, 10), (np.log(scale) - 40, np.log(scale) + 5)])
        self.beta_, self.kappa2_, self.tau2_ = (float(np.exp(x)) for x in theta)
        self.n_pairs_ = int(r2.size)
        return self

    # -- persistence (see calib.artifact)
    def to_variables(self, prefix: str) -> dict:
        return {f"{prefix}_beta": ((), self.beta_, {"units": "1", "description": "scale of the LLPR difference "
                                                                                "variance"}),
                f"{prefix}_kappa2": ((), self.kappa2_, {"units": "1", "description": "softening term: variance per "
                                                                                   "unit Delta E_model^2",
                                                        "n_pairs": int(getattr(self, "n_pairs_", 0))}),
                f"{prefix}_tau2": ((), self.tau2_, {"units": "eV^2", "description": "variance floor"})}

    @classmethod
    def from_variables(cls, ds, prefix: str) -> DifferenceVarianceModel:
        self = cls(float(ds[f"{prefix}_beta"].values), float(ds[f"{prefix}_kappa2"].values),
                   float(ds[f"{prefix}_tau2"].values))
        self.n_pairs_ = int(ds[f"{prefix}_kappa2"].attrs.get("n_pairs", 0))
        return self


@dataclasses.dataclass(frozen=True)
class DifferenceModels:
    """The energy-difference variance models of an artifact: ``raw`` (fitted on r = ΔE_ref − ΔE_model) and
    ``corrected`` (on the errors of the scalar-corrected differences c·ΔE_model), each a
    :class:`DifferenceVarianceModel` (variances in eV²) or None where it was not fitted."""

    raw: DifferenceVarianceModel | None = None
    corrected: DifferenceVarianceModel | None = None

    @classmethod
    def from_parts(cls, parts) -> DifferenceModels:
        """From a mapping name ("raw", "corrected") → model (ValueError naming any other name)."""
        parts = dict(parts)
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in parts if k not in known]
        if unknown:
            raise ValueError(f"unknown difference model(s) {unknown}; expected {known}")
        return cls(**parts)

    def items(self) -> list[tuple[str, DifferenceVarianceModel]]:
        """(name, model) of the fitted models, raw first: the parts an artifact stores."""
        return [(f.name, getattr(self, f.name)) for f in dataclasses.fields(self) if getattr(self, f.name) is not None]

    def __bool__(self) -> bool:
        return bool(self.items())


def corrected_errors(errors, delta_model, c) -> np.ndarray:
    """Errors of the corrected differences c·ΔE_model against the reference: r + (1 − c) ΔE_model (eV),
    for errors r = ΔE_ref − ΔE_model."""
    return np.asarray(errors, dtype=float) + (1 - np.asarray(c, dtype=float)) * np.asarray(delta_model, dtype=float)


def composition(atoms_or_numbers) -> str:
    """The key two structures of an energy-difference pair share: the Hill formula with counts ("O2Si", "Si8"),
    of an ``ase.Atoms`` or of its atomic numbers."""
    from ase.symbols import Symbols

    if hasattr(atoms_or_numbers, "get_chemical_formula"):
        return atoms_or_numbers.get_chemical_formula()
    return Symbols(np.asarray(atoms_or_numbers, dtype=int)).get_chemical_formula()


def difference_pairs(compositions, *, disjoint: bool = False, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i, j) of rows of one composition (:func:`composition`): all pairs i < j, or with ``disjoint``
    disjoint random pairs (each row in at most one; seeded), whose conformal scores are independent."""
    g = np.asarray(compositions, dtype=str)
    rng = np.random.default_rng(seed)
    first, second = [], []
    for label in sorted(set(g.tolist())):
        idx = np.flatnonzero(g == label)
        if disjoint:
            idx = rng.permutation(idx)
            first.extend(idx[0:len(idx) - 1:2])
            second.extend(idx[1:len(idx):2])
        else:
            a, b = np.triu_indices(len(idx), k=1)
            first.extend(idx[a])
            second.extend(idx[b])
    return np.asarray(first, dtype=int), np.asarray(second, dtype=int)


def reference_pairs(compositions, reference: int) -> np.ndarray:
    """(S,) bool: the rows that pair with row ``reference`` (its composition; the reference itself included,
    with a difference of zero)."""
    g = np.asarray(compositions, dtype=str)
    return g == g[reference]


def difference_sigmas(models: DifferenceModels, llpr_variance, delta_model, c=np.nan, c_sigma=0.0):
    """(σ raw, σ corrected or None) in eV of energy differences with LLPR variances (eV²) and model differences
    ΔE (eV): the raw variance model (LLPR σ alone without one), and where ``models`` holds the corrected model
    and the chemistry's correction ``c`` (per pair or scalar) is finite, the corrected one (NaN where c is not)."""
    v = np.asarray(llpr_variance, dtype=float)
    raw, cor = models.raw, models.corrected
    sig = raw.sigma(v, delta_model) if raw is not None else np.sqrt(v)
    c = np.asarray(c, dtype=float)
    if cor is None or not np.isfinite(c).any():
        return sig, None
    return sig, np.where(np.isfinite(c), cor.sigma(v, delta_model, np.nan_to_num(c, nan=1.0), c_sigma), np.nan)
