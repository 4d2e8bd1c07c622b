"""The committee terms of the error models: a second model's force and energy disagreement as inputs
(docs/errormodel.md)."""

import numpy as np
import pytest

from calib.uq.errormodel import AtomInputs, EnergyVariance, ForceComponentVariance, cross_fit, force_terms


def _synthetic(rng, n_structures=120, n_atoms=6, scale=0.5):
    """Atoms whose force errors have σ = scale·|D| per component, D the second model's disagreement (eV/Å):
    a known law the committee term can express exactly (|D| ≫ the 0.05 eV/Å floor)."""
    n = n_structures * n_atoms
    numbers = rng.choice([3, 9, 11, 14, 17], size=n)
    forces = rng.normal(0.0, 1.0, (n, 3))
    D = rng.choice([-1.0, 1.0], size=(n, 3)) * np.exp(rng.uniform(np.log(0.3), np.log(3.0), (n, 3)))
    errors = scale * np.abs(D) * rng.normal(size=(n, 3))
    inputs = AtomInputs(numbers, forces, np.repeat(np.arange(n_structures), n_atoms), second_forces=forces + D)
    return inputs, errors, scale * np.abs(D)


def test_committee_term_recovers_a_known_disagreement_law():
    rng = np.random.default_rng(0)
    train, e_train, _ = _synthetic(rng)
    test, e_test, true_sigma = _synthetic(rng)
    assert force_terms(train) == ("force", "chemistry", "open_3d", "committee")
    model = ForceComponentVariance(terms=force_terms(train)).fit(train, e_train)
    ratio = model.sigma(test) / true_sigma
    # 2160 components fix log σ² to a few hundredths; the floor inside the log shifts the smallest |D| by < 1.5 %
    assert abs(np.median(np.log(ratio))) < 0.1
    assert np.quantile(np.abs(np.log(ratio)), 0.9) < 0.3
    plain = ForceComponentVariance().fit(AtomInputs(train.numbers, train.forces, train.structure), e_train)
    plain_test = AtomInputs(test.numbers, test.forces, test.structure)
    # the default terms cannot see D: the committee model's likelihood on new data is far better
    assert model.nll(test, e_test) < plain.nll(plain_test, e_test) - 0.3


def test_committee_term_needs_the_second_forces_and_subsets_keep_them():
    rng = np.random.default_rng(1)
    inputs, errors, _ = _synthetic(rng, n_structures=10)
    model = ForceComponentVariance(terms=force_terms(inputs)).fit(inputs, errors)
    with pytest.raises(ValueError, match="second model's forces"):
        model.sigma(AtomInputs(inputs.numbers, inputs.forces, inputs.structure))
    sub = inputs.subset([3, 1])
    np.testing.assert_array_equal(sub.second_forces, np.concatenate([inputs.second_forces[18:24],
                                                                      inputs.second_forces[6:12]]))
    np.testing.assert_allclose(model.sigma(sub), np.concatenate([model.sigma(inputs)[18:24],
                                                                 model.sigma(inputs)[6:12]]), rtol=1e-12)
    with pytest.raises(ValueError, match="rows of second_forces"):
        AtomInputs(inputs.numbers, inputs.forces, inputs.structure, second_forces=inputs.second_forces[:-1])


