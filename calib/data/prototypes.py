"""Built-in prototype crystals (8–16 atoms) and small perturbed sets made from them.

Used by the shipped-data generation scripts (``datasets/``), by ``calib demo``
as a stand-in near-equilibrium set, and by the tests. Lattice constants are
experimental room-temperature values in Å; nothing is downloaded.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.build import bulk, make_supercell
from ase.spacegroup import crystal


def rutile(a: float, c: float, u: float, cation: str, anion: str = "O") -> Atoms:
    return crystal([cation, anion], basis=[(0, 0, 0), (u, u, 0)], spacegroup=136, cellpar=[a, a, c, 90, 90, 90])


def wurtzite(a: float, c: float, cation: str, anion: str, u: float = 0.38) -> Atoms:
    return crystal([cation, anion], basis=[(1 / 3, 2 / 3, 0), (1 / 3, 2 / 3, u)], spacegroup=186,
                   cellpar=[a, a, c, 90, 90, 120])


def li3n() -> Atoms:
    return crystal(["N", "Li", "Li"], basis=[(0, 0, 0), (0, 0, 0.5), (1 / 3, 2 / 3, 0)], spacegroup=191,
                   cellpar=[3.65, 3.65, 3.87, 90, 90, 120])


def perovskite(a: float, a_site: str, b_site: str) -> Atoms:
    return crystal([a_site, b_site, "O"], basis=[(0, 0, 0), (0.5, 0.5, 0.5), (0.5, 0.5, 0)], spacegroup=221,
                   cellpar=[a, a, a, 90, 90, 90])


def supercell(atoms: Atoms, reps) -> Atoms:
    return make_supercell(atoms, np.diag(reps))


#: name -> builder, ordered from cheapest to dearest in plane-wave DFT
PROTOTYPES = {
    "Si": lambda: bulk("Si", "diamond", 5.43, cubic=True),
    "C": lambda: bulk("C", "diamond", 3.57, cubic=True),
    "SiC": lambda: bulk("SiC", "zincblende", 4.36, cubic=True),
    "BN": lambda: bulk("BN", "zincblende", 3.62, cubic=True),
    "Al": lambda: supercell(bulk("Al", "fcc", 4.05, cubic=True), (2, 1, 1)),
    "LiF": lambda: bulk("LiF", "rocksalt", 4.03, cubic=True),
    "LiCl": lambda: bulk("LiCl", "rocksalt", 5.13, cubic=True),
    "NaCl": lambda: bulk("NaCl", "rocksalt", 5.64, cubic=True),
    "Mg": lambda: supercell(bulk("Mg", "hcp", 3.21, 5.21), (2, 2, 1)),
    "AlN": lambda: supercell(wurtzite(3.11, 4.98, "Al", "N"), (2, 1, 1)),
    "Li3N": lambda: supercell(li3n(), (2, 1, 1)),
    "ZnS": lambda: bulk("ZnS", "zincblende", 5.41, cubic=True),
    "Li2O": lambda: bulk("Li2O", "fluorite", 4.61, cubic=True),
    "CaF2": lambda: bulk("CaF2", "fluorite", 5.46, cubic=True),
    "TiO2": lambda: supercell(rutile(4.59, 2.96, 0.305, "Ti"), (1, 1, 2)),
    "ZnO": lambda: supercell(wurtzite(3.25, 5.21, "Zn", "O"), (2, 1, 1)),
    "SrTiO3": lambda: supercell(perovskite(3.905, "Sr", "Ti"), (2, 1, 1)),
}


def prototype(name: str) -> Atoms:
    """A fresh copy of the named prototype, with ``info['name']`` set."""
    if name not in PROTOTYPES:
        raise KeyError(f"unknown prototype {name!r}; known: {', '.join(PROTOTYPES)}")
    atoms = PROTOTYPES[name]()
    atoms.info["name"] = name
    return atoms


def perturbed_set(names=None, n_variants: int = 4, rattle: float = 0.03, strain: float = 0.01,
                  seed: int = 0) -> list[Atoms]:
    """Near-equilibrium variants: each prototype rattled (σ ``rattle`` Å) and isotropically
    strained by a uniform random factor in ±``strain``. Seeded."""
    rng = np.random.default_rng(seed)
    out = []
    for name in names or PROTOTYPES:
        for k in range(n_variants):
            atoms = prototype(name)
            atoms.set_cell(atoms.cell[:] * (1 + rng.uniform(-strain, strain)), scale_atoms=True)
            atoms.positions += rng.normal(0.0, rattle, atoms.positions.shape)
            atoms.info["name"] = f"{name}-p{k}"
            out.append(atoms)
    return out
