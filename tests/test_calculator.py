"""CalibratedCalculator: the plain model's numbers, σ in results, the correction, and a real ASE NEB."""

import pathlib

import numpy as np
import pytest
from ase.build import bulk

DATA = pathlib.Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def plain(chgnet):
    from chgnet.model.dynamics import CHGNetCalculator

    return CHGNetCalculator(model=chgnet.model, use_device="cpu")


def test_equals_chgnets_own_calculator_and_reports_sigma(chgnet, plain):
    from calib import CalibratedCalculator
    from calib.artifact import Artifact
    from calib.predictor import CalibratedPredictor

    art = Artifact.load(DATA / "legacy_v1.nc", model=chgnet)
    predictor = CalibratedPredictor(chgnet, art)
    atoms = bulk("Si", "diamond", 5.43, cubic=True)
    atoms.positions += np.random.default_rng(0).normal(0, 0.05, atoms.positions.shape)
    ref = atoms.copy()
    ref.calc = plain
    for uncertainties in (False, True):
        a = atoms.copy()
        a.calc = CalibratedCalculator(predictor=predictor, correction=False, uncertainties=uncertainties)
        assert a.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-4)
        np.testing.assert_allclose(a.get_forces(), ref.get_forces(), atol=1e-4)
        np.testing.assert_allclose(a.get_stress(), ref.get_stress(), atol=1e-5)
        res = a.calc.results
        assert res["corrected"] is False and ("energy_uncertainty" in res) == uncertainties
    ds = predictor.raw().predict(atoms, forces=True)  # correction=False: the model's own prediction
    assert res["energy_uncertainty"] == pytest.approx(float(ds.energy_sigma[0]))
    np.testing.assert_allclose(res["forces_uncertainty"], ds.forces_sigma.values)
    assert res["energy_interval"] == pytest.approx((float(ds.energy_low[0]), float(ds.energy_high[0])))

    # with the stored Si correction: E_anchor + c (E − E_anchor), c·F, c·σ_stress; σ unchanged
    c, anchor = art.corrections.factor("Si")
    a = atoms.copy()
    a.calc = CalibratedCalculator(predictor=predictor, uncertainties=False)
    e, n = ref.get_potential_energy(), len(atoms)
    assert a.get_potential_energy() == pytest.approx(n * anchor + c * (e - n * anchor), abs=2e-4)
    np.testing.assert_allclose(a.get_forces(), c * ref.get_forces(), atol=2e-4)
    np.testing.assert_allclose(a.get_stress(), c * ref.get_stress(), atol=2e-5)
    assert a.calc.results["corrected"] and a.calc.results["correction"] == c
    assert a.calc.results["prediction"] == "corrected"
    assert a.calc.results["uncorrected_energy"] == pytest.approx(e, abs=2e-4)
    # the same choice as calib predict's default: the predictor reports the corrected energy too
    assert float(predictor.predict(atoms).energy[0]) == pytest.approx(a.get_potential_energy(), abs=1e-6)


