"""Held-out energy intervals on the shipped GPAW data: in-sample vs cross-fitted element reference.

H from the shipped equilibrium proxy; the 140 high-energy states split at random into 70 calibration
and 70 held-out structures (seeds 0–4); (α², ς²) for energies and the energy conformal quantile
(α = 0.1) fitted with the energy residuals of an in-sample element reference (calib 0.1.0) and of a
5-fold cross-fitted one; coverage and mean width of the held-out energy intervals (numbers in
docs/conformal.md).

    OMP_NUM_THREADS=1 python examples/energy_heldout.py [--seeds 5]
"""

import json
import sys

import numpy as np

from calib import datasets
from calib.models.chgnet import CHGNetAdapter
from calib.workflows.calibration import calibrate
from calib.workflows.evaluation import evaluate
from calib.workflows.hessian import build_hessian


def main(seeds: int = 5, alpha: float = 0.1) -> dict:
    model = CHGNetAdapter()
    art, _ = build_hessian(model, datasets.load("equilibrium-proxy"), progress=False)
    data = datasets.load("high-energy-states")
    out = {"alpha": alpha, "n_structures": len(data), "runs": []}
    for seed in range(seeds):
        perm = np.random.default_rng(seed).permutation(len(data))
        cal, test = [data[i] for i in perm[: len(data) // 2]], [data[i] for i in perm[len(data) // 2:]]
        run = {"seed": seed}
        for name, folds in (("in_sample", None), ("cross_fitted", 5)):
            res = calibrate(art, model, cal, target="energy", with_forces=False, alpha=alpha, energy_folds=folds,
                            progress=False)
            ev = evaluate(res.artifact, model, test, forces=False).as_dict()
            run[name] = {"coverage": ev["energy"]["coverage"], "mean_width": ev["energy"]["mean_width"],
                         "n": ev["energy"]["n"], "n_without_interval": ev["n_without_interval"],
                         "quantile": res.summary.as_dict()["conformal_quantile"]["energy"],
                         "excluded": res.summary.as_dict()["energy_cross_fit_excluded"]}
        out["runs"].append(run)
        print(json.dumps(run), file=sys.stderr, flush=True)
    for name in ("in_sample", "cross_fitted"):
        out[f"mean_coverage_{name}"] = float(np.mean([r[name]["coverage"] for r in out["runs"]]))
        out[f"mean_width_{name}"] = float(np.mean([r[name]["mean_width"] for r in out["runs"]]))
    return out


if __name__ == "__main__":
    n = int(sys.argv[sys.argv.index("--seeds") + 1]) if "--seeds" in sys.argv else 5
    print(json.dumps(main(n), indent=1, default=float))
