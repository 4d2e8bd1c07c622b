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


def test_t2_equals_sklearn_pca_and_sees_extrapolation_along_the_subspace():
    """Hotelling's T² = Σ t_k²/λ_k with sklearn's scores and variances, from fit() and from the streamed moments;
    a point far along the subspace has Q ≈ 0 and a large T²."""
    from sklearn.decomposition import PCA

    from calib.uq.ood import DescriptorStats, QResidualDetector, structure_key

    rng = np.random.default_rng(1)
    X, owner = _atoms(rng, 80)
    det = QResidualDetector(variance=0.95, quantile=0.9).fit(X, owner)
    pca = PCA(n_components=det.n_components_).fit(X)
    probe = rng.normal(size=(15, 6))
    want = np.sum(pca.transform(probe) ** 2 / pca.explained_variance_, axis=1)
    np.testing.assert_allclose(det.t2(probe), want, rtol=1e-8)
    keys = [structure_key(hashlib.sha256(str(k).encode()).hexdigest()) for k in range(80)]
    streamed = QResidualDetector(variance=0.95, quantile=0.9).fit_stats(DescriptorStats(6, 200).update(X, owner, keys))
    np.testing.assert_allclose(streamed.t2(probe), want, rtol=1e-6)
    along = det.mean_ + 30.0 * np.sqrt(det.explained_variance_[0]) * det.components_[0]
    assert det.q_residual(along[None])[0] < 1e-9 * det.threshold_
    assert det.structure_t2_scores(along[None], [0], 1)[0] > 10 and det.domain_scores(along[None], [0], 1)[0] > 10


def _synthetic_atoms(rng, n_structures, kappa, tau=0.02, sizes=(4, 12)):
    """Structures of one element each (from ``kappa``: Z → κ), forces of random size, errors drawn from
    σ_i² = κ_Z² F_i² + τ² (eV/Å). Returns AtomInputs, errors (N, 3), the chemsys of each structure."""
    from calib.uq.errormodel import AtomInputs

    zs = list(kappa)
    numbers, forces, errors, owner, chem = [], [], [], [], []
    for s in range(n_structures):
        z = zs[s % len(zs)]
        n = int(rng.integers(*sizes))
        F = rng.normal(0.0, rng.uniform(0.05, 2.0), (n, 3))
        e = np.sqrt(kappa[z] ** 2 * F**2 + tau**2) * rng.normal(size=F.shape)
        numbers.append(np.full(n, z)), forces.append(F), errors.append(e), owner.append(np.full(n, s))
        chem.append(f"el{z}-{s % 7}")
    inputs = AtomInputs(np.concatenate(numbers), np.concatenate(forces), np.concatenate(owner),
                        n_structures=n_structures)
    return inputs, np.concatenate(errors), np.array(chem)


def test_force_error_model_recovers_a_known_per_element_scale():
    """Errors drawn from σ² = κ_Z² F² + τ² with κ = 0.05 on Na and 0.4 on Si: the two-part form (the generating
    one) recovers each element's true σ at large |F| within 15 %, the default log-linear form (one force exponent
    for all) within 30 %, and a force-only model cannot tell the elements apart."""
    from calib.uq.errormodel import ForceComponentVariance

    rng = np.random.default_rng(7)
    kappa = {11: 0.05, 14: 0.4}
    inputs, errors, _ = _synthetic_atoms(rng, 300, kappa)
    probe, e_probe, _ = _synthetic_atoms(np.random.default_rng(8), 40, kappa)
    big = np.abs(probe.forces) > 1.0
    true = np.sqrt(np.vectorize(kappa.get)(probe.numbers)[:, None] ** 2 * probe.forces**2 + 0.02**2)
    for form, tol in (("two-part", 0.15), ("loglinear", 0.3)):
        model = ForceComponentVariance(form=form).fit(inputs, errors)
        for z in kappa:
            m = big & (probe.numbers[:, None] == z)
            assert np.median((model.sigma(probe) / true)[m]) == pytest.approx(1.0, rel=tol), (form, z)
    force_only = ForceComponentVariance(terms=("force",)).fit(inputs, errors)
    ratio = [np.median((force_only.sigma(probe) / np.abs(probe.forces))[big & (probe.numbers[:, None] == z)])
             for z in kappa]
    assert ratio[1] / ratio[0] < 1.5  # one κ for both elements (the truth is 8×)
    model = ForceComponentVariance().fit(inputs, errors)
    assert model.nll(probe, e_probe) < force_only.nll(probe, e_probe) - 0.2  # the held-out likelihood agrees


