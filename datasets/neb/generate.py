"""Generate the shipped NEB paths: vacancy hops, CHGNet climbing-image NEB, GPAW-labelled images.

One protocol for every path (the table ``PATHS`` below). The conventional
cubic cell of the crystal is relaxed with CHGNet 0.3.0 (cell and positions,
FIRE, fmax 0.01 eV/Å) and repeated; one atom of the hopping species is
removed, and its nearest neighbour of the same species (minimum image) hops
into the vacancy. Both end points are relaxed with CHGNet at fixed cell
(FIRE, fmax 0.02 eV/Å); the path of 7 images (5 movable) is relaxed with
ASE's climbing-image NEB using CHGNet (FIRE, fmax 0.05 eV/Å); every image is
then labelled with GPAW PAW-PBE (PW 450 eV, k-point density 2.0 Å⁻¹) through
calib.data.labelers.label, resumably. The CHGNet energy of each image is kept in
``info["chgnet_energy"]`` (eV, total).

The first path (LiF) lives in this folder (``LiF-vacancy-hop.extxyz``,
``chgnet_path.extxyz``, ``provenance.json``); the others in ``paths/``
(``<name>-vacancy-hop.extxyz``, ``<name>_chgnet_path.extxyz``, one entry each
in ``paths/provenance.json``).

Run from the repository root (paths in the order given; each resumes)::

    OMP_NUM_THREADS=1 python datasets/neb/generate.py              # LiF
    OMP_NUM_THREADS=1 python datasets/neb/generate.py NaCl Al Li2O Si
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time
import warnings

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.filters import FrechetCellFilter
from ase.io import read, write
from ase.mep import NEB
from ase.optimize import FIRE

HERE = os.path.dirname(os.path.abspath(__file__))
N_IMAGES = 7
CUTOFF_EV = 450.0
KDENSITY = 2.0

#: name -> (ase.build.bulk arguments, hopping species, repeat of the conventional cube, description)
PATHS = {
    "LiF": (("LiF", "rocksalt", 4.03), "Li", (2, 1, 1), "LiF Li-vacancy hop [110]"),
    "NaCl": (("NaCl", "rocksalt", 5.64), "Na", (2, 1, 1), "NaCl Na-vacancy hop [110]"),
    "Al": (("Al", "fcc", 4.04), "Al", (2, 2, 1), "Al vacancy hop [110]"),
    # antifluorite: O on the fcc sites, Li in the tetrahedral holes; the Li hop is along [100] (a/2)
    "Li2O": (("OLi2", "fluorite", 4.61), "Li", (1, 1, 1), "Li2O Li-vacancy hop [100]"),
    "Si": (("Si", "diamond", 5.43), "Si", (2, 1, 1), "Si vacancy hop [111]"),
}


def files(name: str) -> tuple[str, str, str]:
    """(unlabelled CHGNet path, labelled images, provenance file) of one path."""
    if name == "LiF":
        return (os.path.join(HERE, "chgnet_path.extxyz"), os.path.join(HERE, "LiF-vacancy-hop.extxyz"),
                os.path.join(HERE, "provenance.json"))
    sub = os.path.join(HERE, "paths")
    return (os.path.join(sub, f"{name}_chgnet_path.extxyz"), os.path.join(sub, f"{name}-vacancy-hop.extxyz"),
            os.path.join(sub, "provenance.json"))


def calculator():
    from chgnet.model import CHGNet
    from chgnet.model.dynamics import CHGNetCalculator

    with contextlib.redirect_stdout(io.StringIO()):
        model = CHGNet.load(model_name="0.3.0", use_device="cpu", verbose=False)
        return CHGNetCalculator(model=model, use_device="cpu")


def endpoints(calc, name: str) -> tuple[Atoms, Atoms]:
    (formula, structure, a0), species, repeat, _ = PATHS[name]
    cell = bulk(formula, structure, a=a0, cubic=True)
    cell.calc = calc
    FIRE(FrechetCellFilter(cell), logfile=None).run(fmax=0.01, steps=200)
    sc = Atoms(cell.numbers, positions=cell.get_positions(), cell=cell.cell[:], pbc=True) * repeat
    same = [i for i, s in enumerate(sc.get_chemical_symbols()) if s == species]
    vac = same[0]
    vac_pos = sc.positions[vac].copy()
    # nearest atom of the same species to the vacancy (minimum image): the hopping atom
    d = sc.get_distances(vac, same[1:], mic=True, vector=True)
    hop = same[1:][int(np.argmin(np.linalg.norm(d, axis=1)))]
    initial = sc.copy()
    del initial[vac]
    hop_i = hop - 1 if hop > vac else hop
    final = initial.copy()
    # move the hopping atom onto the vacancy site (the periodic image nearest to it)
    shift = vac_pos - sc.positions[hop]
    shift -= sc.cell[:].T @ np.round(np.linalg.solve(sc.cell[:].T, shift))
    final.positions[hop_i] += shift
    for end in (initial, final):
        end.calc = calc
        FIRE(end, logfile=None).run(fmax=0.02, steps=300)
    return initial, final


def generate(name: str) -> dict:
    from calib.data.labelers import GPAWFactory, label
    from calib.data.structures import chemsys

    path_file, out_file, prov_file = files(name)
    os.makedirs(os.path.dirname(out_file), exist_ok=True)
    t0 = time.perf_counter()
    if os.path.exists(path_file):
        images = read(path_file, index=":")
    else:
        calc = calculator()
        initial, final = endpoints(calc, name)
        images = [initial] + [initial.copy() for _ in range(N_IMAGES - 2)] + [final]
        neb = NEB(images, climb=True, allow_shared_calculator=True)
        neb.interpolate(mic=True)
        for im in images[1:-1]:
            im.calc = calc
        FIRE(neb, logfile=None).run(fmax=0.05, steps=400)
        out = []
        for k, im in enumerate(images):
            im.calc = calc
            e = float(im.get_potential_energy())
            a = Atoms(im.numbers, positions=im.get_positions(), cell=im.cell[:], pbc=True)
            a.info.update(name=f"{name}-vac-hop-{k}", path=PATHS[name][3], image=k,
                          chgnet_energy=e, chgnet_model="0.3.0")
            a.info["chemsys"] = chemsys(a)
            out.append(a)
        images = out
        write(path_file, images, format="extxyz")
    t_neb = time.perf_counter() - t0
    report = label(images, out_file, GPAWFactory(cutoff=CUTOFF_EV, kdensity=KDENSITY), progress=True)
    e_dft = [float(a.get_potential_energy()) for a in read(out_file, index=":")]
    e_ml = [a.info["chgnet_energy"] for a in images]
    meta = {"n_images": len(images), "neb_seconds": round(t_neb, 1), "dft_seconds": round(report.seconds, 1),
            "n_failed": len(report.failures),
            "barrier_chgnet_eV": max(e_ml) - e_ml[0],
            "barrier_gpaw_eV": (max(e_dft) - e_dft[0]) if len(e_dft) == len(images) else None}
    if name == "LiF":
        record = meta
    else:
        record = json.load(open(prov_file)) if os.path.exists(prov_file) else {}
        record[name] = {**meta, "path": PATHS[name][3], "n_atoms": len(images[0])}
    with open(prov_file, "w") as fh:
        json.dump(record, fh, indent=1)
    return meta


def main(argv: list[str]) -> None:
    warnings.simplefilter("ignore")
    for name in argv or ["LiF"]:
        if name not in PATHS:
            raise SystemExit(f"unknown path {name!r}; known: {', '.join(PATHS)}")
        print(name, json.dumps(generate(name)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
