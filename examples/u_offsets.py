"""One energy offset per element, or one more for the element under GGA+U? (calib/data/artifacts/README.md)

CHGNet learned Materials Project's energies, GGA+U on oxides and fluorides of Co, Cr, Fe, Mn, Mo, Ni, V, W; the
shipped GPAW labels use the same U there (datasets/high-energy-states). A +U energy sits on another zero than the
plain energy of the same element, so calib gives such atoms their own offset ("Fe (U)",
calib.uq.reference.reference_species). This script measures the choice on every shipped label: the element
reference fitted both ways, and each structure's residual (reference − model − shift, eV/atom) under a
reference fitted without its chemical system (grouped, as a new compound's), for the systems that hold a U
element, metals and compounds.

    OMP_NUM_THREADS=1 python examples/u_offsets.py [--out u_offsets.json]
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def main(out: str) -> dict:
    import calib.uq.reference as reference
    from calib import datasets
    from calib.data.structures import get_energy
    from calib.models import load_model
    from calib.uq.errormodel import grouped_energy_residuals

    structs = datasets.load("high-energy-states") + datasets.load("near-equilibrium")
    model = load_model("chgnet")
    pred = model.predict(structs, forces=False, progress=False)
    delta = np.array([get_energy(a) for a in structs]) - pred.energy
    numbers = [a.numbers for a in structs]
    chem = np.array(pred.chemsys)
    u_elements = {24, 25, 26, 27, 28, 23, 42, 74}
    has_u = np.array([bool(set(n.tolist()) & u_elements) for n in numbers])
    res = {"n_structures": len(structs), "systems_with_a_u_element": sorted(set(chem[has_u].tolist()))}
    species = reference.reference_species
    for name, fn in (("separate offsets under U", species), ("one offset per element", np.asarray)):
        reference.reference_species = fn
        try:
            ref = reference.ElementReference().fit(numbers, delta)
            inside = (delta - ref.predict(numbers)) / np.array([len(n) for n in numbers])
            grouped, _ = grouped_energy_residuals(numbers, delta, chem, 10)
        finally:
            reference.reference_species = species
        per = {}
        for c in sorted(set(chem[has_u].tolist())):
            m = chem == c
            per[c] = {"in_sample_rms": round(float(np.sqrt(np.mean(inside[m] ** 2))), 4),
                      "new_chemistry_rms": (round(float(np.sqrt(np.nanmean(grouped[m] ** 2))), 4)
                                            if np.isfinite(grouped[m]).any() else None)}
        res[name] = {"offsets": {k: round(v, 4) for k, v in ref.as_dict().items()
                                 if any(k.startswith(s) for s in ("Co", "Cr", "Fe", "Mn", "Mo", "Ni", "V", "W"))},
                     "all_in_sample_rms": round(float(np.sqrt(np.mean(inside**2))), 4), "systems": per}
    with open(out, "w") as fh:
        json.dump(res, fh, indent=1)
    return res


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="u_offsets.json")
    a = p.parse_args()
    print(json.dumps(main(a.out), indent=1))