def test_error_models_round_trip_through_netcdf_variables(tmp_path):
    """Every form and term of the force model, and the energy model, give the same σ after to_variables →
    netCDF → from_variables."""
    import xarray as xr

    from calib.uq.errormodel import EnergyVariance, ForceComponentVariance

    rng = np.random.default_rng(4)
    inputs, errors, _ = _synthetic_atoms(rng, 60, {11: 0.05, 14: 0.4})
    inputs.descriptors = rng.normal(size=(len(inputs.numbers), 6))
    inputs.local_sigma = rng.uniform(0.01, 0.1, len(inputs.numbers))
    inputs.leverage = rng.uniform(0, 3, inputs.n_structures)
    models = {"a": ForceComponentVariance(terms=("force", "chemistry", "element", "descriptor", "llpr")),
              "b": ForceComponentVariance(form="two-part"), "e": EnergyVariance()}
    for name, m in models.items():
        m.fit(inputs, errors) if name != "e" else m.fit(inputs, rng.normal(0, 0.03, inputs.n_structures))
        variables = {k: xr.Variable(d, v, attrs) for k, (d, v, attrs) in m.to_variables(f"m_{name}").items()}
        xr.Dataset(variables).to_netcdf(tmp_path / f"{name}.nc")
        back = type(m).from_variables(xr.open_dataset(tmp_path / f"{name}.nc"), f"m_{name}")
        np.testing.assert_allclose(back.sigma(inputs), m.sigma(inputs), rtol=1e-12)


def test_grouped_cross_fit_equals_brute_force_leave_one_chemistry_out():
    """With as many folds as chemical systems, every structure's cross-fitted force σ is that of a model fitted on
    the other chemistries alone, and its energy residual the one under an element reference fitted without its
    chemistry (computed here by hand, with lstsq)."""
    from calib.uq.errormodel import ForceComponentVariance, cross_fit

    rng = np.random.default_rng(3)
    inputs, errors, chem = _synthetic_atoms(rng, 42, {11: 0.05, 14: 0.4, 17: 0.15})
    groups = np.array([c.split("-")[1] for c in chem])  # 7 groups across elements
    # energies: per-element offsets + a per-group formation error + noise; compositions mix two elements so
    # that other groups fix the offsets
    numbers = []
    for s in range(inputs.n_structures):
        z = inputs.numbers[inputs.structure == s]
        numbers.append(np.where(np.arange(len(z)) % 2 == 0, z, 8))  # every structure holds O too
    mu = {11: -1.3, 14: -5.4, 17: -1.8, 8: -4.9}
    form = {g: rng.normal(0, 0.05) for g in set(groups)}
    delta = np.array([sum(mu[int(z)] for z in nums) + len(nums) * form[g] + rng.normal(0, 0.01)
                      for nums, g in zip(numbers, groups)])
    cf = cross_fit(inputs, errors, numbers=numbers, delta_energy=delta, groups=groups, n_splits=7)
    zs = sorted(mu)
    counts = np.array([[np.sum(nums == z) for z in zs] for nums in numbers], dtype=float)
    starts = np.concatenate([[0], np.cumsum(inputs.n_atoms)])
    for g in sorted(set(groups)):
        out, keep = groups == g, np.flatnonzero(groups != g)
        model = ForceComponentVariance().fit(inputs.subset(keep), np.concatenate(
            [errors[starts[i]:starts[i + 1]] for i in keep]))
        rows = np.flatnonzero(out)
        want = model.sigma(inputs.subset(rows))
        got = np.concatenate([cf.force_sigma[starts[i]:starts[i + 1]] for i in rows])
        np.testing.assert_allclose(got, want, rtol=1e-6)
        coef, *_ = np.linalg.lstsq(counts[keep], delta[keep], rcond=None)
        resid = (delta[rows] - counts[rows] @ coef) / counts[rows].sum(axis=1)
        np.testing.assert_allclose(cf.energy_errors[rows], resid, rtol=1e-6, atol=1e-9)


