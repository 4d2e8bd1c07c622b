"""Held-out conformal check on the shipped GPAW data (numbers and figures in docs/conformal.md).

H from the shipped equilibrium proxy; structures of the high-energy states split at random
(seeded) into calibration and held-out halves; split CP and Mondrian CP (classes by element,
and by an 8-component environment mixture) fitted at α = 0.1; metrics and plots on the held-out half.

    OMP_NUM_THREADS=1 python examples/conformal_heldout.py [--plots docs/figures/conformal]
"""

import json
import sys

import numpy as np

from calib import datasets
from calib.cli.plots import evaluation_plots
from calib.models.chgnet import CHGNetAdapter
from calib.workflows.calibration import calibrate
from calib.workflows.evaluation import evaluate
from calib.workflows.hessian import build_hessian


def main(plots: str | None = None, alpha: float = 0.1) -> dict:
    model = CHGNetAdapter()
    art, _ = build_hessian(model, datasets.load("equilibrium-proxy"), progress=False)
    data = datasets.load("high-energy-states")
    perm = np.random.default_rng(0).permutation(len(data))
    cal, test = [data[i] for i in perm[: len(data) // 2]], [data[i] for i in perm[len(data) // 2:]]
    out = {"n_calibration": len(cal), "n_test": len(test), "alpha": alpha,
           "chemistries": sorted({a.info["chemsys"] for a in data}), "runs": {}}
    for classes in (None, "element", 8):
        res = calibrate(art, model, cal, alpha=alpha, classes=classes, progress=False)
        ev = evaluate(res.artifact, model, test, return_points=plots is not None)
        points = ev.points
        key = str(classes)
        out["runs"][key] = {"quantiles": res.summary.conformal_quantile,
                            "fallback": res.summary.conformal_fallback, **ev.as_dict()}
        if plots is not None:
            out["runs"][key]["plots"] = evaluation_plots(points, f"{plots}/{key}", alpha)
    return out


if __name__ == "__main__":
    folder = sys.argv[sys.argv.index("--plots") + 1] if "--plots" in sys.argv else None
    print(json.dumps(main(folder), indent=1, default=float))
