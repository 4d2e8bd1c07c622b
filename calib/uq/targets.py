"""Typed calibration points: what one conformal target is made of.

A *target* is a kind of quantity with an error and a σ in one unit:

=================== ====== ==============================================================
name                unit   one point
=================== ====== ==============================================================
energy              eV     total energy of a structure (after the element reference)
energy_difference   eV     E_a − E_b for disjoint random pairs of one composition (calib.uq.differences)
energy_difference_  eV     c·(E_a − E_b) − (E_a − E_b)_ref with the chemistry's scalar correction c
corrected
forces              eV/Å   one Cartesian force component
force_norm          eV/Å   |F_ref − F_model| of one atom against √(σx² + σy² + σz²)
=================== ====== ==============================================================

:class:`Points` holds the points of one target: errors (reference − model,
None at prediction time), σ, the descriptors the environment classes are
fitted on, the labels (element, chemsys) label classes use, and the structure
each point belongs to. :func:`build_points` makes all targets from one
prediction, so calibration, evaluation and prediction share one definition.
:class:`ConformalSet` holds an artifact's calibrators, one per target.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from calib.uq.differences import DifferenceModels, composition, corrected_errors, difference_pairs, difference_sigmas


#: name -> its Target (unit, what one point is, quantile kind, atomic or not)
class Target(NamedTuple):
    """One conformal target: its ``unit``, what one point is, whether its quantile may be Mondrian over classes
    (``classes``: False for the pair targets and the corrected forces, which always use the global quantile) and
    whether its points are atoms' force components (``atomic``: a component whose σ is zero by symmetry is left
    out, its score undefined)."""

    unit: str
    description: str
    classes: bool = True
    atomic: bool = False


TARGETS = {
    "energy": Target("eV", "total energy of a structure (after the element reference)"),
    "energy_difference": Target("eV", "E_a - E_b for disjoint random pairs of one composition", classes=False),
    "energy_difference_corrected": Target("eV", "c (E_a - E_b) for the same pairs, c the chemistry's scalar "
                                          "correction", classes=False),
    "forces": Target("eV/Å", "one Cartesian force component", atomic=True),
    "forces_corrected": Target("eV/Å", "one Cartesian component of the scalar-corrected force c·F", classes=False,
                               atomic=True),
    "force_norm": Target("eV/Å", "|F_ref - F_model| of one atom against sqrt(σx² + σy² + σz²)", atomic=True),
}


def _calibrator(name: str) -> property:
    return property(lambda self: self._parts.get(name),
                    doc=f"the :class:`~calib.uq.conformal.ConformalCalibrator` of {name!r} (None: not fitted)")


class ConformalSet(Mapping):
    """The conformal calibrators of an artifact, one per target of :data:`TARGETS`, in the order they were fitted
    (the order the artifact stores them in). The known targets are attributes (``cal.energy``, ``cal.forces``,
    ...: None where not fitted); as a read-only mapping target name → calibrator, ``"forces" in cal`` and
    ``cal.items()`` serve the code that goes over every target. A name not in :data:`TARGETS` is a ValueError."""

    def __init__(self, calibrators: Mapping | None = None):
        parts = dict(calibrators or {})
        unknown = [k for k in parts if k not in TARGETS]
        if unknown:
            raise ValueError(f"unknown conformal target(s) {unknown}; expected some of {list(TARGETS)}")
        self._parts = parts

    energy = _calibrator("energy")
    energy_difference = _calibrator("energy_difference")
    energy_difference_corrected = _calibrator("energy_difference_corrected")
    forces = _calibrator("forces")
    forces_corrected = _calibrator("forces_corrected")
    force_norm = _calibrator("force_norm")

    def __getitem__(self, name: str):
        return self._parts[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._parts)

    def __len__(self) -> int:
        return len(self._parts)

    def __repr__(self) -> str:
        return f"ConformalSet({list(self._parts)})"

    @property
    def alpha(self) -> float | None:
        """The miscoverage α the calibrators were fitted at (1 − the intervals' coverage); None without one."""
        return next((c.alpha for c in self._parts.values()), None)

    def force_half_width(self, points: Points, corrected=None) -> tuple[np.ndarray, np.ndarray | None]:
        """((P,) half-widths in eV/Å, (P,) class per point or None) of the force-component intervals at ``points``
        (target "forces"), as ``half_width_points`` gives them: q·σ with the forces' quantile, and with the corrected
        forces' own where ``corrected`` (P,) bool marks a component of a structure whose prediction carries the
        scalar correction. The one rule the predictor reports and ``evaluate`` checks."""
        h, cls = self.forces.half_width_points(points)
        if corrected is not None and self.forces_corrected is not None and np.any(corrected):
            h = np.where(corrected, self.forces_corrected.half_width(np.asarray(points.sigma, float).ravel()), h)
        return h, cls


@dataclass
class Points:
    """The points of one target.

    Attributes
    ----------
    target : str — a key of :data:`TARGETS`.
    sigma : (P,) float — σ in the target's unit.
    descriptors : (P, k) float — what mixture classes are fitted on (pooled features for
        structure-level targets, per-atom descriptors for atom-level ones).
    labels : dict "element" | "chemsys" -> (P,) str
    structure : (P,) int — the row of the structure each point belongs to (the first of a pair).
    errors : (P,) float or None — reference − model in the target's unit.
    """

    target: str
    sigma: np.ndarray
    descriptors: np.ndarray
    labels: dict = field(default_factory=dict)
    structure: np.ndarray | None = None
    errors: np.ndarray | None = None

    @property
    def unit(self) -> str:
        return TARGETS[self.target].unit

    def __len__(self) -> int:
        return int(np.asarray(self.sigma).size)

    def with_errors(self, errors) -> Points:
        """The same points with these errors (reference − model, the target's unit)."""
        return Points(self.target, self.sigma, self.descriptors, self.labels, self.structure,
                      np.asarray(errors, dtype=float).reshape(-1))

    @classmethod
    def concat(cls, parts: Sequence[Points]) -> Points:
        """One set of points from consecutive parts of one target (e.g. the batches of a prediction)."""
        first = parts[0]
        cat = (lambda xs: None if xs[0] is None else np.concatenate(xs))  # noqa: E731
        return cls(first.target, cat([p.sigma for p in parts]), cat([p.descriptors for p in parts]),
                   {k: cat([p.labels[k] for p in parts]) for k in first.labels},
                   cat([p.structure for p in parts]), cat([p.errors for p in parts]))

    def subset(self, mask) -> Points:
        """The points where ``mask`` is True."""
        m = np.asarray(mask, dtype=bool)
        pick = (lambda x: None if x is None else np.asarray(x)[m])  # noqa: E731
        return Points(self.target, pick(self.sigma), pick(self.descriptors),
                      {k: pick(v) for k, v in self.labels.items()}, pick(self.structure), pick(self.errors))


def build_points(llpr, *, features, n_atoms, chemsys, energy_sigma, atom_structure=None, numbers=None,
                 atom_descriptors=None, force_sigma=None, energy_errors=None, force_errors=None,
                 pair_errors=None, energies=None, differences=None, correction=None,
                 targets: Sequence[str] | None = None, energy_labels: dict | None = None) -> dict[str, Points]:
    """Points of every target that the inputs allow, for S structures and their N atoms.

    Parameters
    ----------
    llpr : calib.uq.llpr.LLPR — for σ of energy differences.
    features : (S, d) pooled features; n_atoms : (S,); chemsys : (S,) str
    energy_sigma : (S,) eV
    atom_structure : (N,) row of each atom's structure; numbers : (N,) atomic numbers (they also give each
        structure's composition, which energy-difference pairs share)
    atom_descriptors : (N, d) per-atom descriptors
    force_sigma : (N, 3) eV/Å — per-component σ (force targets only when given)
    energy_errors : (S,) eV, after the element reference (NaN: no energy point); force_errors : (N, 3) eV/Å
    pair_errors : (S,) eV — the errors whose differences make the energy-difference points
        (default ``energy_errors``; calibration passes in-sample residuals here, whose reference
        cancels within a composition, and cross-fitted ones as ``energy_errors``)
    energies : (S,) model total energies, eV; differences : calib.uq.differences.DifferenceModels (the raw
        and corrected variance models); correction : (c, σ_c) arrays per structure
        (NaN where none) — see :func:`difference_points`
    targets : which targets to build (default: all the inputs allow; energy
        differences only with energy errors, since their pairs are drawn at random)
    energy_labels : more labels of the energy points, e.g. ``{"composition": "seen" | "new"}`` per structure
        (the Mondrian classes of the energy quantile, calib.workflows.calibration.fit_error_models)
    """
    from ase.data import chemical_symbols

    want = set(TARGETS if targets is None else targets)
    chem = np.asarray(chemsys, dtype=str)
    S = len(chem)
    out: dict[str, Points] = {}
    if "energy" in want:
        out["energy"] = Points("energy", np.asarray(energy_sigma, dtype=float), np.asarray(features),
                               {"chemsys": chem, "element": chem, **(energy_labels or {})}, np.arange(S), energy_errors)
        if energy_errors is not None:
            out["energy"] = out["energy"].subset(np.isfinite(energy_errors))
    pair = energy_errors if pair_errors is None else pair_errors
    if "energy_difference" in want and pair is not None:
        owner = np.asarray(atom_structure, dtype=int)
        comps = [composition(np.asarray(numbers)[owner == k]) for k in range(S)]
        out.update(difference_points(llpr, features, n_atoms, chem, pair, compositions=comps, energies=energies,
                                     differences=differences, correction=correction,
                                     corrected="energy_difference_corrected" in want))
    if force_sigma is not None and ({"forces", "force_norm"} & want):
        sig3 = np.asarray(force_sigma, dtype=float).reshape(-1, 3)
        owner = np.asarray(atom_structure, dtype=int)
        atom_chem = chem[owner]
        symbols = np.array([chemical_symbols[z] for z in numbers], dtype=str)
        err3 = None if force_errors is None else np.asarray(force_errors, dtype=float).reshape(-1, 3)
        if "forces" in want:
            out["forces"] = Points("forces", sig3.ravel(), np.repeat(atom_descriptors, 3, axis=0),
                                   {"chemsys": np.repeat(atom_chem, 3), "element": np.repeat(symbols, 3)},
                                   np.repeat(owner, 3), None if err3 is None else err3.ravel())
        if "force_norm" in want:
            out["force_norm"] = Points("force_norm", np.sqrt((sig3**2).sum(axis=1)), np.asarray(atom_descriptors),
                                       {"chemsys": atom_chem, "element": symbols}, owner,
                                       None if err3 is None else np.linalg.norm(err3, axis=1))
    return out


def difference_points(llpr, features, n_atoms, chemsys, errors, *, compositions, energies=None, differences=None,
                      correction=None, corrected: bool = True, seed: int = 0) -> dict[str, Points]:
    """Points of the energy-difference targets for disjoint random pairs of one composition
    (:func:`calib.uq.differences.difference_pairs`; ``compositions`` (S,) str, e.g. "Si8").

    σ is the LLPR difference σ, or with ``differences.raw`` (and model ``energies``) the variance
    model of calib.uq.differences. With ``differences.corrected`` and ``correction`` = (c, σ_c) per
    structure, also ``energy_difference_corrected``: errors r + (1 − c)·ΔE_model for the pairs whose
    chemistry has a c, σ from the corrected model.
    """
    chem = np.asarray(chemsys, dtype=str)
    i, j = difference_pairs(compositions, disjoint=True, seed=seed)
    if not len(i):
        return {}
    f, n = np.asarray(features), np.asarray(n_atoms)
    v = llpr.energy_difference_sigma(f[i], n[i], f[j], n[j]) ** 2
    r = np.asarray(errors)[i] - np.asarray(errors)[j]
    models = differences or DifferenceModels()
    if energies is None:
        sigma, dE = np.sqrt(v), None
    else:
        dE = np.asarray(energies)[i] - np.asarray(energies)[j]
        c, sc = ((np.asarray(x, dtype=float)[i] for x in correction) if correction is not None and corrected
                 else (np.nan, 0.0))
        sigma, sig_c = difference_sigmas(models, v, dE, c, sc)
    labels = {"chemsys": chem[i], "element": chem[i]}
    out = {"energy_difference": Points("energy_difference", sigma, f[i] - f[j], labels, i, r)}
    if dE is not None and sig_c is not None:
        has = np.isfinite(c)
        out["energy_difference_corrected"] = Points(
            "energy_difference_corrected", sig_c, f[i] - f[j], labels, i, corrected_errors(r, dE, c)).subset(has)
    return out
