"""Held-out evaluation of calibrated σ and conformal intervals against real errors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from ase import Atoms

from calib.artifact import Artifact
from calib.models.base import ModelAdapter
from calib.predictor import CalibratedPredictor
from calib.uq.differences import composition
from calib.uq.targets import TARGETS, difference_points
from calib.workflows.calibration import drop_zero_sigma
from calib.workflows.labelled import predict_labelled


@dataclass
class TargetReport:
    """How σ and the intervals of one target did on held-out data (errors and widths in ``unit``).

    ``coverage`` and ``mean_width`` (of the conformal intervals, and ``per_class`` coverage) are None
    without a conformal state; ``coverage_1sigma`` / ``coverage_2sigma`` (0.683 / 0.954 if Gaussian) and
    ``z_rms`` read σ as a Gaussian standard deviation; NLL in nats per point; ``spearman`` of σ against
    |error|."""

    unit: str
    n: int
    mae: float
    nll: float
    ence: float
    miscalibration_area: float
    spearman: float
    coverage_1sigma: float
    coverage_2sigma: float
    z_rms: float
    coverage: float | None = None
    mean_width: float | None = None
    per_class: dict | None = None
    width_error_ratio: float | None = None  # median conformal half-width ÷ median |error| (sharpness; ≈ 2.4 if
    # σ were a perfect Gaussian standard deviation at α = 0.1)

    def as_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if v is not None}
        return out


@dataclass
class Evaluation:
    """The result of :func:`evaluate`: one :class:`TargetReport` per target, counts and skipped structures.

    ``n_without_interval`` counts structures whose element reference the calibration compositions do not
    determine (no energy point); ``n_in_calibration`` how many of the evaluated structures the artifact was
    calibrated on (by content fingerprint; None when the artifact does not record them: calibrated before
    calib 0.6, as the shipped default is), so that "held-out" is measured, not assumed; ``verdict`` measures the trust verdict against the labels
    (:func:`calib.uq.metrics.verdict_quality`; with forces); ``points`` (with ``return_points``) holds per
    target the errors, σ, half-widths, classes and calibrator, for plots."""

    alpha: float | None
    n_structures: int
    n_without_interval: int
    force_components_zero_sigma: int
    skipped: list
    targets: dict = field(default_factory=dict)
    verdict: dict | None = None
    points: dict | None = None
    n_in_calibration: int | None = None

    @property
    def held_out(self) -> dict:
        """Whether the evaluated structures are held out: counts and a sentence (``calib evaluate`` prints it)."""
        n, k = self.n_structures, self.n_in_calibration
        if k is None:
            note = ("cannot tell whether these structures are held out: the artifact does not record its "
                    "calibration structures (calibrated before calib 0.6)")
        elif k == 0:
            note = f"all {n} structures are held out: none is a calibration structure of the artifact"
        else:
            note = (f"{k} of the {n} structures are calibration structures of the artifact: coverage on them is "
                    "in-sample, not held-out")
        return {"n_structures": n, "n_in_calibration": k, "n_held_out": None if k is None else n - k, "note": note}

    def as_dict(self) -> dict:
        """The JSON record of ``calib evaluate`` (keys as in calib 0.4)."""
        return {"alpha": self.alpha, "n_structures": self.n_structures, "n_without_interval": self.n_without_interval,
                "force_components_zero_sigma": self.force_components_zero_sigma,
                "skipped": [i.as_dict() for i in self.skipped], **{k: t.as_dict() for k, t in self.targets.items()},
                **({"verdict": self.verdict} if self.verdict is not None else {}), "held_out": self.held_out}


def _in_calibration(artifact: Artifact, structures) -> int | None:
    """How many of ``structures`` the artifact was calibrated on (content fingerprints), None when it does not
    record them."""
    if artifact.calibration_keys is None:
        return None
    from calib.data.labelers import structure_key

    keys = set(artifact.calibration_keys)
    return int(sum(structure_key(a) in keys for a in structures))


def _half_widths(artifact: Artifact, name: str, p, ok) -> tuple[np.ndarray, np.ndarray | None]:
    """(half-width per point, class per point or None) of target ``name``'s intervals as the predictor reports
    them: force components of a structure whose prediction is corrected by the corrected forces' quantile."""
    if name == "forces" and "prediction" in ok:
        corrected = (ok["prediction"].values == "corrected")[np.searchsorted(ok["structure"].values, p.structure)]
        return artifact.conformal.force_half_width(p, corrected)
    return artifact.conformal[name].half_width_points(p)