def test_force_bound_covers_new_chemistries_by_simulation():
    """The cross-fitted conformal bound holds the largest force error of structures of new chemistries (new
    draws of the same generating process) at ≥ 1 − α, and is not wildly conservative."""
    from calib.uq.errormodel import ForceBound, ForceComponentVariance, cross_fit

    rng = np.random.default_rng(5)
    kappa = {11: 0.05, 14: 0.4, 17: 0.15, 12: 0.1}
    inputs, errors, chem = _synthetic_atoms(rng, 240, kappa)
    cf = cross_fit(inputs, errors, groups=chem, n_splits=10)
    ends = np.cumsum(inputs.n_atoms)[:-1]
    bound = ForceBound(alpha=0.1).fit(np.split(cf.force_sigma, ends), np.split(errors, ends))
    model = ForceComponentVariance().fit(inputs, errors)
    new, e_new, _ = _synthetic_atoms(np.random.default_rng(6), 1500, kappa)
    sig = model.sigma(new)
    e2 = np.cumsum(new.n_atoms)[:-1]
    U = np.array([bound.bound(s) for s in np.split(sig, e2)])
    worst = np.array([np.abs(e).max() for e in np.split(e_new, e2)])
    covered = np.mean(worst <= U)
    assert 0.87 <= covered <= 0.96, covered


def _structure_model_data(seed, n):
    """Synthetic structures (four elements, errors σ² = κ_Z² F² + τ²), their component scale g(n) max σ from a
    component model fitted on the first call's draws, the structure features and the largest errors."""
    from calib.uq.errormodel import ForceComponentVariance, component_scale, structure_features

    kappa = {11: 0.05, 14: 0.4, 17: 0.15, 12: 0.1}
    inputs, errors, chem = _synthetic_atoms(np.random.default_rng(seed), n, kappa)
    return inputs, errors, chem, ForceComponentVariance, component_scale, structure_features


def test_structure_error_model_trees_are_sklearns_and_round_trip(tmp_path):
    """The stored trees predict what scikit-learn's GradientBoostingRegressor, fitted here on the same data with
    the same settings, predicts; the bound is exp(ŷ + q) − floor with q the conformal quantile of residuals from
    trees fitted without each structure's group (recomputed here with GroupKFold); all survive netCDF."""
    import xarray as xr
    from sklearn.ensemble import GradientBoostingRegressor
    from sklearn.model_selection import GroupKFold

    from calib.uq.conformal import conformal_quantile
    from calib.uq.errormodel import WORST_FLOOR, StructureErrorModel

    rng = np.random.default_rng(11)
    X = rng.normal(size=(200, 5))
    groups = np.array([f"g{i % 13}" for i in range(200)])
    worst = np.exp(0.5 * X[:, 0] + np.where(X[:, 1] > 0, 0.8, -0.4) * X[:, 2] + rng.normal(0, 0.3, 200)) * 0.2
    model = StructureErrorModel().fit(X, worst, groups)
    y = np.log(worst + WORST_FLOOR)
    gb = GradientBoostingRegressor(random_state=0, max_depth=3, n_estimators=150, learning_rate=0.05,
                                   min_samples_leaf=15).fit(X, y)
    probe = rng.normal(size=(50, 5)) * 1.5
    np.testing.assert_allclose(model.predict(probe), gb.predict(probe), rtol=0, atol=1e-10)
    oof = np.zeros(200)
    for tr, te in GroupKFold(n_splits=10).split(X, groups=groups):
        oof[te] = GradientBoostingRegressor(random_state=0, max_depth=3, n_estimators=150, learning_rate=0.05,
                                            min_samples_leaf=15).fit(X[tr], y[tr]).predict(X[te])
    np.testing.assert_allclose(model.scores_, np.sort(y - oof), atol=1e-10)
    for alpha in (0.1, 0.25):
        q = conformal_quantile(np.sort(y - oof), alpha)
        np.testing.assert_allclose(model.bound(probe, alpha), np.maximum(np.exp(gb.predict(probe) + q) - WORST_FLOOR,
                                                                         0), rtol=1e-9)
    variables = {k: xr.Variable(d, v, a) for k, (d, v, a) in model.to_variables("m_s").items()}
    xr.Dataset(variables).to_netcdf(tmp_path / "s.nc")
    back = StructureErrorModel.from_variables(xr.open_dataset(tmp_path / "s.nc"), "m_s")
    np.testing.assert_allclose(back.bound(probe, 0.1), model.bound(probe, 0.1), rtol=1e-12)
    with pytest.raises(ValueError, match="≥ 30 structures"):
        StructureErrorModel().fit(X[:20], worst[:20], groups[:20])


