"""Held-out evaluation of calibrated σ and conformal intervals against real errors."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ase import Atoms

from calib.artifact import Artifact
from calib.models.base import ModelAdapter
from calib.predictor import CalibratedPredictor
from calib.uq.targets import TARGETS, build_points
from calib.workflows.calibration import drop_zero_sigma
from calib.workflows.labelled import predict_labelled


def evaluate(
    artifact: Artifact,
    model: ModelAdapter,
    labelled: Sequence[Atoms],
    *,
    batch_size: int = 16,
    forces: bool = True,
    progress: bool = True,
    return_points: bool = False,
) -> dict:
    """Held-out check of calibrated σ and conformal intervals against real errors.

    Energy errors are total eV after the artifact's per-element reference;
    force errors are components in eV/Å (``forces``) and per-atom norms
    (``force_norm``); ``energy_difference`` pairs structures within a
    chemical system. For each target: ``n``, ``mae``, ``coverage`` and
    ``mean_width`` of the conformal intervals (absent without a conformal
    state), ``nll`` (nats), ``ence``, ``miscalibration_area``, ``spearman``
    (σ vs |error|), ``per_class`` coverage, and for the Gaussian reading of σ
    ``coverage_1sigma`` / ``coverage_2sigma`` (0.683 / 0.954 if Gaussian) and
    ``z_rms``. Energy targets count only structures whose element reference is
    determined by the calibration compositions (calib.uq.reference); the others are
    ``n_without_interval``. With ``return_points`` the per-point errors, σ,
    half-widths and classes come back under ``"points"`` (for plots).
    """
    from calib.uq import metrics

    predictor = CalibratedPredictor(model, artifact, require_calibrated=False)
    lp = predict_labelled(predictor, labelled, forces=forces, force_mode="exact" if forces else "none",
                          batch_size=batch_size, descriptors=True, progress=progress)
    if not lp.structures:
        raise ValueError("no valid labelled structures to evaluate: " + "; ".join(str(i) for i in lp.issues[:5]))
    ok = lp.ok
    shift = ok["energy_shift"].values if "energy_shift" in ok else 0.0
    chem = ok["chemsys"].values
    rows = {int(s): k for k, s in enumerate(ok["structure"].values)}
    points = build_points(artifact.llpr, features=ok["features"].values, n_atoms=ok["n_atoms"].values,
                          chemsys=chem, energy_sigma=ok["energy_sigma"].values,
                          atom_structure=np.array([rows[int(i)] for i in ok["structure_index"].values]),
                          numbers=ok["numbers"].values, atom_descriptors=ok["atom_descriptors"].values,
                          force_sigma=ok["forces_sigma"].values if forces else None,
                          energy_errors=lp.energy_errors - shift, force_errors=lp.force_errors,
                          energies=ok["energy"].values, differences=artifact.differences,
                          correction=artifact.corrections.per_structure(chem))
    # energies need a determined element reference: structures without one (NaN shift) have no interval and
    # no score (build_points leaves out energy points whose error is not finite)
    n_without = int(np.sum(~np.isfinite(shift))) if np.ndim(shift) else 0
    for name in ("energy_difference", "energy_difference_corrected"):
        if name in points:
            points[name] = points[name].subset(np.isfinite(points[name].errors))
    points, dropped = drop_zero_sigma(points)
    points = {k: p for k, p in points.items() if len(p)}
    alpha = next((c.alpha for c in artifact.conformal.values()), None)
    out: dict = {"alpha": alpha, "n_structures": len(lp.structures), "n_without_interval": n_without,
                 "force_components_zero_sigma": dropped.get("forces", 0),
                 "skipped": [i.as_dict() for i in lp.issues]}
    kept = {}
    for name, p in points.items():
        cal = artifact.conformal.get(name)
        if cal is not None:
            h, cls = cal.half_width_points(p)
            block = metrics.report(p.errors, p.sigma, h, cls)
        else:
            h, cls = None, None
            block = {k: v for k, v in metrics.report(p.errors, p.sigma, p.sigma).items()
                     if k not in ("coverage", "mean_width", "per_class")}
        z = p.errors / p.sigma
        block.update(coverage_1sigma=float(np.mean(np.abs(z) <= 1)), coverage_2sigma=float(np.mean(np.abs(z) <= 2)),
                     z_rms=float(np.sqrt(np.mean(z**2))), unit=TARGETS[name][0])
        out[name] = block
        kept[name] = {"errors": p.errors, "sigma": p.sigma, "half_width": h, "classes": cls, "calibrator": cal}
    if return_points:
        out["points"] = kept
    return out
