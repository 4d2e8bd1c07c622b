"""Can another input or learner make the force bound trust more good hot frames? (docs/errormodel.md)

The verdict's force check trusts a structure when the conformal bound U on its largest force error is within
0.3 eV/Å. On hot frames of chemistries the calibration never saw it trusts few of the good ones (its recall);
this script measures whether the component error model of calib.uq.errormodel gains from inputs it does not use
by default, or from a more flexible learner, *as a bound*: precision and recall of "U ≤ 0.3 eV/Å", not only its
ranking.

Every shipped GPAW label is predicted once by CHGNet 0.3.0. The chemical systems are split into seeded halves;
each half fits the candidate model as ``calibrate`` fits the default one (σ of every force component by Gaussian
NLL, every structure weighing the same; the conformal quantile of t = max|e| / (g(n) max σ) over scores
cross-fitted by chemical system, 10 folds) and the other half is judged, then the halves swap. Candidates (the
default's inputs plus):

* ``domain``: the atom's log Q residual and log Hotelling T² against the proxy Hessian's descriptors;
* ``geometry``: the atom's nearest-neighbour distance over the sum of covalent radii (how deep into the repulsive
  wall a hot frame pushes it) and the relative spread of its first-shell distances;
* ``embedding``: 4 principal components of CHGNet's learned element embedding (the model's own view of the
  element, in place of tabulated properties);
* ``knn``: the error-to-force ratio of the 10 nearest calibration atoms of *other* chemistries in the model's
  descriptor space, and their distance (error transfer through the representation);
* ``interaction``: the component's log force times every chemistry input (a softening slope per chemistry);
* ``boosted``: scikit-learn's HistGradientBoostingRegressor with the gamma loss (the same NLL) on the default
  inputs, in place of the linear model;
* ``llpr`` (with ``--llpr``, slow: a backward pass per LLPR direction): the atom's LLPR force σ;
* ``committee`` (with ``--committee FILE.npy``): the disagreement of a second universal potential's forces with
  the model's (component, atom and structure: log of the squared difference plus (0.05 eV/Å)²). FILE holds the
  second model's forces (N atoms × 3, eV/Å) on ``datasets.labelled()`` in order, e.g. SevenNet-0's from its own
  environment (``np.save(FILE, load_model("sevennet").predict(datasets.labelled()[0]).forces)``).

    OMP_NUM_THREADS=1 python examples/force_bound_inputs.py [--hessian H.nc] [--seeds 0 1 2 3] [--llpr]
        [--committee FILE.npy] [--only llpr]
"""

from __future__ import annotations

import argparse
import json

import numpy as np

TOL = 0.3


