"""Generate the equilibrium-proxy set: unlabelled near-equilibrium crystals.

A stand-in for CHGNet's training distribution (MPtrj relaxation
trajectories), which cannot be downloaded here. Sources, all relaxed with
CHGNet 0.3.0 (positions and cell, FIRE, fmax 0.1 eV/Å, at most 80 steps):

* the 71 elemental crystals of ``ase.collections.dcdft``;
* the crystals bundled with pymatgen (``pymatgen/util/structures``, ≤ 30 atoms);
* charge-balanced binary and ternary prototypes with substituted elements:
  rocksalt, zincblende, wurtzite, CsCl (AB), fluorite and rutile (AB2),
  anti-fluorite (A2B) and cubic perovskite (ABO3).

For every relaxed crystal we keep five structures, as a relaxation
trajectory would: the relaxed cell, one frame from the middle of the CHGNet
relaxation, and three perturbations (Gaussian rattle of 0.01–0.05 Å and a
random symmetric strain of up to 2 %). Seeded; writes ``proxy.extxyz.gz``.

Run from the repository root::

    OMP_NUM_THREADS=1 python datasets/equilibrium-proxy/generate.py
"""

from __future__ import annotations

import contextlib
import glob
import io
import json
import os
import time
import warnings

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.data import atomic_numbers, covalent_radii
from ase.filters import FrechetCellFilter
from ase.io import write
from ase.optimize import FIRE
from ase.spacegroup import crystal

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "proxy.extxyz.gz")
SEED = 20261122
FMAX = 0.1
MAX_STEPS = 80
N_PERTURBED = 3

# oxidation states used for charge balance (the common one for each element)
CATIONS = {
    1: ["Li", "Na", "K", "Rb", "Cs", "Cu", "Ag"],
    2: ["Be", "Mg", "Ca", "Sr", "Ba", "Mn", "Fe", "Co", "Ni", "Zn", "Cd", "Sn", "Pb"],
    3: ["Al", "Ga", "In", "Sc", "Y", "La", "B", "Cr"],
    4: ["Ti", "Zr", "Hf", "Si", "Ge", "Sn", "Ce"],
}
ANIONS = {1: ["F", "Cl", "Br", "I"], 2: ["O", "S", "Se", "Te"], 3: ["N", "P", "As"]}
PEROVSKITE_A = {1: ["Na", "K"], 2: ["Ca", "Sr", "Ba"], 3: ["La", "Y"]}
PEROVSKITE_B = {5: ["Nb", "Ta", "V"], 4: ["Ti", "Zr", "Hf", "Sn"], 3: ["Al", "Ga", "Sc", "Fe", "Cr"]}


def bond(a: str, b: str) -> float:
    return float(covalent_radii[atomic_numbers[a]] + covalent_radii[atomic_numbers[b]])


def prototypes() -> list[tuple[str, Atoms]]:
    out = []
    for q, cats in CATIONS.items():
        for an in ANIONS.get(q, []):
            for cat in cats:
                d = bond(cat, an)
                out.append((f"{cat}{an}-rocksalt", bulk(f"{cat}{an}", "rocksalt", a=2 * d)))
                out.append((f"{cat}{an}-zincblende", bulk(f"{cat}{an}", "zincblende", a=4 * d / np.sqrt(3))))
                if q in (2, 3):
                    a = d * np.sqrt(8 / 3)
                    out.append((f"{cat}{an}-wurtzite", bulk(f"{cat}{an}", "wurtzite", a=a, c=a * 1.633)))
                if q == 1:
                    out.append((f"{cat}{an}-CsCl", bulk(f"{cat}{an}", "cesiumchloride", a=2 * d / np.sqrt(3))))
    for cat in CATIONS[2]:  # AB2 with halides: fluorite and rutile
        for an in ("F", "Cl"):
            d = bond(cat, an)
            out.append((f"{cat}{an}2-fluorite", bulk(f"{cat}{an}2", "fluorite", a=4 * d / np.sqrt(3))))
            out.append((f"{cat}{an}2-rutile", rutile(cat, an, d)))
    for cat in CATIONS[4]:  # AB2 oxides
        d = bond(cat, "O")
        out.append((f"{cat}O2-fluorite", bulk(f"{cat}O2", "fluorite", a=4 * d / np.sqrt(3))))
        out.append((f"{cat}O2-rutile", rutile(cat, "O", d)))
    for cat in CATIONS[1][:5]:  # anti-fluorite A2B
        for an in ("O", "S", "Se"):
            d = bond(cat, an)
            anti = bulk(f"{an}{cat}2", "fluorite", a=4 * d / np.sqrt(3))
            out.append((f"{cat}2{an}-antifluorite", anti))
    for qa, As in PEROVSKITE_A.items():
        for b in PEROVSKITE_B.get(6 - qa, []):
            for a in As:
                out.append((f"{a}{b}O3-perovskite", perovskite(a, b, 2 * bond(b, "O"))))
    return out