def test_structure_bound_covers_new_chemistries_by_simulation():
    """The structure bound, fitted on cross-fitted component scales as calibrate fits it, holds the largest force
    error of new draws at ≥ 1 − α at α = 0.1 and near 1 − α at 0.25 (the trust verdict's default confidence)."""
    from calib.uq.errormodel import StructureErrorModel, cross_fit

    inputs, errors, chem, FCV, component_scale, structure_features = _structure_model_data(5, 300)
    cf = cross_fit(inputs, errors, groups=chem, n_splits=10)
    ends = np.cumsum(inputs.n_atoms)[:-1]
    worst = np.array([np.abs(e).max() for e in np.split(errors, ends)])
    model = StructureErrorModel().fit(structure_features(inputs, component_scale(cf.force_sigma, inputs.n_atoms)),
                                      worst, chem)
    comp = FCV().fit(inputs, errors)
    new, e_new, _, *_ = _structure_model_data(6, 1500)
    X = structure_features(new, component_scale(comp.sigma(new), new.n_atoms))
    w_new = np.array([np.abs(e).max() for e in np.split(e_new, np.cumsum(new.n_atoms)[:-1])])
    assert 0.87 <= np.mean(w_new <= model.bound(X, 0.1)) <= 0.96
    assert 0.70 <= np.mean(w_new <= model.bound(X, 0.25)) <= 0.82


def test_energy_variance_is_tau_sqrt_one_plus_leverage_and_leverage_is_the_hat_diagonal():
    """ElementReference.leverage equals xᵀ(XᵀX)⁻¹x over the distinct compositions (computed with numpy's inverse of
    a full-rank design); the energy model recovers τ from errors drawn with σ² = τ²(1 + h)."""
    from calib.uq.errormodel import AtomInputs, EnergyVariance
    from calib.uq.reference import ElementReference

    rng = np.random.default_rng(11)
    comps = [[3, 3, 9, 9], [11, 11, 9, 9], [3, 3, 17, 17], [11, 11, 17, 17], [3, 9, 9, 9], [19, 19, 17, 17],
             [19, 9, 9, 9]]
    numbers = [np.array(comps[k % len(comps)]) for k in range(70)]
    ref = ElementReference().fit(numbers, rng.normal(size=70))
    zs = sorted({z for c in comps for z in c})
    X = np.array([[c.count(z) / len(c) for z in zs] for c in comps])
    want = np.einsum("ij,jk,ik->i", X, np.linalg.inv(X.T @ X), X)
    np.testing.assert_allclose(ref.leverage([np.array(c) for c in comps]), want, rtol=1e-8)
    assert np.isnan(ref.leverage([np.array([3, 55])])[0])  # Cs never seen
    h = rng.uniform(0.0, 6.0, 3000)
    e = 0.04 * np.sqrt(1 + h) * rng.normal(size=3000)
    inputs = AtomInputs(np.full(3000, 14), np.zeros((3000, 3)), np.arange(3000), leverage=h)
    model = EnergyVariance().fit(inputs, e)
    np.testing.assert_allclose(model.sigma(inputs), 0.04 * np.sqrt(1 + h), rtol=0.06)


