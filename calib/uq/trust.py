"""The one trust rule: a verdict per structure, with its reasons, from arrays.

A structure is **trusted** when the model is expected to be right there, by the checks of a
:class:`TrustPolicy` (a missing per-element offset removes the absolute energy interval, never the trust):

1. **domain**: its largest atomic Q residual and T² are within the thresholds of the structures the Hessian was
   built from (:mod:`calib.uq.ood`), which stand in for the model's training set;
2. **forces**: the calibrated bound on its largest force-component error, U (eV/Å), at the policy's
   ``confidence`` (by default the calibration's own: 0.9 unless the artifact names another,
   :meth:`TrustPolicy.resolved`), is within ``force_tol``;
3. **energy** (off by default): the calibrated energy half-width per atom (conformal, eV/atom) is within
   ``energy_tol``.

The force bound comes from the error models of :mod:`calib.uq.errormodel`: the component model's bound
(:class:`~calib.uq.errormodel.ForceBound`, cross-fitted by chemical system); for a calibrated chemistry, scaled
by the chemistry's own variance; for a scalar-corrected prediction, the corrected forces' model; where the
artifact holds one (``calibrate(structure_model=True)``), the structure model
(:class:`~calib.uq.errormodel.StructureErrorModel`) for a chemistry the calibration has not seen. The reported
``force_error_bound`` is at the artifact's 1 − α (0.9); the verdict reads the same bound at its own confidence
(``force_error_bound_trust``; equal to it by default): a structure is trusted when its largest error is within
the tolerance with that probability.

Being outside the calibration structures (a Q score above the largest the calibration structures had) is
reported as information: the intervals there are extrapolated, not measured; it is not a reason by itself.
The verdict's score, max(Q, U / force_tol, h_E / energy_tol), is ≤ 1 exactly when a structure is trusted;
it ranks structures for the quality measures of ``calib evaluate`` (AUROC). :class:`ForceErrorModel` is the
force model of calib 0.5 artifacts (σ_i² = κ₁² F_i² + κ₂² F_rms² + τ², one conformal quantile), kept to read
them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum

import numpy as np

from calib.errors import positive
from calib.settings import open_fraction, setting, validate
from calib.uq.errormodel import largest_z

#: default tolerances, chosen from the errors CHGNet makes on the shipped GPAW data (docs/screening.md)
FORCE_TOL = 0.3  # eV/Å, largest force error
#: eV/atom on the conformal energy half-width per atom; None: the energy interval is reported, not part of the
#: verdict. Measured on held-out chemistries (docs/screening.md), an energy check lowers the recall of the verdict
#: and never raises its precision: a new compound's absolute energy is uncertain by its formation-energy error
#: against the per-element offsets, whatever its forces
ENERGY_TOL = None
BARRIER_TOL = 0.5  # eV, the NEB path verdict's largest barrier half-width
#: the confidence of the force bound the verdict holds to ``force_tol`` when neither the policy nor the calibration
#: names one: a structure is trusted when its largest force error is within the tolerance with probability ≥ 0.9
#: (conformal), the bound calib reports. Lower confidences trust more structures at a lower precision
#: (docs/errormodel.md measures 0.7-0.9). A calibration may carry its own (artifact attribute
#: ``trust_confidence``: the default calibration of SevenNet-0 holds 0.93, docs/screening.md)
TRUST_CONFIDENCE = 0.9
#: the domain rule: a structure whose domain score (1: its largest atomic Q residual or T² at the threshold of the
#: Hessian's structures) is above this is out of the model's domain
DOMAIN_LIMIT = 1.0


@dataclass(frozen=True)
class TrustPolicy:
    """What the verdict checks, and the tolerances, validated on construction (each field declares its default,
    unit and constraint once, :mod:`calib.settings`; the CLI's options are built from them).

    ``force_tol`` (eV/Å): the largest allowed bound U on a structure's largest force-component error;
    ``energy_tol`` (eV/atom): the largest allowed conformal energy half-width per atom; ``domain``: whether a
    structure out of the model's domain (Q or T² above the Hessian's structures') is untrusted;
    ``unlabelled_elements``: whether an element that no calibration label contains untrusts (off by default:
    the held-out data in docs/screening.md show the model right on most of them near equilibrium; the element
    is always named in ``trust_notes``); ``barrier_tol`` (eV): the NEB path verdict's largest barrier
    half-width; ``confidence``: the confidence (0 < c < 1) of the force bound that must be within ``force_tol``
    (None: the calibration's own, :meth:`resolved`). None leaves a check out; a check the policy makes whose
    input is missing is not passed."""

    force_tol: float | None = setting(
        FORCE_TOL, "trust verdict: largest calibrated bound on a structure's largest force error (> 0; chosen "
        "from CHGNet's errors on the shipped GPAW data, docs/screening.md)", unit="eV/Å", check=positive,
        flag="--force-tol", optional=True)
    energy_tol: float | None = setting(
        ENERGY_TOL, "trust verdict: also require the conformal energy half-width per atom within this (> 0; "
        "default: not part of the verdict, docs/screening.md says why)", unit="eV/atom", check=positive,
        flag="--energy-tol", optional=True)
    domain: bool = setting(True, "trust verdict: untrust a structure out of the model's domain")
    unlabelled_elements: bool = setting(False, "trust verdict: untrust a structure with an element no "
                                        "calibration label contains")
    barrier_tol: float | None = setting(
        BARRIER_TOL, "path verdict: largest calibrated half-width of a trusted forward barrier (> 0)", unit="eV",
        check=positive, flag="--barrier-tol", optional=True)
    confidence: float | None = setting(
        None, "trust verdict: the confidence (0 < c < 1) at which the force bound must be within --force-tol "
        "(lower: more structures trusted at a lower precision, docs/errormodel.md; default: the calibration's "
        "own, 0.9 unless it names another)", check=open_fraction, flag="--trust-confidence", optional=True)

    def __post_init__(self):
        validate(self)

    def resolved(self, artifact=None) -> TrustPolicy:
        """The policy with its confidence decided: its own, else the calibration's (``artifact.attrs
        ["trust_confidence"]``, chosen when the artifact was built from held-out measurements of its model),
        else :data:`TRUST_CONFIDENCE`."""
        if self.confidence is not None:
            return self
        own = (getattr(artifact, "attrs", None) or {}).get("trust_confidence")
        return replace(self, confidence=float(own) if own is not None else TRUST_CONFIDENCE)

    def as_dict(self) -> dict:
        """The policy as plain values (for JSON output and screen's resume settings)."""
        return {"force_tol": self.force_tol, "energy_tol": self.energy_tol, "domain": self.domain,
                "unlabelled_elements": self.unlabelled_elements, "barrier_tol": self.barrier_tol,
                "confidence": self.confidence}


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
        from calib.uq.conformal import conformal_quantile
        from calib.uq.variance import fit_log_variance

        f = [np.asarray(x, dtype=float).reshape(-1) for x in model_forces]
        e = [np.asarray(x, dtype=float).reshape(-1) for x in errors]
        if len(f) < 2 or len(f) != len(e):
            raise ValueError(f"the force error model needs ≥ 2 structures with forces and errors, got {len(f)}")
        F, E = np.concatenate(f), np.concatenate(e)
        R = np.concatenate([np.full(x.size, np.mean(x**2)) for x in f])
        scale = max(float(np.mean(E**2)), 1e-30)

        theta, self.nll_ = fit_log_variance(
            [F**2, R, 1.0], E**2, [np.linspace(-9, 1, 6), np.linspace(-9, 1, 6), np.log(scale) + np.linspace(-8, 0, 5)])
        self.kappa1_, self.kappa2_, self.tau_ = (float(np.sqrt(np.exp(x))) for x in theta)
        t = np.sort([np.max(np.abs(ei)) / (largest_z(fi.size) * np.max(self.sigma(fi))) for fi, ei in zip(f, e)])
        self.quantile_ = conformal_quantile(t, self.alpha, what="force error bound")
        self.n_structures_ = len(f)
        return self

    def bound(self, forces) -> float:
        """U (eV/Å): the bound on the largest force-component error of one structure (model forces (N, 3))."""
        f = np.asarray(forces, dtype=float)
        return float(self.quantile_ * largest_z(f.size) * np.max(self.sigma(f))) if f.size else float("nan")

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


class Check(str, Enum):
    """The checks of the trust verdict (:func:`verdict`); a structure is trusted when every check the policy
    makes passes."""

    DOMAIN = "domain"
    FORCES = "forces"
    ENERGY = "energy"
    ELEMENT = "element"
    BARRIER = "barrier"
    NOT_CHECKED = "not checked"

    @property
    def words(self) -> str:
        """What a failure of this check means, in a few words (the counts of ``calib screen``'s summary)."""
        return _CHECK_WORDS[self]


_CHECK_WORDS = {Check.DOMAIN: "out of the model's domain", Check.FORCES: "calibrated force-error bound above tolerance",
                Check.ENERGY: "calibrated energy error above tolerance",
                Check.ELEMENT: "an element in no calibration label",
                Check.BARRIER: "calibrated barrier half-width above tolerance",
                Check.NOT_CHECKED: "a check could not be made"}


@dataclass(frozen=True)
class Failure:
    """One failed check of one structure: the check, the value and the limit it was held to (in the check's
    unit: the domain score 1, the force bound eV/Å, the energy half-width eV/atom, the barrier half-width eV);
    for ``Check.NOT_CHECKED``, ``missing`` names the check that could not be made and why."""

    check: Check
    value: float = float("nan")
    limit: float = float("nan")
    missing: str = ""
    detail: str = ""

    def sentence(self) -> str:
        """The words of ``trust_reason`` for this failure (made here, nowhere else)."""
        v, lim = self.value, self.limit
        if self.check is Check.DOMAIN:
            return f"out of the model's domain (score {v:.3g} × the threshold of the Hessian's structures{self.detail})"
        if self.check is Check.FORCES:
            return f"force error may reach {v:.3g} eV/Å (calibrated {self.detail or 'bound'}) > {lim:g} eV/Å"
        if self.check is Check.ENERGY:
            return f"calibrated energy error ±{v:.3g} eV/atom > {lim:g} eV/atom"
        if self.check is Check.ELEMENT:
            return f"element(s) {self.detail} in no calibration label: the error model has not seen them"
        if self.check is Check.BARRIER:
            return f"barrier half-width {v:.3g} eV > {lim:g} eV"
        return f"not checked: {self.missing}"


@dataclass
class Verdict:
    """The verdict of S structures: ``trusted`` (S,) bool, ``score`` (S,) (≤ 1 exactly when trusted; +inf where a
    required check could not be made), ``failures`` (one tuple of :class:`Failure` per structure)."""

    trusted: np.ndarray
    score: np.ndarray
    failures: list

    @property
    def reasons(self) -> np.ndarray:
        """(S,) str: the failed checks' sentences joined by " | " ("" when trusted)."""
        return np.array([" | ".join(f.sentence() for f in fs) for fs in self.failures], dtype=object)

    def checks_failed(self) -> np.ndarray:
        """(S,) str: the failed checks' names joined by "," (e.g. "forces,energy"; "" when trusted)."""
        return np.array([",".join(f.check.value for f in fs) for fs in self.failures], dtype=object)

    def count(self, check: Check) -> int:
        """How many structures failed ``check``."""
        return int(sum(any(f.check is check for f in fs) for fs in self.failures))


def verdict(policy: TrustPolicy, *, domain=None, force_bound=None, energy_halfwidth=None, unlabelled=None,
            missing: dict | None = None, domain_detail=None) -> Verdict:
    """The verdict of S structures from per-structure arrays.

    ``domain``: the domain score (1: largest atomic Q or T² over its threshold); ``force_bound``: U (eV/Å), the
    bound on the largest force error at the policy's ``confidence``;
    ``energy_halfwidth``: the conformal half-width per atom (eV/atom); ``unlabelled``: (S,) str of elements
    no calibration label contains ("" for none). A check the policy makes whose input is None (the artifact has
    no such piece) or NaN for a structure is a ``Check.NOT_CHECKED`` failure, and the structure is not trusted:
    missing evidence is not trust. ``missing`` maps a check to the words saying why its input is absent."""
    arrays = [np.asarray(x) for x in (domain, force_bound, energy_halfwidth, unlabelled) if x is not None]
    n = len(arrays[0]) if arrays else 0
    missing = missing or {}
    checks = [(Check.DOMAIN, domain, DOMAIN_LIMIT if policy.domain else None, "the domain score"),
              (Check.FORCES, force_bound, policy.force_tol, "the force-error bound"),
              (Check.ENERGY, energy_halfwidth, policy.energy_tol, "the energy half-width")]
    score = np.zeros(n)
    failures: list[list[Failure]] = [[] for _ in range(n)]
    detail = [""] * n if domain_detail is None else list(domain_detail)
    for check, values, limit, what in checks:
        if limit is None:
            continue
        if values is None:
            why = missing.get(check, f"{what} is not available from this calibration")
            score[:] = np.inf
            for fs in failures:
                fs.append(Failure(Check.NOT_CHECKED, missing=f"{check.value} ({why})"))
            continue
        v = np.asarray(values, dtype=float)
        ratio = v / limit
        score = np.where(np.isfinite(v), np.maximum(score, ratio), np.inf)
        for k in range(n):
            if not np.isfinite(v[k]):
                failures[k].append(Failure(Check.NOT_CHECKED, missing=f"{check.value} ({missing.get(check, what + ' could not be computed for this structure')})"))
            elif v[k] > limit:
                failures[k].append(Failure(check, float(v[k]), float(limit), detail=detail[k] if check is Check.DOMAIN
                                           else f"{policy.resolved().confidence:.0%} bound" if check is Check.FORCES
                                           else ""))
    if unlabelled is not None and policy.unlabelled_elements:
        for k, els in enumerate(np.asarray(unlabelled, dtype=object)):
            if els:
                failures[k].append(Failure(Check.ELEMENT, detail=str(els)))
                score[k] = max(score[k], np.inf)
    trusted = np.array([not fs for fs in failures], dtype=bool)
    return Verdict(trusted, score, [tuple(fs) for fs in failures])


def out_of_domain(domain_score) -> np.ndarray:
    """(S,) bool: the domain rule of the verdict, a domain score (1) above :data:`DOMAIN_LIMIT` (NaN: False)."""
    return np.asarray(domain_score, dtype=float) > DOMAIN_LIMIT


def extrapolated(q_score, calibration_max: float, n: int) -> np.ndarray:
    """(S,) bool: a Q score (1) above ``calibration_max``, the largest the calibration structures had (the intervals
    there are extrapolated, not measured: information, not a reason); all False without a Q score (None) or a
    recorded maximum (NaN)."""
    if q_score is None or not np.isfinite(calibration_max):
        return np.zeros(n, dtype=bool)
    return np.asarray(q_score) > calibration_max


def notes(unlabelled, extrapolated) -> np.ndarray:
    """(S,) str: the ``trust_notes`` beside the verdict (information, not reasons), joined by " | ": the elements no
    calibration label contains (``unlabelled``: (S,) comma-joined symbols, "" for none, or None) and
    ``extrapolated`` ((S,) bool, :func:`extrapolated`)."""
    unlabelled = [""] * len(extrapolated) if unlabelled is None else unlabelled
    out = [" | ".join(x for x in (f"element(s) {u} in no calibration label" if u else "",
                                  "extrapolated: outside every calibration structure" if e else "") if x)
           for u, e in zip(unlabelled, extrapolated)]
    return np.array(out, dtype=object)