def main(hessian: str | None, seeds, llpr: bool, out: str, only=(), committee: str | None = None) -> dict:
    from ase.data import covalent_radii
    from ase.neighborlist import neighbor_list
    from sklearn.decomposition import PCA
    from sklearn.metrics import roc_auc_score
    from sklearn.neighbors import NearestNeighbors

    from calib import datasets
    from calib.artifact import Artifact
    from calib.data.structures import get_forces
    from calib.models import load_model
    from calib.uq.conformal import conformal_quantile
    from calib.uq.errormodel import AtomInputs, ForceComponentVariance, grouped_folds, largest_z
    from calib.workflows.hessian import build_hessian

    model = load_model("chgnet")
    hess = Artifact.load(hessian) if hessian else build_hessian(model, datasets.load("equilibrium-proxy"),
                                                               batch_size=32, progress=False)[0]
    structs, regime = datasets.labelled()
    pred = model.predict(structs, forces=True, progress=False)
    chem = np.array(pred.chemsys)
    S = len(structs)
    n_atoms = pred.n_atoms
    starts = np.concatenate([[0], np.cumsum(n_atoms)])
    errors = np.concatenate([get_forces(a) for a in structs]) - pred.forces
    worst = np.array([np.abs(errors[starts[i]:starts[i + 1]]).max() for i in range(S)])
    fmax = np.array([np.abs(pred.forces[starts[i]:starts[i + 1]]).max() for i in range(S)])
    atom_chem = np.repeat(chem, n_atoms)

    # per-atom candidate inputs that need no fit
    desc = pred.atom_descriptors
    det = hess.ood
    fixed = {"domain": np.column_stack([np.log(np.maximum(det.q_residual(desc), 1e-9)),
                                        np.log(np.maximum(det.t2(desc), 1e-9))])}
    geo = []
    for a in structs:
        i, j, d = neighbor_list("ijd", a, 6.0)
        r = d / (covalent_radii[a.numbers[i]] + covalent_radii[a.numbers[j]])
        nearest = np.full(len(a), np.inf)
        np.minimum.at(nearest, i, r)
        spread = np.array([np.std(r[(i == k) & (r <= 1.25 * nearest[k])]) / nearest[k] for k in range(len(a))])
        geo.append(np.column_stack([np.log(nearest), np.log(spread + 1e-3)]))
    fixed["geometry"] = np.concatenate(geo)
    emb = model.module.atom_embedding.embedding.weight.detach().cpu().numpy().astype(float)
    fixed["embedding"] = PCA(n_components=4).fit_transform(emb)[pred.numbers - 1]
    if llpr:
        from calib.models.gradients import force_variance

        var = np.concatenate(force_variance(model, structs, hess.llpr, batch_size=8))
        fixed["llpr"] = 0.5 * np.log(np.maximum(var.sum(axis=1), 1e-18))[:, None]  # a round-off negative: the floor

    if committee:
        second = np.load(committee)
        if second.shape != pred.forces.shape:
            raise SystemExit(f"{committee}: {second.shape} forces, the labels have {pred.forces.shape}")
        fixed["committee"] = second - pred.forces  # eV/Å, per component

    def atoms(rows):
        return np.concatenate([np.arange(starts[i], starts[i + 1]) for i in rows])

    class Candidate(ForceComponentVariance):
        """The default component model with extra per-atom columns (carried in ``descriptors``)."""

        def __init__(self, extra: str | None = None, learner: str = "linear"):
            super().__init__()
            self.extra, self.learner = extra, learner

        def _columns(self, inputs):
            base = super()._columns(inputs)
            if self.extra is None:
                return base
            if self.extra == "committee":  # component, atom and structure disagreement
                d2 = inputs.descriptors ** 2
                atom = d2.sum(axis=1)
                rms = np.bincount(inputs.structure, atom, inputs.n_structures) / (3 * inputs.n_atoms)
                cols = [np.log(d2.ravel() + 0.05 ** 2), np.repeat(np.log(atom + 0.05 ** 2), 3),
                        np.repeat(np.log(rms[inputs.structure] + 0.05 ** 2), 3)]
                return np.hstack([base, np.column_stack(cols)])
            X = np.repeat(inputs.descriptors, 3, axis=0)
            if self.extra == "interaction":
                return np.hstack([base, base[:, :1] * base[:, 3:]])
            return np.hstack([base, X])

        def fit(self, inputs, errs, groups=None):
            if self.learner == "linear":
                return super().fit(inputs, errs)
            from sklearn.ensemble import HistGradientBoostingRegressor

            w = np.repeat(1.0 / inputs.n_atoms[inputs.structure], 3)
            self.hgb_ = HistGradientBoostingRegressor(loss="gamma", max_iter=150, learning_rate=0.05,
                                                      max_leaf_nodes=8, min_samples_leaf=200, random_state=0)
            self.hgb_.fit(self._columns(inputs), np.maximum(np.ravel(errs) ** 2, 1e-8), sample_weight=w)
            return self

        def sigma(self, inputs):
            if self.learner == "linear":
                return super().sigma(inputs)
            return np.sqrt(self.hgb_.predict(self._columns(inputs))).reshape(-1, 3)

    def knn_columns(train, rows, exclude_own):
        """log mean (|e|+0.02)/(|F|+0.2) of the 10 nearest training atoms of other chemistries, and log distance."""
        ta, qa = atoms(train), atoms(rows)
        mu, sd = desc[ta].mean(0), desc[ta].std(0) + 1e-9
        Xt, Xq = (desc[ta] - mu) / sd, (desc[qa] - mu) / sd
        y = np.log((np.linalg.norm(errors[ta], axis=1) + 0.02) / (np.linalg.norm(pred.forces[ta], axis=1) + 0.2))
        dist, idx = NearestNeighbors(n_neighbors=min(80, len(ta))).fit(Xt).kneighbors(Xq)
        out = np.empty((len(qa), 2))
        for k in range(len(qa)):
            ok = atom_chem[ta][idx[k]] != atom_chem[qa][k] if exclude_own else np.ones(idx.shape[1], bool)
            pick = idx[k][ok][:10] if ok.any() else idx[k][:10]
            out[k] = y[pick].mean(), np.log(dist[k][ok][:10].mean() + 1e-3 if ok.any() else dist[k].max())
        return out

    def inputs_of(rows, extra, train=None, exclude_own=False):
        a = atoms(rows)
        cols = None
        if extra in fixed:
            cols = fixed[extra][a]
        elif extra == "knn":
            cols = knn_columns(train, rows, exclude_own)
        return AtomInputs(pred.numbers[a], pred.forces[a], np.repeat(np.arange(len(rows)), n_atoms[rows]), cols,
                          n_structures=len(rows))

    def fitted(extra, learner, rows):
        m = Candidate(extra if extra not in ("boosted", "default") else None, learner)
        return m.fit(inputs_of(rows, extra, rows, exclude_own=True), errors[atoms(rows)]), rows

    def scale(fit, extra, rows):
        m, train = fit
        sig = m.sigma(inputs_of(rows, extra, train))
        ends = np.cumsum(n_atoms[rows])
        return np.array([largest_z(3 * n_atoms[r]) * sig[e - n_atoms[r]:e].max() for r, e in zip(rows, ends)])

    candidates = [("default", "linear"), ("domain", "linear"), ("geometry", "linear"), ("embedding", "linear"),
                  ("knn", "linear"), ("interaction", "linear"), ("boosted", "boosted")]
    if llpr:
        candidates.append(("llpr", "linear"))
    if committee:
        candidates.append(("committee", "linear"))
    if only:
        candidates = [c for c in candidates if c[0] in only]
    good = worst <= TOL
    res = {"n_structures": S, "n_chemsys": len(set(chem)), "seeds": list(seeds), "candidates": {}}
    for extra, learner in candidates:
        runs = []
        for seed in seeds:
            rng = np.random.default_rng(seed)
            half = set(rng.permutation(sorted(set(chem)))[: len(set(chem)) // 2].tolist())
            in_a = np.array([c in half for c in chem])
            U, score = np.full(S, np.nan), np.full(S, np.nan)
            for fold in (in_a, ~in_a):
                cal, test = np.flatnonzero(fold), np.flatnonzero(~fold)
                sc = np.full(len(cal), np.nan)
                for tr, te in grouped_folds(chem[cal], 10):
                    sc[te] = scale(fitted(extra, learner, cal[tr]), extra, cal[te])
                q = conformal_quantile(np.sort(worst[cal] / sc), 0.1, what="force error bound")
                score[test] = scale(fitted(extra, learner, cal), extra, test)
                U[test] = q * score[test]
            row = {"bound_coverage": float(np.mean(worst <= U))}
            for name, m in (("all", np.ones(S, bool)), ("hot", regime == "hot"), ("near", regime == "near")):
                trusted = (U <= TOL) & m
                row[f"{name}_precision"] = float((trusted & good).sum() / max(trusted.sum(), 1))
                row[f"{name}_recall"] = float((trusted & good).sum() / (good & m).sum())
                row[f"{name}_auroc"] = float(roc_auc_score(~good[m], score[m]))
            runs.append(row)
        res["candidates"][extra] = {k: round(float(np.mean([r[k] for r in runs])), 3) for k in runs[0]}
        res["candidates"][extra]["min_hot_precision"] = round(min(r["hot_precision"] for r in runs), 3)
        print(extra, res["candidates"][extra], flush=True)
    res["max_force_auroc"] = {name: round(float(roc_auc_score(~good[m], fmax[m])), 3) for name, m in
                              (("all", np.ones(S, bool)), ("hot", regime == "hot"), ("near", regime == "near"))}
    with open(out, "w") as fh:
        json.dump(res, fh, indent=1)
    return res


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--hessian", default=None, help="a proxy Hessian artifact (domain and LLPR inputs); built if absent")
    p.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2, 3])
    p.add_argument("--llpr", action="store_true", help="also the LLPR force σ input (slow: feature gradients)")
    p.add_argument("--only", nargs="*", default=(), help="run these candidates only (default, domain, ..., llpr)")
    p.add_argument("--committee", default=None, help="a second model's forces on the labels (.npy, N × 3, eV/Å)")
    p.add_argument("--out", default="force_bound_inputs.json")
    a = p.parse_args()
    print(json.dumps(main(a.hessian, a.seeds, a.llpr, a.out, a.only, a.committee), indent=1))
