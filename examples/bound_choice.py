"""Which bound on a structure's largest force error, and at which confidence the verdict reads it (docs/errormodel.md).

Every shipped GPAW label (high-energy states and near-equilibrium structures) is predicted once by CHGNet 0.3.0.
The chemical systems are split into seeded halves; each half calibrates the error models exactly as
``calibrate`` fits them (calib.workflows.calibration.fit_error_models: the component model, its grouped
cross-fit, the component bound and the structure model) and the other half is judged, then the halves swap.
Printed per bound and confidence, as mean over the halvings: the coverage of the largest force error, and the
precision and recall of "bound ≤ 0.3 eV/Å" for "largest error ≤ 0.3 eV/Å", over all structures and hot frames.

    OMP_NUM_THREADS=1 python examples/bound_choice.py [--seeds 0 1 2 3 4 5] [--out bound_choice.json]
"""

from __future__ import annotations

import argparse
import json

import numpy as np

TOL = 0.3


def main(seeds, out: str) -> dict:
    from calib import datasets
    from calib.data.structures import get_forces
    from calib.models import load_model
    from calib.uq.errormodel import AtomInputs, component_scale, structure_features
    from calib.workflows.calibration import fit_error_models

    structs, regime = datasets.labelled()
    pred = load_model("chgnet").predict(structs, forces=True, progress=False)
    chem = np.array(pred.chemsys)
    inputs = AtomInputs(pred.numbers, pred.forces, pred.atom_structure, n_structures=len(structs))
    ends = np.cumsum(inputs.n_atoms)[:-1]
    errors = np.concatenate([get_forces(a) for a in structs]) - pred.forces
    per_structure = np.split(errors, ends)
    worst = np.array([np.abs(e).max() for e in per_structure])
    confidences = (0.9, 0.8, 0.75, 0.7)
    runs = {(b, c): [] for b in ("component", "structure") for c in confidences}
    for seed in seeds:
        rng = np.random.default_rng(seed)
        half = set(rng.permutation(sorted(set(chem)))[: len(set(chem)) // 2].tolist())
        in_a = np.array([c in half for c in chem])
        U = {k: np.full(len(structs), np.nan) for k in runs}
        for fold in (in_a, ~in_a):
            tr, te = np.flatnonzero(fold), np.flatnonzero(~fold)
            sub = inputs.subset(tr)
            fe = np.concatenate([per_structure[i] for i in tr])
            models, _ = fit_error_models(sub, fe, None, None, chem[tr], None, chemistry_scale=False,
                                         structure_model=True)
            test = inputs.subset(te)
            sig = models.forces.sigma(test)
            X = structure_features(test, component_scale(sig, test.n_atoms))
            parts = np.split(sig, np.cumsum(test.n_atoms)[:-1])
            for c in confidences:
                U[("component", c)][te] = [models.bound.bound(s, 1 - c) for s in parts]
                U[("structure", c)][te] = models.structure.bound(X, 1 - c)
        for k, u in U.items():
            row = {"coverage": float(np.mean(worst <= u))}
            for name, m in (("all", np.ones(len(structs), bool)), ("hot", regime == "hot"), ("near", regime == "near")):
                trusted, good = u[m] <= TOL, worst[m] <= TOL
                row[f"{name}_precision"] = float((trusted & good).sum() / max(trusted.sum(), 1))
                row[f"{name}_recall"] = float((trusted & good).sum() / good.sum())
            runs[k].append(row)
    res = {"n_structures": len(structs), "n_chemsys": len(set(chem)), "seeds": list(seeds), "force_tol": TOL,
           "bounds": [{"bound": b, "confidence": c, **{m: round(float(np.mean([r[m] for r in rows])), 3)
                                                       for m in rows[0]},
                       "min_all_precision": round(min(r["all_precision"] for r in rows), 3),
                       "min_hot_precision": round(min(r["hot_precision"] for r in rows), 3)}
                      for (b, c), rows in runs.items()]}
    with open(out, "w") as fh:
        json.dump(res, fh, indent=1)
    return res


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2, 3, 4, 5])
    p.add_argument("--out", default="bound_choice.json")
    a = p.parse_args()
    print(json.dumps(main(a.seeds, a.out), indent=1))
