"""The one trust verdict (calib.uq.trust) and the one domain detector (calib.uq.ood), against independent
computations: sklearn's PCA, simulation of the bound's coverage, the verdict written out by hand, and the
same answer from the predictor, screen, decide and evaluate."""

import hashlib

import numpy as np
import pytest


def _atoms(rng, n_structures, dims=6, rank=2):
    basis = rng.normal(size=(rank, dims))
    sizes = rng.integers(2, 6, n_structures)
    X = rng.normal(size=(sizes.sum(), rank)) @ basis + 0.05 * rng.normal(size=(sizes.sum(), dims))
    return X, np.repeat(np.arange(n_structures), sizes)


def test_streamed_detector_equals_pca_on_the_same_atoms_and_merges():
    """DescriptorStats → fit_stats gives sklearn PCA's subspace, Q residuals and structure-level threshold
    (when the sample holds every structure); two shards merged equal one pass, sample included."""
    from calib.uq.ood import DescriptorStats, QResidualDetector, structure_key

    rng = np.random.default_rng(0)
    X, owner = _atoms(rng, 60)
    keys = [structure_key(hashlib.sha256(str(k).encode()).hexdigest()) for k in range(60)]
    whole = DescriptorStats(6, sample_size=100).update(X, owner, keys)
    det = QResidualDetector(variance=0.95, quantile=0.9).fit_stats(whole)
    ref = QResidualDetector(variance=0.95, quantile=0.9).fit(X, owner)
    assert det.n_components_ == ref.n_components_ == 2
    np.testing.assert_allclose(np.abs(det.components_ @ ref.components_.T), np.eye(2), atol=1e-8)
    probe = rng.normal(size=(20, 6))
    np.testing.assert_allclose(det.q_residual(probe), ref.q_residual(probe), rtol=1e-8)
    assert det.threshold_ == pytest.approx(ref.threshold_, rel=1e-8)
    half = owner < 30
    a = DescriptorStats(6, sample_size=40).update(X[half], owner[half], keys[:30])
    b = DescriptorStats(6, sample_size=40).update(X[~half], owner[~half] - 30, keys[30:])
    merged, one = a.merge(b), DescriptorStats(6, sample_size=40).update(X, owner, keys)
    assert merged.n == one.n and sorted(merged.sample) == sorted(one.sample)
    np.testing.assert_allclose(merged.outer, one.outer, rtol=1e-12)
    for k in one.sample:
        np.testing.assert_array_equal(merged.sample[k], one.sample[k])


def test_force_error_bound_recovers_its_model_and_covers_by_simulation():
    """Data drawn from σ_i² = κ₁²F_i² + κ₂²F_rms² + τ²: the fit recovers the parameters and the structure bound
    covers the largest error of new structures at ≥ 1 − α (conformal, exchangeable)."""
    from calib.uq.trust import ForceErrorModel

    rng = np.random.default_rng(3)

    def draw(n):
        forces, errors = [], []
        for _ in range(n):
            F = rng.normal(0, rng.uniform(0.05, 2.0), (int(rng.integers(4, 16)), 3))
            s = np.sqrt(0.3**2 * F**2 + 0.1**2 * np.mean(F**2) + 0.02**2)
            forces.append(F)
            errors.append(s * rng.normal(size=F.shape))
        return forces, errors

    fe = ForceErrorModel(alpha=0.1).fit(*draw(400))
    assert fe.kappa1_ == pytest.approx(0.3, rel=0.1) and fe.kappa2_ == pytest.approx(0.1, rel=0.3)
    assert fe.tau_ == pytest.approx(0.02, rel=0.3)
    forces, errors = draw(2000)
    covered = np.mean([np.abs(e).max() <= fe.bound(f) for f, e in zip(forces, errors)])
    assert 0.87 <= covered <= 0.95, covered


def test_verdict_by_hand():
    from calib.uq.trust import TrustPolicy, verdict

    q = np.array([0.5, 2.0, 0.5, 0.5, np.nan])
    bound = np.array([0.1, 0.1, 0.45, 0.1, 0.2])
    half = np.array([0.01, 0.01, 0.01, 0.3, 0.02])
    ok, why, score = verdict(TrustPolicy(force_tol=0.3, energy_tol=0.1), q_score=q, force_bound=bound,
                             energy_halfwidth=half)
    assert list(ok) == [True, False, False, False, True]
    np.testing.assert_allclose(score, [0.5, 2.0, 1.5, 3.0, 2 / 3])
    assert why[0] == "" and "out of the model's domain" in why[1] and "0.45 eV/Å" in why[2]
    assert "±0.3 eV/atom" in why[3]
    ok2, _, _ = verdict(TrustPolicy(force_tol=0.5, energy_tol=None, domain=False), q_score=q, force_bound=bound,
                        energy_halfwidth=half)
    assert list(ok2) == [True] * 5