def test_chemistry_scales_by_hand_and_in_the_predictor(chgnet, cal):
    """r_c = (Σ e²/σ² + prior) / (N_c + prior) over a chemistry's structures, and without structure s for its
    leave-one-out scale (written out here); the predictor multiplies a seen chemistry's σ by √r_c and bounds it
    with the seen quantile."""
    import dataclasses

    from calib import CalibratedPredictor, datasets
    from calib.uq.errormodel import SCALE_PRIOR, ForceBound, chemistry_scales

    rng = np.random.default_rng(2)
    sig = [np.full((4, 3), 0.1) for _ in range(5)]
    err = [0.3 * rng.normal(size=(4, 3)) for _ in range(3)] + [0.1 * rng.normal(size=(4, 3)) for _ in range(2)]
    groups = ["A", "A", "A", "B", "C"]
    scales, loo = chemistry_scales(sig, err, groups)
    z2 = [float(np.sum((e / s) ** 2)) for s, e in zip(sig, err)]
    assert set(scales) == {"A"} and np.isnan(loo[3:]).all()  # B and C: one structure each
    assert scales["A"] == pytest.approx((sum(z2[:3]) + SCALE_PRIOR) / (36 + SCALE_PRIOR))
    assert loo[0] == pytest.approx((z2[1] + z2[2] + SCALE_PRIOR) / (24 + SCALE_PRIOR))
    assert 4 < scales["A"] < 9  # errors 3× σ: r → 9, shrunk toward 1

    art, _ = cal
    probe = datasets.load("high-energy-states", chemsys="Si")[1:3]
    plain = CalibratedPredictor(chgnet, art).predict(probe, forces=True, progress=False)
    seen_bound = ForceBound(0.1).fit([s * 2.0 for s in sig], err)
    em = dataclasses.replace(art.error_models, force_scales={"Si": 4.0}, bound_seen=seen_bound)
    ds = CalibratedPredictor(chgnet, art.replace(error_models=em)).predict(probe, forces=True, progress=False)
    np.testing.assert_allclose(ds["forces_sigma"].values, 2.0 * plain["forces_sigma"].values, rtol=1e-9)
    g = np.array([ds["forces_sigma"].values[ds["structure_index"].values == k].max() for k in range(2)])
    np.testing.assert_allclose(ds["force_error_bound"].values,
                               seen_bound.quantile_ * np.array([norm_g(len(a) * 3) for a in probe]) * g, rtol=1e-9)


def norm_g(n):
    from scipy.stats import norm

    return norm.ppf(1 - 1 / (4 * n))