def test_neb_relaxes_with_the_calculator_and_images_share_one_model(chgnet, plain, tmp_path):
    """A climbing-image NEB of an Al vacancy hop (7 atoms, 3 movable images) converges with ase.mep.NEB;
    the image energies equal the plain model's on the final path, and the σ of each image is reported."""
    from ase.mep import NEB
    from ase.optimize import FIRE

    from calib import CalibratedCalculator
    from calib.artifact import Artifact
    from calib.workflows.neb import vacancy_hop

    Artifact.load(DATA / "legacy_v1.nc", model=chgnet).save(tmp_path / "CAL.nc")
    cell = bulk("Al", "fcc", 4.04, cubic=True) * (2, 1, 1)
    initial, final = vacancy_hop(cell)
    # the hopping atom lands on the vacant site: a nearest-neighbour distance a/√2 away
    moved = np.linalg.norm(final.positions - initial.positions, axis=1)
    assert np.sort(moved)[-1] == pytest.approx(4.04 / np.sqrt(2)) and np.sort(moved)[-2] == 0
    assert np.min(np.linalg.norm(final.positions[moved > 0] - cell.positions[0], axis=1)) < 1e-9
    calcs = [CalibratedCalculator("chgnet", tmp_path / "CAL.nc", uncertainties=False) for _ in range(5)]
    assert all(c.predictor is calcs[0].predictor for c in calcs)  # one model and artifact for all images
    for end, calc in ((initial, calcs[0]), (final, calcs[4])):
        end.calc = calc
        FIRE(end, logfile=None).run(fmax=0.02, steps=200)
    images = [initial] + [initial.copy() for _ in range(3)] + [final]
    for im, calc in zip(images[1:4], calcs[1:4]):
        im.calc = calc
    neb = NEB(images, climb=True)
    neb.interpolate(mic=True)
    assert FIRE(neb, logfile=None).run(fmax=0.05, steps=400)
    energies = [im.get_potential_energy() for im in images]
    for im, e in zip(images, energies):
        ref = im.copy()
        ref.calc = plain
        assert e == pytest.approx(ref.get_potential_energy(), abs=1e-4)  # Al is not corrected: plain energies
    assert 0 < int(np.argmax(energies)) < 4 and max(energies) - energies[0] > 0.05
    with_sigma = CalibratedCalculator("chgnet", tmp_path / "CAL.nc", force_mode="approx")
    saddle = images[int(np.argmax(energies))].copy()
    saddle.calc = with_sigma
    saddle.get_potential_energy()
    assert with_sigma.results["energy_uncertainty"] > 0 and with_sigma.results["forces_uncertainty"].shape == (7, 3)
    assert with_sigma.results["energy_interval"] is None  # Al is absent from this artifact's reference


def test_runs_in_ase_md_with_sigma_in_results(chgnet):
    """Velocity Verlet for a few steps: the calculator is an ordinary ASE calculator there too."""
    from ase import units
    from ase.md.verlet import VelocityVerlet

    from calib import CalibratedCalculator
    from calib.artifact import Artifact
    from calib.predictor import CalibratedPredictor

    predictor = CalibratedPredictor(chgnet, Artifact.load(DATA / "legacy_v1.nc", model=chgnet))
    atoms = bulk("Si", "diamond", 5.43, cubic=True)
    atoms.positions += np.random.default_rng(1).normal(0, 0.05, atoms.positions.shape)
    atoms.calc = CalibratedCalculator(predictor=predictor, correction=False, force_mode="approx")
    e0 = atoms.get_total_energy()
    VelocityVerlet(atoms, 1.0 * units.fs).run(5)
    assert abs(atoms.get_total_energy() - e0) < 0.02 * len(atoms)  # energy is conserved over 5 fs
    assert atoms.calc.results["energy_uncertainty"] > 0 and atoms.calc.results["forces_uncertainty"].shape == (8, 3)


def test_per_atom_keys_are_the_prediction_s_by_a_second_path(chgnet):
    """``energies_uncertainty`` is the predictor's per-atom LLPR σ and ``forces_error_bound`` each atom's share of
    the structure bound, recomputed here from ``calib predict``'s columns: U × max_c σ_ac ÷ max σ."""
    from calib import CalibratedCalculator
    from calib.predictor import CalibratedPredictor

    predictor = CalibratedPredictor.default(model=chgnet)
    atoms = bulk("GaAs", "zincblende", 5.75, cubic=True)
    atoms.positions += np.random.default_rng(1).normal(0, 0.08, atoms.positions.shape)
    a = atoms.copy()
    a.calc = CalibratedCalculator(predictor=predictor)
    a.get_potential_energy()
    res = a.calc.results
    ds = predictor.predict(atoms, forces=True, force_mode="none")
    np.testing.assert_allclose(res["energies_uncertainty"], ds["local_energy_sigma"].values, rtol=1e-12)
    sig = ds["forces_sigma"].values.max(axis=1)
    expect = float(ds["force_error_bound"][0]) * sig / sig.max()
    np.testing.assert_allclose(res["forces_error_bound"], expect, rtol=1e-10)
    assert res["forces_error_bound"].shape == (len(atoms),)
    assert res["forces_error_bound"].max() == pytest.approx(res["force_error_bound"], rel=1e-12)
    b = atoms.copy()
    b.calc = CalibratedCalculator(predictor=predictor, uncertainties=False)
    b.get_potential_energy()
    assert "energies_uncertainty" not in b.calc.results and "forces_error_bound" in b.calc.results  # the verdict's