@pytest.fixture(scope="module")
def cal(chgnet, tmp_path_factory):
    """H on near-equilibrium prototypes, calibrated on Si and LiF high-energy states (α = 0.1)."""
    from calib import datasets
    from calib.data.prototypes import perturbed_set
    from calib.workflows.calibration import calibrate
    from calib.workflows.hessian import build_hessian

    hess, _ = build_hessian(chgnet, perturbed_set(n_variants=2, seed=4), progress=False)
    assert hess.ood is not None and "structures of the Hessian" in hess.ood.reference_
    lab = [a for c in ("Si", "Li-F") for a in datasets.load("high-energy-states", chemsys=c)[::2]]
    art = calibrate(hess, chgnet, lab, progress=False).artifact
    assert art.ood.threshold_ == hess.ood.threshold_  # the Hessian's detector, kept
    path = tmp_path_factory.mktemp("trust") / "CAL.nc"
    art.save(path)
    return art, path


def test_predictor_verdict_from_its_own_columns(chgnet, cal):
    """trusted, trust_score and force_error_bound follow from the columns by the documented formulas; an
    element missing from the energy reference removes the interval, never the trust."""
    from scipy.stats import norm

    from calib import CalibratedPredictor, datasets
    from calib.data.prototypes import perturbed_set

    art, _ = cal
    structs = perturbed_set(names=["Si", "LiF", "NaCl"], n_variants=2, rattle=0.02, seed=8) + \
        datasets.load("high-energy-states", chemsys="Si")[1:3]
    ds = CalibratedPredictor(chgnet, art).predict(structs, forces=True, force_mode="none")
    fe = art.force_error
    for k in range(len(structs)):
        F = ds["forces"].values[ds["structure_index"].values == k]
        s = np.sqrt(fe.kappa1_**2 * F**2 + fe.kappa2_**2 * np.mean(F**2) + fe.tau_**2)
        g = norm.ppf(1 - 1 / (4 * F.size))
        assert ds["force_error_bound"].values[k] == pytest.approx(fe.quantile_ * g * s.max(), rel=1e-10)
    per_atom = ds["energy_halfwidth"].values / ds["n_atoms"].values
    score = np.maximum.reduce([ds["q_score"].values, ds["force_error_bound"].values / 0.3, per_atom / 0.1])
    np.testing.assert_allclose(ds["trust_score"].values, score, rtol=1e-12)
    np.testing.assert_array_equal(ds["trusted"].values, score <= 1)
    nacl = np.array(["Na-Cl" == c for c in ds["chemsys"].values])
    assert np.all(np.isnan(ds["energy_low"].values[nacl]))  # Na, Cl: no offset, no interval ...
    assert not any("reference" in r for r in ds["trust_reason"].values[nacl])  # ... and not a reason
    assert ds["trusted"].values[nacl].any()


def test_screen_and_decide_give_the_predictors_verdict(chgnet, cal, tmp_path):
    from calib import CalibratedPredictor, datasets
    from calib.data.prototypes import perturbed_set
    from calib.workflows.decisions import decide
    from calib.workflows.screen import read_results, screen

    art, path = cal
    targets = perturbed_set(names=["Si", "LiF"], n_variants=3, rattle=0.03, seed=2) + \
        datasets.load("high-energy-states", chemsys="Li-F")[1::3]
    ds = CalibratedPredictor(chgnet, art).predict(targets, progress=False)
    screen(targets, path, tmp_path / "s.nc", model=chgnet, progress=False)
    rows = read_results(tmp_path / "s.nc")
    np.testing.assert_array_equal(rows["trusted"].values == 1, ds["trusted"].values)
    assert list(rows["reason"].values) == list(ds["trust_reason"].values)
    lab = datasets.load("high-energy-states", chemsys="Li-F")[::2]
    decisions, _ = decide(art, chgnet, lab, targets, progress=False)
    by_chem = {d.chemsys: d for d in decisions}
    lif = ds["chemsys"].values == "Li-F"
    assert by_chem["Li-F"].fraction_untrusted == pytest.approx(np.mean(~ds["trusted"].values[lif]))


def test_evaluate_reports_the_verdict_against_labels(chgnet, cal):
    from calib import datasets
    from calib.data.structures import get_forces
    from calib.uq.metrics import auroc
    from calib.workflows.evaluation import evaluate

    art, _ = cal
    test = [a for c in ("Si", "Li-F") for a in datasets.load("high-energy-states", chemsys=c)[1::2]]
    ev = evaluate(art, chgnet, test, progress=False)
    pred = chgnet.predict(test, forces=True)
    worst = np.array([np.abs(pred.forces_of(k) - get_forces(a)).max() for k, a in enumerate(test)])
    Fmax = np.array([np.abs(pred.forces_of(k)).max() for k in range(len(test))])
    v = ev.verdict
    good = worst <= 0.3
    from calib import CalibratedPredictor

    ds = CalibratedPredictor(chgnet, art).predict(test, forces=True, force_mode="none")
    ok = ds["trusted"].values
    assert v["n_trusted"] == ok.sum() and v["n_good"] == good.sum()
    if ok.any():
        assert v["precision"] == pytest.approx(np.mean(good[ok]))
    assert v["auroc"] == pytest.approx(auroc(~good, ds["trust_score"].values))
    assert v["auroc_max_force"] == pytest.approx(auroc(~good, Fmax), abs=1e-9)
