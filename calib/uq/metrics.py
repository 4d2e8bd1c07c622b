"""Uncertainty-quantification metrics: coverage, width, NLL, ENCE, miscalibration area, ranking.

Errors are reference − model and σ the predicted standard deviation, both in
the target's unit (eV for total energies, eV/Å for force components); widths
are full interval widths in that unit. Definitions:

* coverage — fraction of points with low ≤ y ≤ high;
* mean_width — mean of high − low;
* nll — mean Gaussian negative log-likelihood −log N(error; 0, σ²), nats;
* ence — expected normalised calibration error (Levi et al. 2022): points
  sorted by σ into equal-count bins, mean over bins of |RMV − RMSE| / RMV with
  RMV = √mean σ² and RMSE = √mean error²;
* miscalibration_area — mean over levels p ∈ (0, 1) of |observed − p|, the
  observed fraction being that of |error| ≤ σ·Φ⁻¹((1 + p)/2) (the area
  between the Gaussian calibration curve and the diagonal, as in
  uncertainty-toolbox);
* spearman — rank correlation of σ with |error|.
"""

from __future__ import annotations

import numpy as np


def _arrays(*xs):
    return [np.asarray(x, dtype=float).ravel() for x in xs]


def coverage(errors, low, high, pred=None) -> float:
    """Fraction inside [low, high]. With ``pred``, low/high are absolute and y = pred + error."""
    e, lo, hi = _arrays(errors, low, high)
    y = e if pred is None else np.asarray(pred, dtype=float).ravel() + e
    return float(np.mean((y >= lo) & (y <= hi)))


def mean_width(low, high) -> float:
    lo, hi = _arrays(low, high)
    return float(np.mean(hi - lo))


def gaussian_nll(errors, sigma) -> float:
    """Mean Gaussian NLL (nats per error) of ``errors`` under ``sigma`` (same units; :mod:`calib.uq.variance`)."""
    from calib.uq.variance import gaussian_nll as nll

    e, s = _arrays(errors, sigma)
    return nll(e**2, s**2)


def ence(errors, sigma, n_bins: int = 10) -> float:
    e, s = _arrays(errors, sigma)
    order = np.argsort(s, kind="stable")
    bins = [b for b in np.array_split(order, min(n_bins, len(e))) if len(b)]
    rmv = np.array([np.sqrt(np.mean(s[b] ** 2)) for b in bins])
    rmse = np.array([np.sqrt(np.mean(e[b] ** 2)) for b in bins])
    return float(np.mean(np.abs(rmv - rmse) / rmv))


def calibration_curve(errors, sigma, levels=None) -> tuple[np.ndarray, np.ndarray]:
    """(expected p, observed fraction with |error| ≤ σ·Φ⁻¹((1+p)/2)) for Gaussian intervals."""
    from scipy.stats import norm

    e, s = _arrays(errors, sigma)
    p = np.linspace(0.01, 0.99, 99) if levels is None else np.asarray(levels, dtype=float)
    z = norm.ppf((1 + p) / 2)
    observed = np.mean(np.abs(e)[:, None] <= s[:, None] * z[None, :], axis=0)
    return p, observed


def miscalibration_area(errors, sigma) -> float:
    p, obs = calibration_curve(errors, sigma)
    return float(np.mean(np.abs(obs - p)))


def spearman(sigma, errors) -> float:
    from scipy.stats import spearmanr

    s, e = _arrays(sigma, errors)
    if len(s) < 3 or np.all(s == s[0]):
        return float("nan")
    return float(spearmanr(s, np.abs(e)).statistic)


def per_class_coverage(errors, half_width, classes) -> dict:
    """class → {"n", "coverage"} for intervals ±half_width."""
    e, h = _arrays(errors, half_width)
    classes = np.asarray(classes).astype(str).ravel()
    out = {}
    for c in sorted(set(classes.tolist())):
        m = classes == c
        out[c] = {"n": int(m.sum()), "coverage": float(np.mean(np.abs(e[m]) <= h[m]))}
    return out


def report(errors, sigma, half_width, classes=None) -> dict:
    """All metrics for one target: intervals ±half_width around the prediction, σ for the rest."""
    e, s, h = _arrays(errors, sigma, half_width)
    out = {
        "n": int(e.size),
        "coverage": float(np.mean(np.abs(e) <= h)),
        "mean_width": float(np.mean(2 * h)),
        "nll": gaussian_nll(e, s),
        "ence": ence(e, s),
        "miscalibration_area": miscalibration_area(e, s),
        "spearman": spearman(s, e),
        "mae": float(np.mean(np.abs(e))),
    }
    out["per_class"] = per_class_coverage(e, h, classes) if classes is not None else {}
    return out


def auroc(positive, score) -> float:
    """Area under the ROC curve of ``score`` ranking the ``positive`` cases first (NaN with one class only)."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(positive, dtype=bool)
    s = np.asarray(score, dtype=float)
    finite = s[np.isfinite(s)]
    top = (finite.max() if finite.size else 0.0) + 1.0
    s = np.where(np.isnan(s), top, np.where(np.isinf(s), np.sign(s) * top, s))  # +inf (not checked) ranks first
    return float(roc_auc_score(y, s)) if 0 < y.sum() < y.size else float("nan")


def verdict_quality(max_force_error, trusted, score, max_force, force_tol: float) -> dict:
    """How good a trust verdict is against labels, per structure (forces eV/Å).

    A structure is *good* when its largest force-component error is ≤ ``force_tol``. ``precision``: the
    fraction of trusted structures that are good; ``recall``: the fraction of good structures trusted;
    ``flagged``: the fraction of the others not trusted; ``auroc``: how well ``score`` (higher: less trusted)
    ranks the structures that are not good first, beside ``auroc_max_force`` for the model's own largest
    |F|; ``naive_precision``: the precision of trusting as many structures, those with the smallest |F|."""
    err, ok = np.asarray(max_force_error, dtype=float), np.asarray(trusted, dtype=bool)
    good, F = err <= force_tol, np.asarray(max_force, dtype=float)
    k = int(ok.sum())
    naive = np.zeros(len(err), dtype=bool)
    naive[np.argsort(F, kind="stable")[:k]] = True
    frac = (lambda a, b: float(np.mean(a[b])) if b.any() else float("nan"))  # noqa: E731
    return {"force_tol": float(force_tol), "n": int(len(err)), "n_trusted": k, "n_good": int(good.sum()),
            "precision": frac(good, ok), "recall": frac(ok, good), "flagged": frac(~ok, ~good),
            "auroc": auroc(~good, score), "auroc_max_force": auroc(~good, F), "naive_precision": frac(good, naive)}


def bound_coverage(max_force_error, bound, groups) -> dict:
    """How often a structure's largest force error (eV/Å) lies below its calibrated bound (eV/Å): overall
    (``bound_coverage``) and per group, e.g. chemical system (``bound_coverage_by_chemsys``: n and coverage), so
    that a chemistry the bound fails for shows even when the average holds."""
    err, b = np.asarray(max_force_error, dtype=float), np.asarray(bound, dtype=float)
    ok = np.isfinite(err) & np.isfinite(b)
    groups = np.asarray(groups).astype(str)
    per = {g: {"n": int(np.sum(ok & (groups == g))), "coverage": float(np.mean(err[ok & (groups == g)]
                                                                             <= b[ok & (groups == g)]))}
           for g in sorted(set(groups[ok].tolist()))}
    return {"bound_coverage": float(np.mean(err[ok] <= b[ok])) if ok.any() else float("nan"),
            "bound_coverage_by_chemsys": per}
