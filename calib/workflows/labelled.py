"""Predictions of labelled structures with their reference-minus-model errors (evaluation, softening,
decisions share them)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from ase import Atoms

from calib.predictor import CalibratedPredictor
from calib.workflows.calibration import label_errors


@dataclass
class LabelledPrediction:
    """A predictor Dataset of labelled structures with their reference-minus-model errors.

    ``structures`` are the valid labelled structures in the order of the
    Dataset's predicted rows (``ds.error == ""``); ``issues`` the skipped ones.
    ``energy_errors`` (S,) eV and ``force_errors`` (N, 3) eV/Å are reference
    minus the model's own prediction (no element reference removed). ``points`` are the predictor's
    conformal points (without errors) when asked for.
    """

    ds: object
    structures: list
    issues: list
    energy_errors: np.ndarray
    force_errors: np.ndarray | None
    points: dict | None = None

    @property
    def ok(self):
        """The Dataset restricted to the predicted structures."""
        return self.ds.isel(structure=np.flatnonzero(self.ds["error"].values == ""))

    def forces_of(self, k: int) -> np.ndarray:
        """Model forces (eV/Å) of the k-th valid structure."""
        ok = self.ok
        idx = int(ok["structure"].values[k])
        return ok["forces"].values[ok["structure_index"].values == idx]


def predict_labelled(predictor: CalibratedPredictor, labelled: Sequence[Atoms], *, forces: bool = True,
                     force_mode: str = "none", batch_size: int = 16, descriptors: bool = False,
                     progress: bool = True, points: bool = False, require: bool | str = True) -> LabelledPrediction:
    """Predict labelled structures (skipping and reporting unlabelled or invalid ones) and their errors;
    with ``points`` also the predictor's conformal points. ``require``: the labels a structure needs (True:
    energy and forces; "energy" or "forces": that one; a missing energy error is NaN)."""
    from calib.data.structures import StructureIssue

    ds = predictor.predict(labelled, forces=forces, force_mode=force_mode, batch_size=batch_size,
                           descriptors=descriptors, require_labels=require, progress=progress,
                           return_points=points)
    ds, pts = ds if points else (ds, None)
    err = ds["error"].values
    ok_rows = np.flatnonzero(err == "")
    structs = [labelled[int(i)] for i in ds["structure"].values[ok_rows]]
    issues = [StructureIssue(int(ds["structure"].values[k]), str(ds["name"].values[k]), str(err[k]),
                             str(ds["source"].values[k]))
              for k in np.flatnonzero(err != "")]
    e_err, f_err = label_errors(structs, ds["energy"].values[ok_rows], ds["forces"].values if forces else None)
    return LabelledPrediction(ds, structs, issues, e_err, f_err, pts)


def reference_energies(images: Sequence[Atoms], reference: Sequence[Atoms]) -> list[float]:
    """The total energies (eV) of ``reference``, labelled copies of a path's ``images`` in the same order (an NEB
    path's DFT images), refused (:class:`calib.errors.InputError`) unless each one is its image: the same atoms in
    the same order, the same cell within 1e-3 Å, and an energy."""
    from calib.data.structures import get_energy
    from calib.errors import InputError

    energies = [get_energy(a) for a in reference]
    if len(energies) != len(images) or any(e is None for e in energies):
        raise InputError(f"reference must hold one labelled image per image ({len(images)}), got {len(energies)} "
                         f"with {sum(e is None for e in energies)} unlabelled")
    for k, (img, lab) in enumerate(zip(images, reference)):
        if len(img) != len(lab) or not np.array_equal(img.numbers, lab.numbers):
            raise InputError(f"reference image {k} ({lab.get_chemical_formula()}, {len(lab)} atoms) is not image {k} "
                             f"of the path ({img.get_chemical_formula()}, {len(img)} atoms): the atoms and their "
                             "order must match")
        if not np.allclose(img.cell[:], lab.cell[:], atol=1e-3):
            raise InputError(f"reference image {k} has another cell than image {k} of the path (max difference "
                             f"{np.abs(img.cell[:] - lab.cell[:]).max():.3g} Å): not the same system")
    return energies
