"""Per-element linear energy reference, and where it is determined.

Absolute energies from different codes and pseudopotentials differ by
per-element constants (GPAW PAW-PBE vs the MP/VASP energies CHGNet learned:
~0.35 eV/atom for LiCl). Before an *energy* error is used (α² fit, energy
conformal, energy softening), calib removes a linear reference fitted by least
squares on element counts, as CHGNet's ``AtomRef.fit`` does:

    E_ref − E_model ≈ Σ_el n_el μ_el

Forces and stresses need no such step.

The least-squares fit determines only the combinations of μ that the
calibration compositions span: calibrated on LiCl alone, μ_Li + μ_Cl is known
but μ_Cl is not, and the minimum-norm split that ``lstsq`` returns is
arbitrary. :meth:`ElementReference.determined` says, for any composition,
whether its shift Σ n_el μ_el is fixed by the calibration data: every element
was seen, and its count vector lies in the row space of the calibration
count matrix (to a relative tolerance). Nothing downstream gives an energy
interval where it is not.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
from ase.data import chemical_symbols

#: relative tolerance of the row-space test ‖x − P x‖ ≤ tol · ‖x‖
ROW_SPACE_TOL = 1e-6


def formula_of(numbers) -> str:
    """Reduced-order chemical formula of a list of atomic numbers (e.g. 'LiCl', 'Si')."""
    from ase.formula import Formula

    return Formula.from_list([chemical_symbols[int(z)] for z in numbers]).format("metal") if len(numbers) else ""


def reduced_formula(numbers) -> str:
    """The reduced formula of a list of atomic numbers, elements in ASE's "metal" order (Si8 → 'Si',
    Li4O2 → 'Li2O'): what makes two structures the same composition."""
    from ase.formula import Formula

    if not len(numbers):
        return ""
    return Formula.from_list([chemical_symbols[int(z)] for z in numbers]).reduce()[0].format("metal")


#: the key of a GGA+U species in the reference: atomic number + this (e.g. Fe under U: 1026)
U_KEY = 1000


@functools.lru_cache(maxsize=4096)
def _u_elements(zs: tuple) -> frozenset:
    """The elements of a composition (sorted tuple of atomic numbers) that Materials Project treats with GGA+U
    (calib.data.dft.materials_project_settings: MPRelaxSet's LDAUU, applied when the most electronegative
    element is O or F)."""
    from calib.data.dft import materials_project_settings

    u = materials_project_settings([chemical_symbols[z] for z in zs])["hubbard_u"] or {}
    return frozenset(chemical_symbols.index(el) for el in u)


def reference_species(numbers) -> np.ndarray:
    """The element-reference key of every atom: its atomic number, or atomic number + :data:`U_KEY` for an atom
    that Materials Project (and so CHGNet, trained on MPtrj, and the shipped GPAW labels) treats with GGA+U: a Co,
    Cr, Fe, Mn, Mo, Ni, V or W atom of an oxide or fluoride. A GGA+U energy sits on another zero than the plain
    GGA energy of the same element, so the two get separate offsets ("Fe" and "Fe (U)")."""
    z = np.asarray(numbers, dtype=int)
    if not len(z) or np.any(z >= U_KEY):
        return z
    u = _u_elements(tuple(sorted(set(z.tolist()))))
    return z + U_KEY * np.isin(z, list(u)) if u else z


def species_name(key: int) -> str:
    """"Fe" or "Fe (U)" for a key of :func:`reference_species`."""
    key = int(key)
    return f"{chemical_symbols[key - U_KEY]} (U)" if key >= U_KEY else chemical_symbols[key]


def species_key(name: str) -> int:
    """The inverse of :func:`species_name`."""
    if name.endswith(" (U)"):
        return chemical_symbols.index(name[:-4]) + U_KEY
    return chemical_symbols.index(name)


class ElementReference:
    """Least-squares per-element energy shifts μ_el (eV/atom).

    The "elements" are the species of :func:`reference_species`: an element under Materials Project's GGA+U (a
    transition metal of an oxide or fluoride) has an offset of its own, named "Fe (U)"; every method takes plain
    atomic numbers and maps them.

    Attributes (after :meth:`fit`)
    ------------------------------
    elements_ : list of str
    values_ : (n_elements,) float — μ_el in eV per atom of that element.
    basis_ : (r, n_elements) float or None — orthonormal basis of the row space of the
        calibration count matrix (None for a reference whose calibration compositions are
        unknown, e.g. one read from a schema-1 artifact: then only unseen elements are refused).
    """

    def fit(self, numbers: Sequence[Sequence[int]], delta_energy: np.ndarray) -> ElementReference:
        """Fit μ to ``delta_energy`` (total eV, reference minus model) of structures with atomic ``numbers``."""
        numbers = [reference_species(n) for n in numbers]
        zs = sorted({int(z) for nums in numbers for z in nums})
        C = self._counts(numbers, zs)
        delta = np.asarray(delta_energy, dtype=float)
        if C.shape[0] != delta.shape[0]:
            raise ValueError(f"{C.shape[0]} structures but {delta.shape[0]} energies")
        # minimum-norm solution: identifiable combinations only, e.g. μ_Li + μ_Cl for LiCl alone
        mu, *_ = np.linalg.lstsq(C, delta, rcond=None)
        self.elements_ = [species_name(z) for z in zs]
        self.values_ = mu
        _, s, vt = np.linalg.svd(C, full_matrices=False)
        rank = int(np.sum(s > ROW_SPACE_TOL * (s[0] if s.size else 0.0))) if s.size else 0
        self.basis_ = vt[:rank]
        # the leverage of a composition (:meth:`leverage`) over the distinct calibration compositions, per atom
        frac = np.unique(np.round(C / np.maximum(C.sum(axis=1, keepdims=True), 1), 10), axis=0)
        self.leverage_gram_ = np.linalg.pinv(frac.T @ frac)
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

    def _zs(self) -> list[int]:
        return [species_key(s) for s in self.elements_]

    def predict(self, numbers: Sequence[Sequence[int]]) -> np.ndarray:
        """Σ_el n_el μ_el for each structure, total eV. Elements never fitted contribute 0
        (check :meth:`determined` before using the result)."""
        return self._counts([reference_species(n) for n in numbers], self._zs()) @ self.values_

    def species(self, numbers) -> list[str]:
        """The reference species of one structure's atoms that carry an offset of their own under GGA+U
        (e.g. ["Fe (U)"]); [] when none does (what ``calib predict`` reports as the offset it used)."""
        return sorted({species_name(z) for z in reference_species(numbers) if z >= U_KEY})

    def determined(self, numbers: Sequence[Sequence[int]]) -> tuple[np.ndarray, list[str]]:
        """(whether each structure's shift is determined by the calibration data, reason or "")."""
        known = set(self.elements_)
        numbers = [reference_species(n) for n in numbers]
        C = self._counts(numbers, self._zs())
        ok = np.ones(len(numbers), dtype=bool)
        reasons = [""] * len(numbers)
        for i, nums in enumerate(numbers):
            unseen = sorted({species_name(z) for z in nums} - known)
            if unseen:
                ok[i] = False
                reasons[i] = (f"element(s) {', '.join(unseen)} absent from the energy reference "
                              f"(calibrated on {', '.join(self.elements_)}): no energy interval")
                continue
            if self.basis_ is None:
                continue
            x = C[i]
            resid = x - self.basis_.T @ (self.basis_ @ x)
            if np.linalg.norm(resid) > ROW_SPACE_TOL * np.linalg.norm(x):
                ok[i] = False
                reasons[i] = (f"composition {formula_of(np.asarray(nums) % U_KEY)} is not determined by the calibration compositions "
                              "(the element reference fixes only the combinations they span): "
                              "no energy interval; calibrate on structures that fix it")
        return ok, reasons

    def leverage(self, numbers: Sequence[Sequence[int]]) -> np.ndarray:
        """h = xᵀ (XᵀX)⁺ x of each structure's per-atom composition x over the distinct calibration compositions X
        (dimensionless; NaN with an element the reference never saw, or for a reference without the record).

        The prediction variance of a least-squares fit at x is τ² (1 + h): a composition whose elements many
        calibration compositions fix has h ≪ 1, one fixed by a single other compound h ~ 1 or more. The energy
        error model (calib.uq.errormodel) reads it."""
        G = getattr(self, "leverage_gram_", None)
        out = np.full(len(numbers), np.nan)
        if G is None:
            return out
        numbers = [reference_species(n) for n in numbers]
        C = self._counts(numbers, self._zs())
        known = set(self._zs())
        for i, nums in enumerate(numbers):
            if len(nums) and {int(z) for z in nums} <= known:
                x = C[i] / len(nums)
                out[i] = float(x @ G @ x)
        return out

    def as_dict(self) -> dict:
        return dict(zip(self.elements_, map(float, self.values_)))

    @classmethod
    def from_dict(cls, values: dict, basis=None) -> ElementReference:
        ref = cls()
        ref.elements_ = list(values)
        ref.values_ = np.array([values[k] for k in ref.elements_], dtype=float)
        ref.basis_ = None if basis is None else np.asarray(basis, dtype=float).reshape(-1, len(ref.elements_))
        return ref

    # -- persistence (see calib.artifact)
    def to_variables(self) -> dict:
        out = {"element_reference": (("element",), np.asarray(self.values_, dtype=float),
                                     {"units": "eV/atom", "description": "mu_el, E_ref - E_model ~ sum n_el mu_el"}),
               "element": (("element",), np.array(self.elements_, dtype=str), {})}
        if getattr(self, "basis_", None) is not None:
            out["element_reference_basis"] = (("element_basis", "element"), self.basis_, {
                "units": "1", "description": "orthonormal rows spanning the calibration compositions (element "
                                            "counts): a composition's shift is determined iff it lies in their span"})
        if getattr(self, "leverage_gram_", None) is not None:
            out["element_reference_leverage"] = (("element", "element_b"), self.leverage_gram_, {
                "units": "1", "description": "(X^T X)^+ of the distinct calibration compositions X (atom fractions): "
                                            "h = x^T G x is a composition's reference leverage"})
        return out

    @classmethod
    def from_variables(cls, ds) -> ElementReference:
        basis = ds["element_reference_basis"].values if "element_reference_basis" in ds else None
        ref = cls.from_dict(dict(zip([str(e) for e in ds["element"].values],
                                     ds["element_reference"].values.astype(float))), basis)
        if "element_reference_leverage" in ds:  # calib ≥ 0.6
            ref.leverage_gram_ = ds["element_reference_leverage"].values.astype(float)
        return ref


def cross_fitted_residuals(numbers: Sequence[Sequence[int]], delta_energy, n_folds: int = 5,
                           seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold energy residuals: each structure's ``delta − shift`` with the shift from a reference
    fitted without its fold (K folds of structures, seeded).

    Returns (residuals eV, determined): ``determined[i]`` is False where the other folds do not fix
    structure i's shift (its residual is then NaN). The residuals of the structures kept are exchangeable
    with the residual of a new structure under a reference fitted on (K − 1)/K of the data, so scores made
    from them do not shrink as in-sample residuals do (see docs/conformal.md for what this guarantees).
    """
    delta = np.asarray(delta_energy, dtype=float)
    n = len(delta)
    if n_folds < 2:
        raise ValueError(f"n_folds must be >= 2, got {n_folds}")
    folds = np.random.default_rng(seed).permutation(n) % min(n_folds, n)
    out = np.full(n, np.nan)
    ok = np.zeros(n, dtype=bool)
    for k in np.unique(folds):
        test, train = np.flatnonzero(folds == k), np.flatnonzero(folds != k)
        if not len(train):
            continue
        ref = ElementReference().fit([numbers[i] for i in train], delta[train])
        nums = [numbers[i] for i in test]
        good, _ = ref.determined(nums)
        out[test[good]] = delta[test[good]] - ref.predict([nums[j] for j in np.flatnonzero(good)])
        ok[test] = good
    return out, ok
