"""The per-chemistry decision on constructed cases, the Q-residual detector, and `calib decide`."""

import json

import ase.io
import numpy as np
import pytest
from typer.testing import CliRunner

from calib.softening.decide import DecisionRules, decide_chemistry, farthest_point_ranking
from calib.softening.scale import fit_softening
from calib.uq.ood import QResidualDetector


def _forces(rng, s, noise, n_struct=12, n_atoms=8):
    ref = [rng.normal(0, 1.0, (n_atoms, 3)) for _ in range(n_struct)]
    return [s * g + noise * rng.normal(size=g.shape) for g in ref], ref


def test_constructed_cases_give_each_decision():
    rng = np.random.default_rng(0)
    th = DecisionRules(mae_tol_ev_per_a=0.1)
    exact = fit_softening(*_forces(rng, 1.0, 0.0), chemsys="exact")
    assert decide_chemistry(exact, th).decision == "accept"
    scaled = fit_softening(*_forces(rng, 0.7, 0.02), chemsys="scaled")
    d = decide_chemistry(scaled, th)
    assert d.decision == "scale" and "excludes 1" in d.reasons[0]
    noisy = fit_softening(*_forces(rng, 1.0, 0.5), chemsys="noisy")
    d = decide_chemistry(noisy, th, target_indices=[0, 1, 2], target_score=np.array([0.5, 0.1, 0.3]),
                         target_features=rng.normal(size=(3, 4)))
    assert d.decision == "label" and "MAE" in d.reasons[0] and d.label_requests[0] == 0
    few = fit_softening(*_forces(rng, 0.7, 0.02, n_struct=2), chemsys="few")
    d = decide_chemistry(few, th)
    assert d.decision == "label" and "too few labels" in d.reasons[0]
    # pure scaling, but half of the targets lie outside the model's domain (the verdict's score is their Q)
    q = np.array([3.0, 0.5, 2.0, 0.2])
    d = decide_chemistry(scaled, th, target_indices=list(range(4)), target_ood=q, target_score=q,
                         target_trusted=q <= 1)
    assert d.decision == "label" and "out of the model's domain" in d.reasons[-1]
    assert d.fraction_untrusted == 0.5
    assert set(d.label_requests[:2]) == {0, 2}


def test_farthest_point_ranking_by_brute_force():
    X = np.array([[0.0, 0], [0.1, 0], [5, 5], [0, 0.2], [5, 5.1]])
    u = np.array([1.0, 0.9, 0.5, 0.8, 0.5])
    picked = farthest_point_ranking(X, u, 3)
    assert picked[0] == 0
    # second pick maximises u/max(u) × distance to row 0 in standardised coordinates
    Z = (X - X.mean(0)) / X.std(0)
    score = u * np.linalg.norm(Z - Z[0], axis=1)
    assert picked[1] == int(np.argmax(score))


def test_q_residual_flags_off_subspace_points():
    rng = np.random.default_rng(1)
    basis = rng.normal(size=(3, 10))
    ref = rng.normal(size=(500, 3)) @ basis + 0.01 * rng.normal(size=(500, 10))
    det = QResidualDetector(variance=0.99, quantile=0.99).fit(ref)
    assert det.n_components_ == 3
    inside = rng.normal(size=(50, 3)) @ basis
    outside = inside + rng.normal(size=(50, 10))
    q_in, q_out = det.q_residual(inside), det.q_residual(outside)
    assert np.mean(q_in > det.threshold_) < 0.05 and np.all(q_out > det.threshold_)
    # Q is the squared distance to the PCA subspace: check against a least-squares projection
    Xc = outside - det.mean_
    coef, *_ = np.linalg.lstsq(det.components_.T, Xc.T, rcond=None)
    np.testing.assert_allclose(q_out, np.sum((Xc - (det.components_.T @ coef).T) ** 2, axis=1), rtol=1e-8)
    scores = det.structure_scores(np.vstack([inside[:4], outside[:4]]), [0, 0, 0, 0, 1, 1, 1, 1], 2)
    assert scores[0] < 1 < scores[1]


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, chgnet):
    from calib import datasets
    from calib.data.prototypes import perturbed_set
    from calib.workflows.calibration import calibrate
    from calib.workflows.hessian import build_hessian

    d = tmp_path_factory.mktemp("decide")
    art, _ = build_hessian(chgnet, perturbed_set(n_variants=2, seed=3), batch_size=8, progress=False)
    cal = [a for c in ("Al", "Mg", "Li-Cl") for a in datasets.load("high-energy-states", chemsys=c)[::2]]
    res = calibrate(art, chgnet, cal, alpha=0.1, progress=False)
    res.artifact.save(d / "CAL.nc")
    return d


