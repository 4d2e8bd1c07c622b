"""The spine: CalibratedPredictor, the artifact upgrade path, accumulator merge (the import layering is
tests/test_layers.py)."""

import json
import pathlib

import ase.io
import numpy as np
import pytest
from typer.testing import CliRunner

DATA = pathlib.Path(__file__).parent / "data"


def test_schema1_artifact_loads_and_predicts_as_calib_010(chgnet):
    """An artifact written by calib 0.1.0 gives the numbers 0.1.0 printed for it (tests/data/README.md)."""
    from calib.artifact import Artifact
    from calib.data.records import to_records
    from calib.predictor import CalibratedPredictor

    art = Artifact.load(DATA / "legacy_v1.nc", model=chgnet)
    assert art.stage == "calibrated" and set(art.conformal) == {"energy", "energy_difference", "forces",
                                                                 "force_norm"}
    assert art.conformal["forces"].classes.kind == "mixture" and art.conformal["energy_difference"].classes is None
    probe = ase.io.read(DATA / "legacy_v1_probe.extxyz", ":")
    # 0.1.0 printed the model's own prediction (calib 0.6 reports the corrected one where a correction applies)
    new = to_records(CalibratedPredictor(chgnet, art, correction=False).predict(probe, forces=True,
                                                                                force_mode="exact"), probe)
    old = json.loads((DATA / "legacy_v1_predict.json").read_text())
    assert len(new) == len(old)
    for o, n in zip(old, new):
        assert set(o) <= set(n)
        if o["chemsys"] == "Na-Cl":
            # the one deliberate change: 0.1.0 gave NaCl (Na and Cl absent from a reference fitted on Si and
            # LiF) a shift of 0 eV and an interval around the wrong centre; now no interval, and the reason
            assert n["energy_interval"] is None and "absent from the energy reference" in n["energy_interval_reason"]
            assert n["energy_shift"] is None and o["energy_shift"] == 0.0  # NaN: null in the JSON, None here
            o = {k: v for k, v in o.items() if k not in ("energy_interval", "energy_shift")}
        # forces and force σ come from float32 gradients whose summation order depends on the CPU (measured: 1.0e-5
        # relative on another x86-64 machine) and on the pass (one first-order autograd.grad since 0.4): compared at
        # the precision float32 sums of ~100 terms carry, 1e-4 relative; energies and energy σ agree to 1e-5
        for key, value in o.items():
            tol = 1e-4 if "force" in key else 1e-5
            if isinstance(value, float):
                assert n[key] == pytest.approx(value, rel=tol, abs=tol), key
            elif isinstance(value, list):
                np.testing.assert_allclose(n[key], value, rtol=tol, atol=tol)
            else:
                assert n[key] == value, key


@pytest.fixture(scope="module")
def calibrated_file(tmp_path_factory, si_lif_calibration):
    d = tmp_path_factory.mktemp("predictor")
    hess, before, res = si_lif_calibration
    # calibrate returns a new artifact and leaves its input as it was
    after = hess.to_dataset()
    assert hess.stage == "hessian" and not hess.conformal and hess.element_reference is None
    for name in ("alpha2", "sigma2", "force_alpha2", "force_sigma2"):
        assert float(after[name]) == float(before[name])
    assert res.artifact.stage == "calibrated" and res.artifact.llpr is not hess.llpr
    res.artifact.save(d / "CAL.nc")
    return d, res.artifact