def test_energy_committee_term_recovers_a_known_disagreement_law():
    """Energy errors drawn with σ² = (1 + h)·(0.7·d)² (d ≥ 0.2 eV/atom, well above the 0.02 eV/atom floor): the committee term recovers σ
    and beats the default terms' likelihood on new draws."""
    from calib.uq.errormodel import energy_terms

    def draw(rng, n=1500):
        h = rng.uniform(0.0, 3.0, n)
        d = rng.choice([-1.0, 1.0], n) * np.exp(rng.uniform(np.log(0.2), np.log(2.0), n))  # eV/atom
        inputs = AtomInputs(np.full(n, 14), rng.normal(0.0, 1.0, (n, 3)), np.arange(n), leverage=h,
                            energy_disagreement=d)
        sigma = 0.7 * np.abs(d) * np.sqrt(1 + h)
        return inputs, sigma * rng.normal(size=n), sigma

    rng = np.random.default_rng(3)
    train, e_train, _ = draw(rng)
    test, e_test, true_sigma = draw(rng)
    assert energy_terms(train) == ("leverage", "force", "chemistry", "committee")
    model = EnergyVariance(terms=energy_terms(train)).fit(train, e_train)
    ratio = np.log(model.sigma(test) / true_sigma)
    assert abs(np.median(ratio)) < 0.1 and np.quantile(np.abs(ratio), 0.9) < 0.25
    plain = EnergyVariance().fit(train, e_train)
    assert model.nll(test, e_test) < plain.nll(test, e_test) - 0.3
    with pytest.raises(ValueError, match="energy disagreement"):
        model.sigma(AtomInputs(test.numbers, test.forces, test.structure, leverage=test.leverage))
    np.testing.assert_array_equal(test.subset([5, 2]).energy_disagreement, test.energy_disagreement[[5, 2]])
    with pytest.raises(ValueError, match="energy disagreements"):
        AtomInputs(test.numbers, test.forces, test.structure, energy_disagreement=test.energy_disagreement[:-1])


def test_cross_fitted_disagreement_is_out_of_group_by_hand():
    """The disagreement cross_fit hands the energy model is the second model's energy difference less a
    per-element shift fitted (least squares, numpy here) on the other groups' structures with an energy label."""
    rng = np.random.default_rng(5)
    elements = [3, 8, 9, 11, 12, 17]
    numbers, groups = [], []
    for g in range(12):
        pair = rng.choice(elements, 2, replace=False)
        for _ in range(4):
            numbers.append(rng.choice(pair, 6))
            groups.append(f"g{g}")
    groups = np.array(groups)
    mu = dict(zip(elements, rng.normal(-3.0, 1.0, len(elements))))
    mu2 = dict(zip(elements, rng.normal(0.0, 0.3, len(elements))))
    delta = np.array([sum(mu[int(z)] for z in n) for n in numbers]) + rng.normal(0, 0.05, len(numbers))
    delta[3] = np.nan  # a structure without a DFT energy fixes neither reference
    second = np.array([sum(mu2[int(z)] for z in n) for n in numbers]) + rng.normal(0, 0.08, len(numbers))
    n = sum(len(x) for x in numbers)
    inputs = AtomInputs(np.concatenate(numbers), rng.normal(size=(n, 3)), np.repeat(np.arange(len(numbers)), 6))
    cf = cross_fit(inputs, None, numbers=numbers, delta_energy=delta, groups=groups, n_splits=12,
                   second_delta_energy=second)
    counts = np.array([[np.sum(x == z) for z in elements] for x in numbers], dtype=float)
    checked = 0
    for g in sorted(set(groups)):
        rows = np.flatnonzero(groups == g)
        keep = np.flatnonzero((groups != g) & np.isfinite(delta))
        coef, *_ = np.linalg.lstsq(counts[keep], second[keep], rcond=None)
        span = np.linalg.matrix_rank(counts[keep]) == np.linalg.matrix_rank(np.vstack([counts[keep], counts[rows]]))
        if span:
            want = np.where(np.isfinite(delta[rows]), (second[rows] - counts[rows] @ coef) / 6, np.nan)
            np.testing.assert_allclose(cf.energy_disagreement[rows], want, rtol=1e-6, atol=1e-9)
            checked += 1
        else:
            assert np.isnan(cf.energy_disagreement[rows]).all()
    assert checked >= 6
    assert np.isnan(cf.energy_sigma[3])  # no label: no residual, no σ
    assert np.isfinite(cf.energy_sigma[np.isfinite(cf.energy_errors)]).mean() > 0.9


