"""The energy-difference variance model (calib.uq.differences) against brute force."""

import pathlib

import numpy as np
import pytest

DATA = pathlib.Path(__file__).parent / "data"


def test_fit_recovers_known_parameters_and_matches_a_brute_force_minimum():
    from scipy.optimize import brute

    from calib.uq.differences import DifferenceVarianceModel

    rng = np.random.default_rng(0)
    n = 6000
    v = 10 ** rng.uniform(-4, -1, n)  # LLPR variances spanning three decades, eV²
    dE = rng.normal(0, 0.5, n)
    beta, kappa2, tau2 = 2.0, 0.04, 0.01
    r = rng.normal(0, np.sqrt(beta * v + kappa2 * dE**2 + tau2))
    m = DifferenceVarianceModel().fit(v, dE, r)
    assert m.beta_ == pytest.approx(beta, rel=0.15)
    assert m.kappa2_ == pytest.approx(kappa2, rel=0.1)
    assert m.tau2_ == pytest.approx(tau2, rel=0.15)

    def nll(x):
        var = np.exp(x[0]) * v + np.exp(x[1]) * dE**2 + np.exp(x[2])
        return 0.5 * np.mean(np.log(2 * np.pi * var) + r**2 / var)

    best = brute(nll, [(-1, 2), (-5, -1), (-6, -3)], Ns=25, finish=None)
    assert m.nll_ <= nll(best) + 1e-9  # no worse than the grid's best point
    assert m.nll_ == pytest.approx(nll(np.log([m.beta_, m.kappa2_, m.tau2_])))


def test_predictor_difference_sigma_by_brute_force(chgnet):
    """σ(E_i − E_0) = sqrt(β α² dᵀ(H + ς²I)⁻¹d + κ² ΔE² + τ²), d = N_i f_i − N_0 f_0; the corrected one adds
    c² and the correction's own variance, and the intervals are q·σ about ΔE and c·ΔE."""
    from calib import CalibratedPredictor, datasets
    from calib.artifact import Artifact
    from calib.softening.correction import ChemistryCorrection, ScalarCorrection, correction_sigma
    from calib.uq.conformal import ConformalCalibrator
    from calib.uq.differences import DifferenceModels, DifferenceVarianceModel
    from calib.uq.targets import ConformalSet

    art = Artifact.load(DATA / "legacy_v1.nc", model=chgnet)
    raw, cor = DifferenceVarianceModel(3.0, 0.05, 0.002), DifferenceVarianceModel(1.5, 0.01, 0.001)
    cal = ConformalCalibrator(0.1).fit(np.linspace(-2, 2, 99), np.ones(99))
    cal_c = ConformalCalibrator(0.2).fit(np.linspace(-2, 2, 99), np.ones(99))
    art = art.replace(differences=DifferenceModels(raw, cor),
                      conformal=ConformalSet({**art.conformal, "energy_difference": cal,
                                              "energy_difference_corrected": cal_c}),
                      corrections=ScalarCorrection({"Si": ChemistryCorrection(1.3, -5.2, (1.2, 1.4))}))
    images = datasets.load("high-energy-states", chemsys="Si")[:4]
    images[2] = images[2][[1, 0, 2, 3, 4, 5, 6, 7]]  # same composition, atoms in another order
    ds = CalibratedPredictor(chgnet, art).energy_differences(images)
    pred = chgnet.predict(images, forces=False)
    L = art.llpr
    cov = np.linalg.inv(L.hessian_ + L.sigma2_ * np.eye(L.n_features))
    d = pred.n_atoms[:, None] * pred.features - pred.n_atoms[0] * pred.features[0]
    v = L.alpha2_ * np.einsum("sd,de,se->s", d, cov, d)
    dE = pred.energy - pred.energy[0]
    np.testing.assert_allclose(ds.energy_difference.values, dE, atol=1e-9)
    sig = np.sqrt(3.0 * v + 0.05 * dE**2 + 0.002)
    np.testing.assert_allclose(ds.energy_difference_sigma.values, sig, rtol=1e-6)
    np.testing.assert_allclose(ds.energy_difference_high.values - dE, cal.quantile_ * sig, rtol=1e-6)
    sc = correction_sigma((1.2, 1.4))
    sig_c = np.sqrt(1.5 * 1.3**2 * v + 0.01 * dE**2 + 0.001 + (sc * dE) ** 2)
    np.testing.assert_allclose(ds.energy_difference_corrected.values, 1.3 * dE, atol=1e-9)
    np.testing.assert_allclose(ds.energy_difference_corrected_sigma.values, sig_c, rtol=1e-6)
    np.testing.assert_allclose(ds.energy_difference_corrected_low.values, 1.3 * dE - cal_c.quantile_ * sig_c,
                               rtol=1e-6)
    # another composition than the reference image: no interval, and why
    other = datasets.load("high-energy-states", chemsys="Si-C")[:1]
    ds2 = CalibratedPredictor(chgnet, art).energy_differences(images[:2] + other)
    assert np.isnan(ds2.energy_difference_low.values[2]) and "differs from the reference" in str(
        ds2.difference_reason.values[2])


