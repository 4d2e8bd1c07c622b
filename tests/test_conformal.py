"""Split and class-based conformal calibration, and the UQ metrics, on synthetic data.

The reference numbers are closed forms (the exact split-conformal coverage
k/(N+1), Gaussian calibration curves) or brute-force loops, not the code under test.
"""

import math
import warnings

import numpy as np
import pytest
from scipy.stats import norm

from calib.uq import metrics
from calib.uq.conformal import UNKNOWN, ConformalCalibrator, LabelClasses, MixtureClasses
from calib.uq.targets import Points


def test_average_coverage_is_finite_sample_exact():
    """E[coverage] = ⌈(N+1)(1−α)⌉/(N+1) ∈ [1−α, 1−α+1/(N+1)] for exchangeable scores."""
    alpha, n_cal, n_test, repeats = 0.1, 50, 200, 2000
    rng = np.random.default_rng(0)
    cov = np.empty(repeats)
    for r in range(repeats):
        sig = rng.uniform(0.5, 2.0, n_cal + n_test)
        err = rng.standard_t(4, n_cal + n_test) * sig  # heavy-tailed: not Gaussian on purpose
        cp = ConformalCalibrator(alpha).fit(err[:n_cal], sig[:n_cal])
        cov[r] = np.mean(cp.covered(err[n_cal:], sig[n_cal:]))
    se = cov.std(ddof=1) / math.sqrt(repeats)
    exact = math.ceil((n_cal + 1) * (1 - alpha)) / (n_cal + 1)
    assert 1 - alpha <= exact <= 1 - alpha + 1 / (n_cal + 1)
    assert abs(cov.mean() - exact) < 4 * se
    assert 1 - alpha - 4 * se <= cov.mean() <= 1 - alpha + 1 / (n_cal + 1) + 4 * se


def test_quantile_is_the_kth_smallest_score():
    err = np.array([0.5, -2.0, 1.0, 0.1, -0.3, 4.0, 0.2, -0.05, 3.0])
    sig = np.array([1.0, 2.0, 0.5, 1.0, 1.0, 2.0, 0.1, 1.0, 1.0])
    cp = ConformalCalibrator(alpha=0.2).fit(err, sig)
    scores = sorted(abs(e) / s for e, s in zip(err, sig))
    assert cp.quantile_ == scores[math.ceil(10 * 0.8) - 1]  # k = 8 of 9
    lo, hi = cp.interval([1.0, 2.0], [0.5, 1.0])
    np.testing.assert_allclose(hi - lo, 2 * cp.quantile_ * np.array([0.5, 1.0]))


def test_too_few_points_gives_infinite_interval_with_warning():
    with pytest.warns(UserWarning, match="infinite"):
        cp = ConformalCalibrator(alpha=0.1).fit(np.ones(5), np.ones(5))  # rank ⌈6·0.9⌉ = 6 > 5
    assert cp.quantile_ == math.inf
    lo, hi = cp.interval([0.0], [1.0])
    assert lo[0] == -math.inf and hi[0] == math.inf


def test_bad_calibration_input_is_named():
    with pytest.raises(ValueError, match="σ ≤ 0"):
        ConformalCalibrator(0.1).fit([0.1, 0.2], [1.0, 0.0])
    with pytest.raises(ValueError, match="alpha"):
        ConformalCalibrator(1.5)


def _points(err, sig, labels, desc):
    """Typed points with both kinds of class information: element labels and descriptors."""
    return Points("forces", np.asarray(sig), np.asarray(desc), {"element": np.asarray(labels)}, errors=err)


def _two_classes(rng, n, ratio=3.0):
    """Class a: σ right; class b: true spread `ratio`× the reported σ."""
    cls = np.where(rng.random(n) < 0.5, "a", "b")
    sig = rng.uniform(0.5, 1.5, n)
    err = rng.normal(0, 1, n) * sig * np.where(cls == "b", ratio, 1.0)
    desc = rng.normal(0, 0.3, (n, 3)) + np.where(cls == "b", 4.0, 0.0)[:, None]
    return err, sig, cls, desc


