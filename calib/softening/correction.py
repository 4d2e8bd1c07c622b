"""The one-scalar correction of Deng et al., per chemical system.

Applied as forces × c, stress × c and E = E_anchor + c·(E − E_anchor), where the anchor is the model's
lowest energy per atom among the labelled structures of that chemistry times the number of atoms;
energy *differences* within a chemistry (barriers, defect and surface energies) then scale by c exactly
as the forces do. c is fitted by :func:`calib.softening.scale.fit_softening`; σ_c, its uncertainty, comes
from the bootstrap CI (:func:`correction_sigma`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def _key(chemsys) -> str:
    """The canonical spelling of a chemical system (element set); a label that is not one is kept as is."""
    from calib.data.structures import canonical_chemsys

    try:
        return canonical_chemsys(str(chemsys))
    except ValueError:
        return str(chemsys)


def correction_sigma(ci, confidence: float = 0.95) -> float:
    """σ of a correction factor c from its bootstrap CI (Gaussian reading: half-width / z), dimensionless."""
    from scipy.stats import norm

    lo, hi = ci
    return float((hi - lo) / (2 * norm.ppf(0.5 + confidence / 2)))


@dataclass(frozen=True)
class ChemistryCorrection:
    """The scalar correction of one chemical system: forces × ``c``, stress × ``c``, E_anchor + c (E − E_anchor)
    with ``anchor`` in eV/atom (model energy); ``ci`` = (low, high), the bootstrap CI of c (dimensionless) at
    ``confidence`` (None: not known); ``domain``, the largest Q score (calib.uq.ood, dimensionless) of the
    structures c was fitted on (None: not recorded): a structure scoring above it lies in environments the
    correction has not seen."""

    c: float
    anchor: float = 0.0
    ci: tuple[float, float] | None = None
    confidence: float = 0.95
    domain: float | None = None

    @property
    def sigma(self) -> float:
        """σ_c from the CI (:func:`correction_sigma`), dimensionless; 0 without a CI."""
        return correction_sigma(self.ci, self.confidence) if self.ci is not None else 0.0


@dataclass
class ScalarCorrection:
    """Per-chemistry scalar correction: forces × c, stress × c, E_anchor + c (E − E_anchor).

    ``by_chemsys[chemsys]`` is the chemistry's :class:`ChemistryCorrection` (c, anchor in eV/atom, the CI of c,
    its domain). Chemistries without one are left unchanged. Chemical systems are element sets: keys are kept in
    the canonical spelling (:func:`calib.data.structures.canonical_chemsys`), so ``F-Na`` and ``Na-F`` find the
    same correction; ``corrections["Na-F"]``, ``"Na-F" in corrections``, ``len`` and iteration (chemical
    systems) read it like a mapping.
    """

    by_chemsys: dict[str, ChemistryCorrection] = field(default_factory=dict)

    def __post_init__(self):
        self.by_chemsys = {_key(k): v for k, v in self.by_chemsys.items()}

    @classmethod
    def from_results(cls, results: dict, only=None) -> ScalarCorrection:
        """From :class:`SofteningResult` per chemsys (those in ``only`` when given)."""
        return cls({k: ChemistryCorrection(float(r.correction), float(r.energy_anchor_per_atom or 0.0),
                                           (float(r.correction_ci[0]), float(r.correction_ci[1])),
                                           float(r.confidence),
                                           None if r.domain_q_max is None else float(r.domain_q_max))
                    for k, r in results.items() if only is None or k in only})

    def merged(self, other: ScalarCorrection) -> ScalarCorrection:
        """A new correction with ``other``'s chemistries added (replacing the same chemsys)."""
        return ScalarCorrection({**self.by_chemsys, **other.by_chemsys})

    def __contains__(self, chemsys) -> bool:
        return _key(chemsys) in self.by_chemsys

    def __getitem__(self, chemsys) -> ChemistryCorrection:
        return self.by_chemsys[_key(chemsys)]

    def __iter__(self):
        return iter(self.by_chemsys)

    def __len__(self) -> int:
        return len(self.by_chemsys)

    def factor(self, chemsys: str) -> tuple[float, float]:
        """(c, anchor eV/atom); (1, 0) for a chemistry without a correction."""
        one = self.by_chemsys.get(_key(chemsys))
        return (one.c, one.anchor) if one is not None else (1.0, 0.0)

    def sigma(self, chemsys: str) -> float:
        """σ_c of the chemistry's factor from its stored CI (:func:`correction_sigma`); 0 without a CI, NaN
        for a chemistry without a correction."""
        one = self.by_chemsys.get(_key(chemsys))
        return one.sigma if one is not None else float("nan")

    def domain(self, chemsys: str) -> float | None:
        """The largest Q score of the structures the chemistry's c was fitted on (1); None where no correction
        or no domain is stored."""
        one = self.by_chemsys.get(_key(chemsys))
        return None if one is None else one.domain

    def per_structure(self, chemsys) -> tuple[np.ndarray, np.ndarray]:
        """(c, σ_c) for each structure's chemical system (arrays, dimensionless; NaN where no correction
        is stored): the one lookup the predictor, evaluation, NEB and calibration share."""
        ones = [self.by_chemsys.get(_key(ch)) for ch in chemsys]
        return (np.array([np.nan if one is None else one.c for one in ones], dtype=float),
                np.array([np.nan if one is None else one.sigma for one in ones], dtype=float))

    def apply(self, chemsys: str, n_atoms: int, energy=None, forces=None, stress=None):
        """Corrected (energy eV, forces eV/Å, stress eV/Å³); None passes through."""
        c, anchor = self.factor(chemsys)
        e = None if energy is None else anchor * n_atoms + c * (energy - anchor * n_atoms)
        f = None if forces is None else c * np.asarray(forces, dtype=float)
        s = None if stress is None else c * np.asarray(stress, dtype=float)
        return e, f, s

    def as_dict(self) -> dict:
        """chemsys → {"c", "ci", "anchor"} (anchor eV/atom)."""
        return {k: {"c": one.c, "ci": list(one.ci if one.ci is not None else (np.nan, np.nan)), "anchor": one.anchor}
                for k, one in self.by_chemsys.items()}

    # -- persistence (see calib.artifact)
    def to_variables(self) -> dict:
        if not self.by_chemsys:
            return {}
        chems, ones = list(self.by_chemsys), list(self.by_chemsys.values())
        dim = ("correction_chemsys",)
        ci = np.array([one.ci if one.ci is not None else (np.nan, np.nan) for one in ones], dtype=float).reshape(-1, 2)
        return {
            "correction_chemsys": (dim, np.array(chems, dtype=str), {}),
            "correction_factor": (dim, np.array([one.c for one in ones]),
                                  {"units": "1", "description": "forces and stress x c"}),
            "correction_ci_low": (dim, ci[:, 0], {"units": "1"}),
            "correction_ci_high": (dim, ci[:, 1], {"units": "1"}),
            "correction_anchor": (dim, np.array([one.anchor for one in ones]),
                                  {"units": "eV/atom", "description": "E = N*anchor + c*(E - N*anchor)"}),
            "correction_confidence": (dim, np.array([one.confidence for one in ones]),
                                      {"units": "1", "description": "level of the CI of c"}),
            "correction_domain_q": (dim, np.array([np.nan if one.domain is None else one.domain for one in ones]),
                                    {"units": "1", "description": "largest Q score of the structures c was "
                                                                  "fitted on (NaN: unknown)"}),
        }

    @classmethod
    def from_variables(cls, ds) -> ScalarCorrection:
        if "correction_factor" not in ds:
            return cls()
        chems = [str(c) for c in ds["correction_chemsys"].values]
        c, a = ds["correction_factor"].values, ds["correction_anchor"].values
        lo, hi = ds["correction_ci_low"].values, ds["correction_ci_high"].values
        conf = ds["correction_confidence"].values if "correction_confidence" in ds else np.full(len(chems), 0.95)
        dom = ds["correction_domain_q"].values if "correction_domain_q" in ds else np.full(len(chems), np.nan)
        return cls({k: ChemistryCorrection(float(c[i]), float(a[i]), (float(lo[i]), float(hi[i])), float(conf[i]),
                                           float(dom[i]) if np.isfinite(dom[i]) else None)
                    for i, k in enumerate(chems)})


def corrected_calculator(base, correction: ScalarCorrection, chemsys: str | None = None):
    """An ASE calculator giving ``base``'s results with the scalar correction applied."""
    from ase.calculators.calculator import Calculator, all_changes

    from calib.data.structures import chemsys as get_chemsys

    class CorrectedCalculator(Calculator):
        implemented_properties = ["energy", "free_energy", "forces", "stress"]

        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            a = self.atoms.copy()
            a.calc = base
            chem = chemsys or get_chemsys(a)
            want_stress = "stress" in properties
            e, f, s = correction.apply(chem, len(a), a.get_potential_energy(), a.get_forces(),
                                       a.get_stress() if want_stress else None)
            self.results = {"energy": e, "free_energy": e, "forces": f}
            if s is not None:
                self.results["stress"] = s

    return CorrectedCalculator()