def test_predictor_dataset_against_cli_and_brute_force(calibrated_file, chgnet):
    from calib import CalibratedPredictor, datasets
    from calib.cli.main import app
    from calib.models.gradients import feature_gradients

    d, art = calibrated_file
    probe = datasets.load("high-energy-states", chemsys="Si")[1:4:2] + datasets.load("high-energy-states",
                                                                                      chemsys="Li-F")[1:2]
    ase.io.write(d / "probe.extxyz", probe, format="extxyz")
    ds = CalibratedPredictor.from_file(d / "CAL.nc").predict(probe, forces=True)
    assert ds.sizes == {"structure": 3, "atom": sum(len(a) for a in probe), "component": 3}
    for name in ("energy", "energy_sigma", "energy_low", "energy_high", "forces", "forces_sigma", "forces_low",
                 "forces_high"):
        assert ds[name].attrs["units"] in ("eV", "eV/Å"), name
    assert ds["forces"].dims == ("atom", "component")
    assert list(ds["structure_index"].values) == [0] * 8 + [1] * 8 + [2] * 8

    # one Atoms, a pymatgen Structure and a file path are predictions of one structure / of the file
    from pymatgen.io.ase import AseAtomsAdaptor

    predictor = CalibratedPredictor(chgnet, art)
    one = predictor.predict(probe[1])
    assert one.sizes["structure"] == 1 and float(one.energy[0]) == pytest.approx(float(ds.energy[1]), rel=1e-6)
    pmg = predictor.predict(AseAtomsAdaptor.get_structure(probe[1]))
    assert float(pmg.energy_sigma[0]) == pytest.approx(float(one.energy_sigma[0]), rel=1e-5)
    assert predictor.predict(d / "probe.extxyz").sizes["structure"] == 3

    # the CLI prints the same numbers
    r = CliRunner().invoke(app, ["predict", str(d / "probe.extxyz"), "--calibration", str(d / "CAL.nc"),
                                 "--forces", "--json"])
    assert r.exit_code == 0, r.output
    for k, rec in enumerate(json.loads(r.stdout)["records"]):
        assert rec["energy"] == pytest.approx(float(ds.energy[k]), rel=1e-9)
        assert rec["energy_sigma"] == pytest.approx(float(ds.energy_sigma[k]), rel=1e-9)
        assert rec["energy_interval"] == pytest.approx([float(ds.energy_low[k]), float(ds.energy_high[k])])
        assert rec["max_force_sigma"] == pytest.approx(float(ds.forces_sigma[ds.structure_index == k].max()))

    # LLPR σ of forces by a second path: the full covariance matrix Σ_F = (H + ς²_F I)⁻¹ instead of the eigen-sum
    L = art.llpr
    cov = np.linalg.inv(L.hessian_ + L.force_sigma2_ * np.eye(L.n_features))
    grads = feature_gradients(chgnet, probe, np.eye(L.n_features))
    brute = np.concatenate([np.sqrt(L.force_alpha2_ * len(a) ** 2 * np.einsum("dax,de,eax->ax", g, cov, g))
                            for g, a in zip(grads, probe)])
    # CHGNet's graph is float32 and the predictor's VJPs project onto u_k inside it, the brute force afterwards
    # in float64: the two agree to float32 rounding under cancellation (measured 1e-4 relative at most)
    np.testing.assert_allclose(ds.forces_sigma_llpr.values, brute, rtol=1e-3)
    # intervals: the element's conformal quantile times σ around the model's force
    cal = art.conformal["forces"]
    symbols = np.concatenate([a.get_chemical_symbols() for a in probe])
    q = np.array([cal.quantiles_[s] for s in symbols])[:, None]
    sig = ds.forces_sigma.values
    np.testing.assert_allclose((ds.forces_high - ds.forces).values, q * sig, rtol=1e-9)
    np.testing.assert_allclose((ds.forces - ds.forces_low).values, q * sig, rtol=1e-9)


def test_stream_equals_whole_and_keeps_skipped_rows(calibrated_file, chgnet):
    from calib import CalibratedPredictor, datasets

    _, art = calibrated_file
    structs = datasets.load("high-energy-states", chemsys="Si")[:5]
    bad = structs[2].copy()
    bad.positions[0, 0] = np.nan
    bad.info["name"] = "nan-position"
    structs = structs[:2] + [bad] + structs[2:]
    predictor = CalibratedPredictor(chgnet, art)
    whole = predictor.predict(structs, forces=True, force_mode="approx", batch_size=4)
    parts = list(predictor.iter_predict(iter(structs), forces=True, force_mode="approx", batch_size=2))
    assert [list(p.structure.values) for p in parts] == [[0, 1], [2, 3], [4, 5]]
    assert list(whole.structure.values) == list(range(6))
    assert whole.error.values[2] and "non-finite" in str(whole.error.values[2])
    assert whole.name.values[2] == "nan-position" and np.isnan(whole.energy.values[2])
    assert whole.n_atoms.values[2] == 0 and 2 not in set(whole.structure_index.values)
    for name in ("energy", "energy_sigma", "energy_low", "max_force_sigma"):
        np.testing.assert_allclose(np.concatenate([p[name].values for p in parts]), whole[name].values,
                                   rtol=1e-6, equal_nan=True)
    np.testing.assert_allclose(np.concatenate([p.forces_sigma.values for p in parts]), whole.forces_sigma.values,
                               rtol=1e-6)