def test_verdict_by_hand():
    from calib.uq.trust import Check, TrustPolicy, verdict

    q = np.array([0.5, 2.0, 0.5, 0.5, np.nan])
    bound = np.array([0.1, 0.1, 0.45, 0.1, 0.2])
    half = np.array([0.01, 0.01, 0.01, 0.3, 0.02])
    v = verdict(TrustPolicy(force_tol=0.3, energy_tol=0.1), domain=q, force_bound=bound, energy_halfwidth=half)
    assert list(v.trusted) == [True, False, False, False, False]
    np.testing.assert_allclose(v.score[:4], [0.5, 2.0, 1.5, 3.0])
    assert v.score[4] == np.inf  # the domain of structure 4 could not be scored: not checked, not trusted
    why = v.reasons
    assert why[0] == "" and "out of the model's domain" in why[1] and "0.45 eV/Å" in why[2]
    assert "±0.3 eV/atom" in why[3] and why[4].startswith("not checked: domain")
    assert list(v.checks_failed()) == ["", "domain", "forces", "energy", "not checked"]
    assert v.count(Check.FORCES) == 1 and v.count(Check.NOT_CHECKED) == 1
    loose = verdict(TrustPolicy(force_tol=0.5, energy_tol=None, domain=False), domain=q, force_bound=bound,
                    energy_halfwidth=half)
    assert list(loose.trusted) == [True] * 5
    # a piece the calibration lacks is named and untrusts, unless the policy leaves its check out
    none = verdict(TrustPolicy(), domain=q, force_bound=None, energy_halfwidth=half,
                   missing={Check.FORCES: "the calibration has no force-error model"})
    assert not none.trusted.any() and all("no force-error model" in r for r in none.reasons)
    assert verdict(TrustPolicy(force_tol=None, energy_tol=None), domain=np.zeros(5), force_bound=None).trusted.all()
    elements = verdict(TrustPolicy(energy_tol=None, unlabelled_elements=True), domain=np.zeros(2),
                       force_bound=np.array([0.1, 0.1]), unlabelled=np.array(["", "U"], dtype=object))
    assert list(elements.trusted) == [True, False] and "element(s) U" in elements.reasons[1]
    with pytest.raises(ValueError, match="force_tol"):
        TrustPolicy(force_tol=-0.3)
    assert "(calibrated 90% bound)" in why[2]  # the confidence the bound was held at
    low = verdict(TrustPolicy(confidence=0.75), domain=q, force_bound=bound)
    assert "(calibrated 75% bound)" in low.reasons[2]
    for c in (0, 1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="confidence"):
            TrustPolicy(confidence=c)


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
    """σ of every force component is the stored GLM applied to inputs built here by hand (pymatgen's periodic
    table, the model's forces); the bound, trust_score and trusted follow by the documented formulas; an element
    missing from the energy reference removes the interval, never the trust."""
    from pymatgen.core import Element
    from scipy.stats import norm

    from calib import CalibratedPredictor, datasets
    from calib.data.prototypes import perturbed_set

    art, _ = cal
    structs = perturbed_set(names=["Si", "LiF", "NaCl"], n_variants=2, rattle=0.02, seed=8) + \
        datasets.load("high-energy-states", chemsys="Si")[1:3]
    from calib.uq.trust import TrustPolicy

    ds = CalibratedPredictor(chgnet, art).predict(structs, forces=True, force_mode="none")
    low = CalibratedPredictor(chgnet, art, trust=TrustPolicy(confidence=0.75)).predict(structs, progress=False)
    fm, fb = art.error_models.forces, art.error_models.bound
    floor = 0.05**2
    for k, a in enumerate(structs):
        F = ds["forces"].values[ds["structure_index"].values == k]
        els = [Element(x) for x in a.get_chemical_symbols()]
        en = np.array([e.X for e in els])
        props = np.array([[e.X, e.row, e.group, e.atomic_radius, e.is_metal, e.block == "s", e.block == "p",
                           e.block == "d"] for e in els], dtype=float)
        comp = [en.max() - en.min(), en.mean(), np.mean([e.is_metal for e in els])]
        # open_3d: unpaired 3d electrons of the free atom, Hund's rule by hand (none of Si, Li, F, Na, Cl has any)
        u = np.array([{21: 1, 22: 2, 23: 3, 24: 5, 25: 5, 26: 4, 27: 3, 28: 2}.get(int(z), 0) for z in a.numbers])
        frms2 = np.mean(F**2)
        rows = [[np.log(F[i, x] ** 2 + floor), np.log(np.sum(F[i] ** 2) + floor), np.log(frms2 + floor), *props[i],
                 *comp, u[i], u.mean()] for i in range(len(a)) for x in range(3)]
        X = (np.array(rows) - fm.center_) / fm.scale_
        sigma = np.sqrt(np.exp(X @ fm.coef_ + fm.intercept_)).reshape(-1, 3)
        np.testing.assert_allclose(ds["forces_sigma"].values[ds["structure_index"].values == k], sigma, rtol=1e-8)
        g = norm.ppf(1 - 1 / (4 * F.size))
        want = fb.quantile_ * g * sigma.max()
        assert ds["force_error_bound"].values[k] == pytest.approx(want, rel=1e-8)
        assert ds["force_error_bound_trust"].values[k] == pytest.approx(want, rel=1e-8)  # default confidence 0.9
        q75 = fb.scores_[int(np.ceil((len(fb.scores_) + 1) * 0.75)) - 1]  # rank ⌈(n + 1)·0.75⌉ of the scores
        assert low["force_error_bound_trust"].values[k] == pytest.approx(q75 * g * sigma.max(), rel=1e-8)
        assert low["force_error_bound"].values[k] == pytest.approx(want, rel=1e-8)  # the report stays at 0.9
    score_low = np.maximum(low["domain_score"].values, low["force_error_bound_trust"].values / 0.3)
    np.testing.assert_array_equal(low["trusted"].values, score_low <= 1)
    # default: no energy check; the force check at the policy's confidence
    score = np.maximum(ds["domain_score"].values, ds["force_error_bound_trust"].values / 0.3)
    np.testing.assert_allclose(ds["trust_score"].values, score, rtol=1e-12)
    np.testing.assert_array_equal(ds["trusted"].values, score <= 1)
    nacl = np.array(["Na-Cl" == c for c in ds["chemsys"].values])
    assert np.all(np.isnan(ds["energy_low"].values[nacl]))  # Na, Cl: no offset, no interval ...
    assert not any("reference" in r for r in ds["trust_reason"].values[nacl])  # ... and not a reason
    assert all("Na,Cl" in r for r in ds["trust_notes"].values[nacl])  # named: no calibration label holds them
    # ten hot Si and LiF frames put the error model's floor near 0.3 eV/Å; at 0.5 eV/Å the NaCl crystals, which
    # no offset covers, are trusted: the missing offset is no reason
    loose = CalibratedPredictor(chgnet, art, trust=TrustPolicy(force_tol=0.5)).predict(structs[4:6], progress=False)
    assert loose["trusted"].values.all(), list(loose["trust_reason"].values)