def test_cli_decide_on_shipped_data(calibrated, chgnet):
    from calib import datasets
    from calib.cli.main import app

    d = calibrated
    lab = datasets.load("high-energy-states", chemsys="Si") + datasets.load("high-energy-states", chemsys="Li-F")
    ase.io.write(d / "lab.extxyz", lab, format="extxyz")
    r = CliRunner().invoke(app, ["decide", str(d / "lab.extxyz"), "--calibration", str(d / "CAL.nc"),
                                 "--force-tol", "0.1", "--request-out", str(d / "req.extxyz"),
                                 "-o", str(d / "SCALED.nc"), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    recs = {x["chemsys"]: x for x in doc["records"]}
    # Si: soft (s ≈ 0.61) but cMAE_loo ≈ 0.2 eV/Å after correction → label; LiF: cMAE_loo ≈ 0.04 → scale
    assert recs["Si"]["decision"] == "label" and recs["Si"]["cmae_loo"] > 0.1
    assert recs["Li-F"]["decision"] == "scale" and recs["Li-F"]["cmae_loo"] <= 0.1
    for rec in recs.values():
        assert {"chemsys", "n_structures", "softening_scale", "softening_ci", "correction", "mae", "cmae",
                "cmae_loo", "decision", "reasons", "label_requests"} <= set(rec) and rec["reasons"]
    req = ase.io.read(d / "req.extxyz", ":")
    assert [a.info["calib_request_index"] for a in req] == recs["Si"]["label_requests"]
    assert all(lab[i].info["chemsys"] == "Si" for i in recs["Si"]["label_requests"])

    # the 'scale' chemistry's correction is stored and applied by `calib predict`
    from calib.artifact import Artifact

    art = Artifact.load(d / "SCALED.nc")
    assert set(art.corrections) == {"Li-F"}
    c, anchor = art.corrections.factor("Li-F")
    assert c == pytest.approx(recs["Li-F"]["correction"])
    lo, hi = art.corrections["Li-F"].ci
    assert lo <= c <= hi
    lif = [a for a in lab if a.info["chemsys"] == "Li-F"]
    ase.io.write(d / "lif.extxyz", lif[:3], format="extxyz")
    r = CliRunner().invoke(app, ["predict", str(d / "lif.extxyz"), "--calibration", str(d / "SCALED.nc"),
                                 "--json"])
    assert r.exit_code == 0, r.output
    # the anchor is the lowest CHGNet energy per atom among the labelled LiF structures
    assert anchor == pytest.approx(chgnet.predict(lif, forces=False).energy_per_atom.min(), abs=1e-6)
    preds = json.loads(r.stdout)["records"]
    for rec in preds:
        n = rec["n_atoms"]
        assert rec["correction"] == c
        # predict reports the corrected prediction; energy_model is the model's own energy
        assert rec["energy_corrected"] == pytest.approx(n * anchor + c * (rec["energy_model"] - n * anchor))
        if rec["prediction"] == "corrected":
            assert rec["energy"] == pytest.approx(rec["energy_corrected"], abs=1e-9)
