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


@dataclass
class ScalarCorrection:
    """Per-chemistry scalar correction: forces × c, stress × c, E_anchor + c (E − E_anchor).

    ``factors[chemsys] = (c, anchor)`` with the anchor in eV/atom (model energy);
    ``ci[chemsys] = (low, high)``, the bootstrap CI of c at ``confidence[chemsys]`` (0.95 unless
    given); ``domain[chemsys]``, the largest Q score (calib.uq.ood) of the structures c was fitted on:
    a structure scoring above it lies in environments the correction has not seen. Chemistries without a factor are left unchanged. Chemical systems are element sets: keys
    are kept in the canonical spelling (:func:`calib.data.structures.canonical_chemsys`), so ``F-Na``
    and ``Na-F`` find the same correction.
    """

    factors: dict = field(default_factory=dict)
    ci: dict = field(default_factory=dict)
    confidence: dict = field(default_factory=dict)
    domain: dict = field(default_factory=dict)

    def __post_init__(self):
        self.factors = {_key(k): v for k, v in self.factors.items()}
        self.ci = {_key(k): v for k, v in self.ci.items()}
        self.confidence = {_key(k): float(v) for k, v in self.confidence.items()}
        self.domain = {_key(k): float(v) for k, v in self.domain.items() if v is not None}

    @classmethod
    def from_results(cls, results: dict, only=None) -> ScalarCorrection:
        """From :class:`SofteningResult` per chemsys (those in ``only`` when given)."""
        keep = {k: r for k, r in results.items() if only is None or k in only}
        return cls({k: (float(r.correction), float(r.energy_anchor_per_atom or 0.0)) for k, r in keep.items()},
                   {k: (float(r.correction_ci[0]), float(r.correction_ci[1])) for k, r in keep.items()},
                   {k: float(r.confidence) for k, r in keep.items()},
                   {k: r.domain_q_max for k, r in keep.items() if r.domain_q_max is not None})

    def merged(self, other: ScalarCorrection) -> ScalarCorrection:
        """A new correction with ``other``'s chemistries added (replacing the same chemsys)."""
        return ScalarCorrection({**self.factors, **other.factors}, {**self.ci, **other.ci},
                                {**self.confidence, **other.confidence}, {**self.domain, **other.domain})

    def __contains__(self, chemsys) -> bool:
        return _key(chemsys) in self.factors

    def __len__(self) -> int:
        return len(self.factors)

    def factor(self, chemsys: str) -> tuple[float, float]:
        """(c, anchor eV/atom); (1, 0) for a chemistry without a correction."""
        return self.factors.get(_key(chemsys), (1.0, 0.0))

    def sigma(self, chemsys: str) -> float:
        """σ_c of the chemistry's factor from its stored CI (:func:`correction_sigma`); 0 without a CI, NaN
        for a chemistry without a correction."""
        key = _key(chemsys)
        if key not in self.factors:
            return float("nan")
        return correction_sigma(self.ci[key], self.confidence.get(key, 0.95)) if key in self.ci else 0.0

    def per_structure(self, chemsys) -> tuple[np.ndarray, np.ndarray]:
        """(c, σ_c) for each structure's chemical system (arrays, dimensionless; NaN where no correction
        is stored): the one lookup the predictor, evaluation, NEB and calibration share."""
        keys = [_key(ch) for ch in chemsys]
        c = np.array([self.factors[k][0] if k in self.factors else np.nan for k in keys], dtype=float)
        return c, np.array([self.sigma(k) for k in keys], dtype=float)

    def apply(self, chemsys: str, n_atoms: int, energy=None, forces=None, stress=None):
        """Corrected (energy eV, forces eV/Å, stress eV/Å³); None passes through."""
        c, anchor = self.factor(chemsys)
        e = None if energy is None else anchor * n_atoms + c * (energy - anchor * n_atoms)
        f = None if forces is None else c * np.asarray(forces, dtype=float)
        s = None if stress is None else c * np.asarray(stress, dtype=float)
        return e, f, s

    def as_dict(self) -> dict:
        """chemsys → {"c", "ci", "anchor"} (anchor eV/atom)."""
        return {k: {"c": c, "ci": list(self.ci.get(k, (np.nan, np.nan))), "anchor": a}
                for k, (c, a) in self.factors.items()}

    # -- persistence (see calib.artifact)
    def to_variables(self) -> dict:
        if not self.factors:
            return {}
        chems = list(self.factors)
        dim = ("correction_chemsys",)
        ci = np.array([self.ci.get(k, (np.nan, np.nan)) for k in chems], dtype=float).reshape(-1, 2)
        return {
            "correction_chemsys": (dim, np.array(chems, dtype=str), {}),
            "correction_factor": (dim, np.array([self.factors[k][0] for k in chems]),
                                  {"units": "1", "description": "forces and stress x c"}),
            "correction_ci_low": (dim, ci[:, 0], {"units": "1"}),
            "correction_ci_high": (dim, ci[:, 1], {"units": "1"}),
            "correction_anchor": (dim, np.array([self.factors[k][1] for k in chems]),
                                  {"units": "eV/atom", "description": "E = N*anchor + c*(E - N*anchor)"}),
            "correction_confidence": (dim, np.array([self.confidence.get(k, 0.95) for k in chems]),
                                      {"units": "1", "description": "level of the CI of c"}),
            "correction_domain_q": (dim, np.array([self.domain.get(k, np.nan) for k in chems]),
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
        return cls({k: (float(c[i]), float(a[i])) for i, k in enumerate(chems)},
                   {k: (float(lo[i]), float(hi[i])) for i, k in enumerate(chems)},
                   {k: float(conf[i]) for i, k in enumerate(chems)},
                   {k: float(dom[i]) for i, k in enumerate(chems) if np.isfinite(dom[i])})


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
