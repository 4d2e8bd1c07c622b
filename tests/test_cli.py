"""The `calib` command end to end, on real CHGNet and the shipped GPAW labels."""

import json

import ase.io
import numpy as np
import pytest
from typer.testing import CliRunner

from calib import datasets
from calib.cli.main import app

runner = CliRunner()


def run(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from calib.data.prototypes import perturbed_set

    d = tmp_path_factory.mktemp("cli")
    ase.io.write(d / "eq.extxyz", perturbed_set(n_variants=2, seed=5), format="extxyz")
    labelled = datasets.load("high-energy-states", chemsys="Si")[:6]
    bad = labelled[0].copy()
    bad.positions[1] = bad.positions[0] + [0.2, 0, 0]  # 0.2 Å apart; keeps its (now wrong) labels
    bad.calc = labelled[0].calc
    bad.info["name"] = "squashed"
    ase.io.write(d / "lab.extxyz", labelled + [bad], format="extxyz")
    return d


def test_hessian_calibrate_predict(files, chgnet):
    d = files
    r = run("hessian", d / "eq.extxyz", "-o", d / "H.nc", "--batch-size", 8, "--json")
    assert r.exit_code == 0, r.output
    h = json.loads(r.stdout)
    assert h["n_structures"] == 34 and h["n_features"] == 64 and 0 < h["rank"] < 64

    r = run("predict", d / "lab.extxyz", "--calibration", d / "H.nc", "--json")
    assert r.exit_code == 1 and "Hessian only" in json.loads(r.stdout)["error"]

    r = run("calibrate", d / "lab.extxyz", "--hessian", d / "H.nc", "-o", d / "cal.nc", "--json")
    assert r.exit_code == 0, r.output
    c = json.loads(r.stdout)
    assert c["n_structures"] == 6 and c["alpha2"] > 0 and c["sigma2"] > 0
    assert [s["index"] for s in c["skipped"]] == [6] and "closer than 0.5" in c["skipped"][0]["problem"]

    r = run("predict", d / "lab.extxyz", "--calibration", d / "cal.nc", "--forces", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)["records"]
    assert [x["index"] for x in out] == list(range(7))
    assert out[6]["name"] == "squashed" and "closer than 0.5" in out[6]["error"] and "energy" not in out[6]
    recs = out[:6]
    assert {"index", "chemsys", "energy", "energy_sigma", "max_force_sigma"} <= set(recs[0])
    assert recs[0]["chemsys"] == "Si"
    # the numbers are those of the library path
    from calib.artifact import Artifact

    structs = ase.io.read(d / "lab.extxyz", ":6")
    pred = chgnet.predict(structs, forces=False)
    art = Artifact.load(d / "cal.nc")
    np.testing.assert_allclose([x["energy"] for x in recs], pred.energy, atol=1e-4)
    np.testing.assert_allclose([x["energy_sigma_llpr"] for x in recs],
                               art.llpr.energy_sigma(pred.features, pred.n_atoms), rtol=1e-6)
    from calib import CalibratedPredictor

    lib = CalibratedPredictor(chgnet, art).predict(structs, progress=False)  # σ of the error model: the library's
    np.testing.assert_allclose([x["energy_sigma"] for x in recs], lib["energy_sigma"].values, rtol=1e-6)
    assert all(x["max_force_sigma"] > 0 for x in recs)

    r = run("predict", d / "lab.extxyz", "--calibration", d / "cal.nc")
    assert r.exit_code == 0 and "Si-md0" in r.stdout and "skipped 1" in r.output


def test_missing_file_and_bad_model(tmp_path):
    r = run("hessian", tmp_path / "none.xyz", "-o", tmp_path / "H.nc", "--json")
    assert r.exit_code == 1 and "not found" in json.loads(r.stdout)["error"]
    ase.io.write(tmp_path / "x.extxyz", datasets.load("high-energy-states", chemsys="Si")[:1])
    r = run("hessian", tmp_path / "x.extxyz", "-o", tmp_path / "H.nc", "--model", "nonsense", "--json")
    assert r.exit_code == 2 and "unknown model 'nonsense'" in json.loads(r.stdout)["error"]


@pytest.mark.slow
def test_demo(tmp_path):
    r = run("demo", "--out", tmp_path, "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["calibrated"] and res["rank"] >= 1
    assert len(res["records"]) >= 4
    assert all(x["energy_sigma"] > 0 and np.isfinite(x["energy_error"]) for x in res["records"])
    # the printed interval coverage, recomputed from the records: reference energy = model + shift + error
    inside = [x["energy_interval"][0] <= x["energy"] + x["energy_shift"] + x["energy_error"] <= x["energy_interval"][1]
              for x in res["records"] if x["energy_interval"] is not None]
    assert res["heldout_interval_coverage"]["energy"] == pytest.approx(np.mean(inside))
    assert 0 < res["heldout_interval_coverage"]["forces"] <= 1
    assert (tmp_path / "calibration.nc").exists()


def test_calibrate_energy_only_without_force_gradients(chgnet):
    from calib.data.prototypes import perturbed_set
    from calib.workflows.calibration import calibrate
    from calib.workflows.hessian import build_hessian

    art, _ = build_hessian(chgnet, perturbed_set(n_variants=1, seed=2), progress=False)
    lab = datasets.load("high-energy-states", chemsys="Si")[:4]
    res = calibrate(art, chgnet, lab, target="energy", with_forces=False, progress=False)
    assert "force_nll" not in res.summary.as_dict() and res.summary.alpha2 > 0
    with pytest.raises(ValueError, match="needs force gradients"):
        calibrate(art, chgnet, lab, target="forces", with_forces=False, progress=False)
