"""The same pipeline on every backend (CHGNet 0.3.0, the shipped small MACE, SevenNet-0): LLPR, conformal,
softening, decisions and screening, each checked against an independent computation."""

import numpy as np
import pytest
from conftest import expected_decision

from calib.models import shipped_mace_path

BACKENDS = ["chgnet", pytest.param("mace-small", marks=pytest.mark.skipif(
    not __import__("os").path.exists(shipped_mace_path()), reason="shipped MACE model missing")),
    pytest.param("sevennet", marks=pytest.mark.sevennet)]
#: the --model an artifact of each backend asks for
HINTS = {"chgnet": "--model chgnet:0.3.0", "mace-small": "--model mace:mace-small",
         "sevennet": "--model sevennet:SevenNet_0__11Jul2024"}


@pytest.fixture(scope="module", params=BACKENDS)
def setup(request, tmp_path_factory, chgnet):
    from calib import datasets
    from calib.data.prototypes import perturbed_set
    from calib.models import load_model
    from calib.workflows.calibration import calibrate
    from calib.workflows.hessian import build_hessian

    if request.param == "mace-small":
        pytest.importorskip("mace")
    if request.param == "sevennet":
        pytest.importorskip("sevenn")
    model = chgnet if request.param == "chgnet" else load_model(request.param)
    lab = {c: datasets.load("high-energy-states", chemsys=c) for c in ("Si", "Li-F", "Al")}
    cal = [a for v in lab.values() for a in v[::2]]
    test = [a for v in lab.values() for a in v[1::2]]
    hess, _ = build_hessian(model, perturbed_set(n_variants=1, seed=4), progress=False)
    res = calibrate(hess, model, cal, alpha=0.1, progress=False)
    path = tmp_path_factory.mktemp(request.param) / "cal.nc"
    res.artifact.save(path)
    return request.param, model, res, test, path


@pytest.mark.slow
def test_llpr_sigma_and_conformal_forces(setup):
    from calib.data.structures import get_forces
    from calib.predictor import CalibratedPredictor
    from calib.workflows.labelled import predict_labelled

    name, model, res, test, _ = setup
    L = res.artifact.llpr
    lp = predict_labelled(CalibratedPredictor(model, res.artifact), test, forces=True, force_mode="exact")
    ok = lp.ok
    f = model.predict(test, forces=False).features
    s = 1.0 if model.energy_convention == "total" else ok["n_atoms"].values
    sigma = np.sqrt(L.alpha2_ * s**2 * np.einsum("sd,de,se->s", f, L.covariance(), f))
    np.testing.assert_allclose(ok["energy_sigma_llpr"].values, sigma, rtol=1e-8)
    ref = np.concatenate([get_forces(a) for a in test])
    inside = (ok["forces_low"].values <= ref) & (ref <= ok["forces_high"].values)
    assert 0.75 <= inside.mean() <= 1.0, (name, inside.mean())  # nominal 0.9, 15 held-out structures


def test_softening_slope_is_the_least_squares_ratio(setup):
    from calib.data.structures import get_forces
    from calib.softening.scale import fit_softening_by_chemsys

    _, model, _, test, _ = setup
    pred = model.predict(test, forces=True)
    mf = [pred.forces_of(k) for k in range(len(test))]
    rf = [get_forces(a) for a in test]
    res = fit_softening_by_chemsys(pred.chemsys, mf, rf, n_bootstrap=200)
    for chem in set(pred.chemsys):
        idx = [k for k, c in enumerate(pred.chemsys) if c == chem]
        f = np.concatenate([mf[k].ravel() for k in idx])
        g = np.concatenate([rf[k].ravel() for k in idx])
        assert res[chem].softening_scale == pytest.approx(f @ g / (g @ g), rel=1e-12)
        lo, hi = res[chem].softening_ci
        assert lo <= res[chem].softening_scale <= hi


def test_decide_and_screen(setup, tmp_path):
    from calib.workflows.decisions import decide
    from calib.workflows.screen import read_results, screen

    name, model, res, test, path = setup
    decisions, _ = decide(res.artifact, model, test, n_bootstrap=200)
    assert sorted(d.chemsys for d in decisions) == ["Al", "Li-F", "Si"]
    for d in decisions:  # the rules applied to the numbers measured (thresholds: decide's defaults)
        assert d.decision == expected_decision(d.as_dict()), d.as_dict()
    summary = screen(test, path, tmp_path / "s.nc", model=model, progress=False)
    ds = read_results(tmp_path / "s.nc")
    assert summary["n_total"] == len(test) == len(ds["structure"]) and summary["n_failed"] == 0
    np.testing.assert_allclose(ds["energy"].values, model.predict(test, forces=False).energy, rtol=1e-10)


def test_neb_band(setup):
    """Relative image energies of the shipped LiF path equal the model's own differences; the barrier
    σ equals its closed form a·C·a from the band covariance."""
    from calib import datasets
    from calib.predictor import CalibratedPredictor
    from calib.workflows.neb import band, barrier_weights

    _, model, res, _, _ = setup
    images = datasets.load("neb")
    ds = band(CalibratedPredictor(model, res.artifact), images)
    e = model.predict(images, forces=False).energy
    raw = ds.sel(variant="raw")
    # float32 models: the pass that also takes forces (the error models need them) differs by ~1e-5 eV
    np.testing.assert_allclose(raw["energy"].values, e - e[0], atol=1e-4)
    C = raw["covariance"].values
    m = int(np.argmax(raw["energy"].values))
    a = barrier_weights(m, len(images) - 1)["forward"]
    fwd = raw.sel(barrier="forward")
    assert fwd["barrier_sigma"].values == pytest.approx(np.sqrt(a @ C @ a), rel=1e-10)
    assert fwd["barrier_low"].values < fwd["barrier_height"].values < fwd["barrier_high"].values


def test_cli_takes_the_artifacts_model_by_default(setup, tmp_path):
    """No --model: the model the artifact names (its energies equal that model's); another model is refused
    with the --model that fits."""
    import json

    import ase.io
    from typer.testing import CliRunner

    from calib.cli.main import app

    name, model, _, test, path = setup
    ase.io.write(tmp_path / "probe.extxyz", test[:2], format="extxyz")
    r = CliRunner().invoke(app, ["predict", str(tmp_path / "probe.extxyz"), "--calibration", str(path), "--json",
                                 "-q"])
    assert r.exit_code == 0, r.output
    got = [rec["energy"] for rec in json.loads(r.stdout)["records"]]
    np.testing.assert_allclose(got, model.predict(test[:2], forces=False).energy, rtol=1e-6)
    other = "mace-small" if name == "chgnet" else "chgnet"
    r = CliRunner().invoke(app, ["predict", str(tmp_path / "probe.extxyz"), "--calibration", str(path), "--json",
                                 "--model", other])
    doc = json.loads(r.stdout)
    want = HINTS[name]
    assert r.exit_code == 1 and doc["kind"] == "artifact" and want in doc["error"], doc
