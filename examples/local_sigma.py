"""Does the per-atom (local) energy σ rank errors better than the pooled σ? (numbers in docs/llpr.md)

1. Held out: H from the shipped equilibrium proxy; energies calibrated (cross-fitted reference, α = 0.1)
   on a seeded half of the 140 shipped high-energy states; on the other half, Spearman of pooled
   σ_E, of max_a σ_a and of the largest force-component σ (exact; its scale α²_F does not matter for a
   rank) against |energy error| and against the largest force-component error.
2. Rattled crystals: H from slightly rattled (0.03 Å) 8-atom cells of Si, Al, C, Cu, LiF, NaCl; for each,
   whether a copy rattled by 0.35 Å gets a larger pooled σ_E / max local σ / max force σ than the
   equilibrium crystal.

    OMP_NUM_THREADS=1 python examples/local_sigma.py [--seeds 3]
"""

import json
import sys

import numpy as np
from ase.build import bulk
from scipy.stats import spearmanr

from calib import CalibratedPredictor, datasets
from calib.models.chgnet import CHGNetAdapter
from calib.workflows.calibration import calibrate
from calib.workflows.hessian import build_hessian
from calib.workflows.labelled import predict_labelled


def heldout(model, art, seed: int) -> dict:
    data = datasets.load("high-energy-states")
    perm = np.random.default_rng(seed).permutation(len(data))
    cal, test = [data[i] for i in perm[:70]], [data[i] for i in perm[70:]]
    res = calibrate(art, model, cal, target="energy", with_forces=False, progress=False)
    lp = predict_labelled(CalibratedPredictor(model, res.artifact), test, forces=True, force_mode="exact")
    ok = lp.ok
    e_err = np.abs(lp.energy_errors - ok["energy_shift"].values)
    owner = ok["structure_index"].values
    f_err = np.array([np.abs(lp.force_errors[owner == i]).max() for i in ok["structure"].values])
    rho = lambda a, b: float(spearmanr(a, b).statistic)  # noqa: E731
    pooled, local, fsig = ok["energy_sigma"].values, ok["max_local_sigma"].values, ok["max_force_sigma"].values
    n = ok["n_atoms"].values
    return {"seed": seed, "n": len(e_err),
            "energy_error": {"pooled": rho(pooled, e_err), "max_local": rho(local, e_err),
                             "max_force_sigma": rho(fsig, e_err)},
            "energy_error_per_atom": {"pooled": rho(pooled / n, e_err / n), "max_local": rho(local, e_err / n),
                                      "max_force_sigma": rho(fsig, e_err / n)},
            "max_force_error": {"pooled": rho(pooled, f_err), "max_local": rho(local, f_err),
                                "max_force_sigma": rho(fsig, f_err)}}


def rattled(model) -> dict:
    cells = {"Si": bulk("Si", "diamond", 5.43, cubic=True), "Al": bulk("Al", "fcc", 4.04, cubic=True) * (2, 1, 1),
             "C": bulk("C", "diamond", 3.57, cubic=True), "Cu": bulk("Cu", "fcc", 3.61, cubic=True) * (2, 1, 1),
             "LiF": bulk("LiF", "rocksalt", 4.03, cubic=True), "NaCl": bulk("NaCl", "rocksalt", 5.64, cubic=True)}
    rng = np.random.default_rng(0)
    train = []
    for atoms in cells.values():
        for _ in range(10):
            a = atoms.copy()
            a.positions += rng.normal(0, 0.03, a.positions.shape)
            train.append(a)
    art, _ = build_hessian(model, train, progress=False)
    predictor = CalibratedPredictor(model, art, require_calibrated=False)
    out = {}
    for name, atoms in cells.items():
        far = atoms.copy()
        far.positions += np.random.default_rng(1).normal(0, 0.35, far.positions.shape)
        ds = predictor.predict([atoms, far], forces=True, force_mode="exact")
        grow = lambda v: bool(v[1] > v[0])  # noqa: E731
        out[name] = {"pooled": grow(ds.energy_sigma.values), "max_local": grow(ds.max_local_sigma.values),
                     "max_force_sigma": grow(ds.max_force_sigma.values)}
    out["count"] = {k: sum(v[k] for v in out.values()) for k in ("pooled", "max_local", "max_force_sigma")}
    return out


def main(seeds: int = 3) -> dict:
    model = CHGNetAdapter()
    art, _ = build_hessian(model, datasets.load("equilibrium-proxy"), progress=False)
    runs = [heldout(model, art, s) for s in range(seeds)]
    summary = {k: {m: float(np.mean([r[k][m] for r in runs])) for m in ("pooled", "max_local", "max_force_sigma")}
               for k in ("energy_error", "energy_error_per_atom", "max_force_error")}
    return {"heldout": runs, "heldout_mean_spearman": summary, "rattled": rattled(model)}


if __name__ == "__main__":
    n = int(sys.argv[sys.argv.index("--seeds") + 1]) if "--seeds" in sys.argv else 3
    print(json.dumps(main(n), indent=1))
