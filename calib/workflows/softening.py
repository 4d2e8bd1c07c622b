"""Softening per chemical system of labelled structures, and storing its corrections in an artifact."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from ase import Atoms

from calib.artifact import Artifact
from calib.data.structures import get_energy, get_forces
from calib.models.base import ModelAdapter
from calib.predictor import CalibratedPredictor
from calib.softening.scale import SOFTENING, SofteningFailure
from calib.workflows.labelled import LabelledPrediction, predict_labelled


@dataclass
class SofteningRun:
    """Per-chemistry softening results with the prediction they came from (for plots)."""

    results: dict
    issues: list
    labelled: LabelledPrediction | None = None
    failures: dict[str, SofteningFailure] = field(default_factory=dict)  # chemsys → why it was not measurable

    def parity_plots(self, folder) -> list[str]:
        """One force parity plot per chemistry in ``folder`` (PNG); the paths written."""
        import os

        from calib.softening.scale import parity_plot

        os.makedirs(folder, exist_ok=True)
        lp, written = self.labelled, []
        chem = lp.ok["chemsys"].values
        for c, r in self.results.items():
            idx = np.flatnonzero(chem == c)
            path = os.path.join(os.fspath(folder), f"parity_{c}.png")
            parity_plot([lp.forces_of(k) for k in idx], [get_forces(lp.structures[k]) for k in idx], r, path)
            written.append(path)
        return written


def measure_softening(model: ModelAdapter, labelled: Sequence[Atoms], *, batch_size: int = 16,
                      n_bootstrap: int = SOFTENING.n_bootstrap, confidence: float = SOFTENING.confidence,
                      seed: int = 0, progress: bool = True, predictor: CalibratedPredictor | None = None) -> SofteningRun:
    """Softening scale, correction and cMAE per chemical system of ``labelled`` (docs/softening.md)."""
    lp = predict_labelled((predictor or CalibratedPredictor(model)).raw(), labelled, forces=True,
                          batch_size=batch_size, progress=progress, require="forces")
    return _softening_run(lp, n_bootstrap=n_bootstrap, confidence=confidence, seed=seed)


def _softening_run(lp: LabelledPrediction, **kw) -> SofteningRun:
    from calib.softening.scale import fit_softening_by_chemsys

    ok = lp.ok
    if not lp.structures:
        return SofteningRun({}, lp.issues, lp)
    failures: dict[str, SofteningFailure] = {}
    key = "domain_score" if "domain_score" in ok else "q_score"  # the correction's domain: the largest score
    results = fit_softening_by_chemsys(
        ok["chemsys"].values, [lp.forces_of(k) for k in range(len(lp.structures))],
        [get_forces(a) for a in lp.structures], model_energies=ok["energy"].values,
        reference_energies=[get_energy(a) for a in lp.structures], n_atoms=ok["n_atoms"].values,
        compositions=[a.get_chemical_formula(empirical=True) for a in lp.structures], failures=failures,
        domain_scores=ok[key].values if key in ok else None, **kw)
    return SofteningRun(results, lp.issues, lp, failures)


def store_corrections(artifact: Artifact, results: dict, only=None) -> Artifact:
    """A new artifact with the scalar corrections of these softening results (those in ``only``)."""
    from calib.softening.correction import ScalarCorrection

    return artifact.with_corrections(ScalarCorrection.from_results(results, only=only))
