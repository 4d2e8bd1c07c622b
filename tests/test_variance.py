"""The one Gaussian likelihood and variance fitter (calib.uq.variance), against scipy and closed forms."""

import numpy as np
import pytest
from scipy.stats import norm

from calib.uq.variance import fit_log_variance, gaussian_nll


def test_gaussian_nll_is_scipys_mean_negative_log_pdf():
    rng = np.random.default_rng(0)
    e, s = rng.normal(size=50), rng.uniform(0.1, 2.0, size=50)
    assert gaussian_nll(e**2, s**2) == pytest.approx(-np.mean(norm.logpdf(e, scale=s)), rel=1e-12)
    w = rng.uniform(size=50)
    assert gaussian_nll(e**2, s**2, weights=w) == pytest.approx(-np.average(norm.logpdf(e, scale=s), weights=w),
                                                               rel=1e-12)


def test_one_constant_basis_gives_the_closed_form_mle():
    """v = exp(θ)·1: the maximum-likelihood variance is the mean square, whatever the grid starts from."""
    r = np.random.default_rng(1).normal(scale=0.3, size=400)
    theta, nll = fit_log_variance([1.0], r**2, [np.linspace(-10, 2, 7)])
    assert np.exp(theta[0]) == pytest.approx(np.mean(r**2), rel=1e-5)
    assert nll == pytest.approx(0.5 * (np.log(2 * np.pi * np.mean(r**2)) + 1), rel=1e-8)


def test_two_bases_recover_their_weights_and_respect_a_known_part():
    """Errors drawn with v = 0.04 F² + 0.01 (+ a known 0.02): the fit finds the two weights."""
    rng = np.random.default_rng(2)
    F = rng.uniform(0, 3, size=20000)
    known = 0.02
    r = rng.normal(size=F.size) * np.sqrt(0.04 * F**2 + 0.01 + known)
    theta, _ = fit_log_variance([F**2, 1.0], r**2, [np.linspace(-8, 0, 5), np.linspace(-8, 0, 5)], known=known)
    assert np.exp(theta) == pytest.approx([0.04, 0.01], rel=0.1)
    with pytest.raises(ValueError, match="2 variance bases but 1 grid"):
        fit_log_variance([F**2, 1.0], r**2, [np.linspace(-8, 0, 5)])


def test_minimize_nll_gradient_and_closed_form():
    """minimize_nll with v = exp(p₀)·1 finds the mean square (the closed-form MLE); the NLL's gradient is the
    numerical one; an L2 penalty on a parameter pulls it to 0, one left out of ``penalized`` is free."""
    from calib.uq.variance import gaussian_nll_gradient, minimize_nll

    rng = np.random.default_rng(3)
    r2, w = rng.normal(scale=0.2, size=300) ** 2, rng.uniform(0.5, 2, 300)
    v = rng.uniform(0.01, 0.1, 300)
    for weights in (None, w):
        step = 1e-6 * np.eye(300)[:5]  # central differences on the first five variances
        num = [(gaussian_nll(r2, v + d, weights) - gaussian_nll(r2, v - d, weights)) / 2e-6 for d in step]
        np.testing.assert_allclose(gaussian_nll_gradient(r2, v, weights)[:5], num, rtol=1e-5)

    def const(p):
        return np.full(r2.size, np.exp(p[0])), lambda g: np.array([np.sum(g) * np.exp(p[0])])

    p, nll = minimize_nll(const, r2, [0.0])
    assert np.exp(p[0]) == pytest.approx(np.mean(r2), rel=1e-4)
    assert nll == pytest.approx(0.5 * (np.log(2 * np.pi * np.mean(r2)) + 1), rel=1e-6)
    free, _ = minimize_nll(const, r2, [0.0], ridge=1e3, penalized=[False])
    pulled, _ = minimize_nll(const, r2, [0.0], ridge=1e3)
    assert free[0] == pytest.approx(p[0], rel=1e-4) and abs(pulled[0]) < 0.01
