"""Held-out checks of the default calibration's recipe (calib/data/artifacts/README.md, docs/softening.md).

The default artifact is calibrated on every shipped GPAW label; to measure it honestly the same recipe (H from
the equilibrium proxy, `calibrate` at α = 0.1 on high-energy and near-equilibrium labels) is rebuilt on part of
the labels and evaluated on the rest, two ways:

* **by structure**: every other frame of each system calibrates, the others are tested; force coverage per
  element (the force components of each element's atoms), energy coverage;
* **by chemistry**: half of the chemical systems calibrate (seeded), the other half is tested, then the halves
  swap: chemistries the calibration never saw, as a user's are; one halving per seed (``--seeds``, default
  0-3), pooled and one by one (an element's offset is fixed by one or two compounds, so a single halving's
  energy figures swing with which side those fall on). Reported: how many structures get an energy
  interval, energy and force coverage, overall and for the magnetic 3d (spin-polarised, V–Ni) and ternary (≥ 3
  elements) systems, with the range over the halvings.

The calibrations fit the energy LLPR only (``target="energy"``, no feature gradients): the intervals and the
verdict come from the error models (docs/errormodel.md), which read the model's forces alone.

    OMP_NUM_THREADS=1 python examples/default_heldout.py --hessian H_proxy.nc [--out default_heldout.json]
        [--model sevennet] [--committee sevennet] [--seeds 0 1 2 3]

``--committee SPEC``: the recipe of a calibration whose force error model reads a second model's forces
(``chgnet-0.3.0+sevennet-0.nc``: CHGNet with ``--committee sevennet``).
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np


def group_of(atoms) -> list[str]:
    """The groups a structure reports under: "magnetic" (a magnetic 3d system: labelled spin-polarised, with an
    atom whose free 3d shell is open, V to Ni among the shipped; not WO3 and MoO2, labelled spin-polarised as
    Materials Project labels them), "ternary" (≥ 3 elements)."""
    from calib.uq.errormodel import unpaired_3d

    magnetic = atoms.info.get("spinpol") and any(unpaired_3d(int(z)) > 0 for z in set(atoms.numbers.tolist()))
    out = ["magnetic"] if magnetic else []
    return out + (["ternary"] if len(set(atoms.numbers.tolist())) >= 3 else [])


def _coverage(art, model, test, groups: dict | None = None):
    """(energy points, energy inside, force inside per element {el: [n, inside]}); with ``groups`` also the
    energy and force counts per group of :func:`group_of` (added to it)."""
    from calib import CalibratedPredictor
    from calib.data.structures import get_energy, get_forces

    ds = CalibratedPredictor(model, art, correction=False).predict(test, forces=True, force_mode="none",
                                                                   progress=False)
    owner, els = ds["structure_index"].values, ds["numbers"].values
    e_in, e_n, per_el = 0, 0, {}
    from ase.data import chemical_symbols

    for k, a in enumerate(test):
        lo, hi = ds["energy_low"].values[k], ds["energy_high"].values[k]
        m = owner == k
        f_in = (ds["forces_low"].values[m] <= get_forces(a)) & (get_forces(a) <= ds["forces_high"].values[m])
        for g in group_of(a) if groups is not None else []:
            acc = groups.setdefault(g, {"structures": 0, "energy_intervals": 0, "energy_inside": 0,
                                        "force_components": 0, "force_inside": 0})
            acc["structures"] += 1
            acc["energy_intervals"] += int(np.isfinite(lo))
            acc["energy_inside"] += int(np.isfinite(lo) and lo <= get_energy(a) <= hi)
            acc["force_components"] += int(f_in.size)
            acc["force_inside"] += int(f_in.sum())
        if np.isfinite(lo):
            e_n += 1
            e_in += int(lo <= get_energy(a) <= hi)
        live = ds["forces_sigma"].values[m] > 0
        for z, row, ok in zip(els[m], f_in, live):
            acc = per_el.setdefault(chemical_symbols[z], [0, 0])
            acc[0] += int(ok.sum())
            acc[1] += int((row & ok).sum())
    return e_n, e_in, per_el


#: element classes of the per-element coverage: s block (groups 1-2, with H), d block (groups 3-12), p block
S_BLOCK = {1, 3, 4, 11, 12, 19, 20, 37, 38, 55, 56, 87, 88}
D_BLOCK = set(range(21, 31)) | set(range(39, 49)) | {57} | set(range(72, 81))


def element_class(symbol: str) -> str:
    from ase.data import atomic_numbers

    z = atomic_numbers[symbol]
    return "s block" if z in S_BLOCK else "d block" if z in D_BLOCK else "p block"


def _by_class(per_el) -> dict:
    acc: dict = {}
    for el, (n, k) in per_el.items():
        c = acc.setdefault(element_class(el), [0, 0, 0])
        c[0] += 1
        c[1] += n
        c[2] += k
    return {c: {"elements": e, "components": n, "coverage": round(k / n, 3)} for c, (e, n, k) in sorted(acc.items())
            if n}


def _merge(per_el, more):
    for el, (n, k) in more.items():
        acc = per_el.setdefault(el, [0, 0])
        acc[0] += n
        acc[1] += k


def _halving(hess, model, structs, chem, chems, seed: int, committee):
    """(totals, force counts per element, group counts) of one seeded halving of the chemical systems ``chems``:
    each half calibrates, the other is tested."""
    from calib.workflows.calibration import calibrate

    rng = np.random.default_rng(seed)
    half = set(rng.permutation(chems)[: len(chems) // 2].tolist())
    fold = np.array([c in half for c in chem])
    tot = {"n_test": 0, "energy_intervals": 0, "energy_inside": 0}
    per_el: dict = {}
    groups: dict = {}
    for f in (fold, ~fold):
        art = calibrate(hess, model, [a for a, k in zip(structs, f) if k], alpha=0.1, target="energy",
                        with_forces=False, committee=committee, progress=False).artifact
        test = [a for a, k in zip(structs, f) if not k]
        e_n, e_in, pe = _coverage(art, model, test, groups)
        tot["n_test"] += len(test)
        tot["energy_intervals"] += e_n
        tot["energy_inside"] += e_in
        _merge(per_el, pe)
    return tot, per_el, groups


def _pool(runs):
    """The halvings' counts added up (every structure counted once per halving)."""
    tot = {"n_test": 0, "energy_intervals": 0, "energy_inside": 0}
    per_el: dict = {}
    groups: dict = {}
    for t, pe, gr in runs:
        for k in tot:
            tot[k] += t[k]
        _merge(per_el, pe)
        for g, v in gr.items():
            acc = groups.setdefault(g, dict.fromkeys(v, 0))
            for k in v:
                acc[k] += v[k]
    return tot, per_el, groups


