"""Per-chemistry summary of the shipped high-energy states: counts, DFT wall time, and CHGNet's
softening scale s = Σ f_ml·f_ref / Σ f_ref² (least-squares slope through the origin over all force
components, Deng et al.). Prints the markdown table quoted in README.md.

    OMP_NUM_THREADS=1 python datasets/high-energy-states/summarize.py
"""

import json
import os

import numpy as np

from calib import datasets
from calib.data.structures import get_forces, group_by_chemsys
from calib.models.chgnet import CHGNetAdapter

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    model = CHGNetAdapter()
    structs = datasets.load("high-energy-states")
    prov = json.load(open(os.path.join(HERE, "provenance.json")))
    print("| chemsys | frames | atoms | k-points | DFT s/frame | max abs F_DFT (eV/Å) | force MAE (eV/Å) | softening scale s |")
    print("|---|---|---|---|---|---|---|---|")
    for cs, idx in group_by_chemsys(structs).items():
        group = [structs[i] for i in idx]
        pred = model.predict(group, forces=True)
        f_ref = np.concatenate([get_forces(a) for a in group]).ravel()
        f_ml = pred.forces.ravel()
        s = float(f_ml @ f_ref / (f_ref @ f_ref))
        secs = np.mean([a.info.get("label_seconds", np.nan) for a in group])
        kpts = "×".join(str(k) for k in np.atleast_1d(group[0].info["kpts"]))
        print(f"| {cs} | {len(group)} | {len(group[0])} | {kpts} | {secs:.0f} | {np.abs(f_ref).max():.2f} | "
              f"{np.mean(np.abs(f_ml - f_ref)):.3f} | {s:.3f} |")
    del prov


if __name__ == "__main__":
    main()
