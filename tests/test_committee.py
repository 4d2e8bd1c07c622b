"""The committee term of the force error model: a second model's disagreement as an input (docs/errormodel.md)."""

import numpy as np
import pytest

from calib.uq.errormodel import AtomInputs, ForceComponentVariance, force_terms


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
    lab = [a for c in ("Si", "Li-F", "Mg-O", "Na-Cl") for a in datasets.load("high-energy-states", chemsys=c)[::2]]
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
    np.testing.assert_allclose(ds["forces_sigma"].values, art.error_models.forces.sigma(by_hand), rtol=1e-6)
    assert np.all(np.isfinite(ds["force_error_bound"].values))
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
