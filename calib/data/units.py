"""The energy convention of a model's last-layer features, shared by the model adapters and the maths.

Per-atom models (CHGNet) predict eV/atom from mean-pooled features; total models (MACE) predict eV from
summed ones. :func:`total_scale` is the factor (N or 1) that turns a feature-space energy quantity into a
*total*-energy quantity in eV.
"""

from __future__ import annotations

import numpy as np

ENERGY_CONVENTIONS = ("per_atom", "total")


def total_scale(n_atoms, energy_convention: str) -> np.ndarray:
    """N for per-atom models (features are means, energy is eV/atom), 1 for total models."""
    n_atoms = np.asarray(n_atoms, dtype=float)
    if energy_convention == "per_atom":
        return n_atoms
    if energy_convention == "total":
        return np.ones_like(n_atoms)
    raise ValueError(f"unknown energy_convention {energy_convention!r}")