def test_calibration_with_a_committee_predicts_with_it(chgnet, tmp_path):
    """calibrate(committee="chgnet:0.2.0") (the older CHGNet, shipped in the same wheel) stores the second model;
    the predictor runs it and its σ equal the stored force model's on inputs built here by hand."""
    from calib import datasets
    from calib.artifact import Artifact
    from calib.data.prototypes import perturbed_set
    from calib.models import load_model
    from calib.predictor import CalibratedPredictor
    from calib.workflows.calibration import calibrate
    from calib.workflows.hessian import build_hessian

    hess, _ = build_hessian(chgnet, perturbed_set(n_variants=1, seed=4), progress=False)
    lab = [a for c in ("Si", "C", "Li-F", "Mg-O", "Na-Cl") for a in datasets.load("high-energy-states", chemsys=c)[::2]]
    art = calibrate(hess, chgnet, lab, alpha=0.2, target="energy", with_forces=False, committee="chgnet:0.2.0",
                    progress=False).artifact
    art.save(tmp_path / "committee.nc")
    art = Artifact.load(tmp_path / "committee.nc")
    assert art.attrs["committee_model"] == "chgnet:0.2.0"
    assert "committee" in art.error_models.forces.terms
    test = datasets.load("high-energy-states", chemsys="Si")[1::2][:2]
    ds = CalibratedPredictor(chgnet, art).predict(test, forces=True, force_mode="none", progress=False)
    second = load_model("chgnet:0.2.0").predict(test, forces=True)
    mine = chgnet.predict(test, forces=True)
    by_hand = AtomInputs(mine.numbers, mine.forces, mine.atom_structure, second_forces=second.forces)
    # Si is a calibrated chemistry: σ carries its own variance scale r_c (1 where the calibration has none)
    r = np.nan_to_num(art.error_models.force_scale(["Si"]), nan=1.0)[0]
    np.testing.assert_allclose(ds["forces_sigma"].values, np.sqrt(r) * art.error_models.forces.sigma(by_hand),
                               rtol=1e-6)
    assert np.all(np.isfinite(ds["force_error_bound"].values))
    # the energy σ of a new compound (SiC: Si and C calibrated, the compound not) reads the energy disagreement:
    # the older CHGNet's energy minus this one's, less a per-element shift fitted here with numpy on the
    # calibration structures
    assert "committee" in art.error_models.energy.terms
    sic = datasets.load("high-energy-states", chemsys="C-Si")[:2]
    ds = CalibratedPredictor(chgnet, art).predict(sic, forces=True, force_mode="none", progress=False)
    assert list(ds["energy_class"].values) == ["new", "new"]
    zs = sorted({int(z) for a in lab for z in a.numbers})
    counts = np.array([[np.sum(a.numbers == z) for z in zs] for a in lab], dtype=float)
    cal_second = load_model("chgnet:0.2.0").predict(lab).energy - chgnet.predict(lab).energy
    mu2, *_ = np.linalg.lstsq(counts, cal_second, rcond=None)
    mine, other = chgnet.predict(sic, forces=True), load_model("chgnet:0.2.0").predict(sic)
    d = (other.energy - mine.energy - np.array([[np.sum(a.numbers == z) for z in zs] for a in sic]) @ mu2) / 8
    np.testing.assert_allclose(ds["energy_disagreement"].values, d, rtol=1e-5, atol=1e-7)
    by_hand = AtomInputs(mine.numbers, mine.forces, mine.atom_structure,
                         leverage=art.element_reference.leverage([a.numbers for a in sic]), energy_disagreement=d)
    np.testing.assert_allclose(ds["energy_sigma"].values, 8 * art.error_models.energy.sigma(by_hand), rtol=1e-5)
    # recalibrated without a committee, the artifact no longer names one (the predictor would run it for nothing)
    again = calibrate(art, chgnet, lab, alpha=0.2, target="energy", with_forces=False, progress=False).artifact
    assert "committee_model" not in again.attrs and "committee" not in again.error_models.forces.terms


def test_cli_refuses_an_unknown_committee_before_loading(tmp_path):
    from typer.testing import CliRunner

    from calib.cli.main import app

    res = CliRunner().invoke(app, ["calibrate", "x.extxyz", "--hessian", "h.nc", "-o", str(tmp_path / "o.nc"),
                                   "--committee", "no-such-model", "--json"])
    assert res.exit_code == 2
    assert "--committee no-such-model" in res.output and "unknown model" in res.output