def _summary(tot, per_el, groups) -> dict:
    return {**tot, "energy_coverage": tot["energy_inside"] / max(tot["energy_intervals"], 1),
            "fraction_with_interval": tot["energy_intervals"] / tot["n_test"],
            "force_coverage": sum(k for _, k in per_el.values()) / sum(n for n, _ in per_el.values()),
            "force_coverage_per_class": _by_class(per_el),
            "groups": {g: {**v, "energy_coverage": v["energy_inside"] / max(v["energy_intervals"], 1),
                           "force_coverage": v["force_inside"] / max(v["force_components"], 1)}
                       for g, v in groups.items()}}


def main(hessian: str, out: str, model_name: str = "chgnet", committee: str | None = None,
         seeds=(0, 1, 2, 3)) -> dict:
    from calib import datasets
    from calib.artifact import Artifact
    from calib.models import load_model
    from calib.workflows.calibration import calibrate
    from calib.workflows.hessian import build_hessian

    model = load_model(model_name)
    if os.path.exists(hessian):
        hess = Artifact.load(hessian)
    else:
        hess, _ = build_hessian(model, datasets.load("equilibrium-proxy"), batch_size=32)
        hess.save(hessian)
    structs = datasets.load("high-energy-states") + datasets.load("near-equilibrium")
    chem = np.array([a.info["chemsys"] for a in structs])
    # a hot system's frames alternate among themselves; the near-equilibrium structures (mostly one per
    # chemical system) alternate as one group
    system = np.array(["near-equilibrium" if "kind" in a.info else a.info["name"].rsplit("-md", 1)[0]
                       for a in structs])
    res = {"alpha": 0.1, "n_structures": len(structs)}
    # by structure
    rank = np.zeros(len(structs), dtype=int)
    for s in set(system.tolist()):
        idx = np.flatnonzero(system == s)
        rank[idx] = np.arange(len(idx))
    cal = [a for a, r in zip(structs, rank) if r % 2 == 0]
    test = [a for a, r in zip(structs, rank) if r % 2 == 1]
    art = calibrate(hess, model, cal, alpha=0.1, target="energy", with_forces=False, committee=committee,
                    progress=False).artifact
    e_n, e_in, per_el = _coverage(art, model, test)
    res["by_structure"] = {"n_calibration": len(cal), "n_test": len(test), "energy_intervals": e_n,
                           "energy_coverage": e_in / max(e_n, 1),
                           "force_coverage": sum(k for _, k in per_el.values()) / sum(n for n, _ in per_el.values()),
                           "force_coverage_per_class": _by_class(per_el),
                           "force_coverage_per_element": {el: [n, round(k / n, 3)] for el, (n, k) in
                                                          sorted(per_el.items()) if n}}
    # by chemistry: the chemical systems halved (one halving per seed), each half tested on chemistries it never
    # saw; an element's offset is fixed by one or two compounds, so one halving's energy figures swing with
    # which side those fall on: several halvings, pooled and one by one
    chems = sorted(set(chem.tolist()))
    runs = [_halving(hess, model, structs, chem, chems, seed, committee) for seed in seeds]
    res["by_chemistry"] = _summary(*_pool(runs))
    res["by_chemistry"]["seeds"] = list(seeds)
    res["by_chemistry_per_seed"] = {str(seed): _summary(*run) for seed, run in zip(seeds, runs)}
    for key in ("energy_coverage", "force_coverage"):
        vals = [v[key] for v in res["by_chemistry_per_seed"].values()]
        res["by_chemistry"][key + "_range"] = [min(vals), max(vals)]
    for g in res["by_chemistry"]["groups"]:
        for key in ("energy_coverage", "force_coverage"):
            vals = [v["groups"][g][key] for v in res["by_chemistry_per_seed"].values() if g in v["groups"]]
            res["by_chemistry"]["groups"][g][key + "_range"] = [min(vals), max(vals)]
    with open(out, "w") as fh:
        json.dump(res, fh, indent=1)
    return res


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--hessian", default="H_proxy.nc")
    p.add_argument("--out", default="default_heldout.json")
    p.add_argument("--model", default="chgnet", help="chgnet (default) or sevennet (the sevennet extra)")
    p.add_argument("--committee", default=None, help="a second model for the force error model (e.g. sevennet)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3], help="one halving by chemistry per seed")
    a = p.parse_args()
    print(json.dumps(main(a.hessian, a.out, a.model, a.committee, tuple(a.seeds)), indent=1))
