"""Generate the shipped NEB path: a Li vacancy hop in LiF, CHGNet NEB, GPAW-labelled images.

Cell: rocksalt LiF, the 8-atom conventional cube at CHGNet's relaxed lattice
constant, doubled along x (16 atoms), one Li removed (15 atoms). The
neighbouring Li at a/√2 hops into the vacancy along [110]. Both end points
are relaxed with CHGNet 0.3.0 at fixed cell (FIRE, fmax 0.02 eV/Å); the path
of 7 images (5 movable) is relaxed with ASE's climbing-image NEB using
CHGNet (FIRE, fmax 0.05 eV/Å); every image is then labelled with GPAW
PAW-PBE (PW 450 eV, k-point density 2.0 Å⁻¹) through calib.labelers.label,
resumably. The CHGNet energy of each image is kept in ``info["chgnet_energy"]`` (eV).

Run from the repository root::

    OMP_NUM_THREADS=1 python datasets/neb/generate.py
"""

from __future__ import annotations

import contextlib
import io
import json
import os
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
PATH_FILE = os.path.join(HERE, "chgnet_path.extxyz")
OUT = os.path.join(HERE, "LiF-vacancy-hop.extxyz")
N_IMAGES = 7
CUTOFF_EV = 450.0
KDENSITY = 2.0


def calculator():
    from chgnet.model import CHGNet
    from chgnet.model.dynamics import CHGNetCalculator

    with contextlib.redirect_stdout(io.StringIO()):
        model = CHGNet.load(model_name="0.3.0", use_device="cpu", verbose=False)
        return CHGNetCalculator(model=model, use_device="cpu")


def endpoints(calc) -> tuple[Atoms, Atoms]:
    cell = bulk("LiF", "rocksalt", a=4.03, cubic=True)
    cell.calc = calc
    FIRE(FrechetCellFilter(cell), logfile=None).run(fmax=0.01, steps=200)
    a = cell.cell[0, 0]
    sc = Atoms(cell.numbers, positions=cell.get_positions(), cell=cell.cell[:], pbc=True) * (2, 1, 1)
    li = [i for i, z in enumerate(sc.numbers) if z == 3]
    vac = li[0]
    vac_pos = sc.positions[vac].copy()
    # nearest Li to the vacancy (minimum image), the hopping atom
    d = sc.get_distances(vac, li[1:], mic=True, vector=True)
    hop = li[1:][int(np.argmin(np.linalg.norm(d, axis=1)))]
    assert abs(np.linalg.norm(d, axis=1).min() - a / np.sqrt(2)) < 1e-6
    initial = sc.copy()
    del initial[vac]
    hop_i = hop - 1 if hop > vac else hop
    final = initial.copy()
    # move the hopping Li onto the vacancy site (the periodic image nearest to it)
    shift = vac_pos - sc.positions[hop]
    shift -= sc.cell[:].T @ np.round(np.linalg.solve(sc.cell[:].T, shift))
    final.positions[hop_i] += shift
    for end in (initial, final):
        end.calc = calc
        FIRE(end, logfile=None).run(fmax=0.02, steps=300)
    return initial, final


def main() -> None:
    from calib.labelers import GPAWFactory, label
    from calib.structures import chemsys

    warnings.simplefilter("ignore")
    t0 = time.perf_counter()
    if os.path.exists(PATH_FILE):
        images = read(PATH_FILE, index=":")
    else:
        calc = calculator()
        initial, final = endpoints(calc)
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
            a.info.update(name=f"LiF-vac-hop-{k}", path="LiF Li-vacancy hop [110]", image=k,
                          chgnet_energy=e, chgnet_model="0.3.0")
            a.info["chemsys"] = chemsys(a)
            out.append(a)
        images = out
        write(PATH_FILE, images, format="extxyz")
    t_neb = time.perf_counter() - t0
    report = label(images, OUT, GPAWFactory(cutoff=CUTOFF_EV, kdensity=KDENSITY), progress=True)
    e_dft = [float(a.get_potential_energy()) for a in read(OUT, index=":")]
    e_ml = [a.info["chgnet_energy"] for a in images]
    meta = {"n_images": len(images), "neb_seconds": round(t_neb, 1), "dft_seconds": round(report.seconds, 1),
            "n_failed": len(report.failures),
            "barrier_chgnet_eV": max(e_ml) - e_ml[0],
            "barrier_gpaw_eV": (max(e_dft) - e_dft[0]) if len(e_dft) == len(images) else None}
    with open(os.path.join(HERE, "provenance.json"), "w") as fh:
        json.dump(meta, fh, indent=1)
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
