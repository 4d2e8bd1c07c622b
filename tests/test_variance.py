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