def rutile(cat: str, an: str, d: float) -> Atoms:
    a = d / 0.43  # rutile: cation-anion distance ≈ 0.43 a
    return crystal([cat, an], basis=[(0, 0, 0), (0.3, 0.3, 0)], spacegroup=136,
                   cellpar=[a, a, 0.64 * a, 90, 90, 90])


def perovskite(a: str, b: str, lat: float) -> Atoms:
    return Atoms([a, b, "O", "O", "O"], cell=np.eye(3) * lat, pbc=True,
                 scaled_positions=[(0.5, 0.5, 0.5), (0, 0, 0), (0.5, 0, 0), (0, 0.5, 0), (0, 0, 0.5)])


def sources() -> list[tuple[str, str, Atoms]]:
    import pymatgen.util
    from ase.collections import dcdft
    from pymatgen.core import Structure
    from pymatgen.io.ase import AseAtomsAdaptor

    out = [("dcdft", f"{n}-dcdft", dcdft[n]) for n in dcdft.names]
    folder = os.path.join(os.path.dirname(pymatgen.util.__file__), "structures")
    for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
        name = os.path.basename(path)[:-5]
        s = Structure.from_dict(json.load(open(path)))
        if len(s) <= 30 and "Interface" not in name and s.is_ordered:
            out.append(("pymatgen", f"{name}-pymatgen", AseAtomsAdaptor.get_atoms(s)))
    out += [("prototype", name, atoms) for name, atoms in prototypes()]
    return out


def relax(atoms: Atoms, calc) -> tuple[Atoms, Atoms]:
    """(relaxed, a frame from the middle of the relaxation)."""
    atoms = atoms.copy()
    atoms.calc = calc
    frames = []
    opt = FIRE(FrechetCellFilter(atoms), logfile=None)
    opt.attach(lambda: frames.append(atoms.copy()), interval=1)
    opt.run(fmax=FMAX, steps=MAX_STEPS)
    mid = frames[len(frames) // 2] if frames else atoms.copy()
    return atoms, mid


def perturb(atoms: Atoms, rng: np.random.Generator) -> Atoms:
    a = atoms.copy()
    a.calc = None
    eps = rng.uniform(-0.02, 0.02, (3, 3))
    a.set_cell(a.cell[:] @ (np.eye(3) + 0.5 * (eps + eps.T)), scale_atoms=True)
    a.positions += rng.normal(0.0, rng.uniform(0.01, 0.05), a.positions.shape)
    return a


def plain(atoms: Atoms, **info) -> Atoms:
    from calib.data.structures import chemsys

    a = Atoms(atoms.numbers, positions=atoms.get_positions(), cell=atoms.cell[:], pbc=True)
    a.info.update(info)
    a.info["chemsys"] = chemsys(a)
    return a


def main() -> None:
    from chgnet.model import CHGNet
    from chgnet.model.dynamics import CHGNetCalculator
    from tqdm import tqdm

    from calib.data.structures import StructureError, check_structure

    warnings.simplefilter("ignore")
    with contextlib.redirect_stdout(io.StringIO()):
        model = CHGNet.load(model_name="0.3.0", use_device="cpu", verbose=False)
        calc = CHGNetCalculator(model=model, use_device="cpu")
    rng = np.random.default_rng(SEED)
    out, skipped = [], []
    t0 = time.perf_counter()
    for source, name, atoms in tqdm(sources(), desc="relaxing", unit="crystal"):
        try:
            relaxed, mid = relax(atoms, calc)
            group = [plain(relaxed, name=name, source=source, kind="relaxed"),
                     plain(mid, name=name, source=source, kind="trajectory")]
            group += [plain(perturb(relaxed, rng), name=name, source=source, kind="perturbed")
                      for _ in range(N_PERTURBED)]
            for a in group:  # a crystal that collapsed or exploded is not near equilibrium
                check_structure(a, cutoff=5.0)
                if a.get_volume() / len(a) > 120:
                    raise StructureError(None, f"volume {a.get_volume() / len(a):.0f} Å³/atom after relaxation")
        except Exception as exc:  # record and go on: one bad prototype must not stop the set
            skipped.append({"name": name, "error": f"{type(exc).__name__}: {exc}"})
            continue
        out.extend(group)
    write(OUT, out, format="extxyz")
    meta = {"n_structures": len(out), "n_crystals": len(out) // (2 + N_PERTURBED), "skipped": skipped,
            "seconds": round(time.perf_counter() - t0, 1), "seed": SEED, "fmax_eV_per_A": FMAX,
            "max_steps": MAX_STEPS, "n_elements": len({z for a in out for z in a.numbers})}
    with open(os.path.join(HERE, "provenance.json"), "w") as fh:
        json.dump(meta, fh, indent=1)
    print(json.dumps({k: v for k, v in meta.items() if k != "skipped"}), f"{len(skipped)} skipped")


if __name__ == "__main__":
    main()
