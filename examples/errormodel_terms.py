"""Which inputs the force and energy error models should use, measured on chemistries they never saw.

Every shipped GPAW label (high-energy states and near-equilibrium structures) is predicted once by CHGNet 0.3.0;
then for each candidate set of inputs (``terms`` of calib.uq.errormodel) the models are fitted on 4/5 of the
chemical systems and judged on the fifth (grouped 5-fold, repeated over 3 seeded assignments of systems to
folds). Printed per candidate:

* forces: the held-out Gaussian NLL per component (nats; each structure weighs the same) and the AUROC with which
  g(n)·max σ ranks the structures whose largest force error exceeds 0.3 eV/Å (all, hot frames, near-equilibrium),
  beside the model's own max |F|;
* energies: the Spearman correlation of σ with |error| and the NLL on the structures whose composition's offsets
  the other folds fix (element reference fitted without the test folds).

    OMP_NUM_THREADS=1 python examples/errormodel_terms.py [--hessian H.nc] [--out errormodel_terms.json]
"""

from __future__ import annotations

import argparse
import json

import numpy as np

FORCE_TERMS = [("force",), ("force", "element"), ("force", "chemistry"), ("force", "chemistry", "element"),
               ("force", "chemistry", "descriptor"), ("force", "chemistry", "llpr"),
               ("force", "chemistry", "open_3d")]
ENERGY_TERMS = [("leverage",), ("leverage", "force"), ("leverage", "force", "chemistry"), ("force", "chemistry")]
TOL = 0.3


def folds(chem, seed: int, k: int = 5):
    rng = np.random.default_rng(seed)
    order = {c: i for i, c in enumerate(rng.permutation(sorted(set(chem))))}
    return np.array([order[c] % k for c in chem])


def main(hessian: str | None, out: str) -> dict:
    from scipy.stats import norm, spearmanr
    from sklearn.metrics import roc_auc_score

    from calib import datasets
    from calib.artifact import Artifact
    from calib.data.structures import get_energy, get_forces
    from calib.models import load_model
    from calib.uq.errormodel import AtomInputs, EnergyVariance, ForceComponentVariance, grouped_energy_residuals
    from calib.uq.reference import ElementReference
    from calib.workflows.hessian import build_hessian

    model = load_model("chgnet")
    hess = Artifact.load(hessian) if hessian else build_hessian(model, datasets.load("equilibrium-proxy"),
                                                               batch_size=32, progress=False)[0]
    structs, regime = datasets.labelled()
    pred = model.predict(structs, forces=True, progress=False)
    chem = np.array(pred.chemsys)
    numbers = [a.numbers for a in structs]
    errors = np.concatenate([get_forces(a) for a in structs]) - pred.forces
    delta = np.array([get_energy(a) for a in structs]) - pred.energy
    inputs = AtomInputs(pred.numbers, pred.forces, pred.atom_structure, pred.atom_descriptors,
                        hess.llpr.local_energy_sigma(pred.atom_descriptors), n_structures=len(structs))
    starts = np.concatenate([[0], np.cumsum(inputs.n_atoms)])
    worst = np.array([np.abs(errors[starts[i]:starts[i + 1]]).max() for i in range(len(structs))])
    fmax = np.array([np.abs(pred.forces[starts[i]:starts[i + 1]]).max() for i in range(len(structs))])
    bad = worst > TOL

    def rows(idx):
        return np.concatenate([np.arange(starts[i], starts[i + 1]) for i in idx])

    res = {"n_structures": len(structs), "n_chemsys": len(set(chem)), "forces": {}, "energy": {}}
    for terms in FORCE_TERMS:
        nll, auc = [], {"all": [], "hot": [], "near": []}
        for seed in range(3):
            f = folds(chem, seed)
            score, total, weight = np.zeros(len(structs)), 0.0, 0.0
            for k in range(5):
                tr, te = np.flatnonzero(f != k), np.flatnonzero(f == k)
                m = ForceComponentVariance(terms=terms).fit(inputs.subset(tr), errors[rows(tr)])
                sig = m.sigma(inputs.subset(te))
                e = errors[rows(te)]
                w = np.repeat(1.0 / inputs.n_atoms[te], inputs.n_atoms[te])[:, None] * np.ones(3)
                total += float(np.sum(w * (0.5 * np.log(2 * np.pi * sig**2) + 0.5 * (e / sig) ** 2)))
                weight += float(w.sum())
                ends = np.cumsum(inputs.n_atoms[te])
                score[te] = [norm.ppf(1 - 1 / (12 * inputs.n_atoms[i])) * sig[end - inputs.n_atoms[i]:end].max()
                             for i, end in zip(te, ends)]
            nll.append(total / weight)
            for name, m in (("all", np.ones(len(structs), bool)), ("hot", regime == "hot"), ("near", regime == "near")):
                auc[name].append(roc_auc_score(bad[m], score[m]))
        res["forces"]["+".join(terms)] = {"nll": round(float(np.mean(nll)), 4),
                                          **{f"auroc_{k}": round(float(np.mean(v)), 3) for k, v in auc.items()}}
    res["forces"]["max |F| (the model's own)"] = {
        f"auroc_{k}": round(float(roc_auc_score(bad[m], fmax[m])), 3)
        for k, m in (("all", np.ones(len(structs), bool)), ("hot", regime == "hot"), ("near", regime == "near"))}
    for terms in ENERGY_TERMS:
        sp, nl = [], []
        for seed in range(3):
            f = folds(chem, seed)
            s_all, e_all = [], []
            for k in range(5):
                tr, te = np.flatnonzero(f != k), np.flatnonzero(f == k)
                e_tr, h_tr = grouped_energy_residuals([numbers[i] for i in tr], delta[tr], chem[tr], 10)
                sub = inputs.subset(tr)
                sub.leverage = h_tr
                m = EnergyVariance(terms=terms).fit(sub, e_tr, groups=chem[tr])
                ref = ElementReference().fit([numbers[i] for i in tr], delta[tr])
                ok, _ = ref.determined([numbers[i] for i in te])
                te = te[ok]
                e = (delta[te] - ref.predict([numbers[i] for i in te])) / inputs.n_atoms[te]
                sub = inputs.subset(te)
                sub.leverage = ref.leverage([numbers[i] for i in te])
                s_all.append(m.sigma(sub))
                e_all.append(e)
            s, e = np.concatenate(s_all), np.concatenate(e_all)
            sp.append(spearmanr(s, np.abs(e)).statistic)
            nl.append(float(np.mean(0.5 * np.log(2 * np.pi * s**2) + 0.5 * (e / s) ** 2)))
        res["energy"]["+".join(terms)] = {"spearman": round(float(np.mean(sp)), 3), "nll": round(float(np.mean(nl)), 3)}
    with open(out, "w") as fh:
        json.dump(res, fh, indent=1)
    return res


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--hessian", default=None, help="a proxy Hessian artifact (for the LLPR term); built if absent")
    p.add_argument("--out", default="errormodel_terms.json")
    a = p.parse_args()
    print(json.dumps(main(a.hessian, a.out), indent=1))
