"""Per-element linear energy reference.

Absolute energies from different codes and pseudopotentials differ by
per-element constants (GPAW PAW-PBE vs the MP/VASP energies CHGNet learned:
~0.35 eV/atom for LiCl). Before an *energy* error is used (α² fit, energy
conformal, energy softening), calib removes a linear reference fitted by least
squares on element counts, as CHGNet's ``AtomRef.fit`` does:

    E_ref − E_model ≈ Σ_el n_el μ_el

Forces and stresses need no such step.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ase.data import chemical_symbols


class ElementReference:
    """Least-squares per-element energy shifts μ_el (eV/atom).

    Attributes (after :meth:`fit`)
    ------------------------------
    elements_ : list of str
    values_ : (n_elements,) float — μ_el in eV per atom of that element.
    """

    def fit(self, numbers: Sequence[Sequence[int]], delta_energy: np.ndarray) -> ElementReference:
        """Fit μ to ``delta_energy`` (total eV, reference minus model) of structures with atomic ``numbers``."""
        zs = sorted({int(z) for nums in numbers for z in nums})
        C = self._counts(numbers, zs)
        delta = np.asarray(delta_energy, dtype=float)
        if C.shape[0] != delta.shape[0]:
            raise ValueError(f"{C.shape[0]} structures but {delta.shape[0]} energies")
        # minimum-norm solution: identifiable combinations only, e.g. μ_Li + μ_Cl for LiCl alone
        mu, *_ = np.linalg.lstsq(C, delta, rcond=None)
        self.elements_ = [chemical_symbols[z] for z in zs]
        self.values_ = mu
        return self

    @staticmethod
    def _counts(numbers, zs) -> np.ndarray:
        col = {z: j for j, z in enumerate(zs)}
        C = np.zeros((len(numbers), len(zs)))
        for i, nums in enumerate(numbers):
            for z in nums:
                if int(z) in col:
                    C[i, col[int(z)]] += 1
        return C

    def predict(self, numbers: Sequence[Sequence[int]]) -> np.ndarray:
        """Σ_el n_el μ_el for each structure, total eV. Elements never fitted contribute 0."""
        zs = [chemical_symbols.index(s) for s in self.elements_]
        return self._counts(numbers, zs) @ self.values_

    def as_dict(self) -> dict:
        return dict(zip(self.elements_, map(float, self.values_)))

    @classmethod
    def from_dict(cls, values: dict) -> ElementReference:
        ref = cls()
        ref.elements_ = list(values)
        ref.values_ = np.array([values[k] for k in ref.elements_], dtype=float)
        return ref

    # -- persistence (see calib.artifact)
    def to_variables(self) -> dict:
        return {"element_reference": (("element",), np.asarray(self.values_, dtype=float),
                                      {"units": "eV/atom", "description": "mu_el, E_ref - E_model ~ sum n_el mu_el"}),
                "element": (("element",), np.array(self.elements_, dtype=str), {})}

    @classmethod
    def from_variables(cls, ds) -> ElementReference:
        return cls.from_dict(dict(zip([str(e) for e in ds["element"].values],
                                      ds["element_reference"].values.astype(float))))
