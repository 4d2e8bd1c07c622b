"""Shipped reference data: ``names()`` and ``load(name)``.

The data live in the repository's top-level ``datasets/`` folder beside the
scripts that made them (provenance in each folder's README). calib finds it
next to the package (a checkout or an editable install), or wherever the
``CALIB_DATASETS`` environment variable points.

Labelled structures come back as ASE Atoms with a SinglePointCalculator
holding the total energy (eV), forces (eV/Å) and stress (eV/Å³), and
``info["chemsys"]`` set.

=====================  =========  =====================================================
name                   labelled   what
=====================  =========  =====================================================
high-energy-states     GPAW PBE   CHGNet MD at 1000 K (±3 % strains), Deng et al. protocol
near-equilibrium       GPAW PBE   a seeded sample of the proxy: relaxed, mid-relaxation, perturbed crystals
neb                    GPAW PBE   images of a CHGNet climbing-image NEB (Li vacancy hop, LiF)
equilibrium-proxy      no         ~2500 CHGNet-relaxed crystals: a stand-in for MPtrj
=====================  =========  =====================================================
"""

from __future__ import annotations

import glob
import os

import numpy as np
from ase import Atoms

#: name -> folder below the datasets root
_FOLDERS = {
    "high-energy-states": "high-energy-states",
    "near-equilibrium": "near-equilibrium",
    "neb": "neb",
    "equilibrium-proxy": "equilibrium-proxy",
}


def root() -> str:
    """The datasets folder (``CALIB_DATASETS`` or ``<repo>/datasets``)."""
    env = os.environ.get("CALIB_DATASETS")
    if env:
        return env
    here = os.path.dirname(os.path.abspath(__file__))  # <repo>/calib/data
    return os.path.join(os.path.dirname(os.path.dirname(here)), "datasets")


def names() -> list[str]:
    """Names of the datasets present on this installation."""
    return [n for n, folder in _FOLDERS.items() if _files(folder)]


def _files(folder: str) -> list[str]:
    base = os.path.join(root(), folder)
    return sorted(glob.glob(os.path.join(base, "*.extxyz")) + glob.glob(os.path.join(base, "*.extxyz.gz")))


def load(name: str, chemsys: str | None = None) -> list[Atoms]:
    """All structures of a shipped dataset (optionally one chemical system only).

    ``neb`` holds the GPAW-labelled images only (``chgnet_path.extxyz`` beside
    them is the unlabelled CHGNet path and is not loaded).
    """
    from calib.data.readers import iter_structures
    from calib.data.structures import canonical_chemsys
    from calib.data.structures import chemsys as get_chemsys

    if name not in _FOLDERS:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(_FOLDERS)}")
    files = [f for f in _files(_FOLDERS[name]) if not os.path.basename(f).startswith("chgnet_path")]
    if not files:
        raise FileNotFoundError(
            f"dataset {name!r} not found under {os.path.join(root(), _FOLDERS[name])}; "
            "set CALIB_DATASETS to the repository's datasets/ folder")
    want = None if chemsys is None else canonical_chemsys(chemsys)  # a set of elements: "F-Li" is "Li-F"
    out: list[Atoms] = []
    for atoms in iter_structures(files):
        atoms.info["chemsys"] = get_chemsys(atoms)
        if want is None or atoms.info["chemsys"] == want:
            out.append(atoms)
    return out


def labelled() -> tuple[list[Atoms], np.ndarray]:
    """Every shipped GPAW label and its regime: the high-energy states ("hot": 1000 K MD frames, ±3 % strains)
    then the near-equilibrium structures ("near"), as the held-out studies of ``examples/`` split them."""
    hot, near = load("high-energy-states"), load("near-equilibrium")
    return hot + near, np.array(["hot"] * len(hot) + ["near"] * len(near))


#: shipped calibrations whose force error model reads a second model's forces (docs/errormodel.md): the model's
#: artifact name -> (the committee's artifact suffix, the Python package that model needs)
COMMITTEES = {"chgnet-0.3.0": ("sevennet-0", "sevenn")}


def default_calibration(model: str = "chgnet", committee: str | None = "auto") -> str | None:
    """Path of the calibration artifact shipped with calib for ``model`` (package data, built by
    ``datasets/default-calibration/build.py``), or None when there is none for it.

    ``committee="auto"``: for CHGNet 0.3.0, the calibration whose force error model also reads SevenNet-0's
    forces (``chgnet-0.3.0+sevennet-0.nc``) where the ``sevenn`` package is installed (an environment with the
    ``sevennet`` extra), the plain one otherwise; ``None``: the plain one always."""
    name = {"chgnet": "chgnet-0.3.0", "chgnet:0.3.0": "chgnet-0.3.0", "sevennet": "sevennet-0",
            "sevennet:SevenNet_0__11Jul2024": "sevennet-0"}.get(str(model))
    if name is None:
        return None
    folder = os.path.join(os.path.dirname(os.path.abspath(__file__)), "artifacts")
    if committee == "auto" and name in COMMITTEES:
        import importlib.util

        suffix, package = COMMITTEES[name]
        with_committee = os.path.join(folder, f"{name}+{suffix}.nc")
        if importlib.util.find_spec(package) is not None and os.path.exists(with_committee):
            return with_committee
    path = os.path.join(folder, f"{name}.nc")
    return path if os.path.exists(path) else None
