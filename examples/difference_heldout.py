"""Energy differences: LLPR alone vs the variance model with the softening term (docs/conformal.md).

1. Held-out pairs: H from the shipped equilibrium proxy; the 140 high-energy states split 70/70
   (seeds 0–4); calibrated with and without the difference model (α = 0.1); coverage, mean width and
   NLL of the held-out pairs' intervals.
2. NEB paths (datasets/neb and datasets/neb/paths): calibrated on all 140 high-energy states; each
   image's energy relative to image 0, against GPAW on the same geometries. The corrected variant
   stores the scalar correction fitted (calib softening) on the 10 labelled MD frames of the path's
   chemistry, as a user would.

    OMP_NUM_THREADS=1 python examples/difference_heldout.py [--seeds 5]
"""

import glob
import json
import os
import sys

import ase.io
import numpy as np
from scipy.stats import norm

from calib import CalibratedPredictor, datasets
from calib.models.chgnet import CHGNetAdapter
from calib.workflows.calibration import calibrate
from calib.workflows.evaluation import evaluate
from calib.workflows.hessian import build_hessian
from calib.workflows.softening import measure_softening, store_corrections


def paths() -> dict:
    root = os.path.join(datasets.root(), "neb")
    files = [os.path.join(root, "LiF-vacancy-hop.extxyz")] + sorted(glob.glob(os.path.join(root, "paths",
                                                                                          "*-vacancy-hop.extxyz")))
    return {os.path.basename(f).split("-vacancy")[0]: ase.io.read(f, ":") for f in files}


def band_stats(ref, centre, low, high, sigma) -> dict:
    ref, centre, sigma = np.asarray(ref), np.asarray(centre), np.asarray(sigma)
    inside = (np.asarray(low) <= ref) & (ref <= np.asarray(high))
    return {"covered": int(inside.sum()), "n": int(len(ref)), "mean_width": float(np.mean(np.asarray(high) - low)),
            "nll": float(np.mean(-norm.logpdf(ref - centre, scale=sigma)))}


def main(seeds: int = 5) -> dict:
    model = CHGNetAdapter()
    art, _ = build_hessian(model, datasets.load("equilibrium-proxy"), progress=False)
    data = datasets.load("high-energy-states")
    out = {"heldout": [], "neb": {}}
    for seed in range(seeds):
        perm = np.random.default_rng(seed).permutation(len(data))
        cal, test = [data[i] for i in perm[:70]], [data[i] for i in perm[70:]]
        run = {"seed": seed}
        for name, dm in (("llpr", False), ("model", True)):
            res = calibrate(art, model, cal, target="energy", with_forces=False, difference_model=dm, progress=False)
            ev = evaluate(res.artifact, model, test, forces=False).as_dict()["energy_difference"]
            run[name] = {k: ev[k] for k in ("n", "coverage", "mean_width", "nll", "z_rms")}
        out["heldout"].append(run)
        print(json.dumps(run), file=sys.stderr, flush=True)
    for name in ("llpr", "model"):
        out[f"heldout_mean_{name}"] = {k: float(np.mean([r[name][k] for r in out["heldout"]]))
                                       for k in ("coverage", "mean_width", "nll")}
    full = {dm: calibrate(art, model, data, target="energy", with_forces=False, difference_model=dm,
                          progress=False).artifact for dm in (False, True)}
    for chem_name, images in paths().items():
        chem = images[0].info["chemsys"]
        e_ref = np.array([a.get_potential_energy() for a in images])
        d_ref = (e_ref - e_ref[0])[1:]
        soft = measure_softening(model, datasets.load("high-energy-states", chemsys=chem), n_bootstrap=1000)
        row = {"chemsys": chem, "barrier_gpaw": float(d_ref.max()), "c": soft.results[chem].correction}
        for key, a in (("llpr", full[False]), ("model", full[True])):
            ds = CalibratedPredictor(model, store_corrections(a, soft.results)).energy_differences(images)
            sl = slice(1, None)
            row[key] = band_stats(d_ref, ds.energy_difference.values[sl], ds.energy_difference_low.values[sl],
                                  ds.energy_difference_high.values[sl], ds.energy_difference_sigma.values[sl])
            row[key]["barrier"] = float(ds.energy_difference.values.max())
            k = int(np.argmax(ds.energy_difference.values))
            row[key]["barrier_interval"] = [float(ds.energy_difference_low.values[k]),
                                            float(ds.energy_difference_high.values[k])]
            if key == "model" and "energy_difference_corrected_low" in ds:
                row["corrected"] = band_stats(d_ref, ds.energy_difference_corrected.values[sl],
                                              ds.energy_difference_corrected_low.values[sl],
                                              ds.energy_difference_corrected_high.values[sl],
                                              ds.energy_difference_corrected_sigma.values[sl])
                row["corrected"]["barrier"] = float(ds.energy_difference_corrected.values[k])
                row["corrected"]["barrier_interval"] = [float(ds.energy_difference_corrected_low.values[k]),
                                                        float(ds.energy_difference_corrected_high.values[k])]
        out["neb"][chem_name] = row
        print(chem_name, json.dumps(row), file=sys.stderr, flush=True)
    return out


if __name__ == "__main__":
    n = int(sys.argv[sys.argv.index("--seeds") + 1]) if "--seeds" in sys.argv else 5
    print(json.dumps(main(n), indent=1))
