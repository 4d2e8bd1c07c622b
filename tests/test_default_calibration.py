"""The calibration calib ships for CHGNet 0.3.0 (calib/data/artifacts), used when --calibration is omitted."""

import json

import ase.io
import numpy as np
import pytest
from typer.testing import CliRunner

from calib.data.datasets import default_calibration


@pytest.fixture(scope="module")
def shipped():
    path = default_calibration("chgnet")
    assert path is not None, "the default artifact is missing: python datasets/default-calibration/build.py"
    return path


def test_the_shipped_artifact_is_what_its_summary_says(shipped, chgnet):
    """Built by datasets/default-calibration/build.py: CHGNet 0.3.0's weights, the Hessian of the proxy, every
    shipped high-energy and near-equilibrium label, corrections with their domain; its summary file agrees."""
    from calib.artifact import Artifact

    art = Artifact.load(shipped, model=chgnet)
    summary = json.loads(open(shipped.removesuffix(".nc") + ".json").read())
    assert art.calibrated and art.attrs["default_calibration"] == 1
    assert art.llpr.n_structures_ == summary["hessian_structures"] >= 2500
    assert art.attrs["calibration_n_structures"] == summary["calibration_structures"] >= 300
    assert len(summary["elements"]) >= 50 and len(summary["chemical_systems"]) >= 45
    em = art.error_models  # the error models of calib 0.6, cross-fitted by chemical system, and T² beside Q
    assert em is not None and em.forces is not None and em.bound is not None and em.energy is not None
    assert em.force_groups == em.energy_groups == "chemical system" and em.force_scales
    assert art.ood is not None and "Hessian" in art.ood.reference_ and art.ood.has_t2
    assert len(art.calibration_keys) == summary["calibration_structures"]
    assert len(art.corrections) >= 40 and all(np.isfinite(one.domain) for one in art.corrections.by_chemsys.values()
                                             if one.domain is not None)


def test_predict_without_calibration_uses_it_and_says_so(shipped, chgnet, tmp_path):
    from calib import CalibratedPredictor, datasets
    from calib.artifact import Artifact
    from calib.cli.main import app

    probe = datasets.load("neb")[:2]
    ase.io.write(tmp_path / "p.extxyz", probe, format="extxyz")
    r = CliRunner().invoke(app, ["predict", str(tmp_path / "p.extxyz"), "--json", "-q"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["calibration"]["default"] is True and doc["calibration"]["path"] == shipped
    ref = CalibratedPredictor(chgnet, Artifact.load(shipped)).predict(probe, progress=False)
    got = [x["energy_interval"] for x in doc["records"]]
    np.testing.assert_allclose(np.array(got).ravel(),
                               np.c_[ref["energy_low"].values, ref["energy_high"].values].ravel(), rtol=1e-9)
    r = CliRunner().invoke(app, ["predict", str(tmp_path / "p.extxyz"), "-q"])
    assert r.exit_code == 0 and r.stdout.startswith("calibration: calib's default calibration for CHGNet 0.3.0")
    r = CliRunner().invoke(app, ["predict", str(tmp_path / "p.extxyz"), "--model", "mace-small", "--json"])
    assert r.exit_code == 2 and "--calibration is required" in json.loads(r.stdout)["error"]


def test_the_calculator_defaults_to_it(shipped):
    from ase.build import bulk

    from calib import CalibratedCalculator

    atoms = bulk("NaCl", "rocksalt", 5.64)
    atoms.rattle(0.02, seed=1)
    atoms.calc = CalibratedCalculator("chgnet", uncertainties=False)
    atoms.get_potential_energy()
    res = atoms.calc.results
    assert res["calibration"] == "default" and isinstance(res["trusted"], bool)
    plain = CalibratedCalculator("chgnet", None)
    atoms.calc = plain
    atoms.get_potential_energy()
    assert plain.results["calibration"] == "none" and plain.results["trusted"] is None  # no verdict, and why
    assert "no calibration" in plain.results["trust_reason"]