def test_merged_accumulators_equal_serial_sum(chgnet):
    from calib.data.prototypes import perturbed_set
    from calib.uq.hessian import HessianAccumulator
    from calib.workflows.accumulate import accumulate_hessian

    structs = perturbed_set(n_variants=1, seed=11)[:9]
    serial = accumulate_hessian(chgnet, structs, batch_size=4, progress=False)
    parts = []
    for shard in (structs[:4], structs[4:]):
        acc = HessianAccumulator(chgnet.n_features)
        for k in range(0, len(shard), 3):
            acc.update(chgnet.features(shard[k:k + 3]))
        parts.append(acc)
    merged = parts[0].merge(parts[1])
    assert merged.n_structures == 9 and parts[0].n_structures == 4  # merge builds a new accumulator
    H = merged.hessian()
    assert np.abs(H - serial.hessian).max() <= 1e-12 * np.abs(serial.hessian).max()
    with pytest.raises(ValueError, match="force weights"):
        parts[0].merge(HessianAccumulator(chgnet.n_features, force_weight=1.0))


def test_library_softening_and_corrections_without_the_cli(chgnet, tmp_path):
    """measure_softening through the predictor equals fit_softening on the model's own forces; the
    stored correction is applied by the predictor."""
    from calib import CalibratedPredictor, datasets
    from calib.artifact import Artifact
    from calib.data.structures import get_forces
    from calib.softening.scale import fit_softening
    from calib.workflows.softening import measure_softening, store_corrections

    lab = datasets.load("high-energy-states", chemsys="Li-F")[:4]
    run = measure_softening(chgnet, lab, n_bootstrap=100)
    pred = chgnet.predict(lab, forces=True)
    direct = fit_softening([pred.forces_of(i) for i in range(4)], [get_forces(a) for a in lab], chemsys="Li-F",
                           n_bootstrap=100)
    assert run.results["Li-F"].softening_scale == pytest.approx(direct.softening_scale, rel=1e-6)
    assert run.results["Li-F"].cmae_loo == pytest.approx(direct.cmae_loo, rel=1e-5)
    paths = run.parity_plots(tmp_path / "parity")
    assert len(paths) == 1 and pathlib.Path(paths[0]).stat().st_size > 5_000

    art = Artifact.load(DATA / "legacy_v1.nc", model=chgnet)
    new = store_corrections(art, run.results)
    assert art.corrections.factor("Li-F") != new.corrections.factor("Li-F")  # the input is unchanged
    c, anchor = new.corrections.factor("Li-F")
    ds = CalibratedPredictor(chgnet, new).predict(lab[:2], forces=True, force_mode="none")
    n = ds.n_atoms.values
    assert list(ds.prediction.values) == ["corrected"] * 2  # reported: the corrected prediction ...
    np.testing.assert_allclose(ds.energy_model.values, pred.energy[:2], atol=1e-4)  # ... beside the model's own
    np.testing.assert_allclose(ds.energy_corrected.values, n * anchor + c * (ds.energy_model.values - n * anchor))
    np.testing.assert_allclose(ds.energy.values, ds.energy_corrected.values)
    np.testing.assert_allclose(ds.forces_corrected.values, c * ds.forces_model.values)
    np.testing.assert_allclose(ds.forces.values, ds.forces_corrected.values)
    raw = CalibratedPredictor(chgnet, new, correction=False).predict(lab[:2], forces=True, force_mode="none")
    assert list(raw.prediction.values) == ["raw"] * 2 and "energy_model" not in raw
    np.testing.assert_allclose(raw.energy.values, ds.energy_model.values)