def test_the_calibration_may_name_the_verdicts_confidence(chgnet, cal):
    """A calibration that carries ``trust_confidence`` (the default calibration of SevenNet-0 does) sets the
    confidence of the bound the verdict reads when the policy names none; a policy's own confidence wins; the
    prediction says which it used. The bound at confidence c is rank ⌈(n + 1)c⌉ of the stored scores."""
    from calib import CalibratedPredictor
    from calib.data.prototypes import perturbed_set
    from calib.uq.trust import TrustPolicy

    art, _ = cal
    own = art.replace(attrs={**art.attrs, "trust_confidence": 0.8})
    structs = perturbed_set(names=["Si", "LiF"], n_variants=1, rattle=0.02, seed=3)
    base = CalibratedPredictor(chgnet, art).predict(structs, progress=False)
    by_art = CalibratedPredictor(chgnet, own).predict(structs, progress=False)
    by_policy = CalibratedPredictor(chgnet, own, trust=TrustPolicy(confidence=0.9)).predict(structs, progress=False)
    assert (base.attrs["trust_confidence"], by_art.attrs["trust_confidence"]) == (0.9, 0.8)
    assert by_policy.attrs["trust_confidence"] == 0.9
    scores = art.error_models.bound.scores_
    q = {c: scores[int(np.ceil((len(scores) + 1) * c)) - 1] for c in (0.8, 0.9)}
    np.testing.assert_allclose(by_art["force_error_bound_trust"].values,
                               base["force_error_bound_trust"].values * q[0.8] / q[0.9], rtol=1e-10)
    np.testing.assert_allclose(by_policy["force_error_bound_trust"].values, base["force_error_bound_trust"].values,
                               rtol=1e-12)
    np.testing.assert_allclose(by_art["force_error_bound"].values, base["force_error_bound"].values, rtol=1e-12)


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
    assert rows["trusted"].dtype == bool  # one name, one type for one quantity: the predictor's
    np.testing.assert_array_equal(rows["trusted"].values, ds["trusted"].values)
    assert list(rows["trust_reason"].values) == list(ds["trust_reason"].values)
    assert list(rows["trust_checks_failed"].values) == list(ds["trust_checks_failed"].values)
    lab = datasets.load("high-energy-states", chemsys="Li-F")[::2]
    decisions, _ = decide(art, chgnet, lab, targets, progress=False)
    by_chem = {d.chemsys: d for d in decisions}
    lif = ds["chemsys"].values == "Li-F"
    # decide holds targets to its MAE tolerance (0.1 eV/Å): the expected MAE √(2/π)·mean σ under the error model
    full = CalibratedPredictor(chgnet, art).predict(targets, forces=True, progress=False)
    mae = np.array([np.sqrt(2 / np.pi) * full["forces_sigma"].values[full["structure_index"].values == k].mean()
                    for k in range(len(targets))])
    out = (mae > 0.1) | (full["domain_score"].values > 1)
    assert by_chem["Li-F"].fraction_untrusted == pytest.approx(np.mean(out[lif]))


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
    # the AUROC written out (Mann–Whitney: the fraction of (bad, good) pairs the score orders, ties halved),
    # not the library function that evaluate itself calls
    def pairs(score):
        bad, ok_ = score[~good], score[good]
        return np.mean((bad[:, None] > ok_[None, :]) + 0.5 * (bad[:, None] == ok_[None, :]))

    if 0 < good.sum() < len(good):
        assert v["auroc"] == pytest.approx(pairs(np.asarray(ds["trust_score"].values, dtype=float)))
        assert v["auroc_max_force"] == pytest.approx(pairs(Fmax), abs=1e-9)
    assert v["auroc"] == pytest.approx(auroc(~good, ds["trust_score"].values))


