"""GPAW labels for a seeded sample of the equilibrium proxy: CHGNet's errors near equilibrium.

The high-energy states measure CHGNet far from equilibrium (1000 K MD). What a user screens is mostly
near equilibrium: relaxed cells, relaxation frames, small perturbations, as in the equilibrium proxy.
This script labels a sample of those with the same GPAW settings as the high-energy states (PAW-PBE,
plane waves 450 eV, Γ-centred k-point density 2.0 Å⁻¹, Fermi–Dirac 0.05 eV, force criterion 1e-3 eV/Å;
a cell on which GPAW's symmetry analysis fails is labelled again without symmetry, ``info["symmetry"]``),
so that calib's trust verdict and its defaults are measured on both regimes.

Sample: structures of the proxy with at most 12 atoms, none with a magnetic 3d element (Cr, Mn, Fe,
Co, Ni), an f element or a noble gas, none with a Materials Project +U element (Mo, V, W) together with
O or F (plain PBE labels would measure the functional mismatch there, as for the high-energy states);
30 of each kind (relaxed, trajectory, perturbed), drawn with seed 20261129, at most one structure per
chemical system and kind. Resumable (calib.data.labelers.label); run from the repository root::

    OMP_NUM_THREADS=1 python datasets/near-equilibrium/generate.py
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SEED = 20261129
PER_KIND = 30
MAX_ATOMS = 12
EXCLUDED = {"Cr", "Mn", "Fe", "Co", "Ni", "He", "Ne", "Ar", "Kr", "Xe", "Rn", "Ce", "La", "Lu"}
U_ELEMENTS = {"Mo", "V", "W"}


def sample(structures) -> list:
    rng = np.random.default_rng(SEED)
    out = []
    for kind in ("relaxed", "trajectory", "perturbed"):
        pool = [a for a in structures if a.info["kind"] == kind and len(a) <= MAX_ATOMS]
        pool = [a for a in pool if not (set(a.get_chemical_symbols()) & EXCLUDED)
                and not (set(a.get_chemical_symbols()) & U_ELEMENTS and set(a.get_chemical_symbols()) & {"O", "F"})]
        seen, picked = set(), []
        for i in rng.permutation(len(pool)):
            chem = pool[i].info["chemsys"]
            if chem in seen:
                continue
            seen.add(chem)
            picked.append(pool[i])
            if len(picked) == PER_KIND:
                break
        out += picked
    return out


def main() -> None:
    from calib import datasets
    from calib.data.labelers import GPAWFactory, label

    structs = sample(datasets.load("equilibrium-proxy"))
    for a in structs:
        a.info["proxy_name"] = a.info["name"]
    t0 = time.perf_counter()
    report = label(structs, os.path.join(HERE, "near-equilibrium.extxyz"),
                   GPAWFactory(cutoff=450.0, kdensity=2.0, spinpol=False), progress=False)
    log_path = os.path.join(HERE, "provenance.json")
    log = json.load(open(log_path)) if os.path.exists(log_path) else {"dft_seconds": 0.0}
    log.update(n_structures=len(structs), n_failed=len(report.failures), seed=SEED,
               dft_seconds=round(log["dft_seconds"] + time.perf_counter() - t0, 1))
    with open(log_path, "w") as fh:
        json.dump(log, fh, indent=1, sort_keys=True)
    print(f"{report.n_labelled} labelled, {report.n_done_before} done before, {len(report.failures)} failed")


if __name__ == "__main__":
    main()
