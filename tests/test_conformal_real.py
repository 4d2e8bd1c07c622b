"""Conformal calibration on the shipped GPAW data with CHGNet + LLPR, split by structure."""

import json
import math

import ase.io
import numpy as np
import pytest
from scipy.stats import norm, spearmanr
from typer.testing import CliRunner

from calib import datasets
from calib.cli.main import app

ALPHA = 0.1


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, chgnet):
    """Hessian on near-equilibrium prototypes; calibrated (α = 0.1, classes by element) on half the structures."""
    from calib.data.prototypes import perturbed_set
    from calib.workflows.hessian import build_hessian

    d = tmp_path_factory.mktemp("cp")
    art, _ = build_hessian(chgnet, perturbed_set(n_variants=2, seed=3), batch_size=8, progress=False)
    art.save(d / "H.nc")
    data = datasets.load("high-energy-states")
    perm = np.random.default_rng(0).permutation(len(data))
    cal, test = [data[i] for i in perm[: len(data) // 2]], [data[i] for i in perm[len(data) // 2:]]
    ase.io.write(d / "cal.extxyz", cal, format="extxyz")
    ase.io.write(d / "test.extxyz", test, format="extxyz")
    r = run("calibrate", d / "cal.extxyz", "--hessian", d / "H.nc", "-o", d / "CAL.nc",
            "--alpha", ALPHA, "--classes", "element", "--json")
    assert r.exit_code == 0, r.output
    return d, json.loads(r.stdout), test


@pytest.mark.slow
def test_heldout_force_coverage_and_metrics_by_hand(calibrated, chgnet):
    from calib.artifact import Artifact
    from calib.workflows.evaluation import evaluate

    d, summary, test = calibrated
    art = Artifact.load(d / "CAL.nc", model=chgnet)
    assert set(art.conformal) == {"energy", "energy_difference", "energy_difference_corrected", "forces",
                                  "force_norm", "forces_corrected"}
    ev = evaluate(art, chgnet, test, return_points=True)
    # the criterion: held-out force coverage at α = 0.1 within ±5 % of nominal
    assert abs(ev.targets["forces"].coverage - (1 - ALPHA)) <= 0.05, ev.targets["forces"]
    p = ev.points["forces"]
    cal = art.conformal["forces"]
    # the per-element quantile recomputed from the stored calibration points by the textbook rule
    for el, size in cal.class_sizes_.items():
        if el in cal.fallback_:
            continue
        assert size >= 30
    k = math.ceil((cal.n_calibration_ + 1) * (1 - ALPHA))
    assert cal.quantile_ == pytest.approx(cal.scores_[k - 1])
    e, s, h = p["errors"], p["sigma"], p["half_width"]
    assert ev.targets["forces"].coverage == pytest.approx(np.mean(np.abs(e) <= h))
    assert ev.targets["forces"].mean_width == pytest.approx(np.mean(2 * h))
    assert ev.targets["forces"].nll == pytest.approx(np.mean(-norm.logpdf(e, scale=s)))
    assert ev.targets["forces"].spearman == pytest.approx(spearmanr(s, np.abs(e)).statistic)
    for el, pc in ev.targets["forces"].per_class.items():
        m = p["classes"] == el
        assert pc["n"] == m.sum() and pc["coverage"] == pytest.approx(np.mean(np.abs(e[m]) <= h[m]))
    # energies: Mondrian over "seen" and "new" compositions (the error models' classes, whatever --classes says);
    # a class with fewer than 30 calibration structures falls back to the global quantile, and says so
    ecal = art.conformal["energy"]
    assert set(ecal.classes_) == {"seen", "new"}
    assert set(summary["conformal_fallback"]["energy"]) == {c for c, n in ecal.class_sizes_.items() if n < 30}


@pytest.mark.slow
def test_cli_evaluate_json_plots_and_predict_intervals(calibrated):
    d, _, test = calibrated
    ase.io.write(d / "few.extxyz", test[:8], format="extxyz")
    r = run("evaluate", d / "few.extxyz", "--calibration", d / "CAL.nc", "--json", "--plot", d / "plots")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["alpha"] == ALPHA
    for target in ("energy", "forces"):
        assert {"coverage", "mean_width", "nll", "ence", "miscalibration_area", "spearman",
                "per_class"} <= set(doc[target])
    for path in doc["plots"]:
        assert (d / "plots" / path.split("/")[-1]).stat().st_size > 5_000
    assert any("calibration_curve" in p for p in doc["plots"])
    r = run("predict", d / "few.extxyz", "--calibration", d / "CAL.nc", "--json")
    assert r.exit_code == 0, r.output
    for rec in json.loads(r.stdout)["records"]:
        lo, hi = rec["energy_interval"]
        centre = rec["energy"] + rec["energy_shift"]
        assert lo < centre < hi and hi - lo == pytest.approx(2 * (centre - lo))
    # a Hessian-only artifact cannot be evaluated, and the message says why
    r = run("evaluate", d / "few.extxyz", "--calibration", d / "H.nc", "--json", "--no-forces")
    assert r.exit_code == 1 and "Hessian only" in json.loads(r.stdout)["error"]