@pytest.mark.parametrize("by", ["labels", "descriptors"])
def test_class_conformal_covers_every_class_where_global_does_not(by):
    """Averaged over seeded repeats: Mondrian CP covers both classes, global CP under-covers the hard one."""
    alpha, repeats = 0.1, 8
    cov = {"global": {"a": [], "b": []}, "class": {"a": [], "b": []}}
    for seed in range(repeats):
        rng = np.random.default_rng(seed)
        err, sig, cls, desc = _two_classes(rng, 2000)
        cal, test = slice(0, 1000), slice(1000, None)
        glob = ConformalCalibrator(alpha).fit(err[cal], sig[cal])
        classes = LabelClasses("element") if by == "labels" else MixtureClasses(4, random_state=seed)
        mond = ConformalCalibrator(alpha, classes=classes, min_class_size=30)
        mond.fit_points(_points(err[cal], sig[cal], cls[cal], desc[cal]))
        assert len(mond.classes_) == 2 and not mond.fallback_
        h, _ = mond.half_width_points(_points(None, sig[test], cls[test], desc[test]))
        for c in ("a", "b"):
            m = cls[test] == c
            cov["global"][c].append(np.mean(np.abs(err[test][m]) <= glob.half_width(sig[test][m])))
            cov["class"][c].append(np.mean(np.abs(err[test][m]) <= h[m]))
        # the hard class gets a wider quantile than the pooled one, the easy class a narrower one
        qa, qb = (mond.quantile_for(mond.assign(_points(None, sig[test][m][:1], cls[test][m][:1],
                                                        desc[test][m][:1])))[0]
                  for m in (cls[test] == "a", cls[test] == "b"))
        assert qa < glob.quantile_ < qb
    # per repeat and class: ~500 calibration and ~500 test points, coverage SD ≈ 0.02; mean of 8 ≈ 0.007
    for c in ("a", "b"):
        assert abs(np.mean(cov["class"][c]) - (1 - alpha)) < 0.025, (c, cov["class"][c])
    assert np.mean(cov["global"]["b"]) < 1 - alpha - 0.1
    assert np.mean(cov["global"]["a"]) > 1 - alpha + 0.05


def test_small_class_falls_back_and_unknown_is_not_forced():
    rng = np.random.default_rng(2)
    err, sig = rng.normal(size=210), np.ones(210)
    labels = np.array(["Si"] * 200 + ["Ge"] * 10)
    cp = ConformalCalibrator(0.1, classes=LabelClasses("element"), min_class_size=30)
    cp.fit_points(_points(err, sig, labels, np.zeros((210, 1))))
    assert "Ge" in cp.fallback_ and "10 calibration points" in cp.fallback_["Ge"]
    assert cp.quantiles_["Ge"] == cp.quantile_
    assert list(cp.assign(_points(None, np.ones(3), ["Si", "Ge", "C"], np.zeros((3, 1))))) == ["Si", "Ge", UNKNOWN]
    # bins given by hand work the same way as an assigner's
    by_hand = ConformalCalibrator(0.1, min_class_size=30).fit(err, sig, bins=labels)
    assert by_hand.quantiles_ == cp.quantiles_
    assert list(by_hand.quantile_for(["Si", "C"])) == [cp.quantiles_["Si"], cp.unknown_quantile_]
    # descriptors far from every calibration environment are "unknown"
    err, sig, cls, desc = _two_classes(rng, 600)
    mix = ConformalCalibrator(0.1, classes=MixtureClasses(4)).fit_points(_points(err, sig, cls, desc))
    got = mix.assign(_points(None, np.ones(2), ["a", "a"], np.array([[40.0, -40.0, 40.0], desc[0]])))
    assert got[0] == UNKNOWN and got[1] != UNKNOWN
    assert mix.quantile_for([UNKNOWN])[0] == max(max(mix.quantiles_.values()), mix.quantile_)


