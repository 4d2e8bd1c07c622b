"""Does a second model's energy disagreement sharpen the energy intervals of chemistries never calibrated on?

Every shipped GPAW label is predicted once by CHGNet 0.3.0 and once by a second model (SevenNet-0 unless
``--committee``). The chemical systems are dealt into two seeded halves; the energy error model is fitted on one
half as ``calibrate`` fits it (residuals and disagreements under per-element references fitted without each
structure's chemical system, calib.uq.errormodel.cross_fit; the conformal quantile at α = 0.1 over those
cross-fitted scores) and judged on the other half with the references fitted on the first, then the halves swap.
Printed per variant (the default energy terms; the same with the ``committee`` term, at several floors
``ENERGY_FLOOR``), per seed and on average: the Spearman correlation of σ with |error|, the median interval
half-width over the median |error|, the coverage of the intervals and of ±1σ.

    OMP_NUM_THREADS=1 python examples/energy_committee.py [--seeds 0 1 2 3] [--committee sevennet]
        [--floors 0.002 0.01 0.02 0.04] [--out energy_committee.json]
"""

from __future__ import annotations

import argparse
import json

import numpy as np

ALPHA = 0.1


def halves(chem, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    chems = rng.permutation(sorted(set(chem)))
    half = {c: int(i >= len(chems) // 2) for i, c in enumerate(chems)}
    return np.array([half[c] for c in chem])


def judge(inputs, numbers, chem, delta, second, fold, with_committee: bool):
    """(|errors| eV/atom, σ eV/atom, half-widths eV/atom) of every structure judged by the half it is not in."""
    from calib.uq.conformal import conformal_quantile
    from calib.uq.errormodel import EnergyVariance, cross_fit, energy_disagreement
    from calib.uq.reference import ElementReference

    out = []
    for h in (0, 1):
        cal, new = np.flatnonzero(fold != h), np.flatnonzero(fold == h)
        n_cal, n_new = [numbers[i] for i in cal], [numbers[i] for i in new]
        cf = cross_fit(inputs.subset(cal), None, numbers=n_cal, delta_energy=delta[cal], groups=chem[cal],
                       second_delta_energy=second[cal] if with_committee else None)
        train = inputs.subset(cal)
        train.leverage = cf.leverage
        train.energy_disagreement = cf.energy_disagreement
        terms = EnergyVariance.DEFAULT_TERMS + (("committee",) if with_committee else ())
        model = EnergyVariance(terms=terms).fit(train, cf.energy_errors, groups=chem[cal])
        ok = np.isfinite(cf.energy_errors) & np.isfinite(cf.energy_sigma)
        q = conformal_quantile(np.sort(np.abs(cf.energy_errors[ok]) / cf.energy_sigma[ok]), ALPHA, what="energy")
        ref = ElementReference().fit(n_cal, delta[cal])
        test = inputs.subset(new)
        test.leverage = ref.leverage(n_new)
        if with_committee:
            test.energy_disagreement = energy_disagreement(n_new, second[new], ElementReference().fit(n_cal, second[cal]))
        sigma = model.sigma(test)
        determined, _ = ref.determined(n_new)
        err = np.abs(delta[new] - ref.predict(n_new)) / test.n_atoms
        keep = determined & np.isfinite(sigma)
        out.append((err[keep], sigma[keep], q * sigma[keep]))
    return [np.concatenate(x) for x in zip(*out)]


def main(seeds, committee: str, floors, out: str) -> dict:
    from scipy.stats import spearmanr

    from calib import datasets
    from calib.data.structures import get_energy
    from calib.models import load_model
    from calib.models.base import second_model_outputs
    from calib.uq import errormodel
    from calib.uq.errormodel import AtomInputs

    structs, _ = datasets.labelled()
    pred = load_model("chgnet").predict(structs, forces=True, progress=False)
    second_energy, _, issues = second_model_outputs(load_model(committee), structs)
    if issues:
        raise SystemExit(f"{committee} cannot predict {len(issues)} labelled structures")
    numbers = [a.numbers for a in structs]
    chem = np.array(pred.chemsys)
    delta = np.array([get_energy(a) for a in structs]) - pred.energy  # eV, total
    second = second_energy - pred.energy
    inputs = AtomInputs(pred.numbers, pred.forces, pred.atom_structure, n_structures=len(structs))
    default_floor = errormodel.ENERGY_FLOOR
    variants = [("default terms", False, default_floor)] + [(f"+ committee, floor {f} eV/atom", True, f)
                                                            for f in floors]
    res = {"n_structures": len(structs), "n_chemsys": len(set(chem)), "committee": committee, "seeds": list(seeds),
           "variants": {}}
    for name, use, floor in variants:
        errormodel.ENERGY_FLOOR = floor
        rows = []
        for seed in seeds:
            err, sigma, width = judge(inputs, numbers, chem, delta, second, halves(chem, seed), use)
            rows.append({"n": len(err), "spearman": float(spearmanr(sigma, err).statistic),
                         "width_over_error": float(np.median(width) / np.median(err)),
                         "coverage": float(np.mean(err <= width)), "coverage_1sigma": float(np.mean(err <= sigma))})
        res["variants"][name] = {"per_seed": rows, **{k: round(float(np.mean([r[k] for r in rows])), 3)
                                                     for k in ("spearman", "width_over_error", "coverage",
                                                               "coverage_1sigma")}}
        print(name, {k: v for k, v in res["variants"][name].items() if k != "per_seed"},
              "Spearman per seed", [round(r["spearman"], 2) for r in rows], flush=True)
    errormodel.ENERGY_FLOOR = default_floor
    with open(out, "w") as fh:
        json.dump(res, fh, indent=1)
    return res


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2, 3])
    p.add_argument("--committee", default="sevennet")
    p.add_argument("--floors", type=float, nargs="*", default=[0.002, 0.01, 0.02, 0.04])
    p.add_argument("--out", default="energy_committee.json")
    a = p.parse_args()
    main(a.seeds, a.committee, a.floors, a.out)