def test_gga_u_species_get_their_own_offsets():
    """Materials Project's GGA+U elements in an oxide or fluoride are a species of their own ("Fe (U)"); a metal,
    a sulfide and a U-free fluoride keep plain offsets. Offsets drawn per species are recovered exactly where the
    calibration compositions fix them."""
    from calib.uq.reference import ElementReference, reference_species

    assert list(reference_species([26, 26, 8, 8])) == [1026, 1026, 8, 8]
    assert list(reference_species([26, 26])) == [26, 26] and list(reference_species([26, 16])) == [26, 16]
    assert list(reference_species([3, 27, 8, 8])) == [3, 1027, 8, 8] and list(reference_species([19, 12, 9])) == \
        [19, 12, 9]
    mu = {26: -8.2, 1026: -6.6, 8: -4.9, 12: -1.6, 3: -1.9}
    cal = [[26, 26], [12, 8], [3, 3, 8], [26, 8], [12, 12, 8, 8]]
    delta = np.array([sum(mu[int(z)] for z in reference_species(n)) for n in cal])
    ref = ElementReference().fit(cal, delta)
    assert "Fe (U)" in ref.elements_ and "Fe" in ref.elements_
    probe = [[26, 26, 26, 26], [26, 26, 8, 8], [3, 3, 8, 12, 8]]
    want = [sum(mu[int(z)] for z in reference_species(n)) for n in probe]
    ok, _ = ref.determined(probe)
    assert ok.all()
    np.testing.assert_allclose(ref.predict(probe), want, atol=1e-9)
    assert ref.species([26, 8]) == ["Fe (U)"] and ref.species([26]) == []


def test_reference_determined_only_where_the_calibration_compositions_fix_it():
    from calib.uq.reference import ElementReference

    mu = {3: -0.3, 9: 0.4, 11: 0.1, 17: 0.5}
    cal = [[3, 9], [3, 3, 9, 9], [11, 17], [11, 11, 17, 17]]  # LiF and NaCl: fixes μ_Li + μ_F and μ_Na + μ_Cl only
    ref = ElementReference().fit(cal, np.array([sum(mu[z] for z in n) for n in cal]))
    ok, why = ref.determined([[3, 9, 3, 9], [11, 17], [3, 17], [11, 9, 3, 17], [3, 8]])
    assert list(ok) == [True, True, False, True, False]
    assert "LiCl is not determined" in why[2] and why[3] == ""  # LiF + NaCl in one cell is fixed
    assert "element(s) O absent" in why[4]
    # where determined, the shift is right whatever split of μ lstsq chose
    np.testing.assert_allclose(ref.predict([[11, 9, 3, 17]]), [sum(mu.values())], atol=1e-12)


def test_cli_unseen_element_gets_no_interval_and_others_keep_theirs(calibrated_file):
    """Calibrated on Si and Li-F: an NaCl frame gets energy_interval null with the reason, the rest intervals."""
    from calib import datasets
    from calib.cli.main import app

    d, _ = calibrated_file
    mixed = (datasets.load("high-energy-states", chemsys="Si")[1:2] + datasets.load("high-energy-states",
                                                                                     chemsys="Na-Cl")[1:2]
             + datasets.load("high-energy-states", chemsys="Li-F")[1:2])
    ase.io.write(d / "mixed.extxyz", mixed, format="extxyz")
    r = CliRunner().invoke(app, ["predict", str(d / "mixed.extxyz"), "--calibration", str(d / "CAL.nc"), "--json"])
    assert r.exit_code == 0, r.output
    si, nacl, lif = json.loads(r.stdout)["records"]
    assert nacl["energy_interval"] is None and "Cl, Na absent from the energy reference" in nacl[
        "energy_interval_reason"]
    assert nacl["energy_sigma"] > 0  # the model's own σ is still reported
    for rec in (si, lif):
        lo, hi = rec["energy_interval"]
        assert lo < rec["energy"] + rec["energy_shift"] < hi and "energy_interval_reason" not in rec
    r = CliRunner().invoke(app, ["predict", str(d / "mixed.extxyz"), "--calibration", str(d / "CAL.nc")])
    assert r.exit_code == 0 and "absent from the energy reference" in r.stdout
    r = CliRunner().invoke(app, ["evaluate", str(d / "mixed.extxyz"), "--calibration", str(d / "CAL.nc"),
                                 "--no-forces", "--json"])
    doc = json.loads(r.stdout)
    assert r.exit_code == 0 and doc["n_without_interval"] == 1 and doc["energy"]["n"] == 2