def evaluate(
    artifact: Artifact,
    model: ModelAdapter,
    labelled: Sequence[Atoms],
    *,
    batch_size: int = 16,
    forces: bool = True,
    progress: bool = True,
    return_points: bool = False,
) -> Evaluation:
    """Held-out check of calibrated σ and conformal intervals against real errors.

    Energy errors are total eV after the artifact's per-element reference;
    force errors are components in eV/Å (``forces``) and per-atom norms
    (``force_norm``); ``energy_difference`` pairs structures within a
    chemical system. The points are the predictor's own (the ones its intervals come from), with the
    reference-minus-model errors attached; energy targets count only structures whose element reference
    is determined by the calibration compositions (calib.uq.reference). Returns an :class:`Evaluation`.
    """
    from calib.uq import metrics

    predictor = CalibratedPredictor(model, artifact, require_calibrated=False)
    # the error models' σ cost nothing beyond the model's forces; LLPR force σ (reverse passes) only for an artifact
    # from before them
    exact = forces and artifact.error_models is None
    lp = predict_labelled(predictor, labelled, forces=forces, force_mode="exact" if exact else "none",
                          batch_size=batch_size, descriptors=True, progress=progress, points=True,
                          require=True if forces else "energy")
    if not lp.structures:
        from calib.errors import InputError

        raise InputError("no valid labelled structure to evaluate: " + "; ".join(str(i) for i in lp.issues[:5]))
    ok = lp.ok
    shift = ok["energy_shift"].values if "energy_shift" in ok else np.zeros(len(lp.structures))
    chem = ok["chemsys"].values
    e_err = lp.energy_errors - shift  # NaN where the shift is not determined: no interval, no score
    points = {"energy": lp.points["energy"].with_errors(e_err)}
    if forces and "forces" in lp.points:
        points["forces"] = lp.points["forces"].with_errors(lp.force_errors)
        points["force_norm"] = lp.points["force_norm"].with_errors(np.linalg.norm(lp.force_errors, axis=1))
    points.update(difference_points(artifact.llpr, ok["features"].values, ok["n_atoms"].values, chem, e_err,
                                    compositions=[composition(a) for a in lp.structures],
                                    energies=ok["energy"].values, differences=artifact.differences,
                                    correction=artifact.corrections.per_structure(chem)))
    points = {k: p.subset(np.isfinite(p.errors)) for k, p in points.items()}
    points, dropped = drop_zero_sigma(points)
    points = {k: p for k, p in points.items() if len(p)}
    out = Evaluation(alpha=artifact.conformal.alpha,
                     n_structures=len(lp.structures), n_without_interval=int(np.sum(~np.isfinite(shift))),
                     force_components_zero_sigma=dropped.get("forces", 0), skipped=list(lp.issues),
                     points={} if return_points else None,
                     n_in_calibration=_in_calibration(artifact, lp.structures))
    if forces and "trusted" in ok:
        owner = np.searchsorted(ok["structure"].values, ok["structure_index"].values)
        worst = np.zeros(len(lp.structures))
        np.maximum.at(worst, owner, np.abs(lp.force_errors).max(axis=1))
        out.verdict = metrics.verdict_quality(worst, ok["trusted"].values, ok["trust_score"].values,
                                              ok["max_force"].values, predictor.trust.force_tol or np.inf)
        if "force_error_bound" in ok:
            out.verdict.update(metrics.bound_coverage(worst, ok["force_error_bound"].values, chem))
    for name, p in points.items():
        cal = artifact.conformal.get(name)
        h, cls = _half_widths(artifact, name, p, ok) if cal is not None else (None, None)
        block = metrics.report(p.errors, p.sigma, p.sigma if h is None else h, cls)
        z = p.errors / p.sigma
        out.targets[name] = TargetReport(
            unit=TARGETS[name].unit, n=block["n"], mae=block["mae"], nll=block["nll"], ence=block["ence"],
            miscalibration_area=block["miscalibration_area"], spearman=block["spearman"],
            coverage_1sigma=float(np.mean(np.abs(z) <= 1)), coverage_2sigma=float(np.mean(np.abs(z) <= 2)),
            z_rms=float(np.sqrt(np.mean(z**2))), coverage=block["coverage"] if cal is not None else None,
            mean_width=block["mean_width"] if cal is not None else None,
            per_class=block["per_class"] if cal is not None else None,
            width_error_ratio=(float(np.median(h) / np.median(np.abs(p.errors))) if h is not None
                               and np.median(np.abs(p.errors)) > 0 else None))
        if return_points:
            out.points[name] = {"errors": p.errors, "sigma": p.sigma, "half_width": h, "classes": cls,
                                "calibrator": cal}
    return out
