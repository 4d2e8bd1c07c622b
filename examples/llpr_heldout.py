"""Held-out LLPR check on the shipped GPAW high-energy states (numbers quoted in docs/llpr.md).

H from the built-in near-equilibrium prototypes (or the shipped proxy); α², ς² fitted on the
even frames of each chemistry with each calibration target; metrics on the odd frames.

    OMP_NUM_THREADS=1 python examples/llpr_heldout.py [--json]
"""

import json
import sys

import numpy as np

from calib import datasets
from calib.data.prototypes import perturbed_set
from calib.models.chgnet import CHGNetAdapter
from calib.workflows.calibration import calibrate
from calib.workflows.demo import split_by_chemsys
from calib.workflows.evaluation import evaluate
from calib.workflows.hessian import build_hessian


def main(as_json: bool = False) -> dict:
    model = CHGNetAdapter()
    h_structs = (datasets.load("equilibrium-proxy") if "equilibrium-proxy" in datasets.names()
                 else perturbed_set(n_variants=4, seed=0))
    art, _ = build_hessian(model, h_structs, progress=False)
    lam = art.llpr.eigenvalues_
    F = model.features(h_structs)
    labelled = datasets.load("high-energy-states")
    cal, test = split_by_chemsys(labelled)
    out = {
        "hessian_structures": len(h_structs),
        "dead_features": int(np.sum(F.std(axis=0) < 1e-6 * np.abs(F).max())),
        "rank_1e-6": int(np.sum(lam > 1e-6 * lam[-1])),
        "eigenvalues_top5": [float(x) for x in lam[::-1][:5]],
        "chemistries": sorted({a.info["chemsys"] for a in labelled}),
        "n_calibration": len(cal),
        "n_test": len(test),
        "targets": {},
    }
    for target in ("energy", "forces", "both"):
        res = calibrate(art, model, cal, target=target, progress=False)
        ev = evaluate(res.artifact, model, test).as_dict()
        out["targets"][target] = {"alpha2": res.summary.as_dict()["alpha2"], "sigma2": res.summary.as_dict()["sigma2"],
                                  "energy": ev["energy"], "forces": ev["forces"]}
    # the richer Gauss-Newton feature set (last two linear layers), energies only
    model2 = CHGNetAdapter(model.model, feature_set="last2")
    art2, _ = build_hessian(model2, h_structs, progress=False)
    res2 = calibrate(art2, model2, cal, target="energy", with_forces=False, progress=False)
    ev2 = evaluate(res2.artifact, model2, test, forces=False).as_dict()
    out["last2_energy"] = {"n_features": model2.n_features, "rank_1e-6": res2.summary.as_dict()["rank"],
                           "alpha2": res2.summary.as_dict()["alpha2"], "sigma2": res2.summary.as_dict()["sigma2"],
                           "energy": ev2["energy"]}
    if as_json:
        print(json.dumps(out, indent=1))
    else:
        print(f"H: {out['hessian_structures']} structures, {out['dead_features']}/64 dead features, "
              f"rank {out['rank_1e-6']} (eigenvalues > 1e-6 of the largest)")
        print(f"labels: {len(labelled)} GPAW structures in {len(out['chemistries'])} chemistries; "
              f"{len(cal)} calibration, {len(test)} held out")
        print(f"{'target':<8} {'obs':<7} {'MAE':>8} {'NLL':>8} {'Spearman':>9} {'cov1σ':>6} {'cov2σ':>6} {'z_rms':>6}")
        for target, t in out["targets"].items():
            for obs in ("energy", "forces"):
                b = t[obs]
                print(f"{target:<8} {obs:<7} {b['mae']:>8.4f} {b['nll']:>8.3f} {b['spearman']:>9.3f} "
                      f"{b['coverage_1sigma']:>6.2f} {b['coverage_2sigma']:>6.2f} {b['z_rms']:>6.2f}")
        b = out["last2_energy"]["energy"]
        print(f"{'last2':<8} {'energy':<7} {b['mae']:>8.4f} {b['nll']:>8.3f} {b['spearman']:>9.3f} "
              f"{b['coverage_1sigma']:>6.2f} {b['coverage_2sigma']:>6.2f} {b['z_rms']:>6.2f}   "
              f"({out['last2_energy']['n_features']} features, rank {out['last2_energy']['rank_1e-6']})")
    return out


if __name__ == "__main__":
    main("--json" in sys.argv)
