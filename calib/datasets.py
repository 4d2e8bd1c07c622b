"""Shipped reference data: ``names()`` and ``load(name)``.

The data live in the repository's top-level ``datasets/`` folder beside the
scripts that made them (provenance in each folder's README). calib finds it
next to the package (a checkout or an editable install), or wherever the
``CALIB_DATASETS`` environment variable points.

Labelled structures come back as ASE Atoms with a SinglePointCalculator
holding the total energy (eV), forces (eV/Å) and stress (eV/Å³), and
``info["chemsys"]`` set.
"""

from __future__ import annotations

import glob
import os

from ase import Atoms

#: name -> folder below the datasets root
_FOLDERS = {
    "high-energy-states": "high-energy-states",
    "neb": "neb",
    "equilibrium-proxy": "equilibrium-proxy",
}


def root() -> str:
    """The datasets folder (``CALIB_DATASETS`` or ``<repo>/datasets``)."""
    env = os.environ.get("CALIB_DATASETS")
    if env:
        return env
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "datasets")


def names() -> list[str]:
    """Names of the datasets present on this installation."""
    return [n for n, folder in _FOLDERS.items() if _files(folder)]


def _files(folder: str) -> list[str]:
    return sorted(glob.glob(os.path.join(root(), folder, "*.extxyz")))


def load(name: str, chemsys: str | None = None) -> list[Atoms]:
    """All structures of a shipped dataset (optionally one chemical system only)."""
    import ase.io

    from .structures import chemsys as get_chemsys

    if name not in _FOLDERS:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(_FOLDERS)}")
    files = _files(_FOLDERS[name])
    if not files:
        raise FileNotFoundError(
            f"dataset {name!r} not found under {os.path.join(root(), _FOLDERS[name])}; "
            "set CALIB_DATASETS to the repository's datasets/ folder")
    out: list[Atoms] = []
    for path in files:
        for atoms in ase.io.read(path, index=":"):
            atoms.info.setdefault("chemsys", get_chemsys(atoms))
            if chemsys is None or atoms.info["chemsys"] == chemsys:
                out.append(atoms)
    return out