def test_path_covariance_diagonal_is_the_pair_variance():
    """One derivation: the path covariance C_ij = β c² L_ij + (κ² + σ_c²) ΔE_i ΔE_j + τ²/2 (1 + δ_ij) has the
    pair variance β c² v + (κ² + σ_c²) ΔE² + τ² on its diagonal, written out here by hand."""
    from calib.uq.differences import DifferenceVarianceModel

    rng = np.random.default_rng(1)
    A = rng.normal(size=(5, 5))
    L = A @ A.T * 1e-3
    d = rng.normal(0, 0.4, 5)
    m = DifferenceVarianceModel(2.0, 0.03, 0.004)
    for c, sc in ((1.0, 0.0), (1.25, 0.05)):
        C = m.covariance(L, d, c, sc)
        by_hand = 2.0 * c**2 * np.diag(L) + (0.03 + sc**2) * d**2 + 0.004
        np.testing.assert_allclose(np.diag(C), by_hand, rtol=1e-12)
        np.testing.assert_allclose(np.diag(C), m.variance(np.diag(L), d, c, sc), rtol=1e-12)
        assert C[0, 1] == pytest.approx(2.0 * c**2 * L[0, 1] + (0.03 + sc**2) * d[0] * d[1] + 0.002)


def test_one_pair_definition_by_brute_force():
    """Pairs share a composition (counts included), all pairs or disjoint ones, and reference pairs are the
    reference's composition: enumerated here by hand from the formulas."""
    from itertools import combinations

    import ase.build

    from calib.uq.differences import composition, difference_pairs, reference_pairs

    structs = [ase.build.bulk("Si", cubic=True), ase.build.bulk("Si", cubic=True) * (2, 1, 1),
               ase.build.bulk("Si", cubic=True), ase.build.bulk("NaCl", "rocksalt", 5.6),
               ase.build.bulk("NaCl", "rocksalt", 5.7), ase.build.bulk("Si", cubic=True),
               ase.build.bulk("NaCl", "rocksalt", 5.5)]
    comps = [composition(a) for a in structs]
    assert comps == [a.get_chemical_formula() for a in structs] == [composition(a.numbers) for a in structs]
    assert comps[0] == "Si8" and comps[1] == "Si16"  # the element reference cancels only at equal counts
    brute = {(i, j) for i, j in combinations(range(len(structs)), 2) if comps[i] == comps[j]}
    assert set(zip(*difference_pairs(comps))) == brute and len(brute) == 6
    for seed in range(5):
        i, j = difference_pairs(comps, disjoint=True, seed=seed)
        rows = np.concatenate([i, j])
        assert len(set(rows.tolist())) == len(rows)  # each row in one pair at most
        assert all((min(a, b), max(a, b)) in brute for a, b in zip(i, j))
        assert len(i) == 1 + 1  # Si8 ×3 → one pair, NaCl ×3 → one pair
    np.testing.assert_array_equal(reference_pairs(comps, 3), [c == "ClNa" for c in comps])


def test_difference_sigmas_are_the_models_and_nan_without_a_correction():
    from calib.uq.differences import DifferenceModels, DifferenceVarianceModel, difference_sigmas

    raw, cor = DifferenceVarianceModel(2.0, 0.04, 1e-3), DifferenceVarianceModel(1.5, 0.01, 2e-3)
    v, dE = np.array([1e-3, 4e-3, 2e-2]), np.array([0.1, -0.3, 0.5])
    s, s_c = difference_sigmas(DifferenceModels(raw=raw), v, dE, 0.8, 0.05)
    np.testing.assert_allclose(s, np.sqrt(2.0 * v + 0.04 * dE**2 + 1e-3), rtol=1e-12)
    assert s_c is None  # no corrected model: no corrected σ
    c = np.array([0.8, np.nan, 1.1])
    s, s_c = difference_sigmas(DifferenceModels(raw, cor), v, dE, c, 0.05)
    expect = np.sqrt(1.5 * c**2 * v + (0.01 + 0.05**2) * dE**2 + 2e-3)
    np.testing.assert_allclose(s_c[[0, 2]], expect[[0, 2]], rtol=1e-12)
    assert np.isnan(s_c[1])
    np.testing.assert_allclose(difference_sigmas(DifferenceModels(), v, dE)[0], np.sqrt(v), rtol=1e-12)