def test_predictor_bounds_a_new_chemistry_by_the_structure_model_when_the_artifact_has_one(chgnet, cal):
    """With a structure model in the artifact (calibrate(structure_model=True)), a chemistry the calibration has
    not seen gets U = the model's bound on the features of its own forces and σ (recomputed here from the
    predicted columns); the bound at the policy's confidence is the same model at 1 − confidence."""
    import dataclasses

    from calib import CalibratedPredictor
    from calib.data.prototypes import perturbed_set
    from calib.uq.errormodel import AtomInputs, StructureErrorModel, component_scale, structure_features
    from calib.uq.trust import TrustPolicy

    art, _ = cal
    rng = np.random.default_rng(2)
    X = rng.normal(size=(80, 22))
    sm = StructureErrorModel().fit(X, np.exp(rng.normal(-1.5, 0.5, 80)), [f"g{i % 8}" for i in range(80)])
    em = dataclasses.replace(art.error_models, structure=sm)
    art2 = art.replace(error_models=em)
    structs = perturbed_set(names=["NaCl", "MgO"], n_variants=2, rattle=0.05, seed=3)
    ds = CalibratedPredictor(chgnet, art2, trust=TrustPolicy(confidence=0.8)).predict(structs, forces=True,
                                                                                   progress=False)
    owner = ds["structure_index"].values
    inputs = AtomInputs(ds["numbers"].values, ds["forces"].values, owner, n_structures=len(structs))
    feats = structure_features(inputs, component_scale(ds["forces_sigma"].values, inputs.n_atoms))
    np.testing.assert_allclose(ds["force_error_bound"].values, sm.bound(feats, 0.1), rtol=1e-10)
    np.testing.assert_allclose(ds["force_error_bound_trust"].values, sm.bound(feats, 0.2), rtol=1e-10)


def test_unpaired_3d_is_hunds_rule_and_the_open_3d_term_recovers_a_law_in_it():
    """unpaired_3d against Hund's rule by hand; errors whose scale rises and falls across the 3d row with the
    unpaired electrons (peaking at Cr and Mn, not monotonic in group or electronegativity) are recovered by the
    default terms, which include open_3d, and not by the element properties alone."""
    from calib.uq.errormodel import AtomInputs, ForceComponentVariance, unpaired_3d

    # 3d^n of the free atoms (Cr 3d5 4s1, Cu 3d10 4s1): unpaired = min(n, 10 − n)
    hund = {21: 1, 22: 2, 23: 3, 24: 5, 25: 5, 26: 4, 27: 3, 28: 2, 29: 0, 30: 0}
    assert {z: unpaired_3d(z) for z in hund} == hund
    assert [unpaired_3d(z) for z in (3, 8, 14, 31, 42, 74, 79)] == [0] * 7  # no open 3d shell (Mo, W: 4d, 5d)
    rng = np.random.default_rng(11)

    def draw(n_structures):
        zs = rng.choice(list(hund), size=(n_structures, 4))
        numbers = zs.ravel()
        forces = rng.normal(0.0, 1.0, (len(numbers), 3))
        sigma = 0.05 * np.exp(0.3 * np.vectorize(hund.get)(numbers))[:, None] * np.ones((1, 3))  # log-linear in u
        inputs = AtomInputs(numbers, forces, np.repeat(np.arange(n_structures), 4))
        return inputs, sigma * rng.normal(size=sigma.shape), sigma

    train, e_train, _ = draw(400)
    test, e_test, true = draw(100)
    model = ForceComponentVariance().fit(train, e_train)
    assert "open_3d" in model.terms
    for z in (21, 24, 26, 29):  # Sc, Cr, Fe, Cu: 0.067, 0.224, 0.166, 0.05 eV/Å
        m = test.numbers == z
        assert np.median(model.sigma(test)[m] / true[m]) == pytest.approx(1.0, rel=0.2), z
    without = ForceComponentVariance(terms=("force", "chemistry")).fit(train, e_train)
    assert model.nll(test, e_test) < without.nll(test, e_test) - 0.05
