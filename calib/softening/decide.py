"""Per-chemistry decision: accept the model, apply the scalar correction, or request DFT labels.

Rules, evaluated per chemical system with explicit thresholds
(:class:`DecisionRules`, defaults in brackets):

1. fewer than ``min_labels`` [3] labelled structures → **label** ("too few labels");
2. **accept** when the CI of the softening scale contains 1 (no systematic
   softening), the labelled force MAE ≤ ``mae_tol_ev_per_a`` [0.1 eV/Å], and at most
   ``max_untrusted_fraction`` [10 %] of the targets are out of tolerance: out of the model's
   domain, or with an expected force MAE above ``mae_tol_ev_per_a`` under the calibrated error
   model (√(2/π) × the mean σ of its force components, calib.uq.errormodel: the same
   measure as the labelled MAE, for structures without labels). Without an error model
   (a calib 0.5 artifact), the trust verdict decides instead;
3. **scale** when the CI excludes 1, the leave-one-structure-out corrected
   error cMAE_loo ≤ ``mae_tol_ev_per_a``, and at most ``max_untrusted_fraction`` of the
   targets are out of the model's domain (the correction was fitted inside it);
4. **label** otherwise, naming why: error not systematic (cMAE_loo above
   tolerance), targets out of the domain, or targets untrusted. A chemistry whose
   softening cannot be measured (targets with no labelled structure of their
   chemistry, or labels whose reference forces are all zero) is decided **label**
   with that reason (:func:`unmeasured`). The request list ranks target
   structures by the verdict's score (the least trusted first), diversified by
   farthest-point sampling in feature space.

The verdict and the Q score come from the predictor (the artifact's detector and
force-error model), so ``decide`` and ``screen`` give the same answer on the same
structures.

This module holds the rules only; :func:`calib.workflows.decisions.decide` predicts the
labelled and target structures and applies them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from calib.errors import non_negative_int, positive, positive_int
from calib.settings import closed_fraction, open_fraction, setting, validate
from calib.softening.scale import SOFTENING, SofteningResult
from calib.uq.trust import out_of_domain


@dataclass(frozen=True)
class DecisionRules:
    """The rules' tolerances (module docstring), validated on construction; each field declares its default,
    unit and constraint once (:mod:`calib.settings`), and ``calib decide`` builds its options from them.

    ``mae_tol_ev_per_a`` is a tolerance on a mean absolute force error (eV/Å: the labelled MAE, cMAE_loo and the
    error model's expected MAE), not the trust verdict's bound on a structure's *largest* error
    (:attr:`calib.uq.trust.TrustPolicy.force_tol`)."""

    mae_tol_ev_per_a: float = setting(0.1, "tolerated force MAE (> 0): labelled MAE, cMAE_loo, expected MAE",
                                      unit="eV/Å", check=positive, flag="--force-tol")
    ci_level: float = setting(SOFTENING.confidence, "level of the CI of the softening scale, in (0, 1)",
                              check=open_fraction, flag="--confidence")
    min_labels: int = setting(3, "labelled structures needed per chemistry (≥ 1)", check=positive_int,
                              flag="--min-labels")
    max_untrusted_fraction: float = setting(0.1, "tolerated fraction of untrusted targets, in [0, 1]",
                                            check=closed_fraction, flag="--max-untrusted")
    n_requests: int = setting(5, "structures to request per 'label' chemistry (≥ 0)", check=non_negative_int,
                              flag="--n-requests")

    def __post_init__(self):
        validate(self)

    def as_dict(self) -> dict:
        """The rules as plain values (the ``rules`` of ``calib decide --json``)."""
        return dataclasses.asdict(self)


class Action(str, Enum):
    """What a chemistry's decision is (a ``str``: ``Action.SCALE == "scale"``; JSON gives the word)."""

    ACCEPT = "accept"
    SCALE = "scale"
    LABEL = "label"


@dataclass
class Decision:
    """One chemistry's decision with its reasons (words and numbers) and label requests.

    ``softening`` is the :class:`~calib.softening.scale.SofteningResult` of its labelled structures, None
    when it could not be measured; ``n_structures`` counts those labelled structures."""

    chemsys: str
    decision: Action
    reasons: list
    softening: SofteningResult | None
    n_structures: int = 0
    n_targets: int = 0
    fraction_out_of_distribution: float | None = None
    fraction_untrusted: float | None = None
    label_requests: list = field(default_factory=list)

    def as_dict(self) -> dict:
        s = self.softening
        keys = ("softening_scale", "softening_ci", "correction", "mae", "cmae", "cmae_loo")
        out = {"chemsys": self.chemsys, "n_structures": self.n_structures,
               **{k: getattr(s, k) if s is not None else None for k in keys}}
        out.update(decision=Action(self.decision).value, reasons=self.reasons, label_requests=self.label_requests,
                   n_targets=self.n_targets, fraction_out_of_distribution=self.fraction_out_of_distribution,
                   fraction_untrusted=self.fraction_untrusted,
                   correction_ci=s.correction_ci if s is not None else None)
        return out


def farthest_point_ranking(features: np.ndarray, uncertainty: np.ndarray, n: int) -> list[int]:
    """Pick ``n`` rows: first the most uncertain, then each time the row maximising
    uncertainty × distance to the nearest row already picked (features standardised)."""
    X = np.asarray(features, dtype=float)
    u = np.asarray(uncertainty, dtype=float)
    if len(X) == 0:
        return []
    scale = X.std(axis=0)
    Z = (X - X.mean(axis=0)) / np.where(scale > 0, scale, 1.0)
    picked = [int(np.argmax(u))]
    dist = np.linalg.norm(Z - Z[picked[0]], axis=1)
    while len(picked) < min(n, len(X)):
        score = (u / (u.max() or 1.0)) * dist
        score[picked] = -np.inf
        k = int(np.argmax(score))
        if not np.isfinite(score[k]) or score[k] <= 0:
            break
        picked.append(k)
        dist = np.minimum(dist, np.linalg.norm(Z - Z[k], axis=1))
    return picked


def decide_chemistry(softening, rules: DecisionRules, *, target_features=None, target_score=None,
                     target_trusted=None, target_ood=None, target_mae=None,
                     target_indices: Sequence[int] = ()) -> Decision:
    """Apply the rules to one chemistry.

    Parameters
    ----------
    softening : SofteningResult of the labelled structures.
    target_features : (T, d) pooled features of the targets (for diversity).
    target_score : (T,) the trust verdict's score of each target (> 1: untrusted; ranks requests).
    target_trusted : (T,) bool, the verdict (default: all trusted).
    target_ood : (T,) domain scores against the model's domain (out of it by the verdict's rule,
        :func:`calib.uq.trust.out_of_domain`: > 1).
    target_mae : (T,) expected force MAE of each target under the error model, eV/Å (None: the verdict decides).
    target_indices : (T,) positions of the targets in the caller's list.
    """
    t = rules
    s = softening
    tol = t.mae_tol_ev_per_a
    n_t = len(target_indices)
    ood = out_of_domain(target_ood) if target_ood is not None else np.zeros(n_t, dtype=bool)
    untrusted = ~np.asarray(target_trusted if target_trusted is not None else np.ones(n_t, dtype=bool), dtype=bool)
    if target_mae is not None:  # out of tolerance: out of the domain, or an expected MAE above the tolerance
        untrusted = ood | ~(np.asarray(target_mae, dtype=float) <= tol)
    f_ood = float(ood.mean()) if n_t else 0.0
    f_untrusted = float(untrusted.mean()) if n_t else 0.0
    lo, hi = s.softening_ci
    contains_one = lo <= 1.0 <= hi
    reasons, decision = [], Action.LABEL
    ci_txt = f"{int(100 * s.confidence)} % CI of s [{lo:.3f}, {hi:.3f}]"
    if s.n_structures < t.min_labels:
        reasons.append(f"too few labels: {s.n_structures} labelled structure(s) < min_labels {t.min_labels}")
    elif contains_one:
        if s.mae <= tol and f_untrusted <= t.max_untrusted_fraction:
            decision = Action.ACCEPT
            reasons.append(f"no systematic softening ({ci_txt} contains 1) and force MAE {s.mae:.3f} ≤ "
                           f"{tol} eV/Å; {100 * f_untrusted:.0f} % of {n_t} targets "
                           f"{'out of tolerance' if target_mae is not None else 'untrusted'} ≤ "
                           f"{100 * t.max_untrusted_fraction:.0f} %")
        else:
            if s.mae > tol:
                reasons.append(f"no systematic softening ({ci_txt} contains 1) but force MAE {s.mae:.3f} > "
                               f"{tol} eV/Å: a scalar cannot fix it")
            if f_untrusted > t.max_untrusted_fraction:
                what = (f"with an expected force MAE above {tol} eV/Å or out of the model's domain"
                        if target_mae is not None else "untrusted")
                reasons.append(f"{100 * f_untrusted:.0f} % of {n_t} targets {what} ({100 * f_ood:.0f} % out of the "
                               f"model's domain) > {100 * t.max_untrusted_fraction:.0f} %")
    else:
        loo = s.cmae_loo if s.cmae_loo is not None else np.inf
        if loo <= tol and f_ood <= t.max_untrusted_fraction:
            decision = Action.SCALE
            reasons.append(f"systematic softening: s = {s.softening_scale:.3f}, {ci_txt} excludes 1; "
                           f"corrected error cMAE_loo {loo:.3f} ≤ {tol} eV/Å (MAE {s.mae:.3f} before); "
                           f"multiply forces by c = {s.correction:.3f}")
            if target_ood is not None and n_t:
                reasons.append(f"{100 * f_ood:.0f} % of {n_t} targets out of the model's domain ≤ "
                               f"{100 * t.max_untrusted_fraction:.0f} %")
        else:
            if loo > tol:
                reasons.append(f"softening is systematic (s = {s.softening_scale:.3f}, {ci_txt}) but the error "
                               f"is not only a scale: cMAE_loo {loo:.3f} > {tol} eV/Å after correction")
            if f_ood > t.max_untrusted_fraction:
                reasons.append(f"{100 * f_ood:.0f} % of {n_t} targets out of the model's domain (Q residual) > "
                               f"{100 * t.max_untrusted_fraction:.0f} %: the correction was fitted elsewhere")
    dec = Decision(chemsys=s.chemsys, decision=decision, reasons=reasons, softening=s, n_structures=s.n_structures,
                   n_targets=n_t, fraction_out_of_distribution=f_ood if n_t else None,
                   fraction_untrusted=f_untrusted if n_t else None)
    if decision is Action.LABEL and n_t:
        dec.label_requests = _requests(_score(target_score, n_t), target_features, target_indices, t.n_requests)
    return dec


def _score(score, n: int) -> np.ndarray:
    return np.nan_to_num(np.asarray(score if score is not None else np.zeros(n), dtype=float), nan=0.0)


def _requests(u: np.ndarray, features, indices: Sequence[int], n: int) -> list[int]:
    """The ``n`` targets to label: by uncertainty ``u``, diversified in feature space when features are given."""
    if not len(indices) or n <= 0:
        return []
    order = list(np.argsort(-u)[:n]) if features is None else farthest_point_ranking(features, u + 1e-12, n)
    return [int(indices[k]) for k in order]


def unmeasured(chemsys: str, reason: str, rules: DecisionRules, *, n_structures: int = 0, target_features=None,
               target_score=None, target_trusted=None, target_mae=None, target_indices: Sequence[int] = ()) -> Decision:
    """The decision for a chemistry whose softening cannot be measured (no labelled structure of it, or
    labels that determine no scale): always **label**, with ``reason``, and requests ranked as for rule 4
    among its targets (by the verdict's score, diversified)."""
    n_t = len(target_indices)
    trusted = np.asarray(target_trusted if target_trusted is not None else np.ones(n_t, dtype=bool), dtype=bool)
    dec = Decision(chemsys=chemsys, decision=Action.LABEL, reasons=[reason],
                   softening=None, n_structures=int(n_structures), n_targets=n_t,
                   fraction_untrusted=float(np.mean(~trusted)) if n_t else None)
    dec.label_requests = _requests(_score(target_score, n_t), target_features, target_indices, rules.n_requests)
    return dec


_OLD_NAMES = {"force_tol": "mae_tol_ev_per_a", "confidence": "ci_level", "max_untrusted": "max_untrusted_fraction"}


def Thresholds(**kwargs) -> DecisionRules:  # noqa: N802 - the class name of calib ≤ 0.6
    """Deprecated (calib ≤ 0.6): :class:`DecisionRules`, with the old field names mapped
    (``force_tol`` → ``mae_tol_ev_per_a``, ``confidence`` → ``ci_level``, ``max_untrusted`` →
    ``max_untrusted_fraction``)."""
    import warnings

    warnings.warn("calib.softening.decide.Thresholds is now DecisionRules (force_tol → mae_tol_ev_per_a, "
                  "confidence → ci_level, max_untrusted → max_untrusted_fraction)", DeprecationWarning, stacklevel=2)
    return DecisionRules(**{_OLD_NAMES.get(k, k): v for k, v in kwargs.items()})
