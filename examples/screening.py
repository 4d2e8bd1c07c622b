"""The screening run of docs/screening.md.

1. Candidates: the shipped near-equilibrium proxy (2530 crystals) followed by perturbed copies of every
   tenth of them (rattled by 0.1 and 0.3 Å, or strained by ±8 %) and four bad frames; screened in the
   default mode (energies, σ, intervals, Q score, model forces) with ``calib screen``'s library function.
2. The held-out GPAW-labelled high-energy states (the frames ``calib demo`` did not calibrate on),
   screened with ``forces=True``: the trust signals against the real DFT errors, as a figure.

Needs the artifact of ``calib demo`` (default ``calib-demo/calibration.nc``).

    python examples/screening.py --calibration calib-demo/calibration.nc --out docs/figures/screening
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

import numpy as np


def candidates(seed: int = 0):
    from ase import Atoms

    from calib import datasets

    rng = np.random.default_rng(seed)
    proxy = datasets.load("equilibrium-proxy")
    out = list(proxy)
    for k, atoms in enumerate(proxy[::10]):
        a = atoms.copy()
        kind = k % 3
        if kind == 0:
            a.positions += rng.normal(0, 0.1, a.positions.shape)
            a.info["name"] = f"{a.get_chemical_formula()}-rattle0.1"
        elif kind == 1:
            a.positions += rng.normal(0, 0.3, a.positions.shape)
            a.info["name"] = f"{a.get_chemical_formula()}-rattle0.3"
        else:
            a.set_cell(a.cell * (1 + rng.choice([-0.08, 0.08])), scale_atoms=True)
            a.info["name"] = f"{a.get_chemical_formula()}-strain8%"
        out.append(a)
    bad = proxy[0].copy()
    bad.positions[0, 0] = np.nan
    close = proxy[1].copy()
    close.positions[1] = close.positions[0] + 0.2
    unknown = proxy[2].copy()
    unknown.numbers[0] = 100
    out += [bad, close, unknown, Atoms(cell=np.eye(3) * 4, pbc=True)]
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--calibration", default="calib-demo/calibration.nc")
    ap.add_argument("--out", default="docs/figures/screening")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "calib-screening"),
                    help="inputs and results files (resumable)")
    args = ap.parse_args()
    import ase.io
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from calib import datasets
    from calib.data.structures import get_energy, get_forces
    from calib.workflows.demo import split_by_chemsys
    from calib.workflows.screen import read_results, screen

    os.makedirs(args.out, exist_ok=True)
    work = args.work
    os.makedirs(work, exist_ok=True)
    cand = os.path.join(work, "candidates.extxyz")
    if not os.path.exists(cand):
        ase.io.write(cand, candidates())
    client = None
    if args.workers:
        from calib.workflows.distributed import start_client

        client = start_client(workers=args.workers)
    res_path = os.path.join(work, "candidates.nc")
    summary = screen([cand], args.calibration, res_path, resume=os.path.exists(res_path), client=client)
    print(json.dumps({k: v for k, v in summary.items() if k != "by_chemsys"}, indent=1))
    with open(os.path.join(args.out, "summary.json"), "w") as fh:
        json.dump({k: v for k, v in summary.items() if k != "output"}, fh, indent=1)
    ds = read_results(res_path)
    names = ds["name"].values.astype(str)
    kinds = np.array(["bad frame" if s == "failed" else
                      ("rattled 0.3 Å" if n.endswith("rattle0.3") else "rattled 0.1 Å" if n.endswith("rattle0.1")
                       else "strained 8 %" if n.endswith("strain8%") else "proxy (equilibrium)")
                      for n, s in zip(names, ds["status"].values.astype(str))])
    table = {}
    for k in np.unique(kinds):
        sel = kinds == k
        st = ds["status"].values.astype(str)[sel]
        ood = np.array(["out of the model's domain" in r for r in ds["trust_reason"].values.astype(str)[sel]])
        # a missing element offset removes the absolute energy interval; it is not a trust reason
        noref = np.array([bool(r) for r in ds["energy_interval_reason"].values.astype(str)[sel]])
        table[k] = {"n": int(sel.sum()), "trusted": int((st == "trusted").sum()),
                    "untrusted": int((st == "untrusted").sum()), "failed": int((st == "failed").sum()),
                    "out_of_domain": int(ood.sum()), "no_absolute_energy_interval": int(noref.sum()),
                    "median_q_score": float(np.nanmedian(ds["q_score"].values[sel])) if k != "bad frame" else None}
    print(json.dumps(table, indent=1))

    # labelled held-out frames: signals against real errors
    from calib.data.prototypes import first_release

    first = first_release(datasets.load("high-energy-states"))
    _, test = split_by_chemsys(first)  # the demo's held-out half of its 14 chemistries
    lab = os.path.join(work, "heldout.extxyz")
    if not os.path.exists(lab):
        ase.io.write(lab, test)
    lab_path = os.path.join(work, "heldout.nc")
    screen([lab], args.calibration, lab_path, forces=True, resume=os.path.exists(lab_path), client=client)
    h = read_results(lab_path)
    from calib import CalibratedPredictor

    pred = CalibratedPredictor.from_file(args.calibration).predict(test, forces=True, force_mode="none")
    owner = pred["structure_index"].values
    f_err = np.array([np.abs(get_forces(a) - pred["forces"].values[owner == i]).max() for i, a in enumerate(test)])
    e_ref = np.array([get_energy(a) for a in test])
    e_err = np.abs(e_ref - h["energy_centre"].values) / h["n_atoms"].values
    half_e = 0.5 * (h["energy_high"].values - h["energy_low"].values) / h["n_atoms"].values
    half_f = h["force_error_bound"].values
    fig, ax = plt.subplots(1, 3, figsize=(13, 4))
    ax[0].hist([np.log10(ds["q_score"].values[kinds == k]) for k in table if k != "bad frame"],
               bins=40, label=[k for k in table if k != "bad frame"], histtype="step", linewidth=1.5, density=True)
    ax[0].axvline(0, color="k", ls="--", lw=1)
    ax[0].set_xlabel("log10 Q score (> 0: out of the model's domain)")
    ax[0].set_ylabel("density")
    ax[0].legend(fontsize=7)
    ax[0].set_title("candidates")
    lim = max(half_f.max(), f_err.max()) * 1.05
    ax[1].scatter(half_f, f_err, s=14)
    ax[1].plot([0, lim], [0, lim], "k--", lw=1)
    ax[1].set_xlabel("calibrated bound on the largest force error (eV/Å)")
    ax[1].set_ylabel("max |F_DFT − F_CHGNet| (eV/Å)")
    ax[1].set_title("held-out GPAW frames: forces")
    lim = max(np.nanmax(half_e), np.nanmax(e_err)) * 1.05
    ax[2].scatter(half_e, e_err, s=14)
    ax[2].plot([0, lim], [0, lim], "k--", lw=1)
    ax[2].set_xlabel("energy half-width per atom (eV/atom)")
    ax[2].set_ylabel("|E_DFT − centre| per atom (eV/atom)")
    ax[2].set_title("held-out GPAW frames: energies")
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "screening.png"), dpi=110)
    from calib.uq.metrics import spearman

    inside_e = float(np.nanmean(e_err <= half_e))
    from calib.uq.metrics import verdict_quality
    from calib.uq.trust import FORCE_TOL

    trusted = h["status"].values.astype(str) == "trusted"
    print(json.dumps({"heldout_structures": len(test), "energy_inside_interval": inside_e,
                      "max_force_error_below_bound": float(np.mean(f_err <= half_f)),
                      "spearman_force_bound_vs_error": spearman(half_f, f_err),
                      "verdict": verdict_quality(f_err, trusted, h["trust_score"].values, h["max_force"].values,
                                                 FORCE_TOL),
                      "spearman_energy_halfwidth_vs_error": spearman(half_e, e_err),
                      "heldout_trusted": int((h["status"].values.astype(str) == "trusted").sum())}, indent=1))


if __name__ == "__main__":
    main()