def test_class_with_rank_above_its_size_falls_back():
    err, sig = np.r_[np.linspace(-1, 1, 40), [0.3] * 5], np.ones(45)
    labels = ["x"] * 40 + ["y"] * 5
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the fallback must not produce an infinite interval
        cp = ConformalCalibrator(0.1, min_class_size=3).fit(err, sig, bins=labels)
    assert "exceeds" in cp.fallback_["y"] and math.isfinite(cp.quantiles_["y"])


def test_metrics_match_hand_computations():
    e = np.array([0.1, -0.4, 0.2, 1.0])
    s = np.array([0.2, 0.2, 1.0, 1.0])
    # ENCE with 2 bins: {0.1, -0.4} (σ 0.2) and {0.2, 1.0} (σ 1.0)
    rmse1, rmse2 = math.sqrt((0.01 + 0.16) / 2), math.sqrt((0.04 + 1.0) / 2)
    assert metrics.ence(e, s, n_bins=2) == pytest.approx((abs(0.2 - rmse1) / 0.2 + abs(1.0 - rmse2) / 1.0) / 2)
    nll = np.mean([-norm.logpdf(x, scale=y) for x, y in zip(e, s)])
    assert metrics.gaussian_nll(e, s) == pytest.approx(nll)
    assert metrics.coverage(e, -s, s) == 0.75  # -0.4 lies outside ±0.2; 1.0 on the edge counts
    assert metrics.mean_width(-s, s) == pytest.approx(1.2)


def test_miscalibration_area_matches_closed_form():
    """σ half the true spread: observed(p) = 2Φ(Φ⁻¹((1+p)/2)/2) − 1."""
    rng = np.random.default_rng(3)
    e = rng.normal(0, 2.0, 200_000)
    s = np.ones_like(e)
    p = np.linspace(0.01, 0.99, 99)
    closed = np.mean(np.abs(2 * norm.cdf(norm.ppf((1 + p) / 2) / 2.0) - 1 - p))
    assert metrics.miscalibration_area(e, s) == pytest.approx(closed, abs=3e-3)
    assert metrics.miscalibration_area(e, 2.0 * s) < 3e-3


def test_cross_fitted_energy_scores_cover_where_in_sample_ones_do_not():
    """Known per-element offsets + noise (6 elements, 30 calibration structures, 300 seeded splits):
    scores from in-sample reference residuals are shrunk by the fit and under-cover; cross-fitted ones
    cover 1 − α within the band the finite-sample rule allows."""
    from calib.uq.reference import ElementReference, cross_fitted_residuals

    alpha, n_cal, repeats = 0.1, 30, 300
    cov_in, cov_cf = [], []
    for seed in range(repeats):
        rng = np.random.default_rng(seed)
        zs, mu = np.arange(1, 7), rng.normal(0, 1, 6)

        def make(n):
            counts = rng.integers(1, 5, (n, 6))
            return [np.repeat(zs, c) for c in counts], counts @ mu + rng.normal(0, 0.3, n)

        nc, dc = make(n_cal)
        nt, dt = make(200)
        ref = ElementReference().fit(nc, dc)
        r_test = dt - ref.predict(nt)  # new structures, with the reference fitted on all calibration ones
        r_cf, ok = cross_fitted_residuals(nc, dc, n_folds=5, seed=seed)
        assert ok.all()
        for r, out in ((dc - ref.predict(nc), cov_in), (r_cf, cov_cf)):
            q = ConformalCalibrator(alpha).fit(r, np.ones(n_cal)).quantile_
            out.append(np.mean(np.abs(r_test) <= q))
    # 300 repeats of 200 test points: the mean coverage has a standard error of about 0.004 (measured)
    assert 1 - alpha - 0.012 <= np.mean(cov_cf) <= 1 - alpha + 1 / (n_cal + 1) + 0.012, np.mean(cov_cf)
    assert np.mean(cov_in) < 1 - alpha - 0.05, np.mean(cov_in)
