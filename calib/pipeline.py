"""The three steps users run: build H, calibrate on labels, predict with σ.

These functions are what the CLI calls; they are the library API too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from ase import Atoms

from .io import Artifact, ArtifactError
from .llpr import LLPR, accumulate_hessian, feature_gradients
from .models.base import ModelAdapter, batches
from .reference import ElementReference
from .structures import StructureIssue, get_energy, get_forces


def build_hessian(
    model: ModelAdapter,
    structures: Sequence[Atoms],
    *,
    batch_size: int = 16,
    force_weight: float = 0.0,
    checkpoint=None,
    checkpoint_every: int = 10,
    progress: bool = True,
    source: str = "",
) -> tuple[Artifact, list[StructureIssue]]:
    """Accumulate H over unlabelled ``structures`` and return an uncalibrated artifact.

    Returns (artifact, issues); ``issues`` lists the structures skipped.
    """
    res = accumulate_hessian(model, structures, batch_size=batch_size, force_weight=force_weight,
                             checkpoint=checkpoint, checkpoint_every=checkpoint_every, progress=progress)
    if res.n_structures == 0:
        raise ValueError("no valid structures to accumulate the Hessian from: "
                         + "; ".join(str(i) for i in res.issues[:5]))
    llpr = LLPR(energy_convention=model.energy_convention).fit(res.hessian, res.n_structures)
    w, _ = model.readout
    art = Artifact(llpr=llpr, model_info=model.describe(), readout_weight=w,
                   attrs={"stage": "hessian", "hessian_source": source, "force_weight": force_weight,
                          "hessian_seconds": round(res.seconds, 2)})
    return art, res.issues


@dataclass
class CalibrationResult:
    """What :func:`calibrate` fitted and measured on the labelled set.

    Energies are total eV, forces eV/Å. ``energy_residual`` is reference minus
    model after removing the per-element reference.
    """

    artifact: Artifact
    issues: list[StructureIssue] = field(default_factory=list)
    n_structures: int = 0
    energy_residual: np.ndarray | None = None
    energy_sigma: np.ndarray | None = None
    summary: dict = field(default_factory=dict)


def _label_errors(structs: Sequence[Atoms], pred) -> tuple[np.ndarray, np.ndarray | None]:
    """Reference minus model: total energies (S,) in eV and, when predicted, forces (N_total, 3) in eV/Å."""
    e_delta = np.array([get_energy(a) for a in structs]) - pred.energy
    if pred.forces is None:
        return e_delta, None
    return e_delta, np.concatenate([get_forces(a) - pred.forces_of(i) for i, a in enumerate(structs)])


def _spearman(a, b) -> float:
    from scipy.stats import spearmanr

    if len(a) < 3:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def calibrate(
    artifact: Artifact,
    model: ModelAdapter,
    labelled: Sequence[Atoms],
    *,
    target: str = "both",
    batch_size: int = 16,
    approx_coverage: float = 0.95,
    with_forces: bool = True,
    progress: bool = True,
) -> CalibrationResult:
    """Fit α², ς² (Gaussian NLL) and the per-element energy reference on labelled structures.

    Parameters
    ----------
    target : "energy" | "forces" | "both"
        Which residuals the NLL is taken over. Energies use total eV after the
        per-element reference; forces use every component (eV/Å). "both"
        (the default) fits (α², ς²) for each separately: measured on the
        shipped GPAW data, one pair cannot serve both (docs/llpr.md).
    approx_coverage : float
        Fraction of the summed force variance the approximate force σ keeps
        (directions chosen by measured contribution on these structures).
    with_forces : bool
        Compute exact force gradients on the labelled set (d backward passes
        per batch) for the force diagnostics and the approximate-σ truncation.
        Only ``target="energy"`` can do without.
    """
    from tqdm.auto import tqdm

    artifact.check_model(model)
    if target not in ("energy", "forces", "both"):
        raise ValueError(f"target must be 'energy', 'forces' or 'both', got {target!r}")
    if target != "energy" and not with_forces:
        raise ValueError(f"target={target!r} needs force gradients (with_forces=True)")
    good, issues = model.validate(labelled, require_labels=True)
    if len(good) < 2:
        raise ValueError(f"calibration needs at least 2 valid labelled structures, got {len(good)}; "
                         + "; ".join(str(i) for i in issues[:5]))
    structs = [labelled[i] for i in good]
    pred = model.predict(structs, forces=True, batch_size=batch_size, progress=progress, validate=False)
    e_delta, f_res = _label_errors(structs, pred)
    numbers = [a.numbers for a in structs]
    ref = ElementReference().fit(numbers, e_delta)
    e_res = e_delta - ref.predict(numbers)

    L = artifact.llpr
    # exact force gradients on the calibration set: for force calibration and the approx truncation
    U = L.eigenvectors_.T
    grads: list[np.ndarray] = []
    for idx in tqdm(list(batches(len(structs), batch_size)) if with_forces else [], desc="force gradients",
                    unit="batch", disable=not progress):
        grads.extend(feature_gradients(model, [structs[i] for i in idx], U))
    rows, res, groups = [], [], []
    if target in ("energy", "both"):
        rows.append(L.energy_rows(pred.features, pred.n_atoms))
        res.append(e_res)
        groups.append(np.zeros(len(e_res), dtype=int))
    if target in ("forces", "both"):
        rows.append(L.force_rows(grads, pred.n_atoms))
        res.append(f_res.reshape(-1))
        groups.append(np.ones(f_res.size, dtype=int))
    L.calibrate(np.concatenate(rows), np.concatenate(res), target=target, groups=np.concatenate(groups))
    e_sigma = L.energy_sigma(pred.features, pred.n_atoms)
    force_summary = {}
    if with_forces:
        L.fit_force_truncation(grads, pred.n_atoms, coverage=approx_coverage)
        f_rows = L.force_rows(grads, pred.n_atoms)
        f_sigma = np.sqrt(L.force_alpha2_ * f_rows @ L._force_weights())
        force_summary = {
            "force_alpha2": L.force_alpha2_,
            "force_sigma2": L.force_sigma2_,
            "force_nll": L.nll(f_rows, f_res.reshape(-1), observable="forces"),
            "force_spearman": _spearman(f_sigma, np.abs(f_res.reshape(-1))),
            "approx_force_directions": int(len(L.force_directions_)),
        }
    summary = {
        "target": target,
        "n_structures": len(structs),
        "alpha2": L.alpha2_,
        "sigma2": L.sigma2_,
        "rank": L.rank_,
        "n_features": L.n_features,
        "regularisation_note": L.regularisation_note_,
        "energy_nll": L.nll(L.energy_rows(pred.features, pred.n_atoms), e_res),
        "energy_spearman": _spearman(e_sigma, np.abs(e_res)),
        "energy_rmse_per_atom": float(np.sqrt(np.mean((e_res / pred.n_atoms) ** 2))),
        "force_mae": float(np.mean(np.abs(f_res))),
        **force_summary,
        "element_reference": ref.as_dict(),
    }
    art = Artifact(llpr=L, model_info=artifact.model_info, readout_weight=artifact.readout_weight,
                   element_reference=ref,
                   attrs={**artifact.attrs, "stage": "calibrated", "calibration_target": target,
                          "calibration_n_structures": len(structs),
                          "element_reference_note": "least squares on element counts of E_ref - E_model "
                                                    "over the calibration set (eV/atom)"})
    return CalibrationResult(artifact=art, issues=issues, n_structures=len(structs),
                             energy_residual=e_res, energy_sigma=e_sigma, summary=summary)


def predict(
    artifact: Artifact,
    model: ModelAdapter,
    structures: Sequence[Atoms],
    *,
    forces: bool = False,
    force_mode: str = "exact",
    batch_size: int = 16,
    progress: bool = False,
) -> tuple[list[dict], list[StructureIssue]]:
    """Energies with σ (and force σ) for each valid structure.

    Each record: ``index`` (into ``structures``), ``name``, ``chemsys``,
    ``n_atoms``, ``energy`` (total eV), ``energy_per_atom`` (eV/atom),
    ``energy_sigma`` (eV, total), and with ``forces`` ``max_force`` and
    ``max_force_sigma`` (eV/Å, the largest per-component σ).
    """
    from .structures import structure_name

    artifact.check_model(model)
    if not artifact.calibrated:
        raise ArtifactError("this artifact holds a Hessian only; run `calib calibrate` on labelled data first")
    L = artifact.llpr
    pred = model.predict(structures, forces=forces, batch_size=batch_size, progress=progress)
    sig = L.energy_sigma(pred.features, pred.n_atoms)
    kept = [structures[i] for i in pred.indices]
    fvar = L.force_variance(model, kept, mode=force_mode, batch_size=batch_size,
                            progress=progress) if forces else None
    records = []
    for j, i in enumerate(pred.indices):
        rec = {
            "index": int(i),
            "name": structure_name(structures[i]),
            "chemsys": pred.chemsys[j],
            "n_atoms": int(pred.n_atoms[j]),
            "energy": float(pred.energy[j]),
            "energy_per_atom": float(pred.energy_per_atom[j]),
            "energy_sigma": float(sig[j]),
        }
        if forces:
            rec["max_force"] = float(np.abs(pred.forces_of(j)).max())
            rec["max_force_sigma"] = float(np.sqrt(fvar[j].max()))
        records.append(rec)
    return records, pred.issues


def evaluate(
    artifact: Artifact,
    model: ModelAdapter,
    labelled: Sequence[Atoms],
    *,
    batch_size: int = 16,
    forces: bool = True,
    progress: bool = False,
) -> dict:
    """Held-out check of calibrated σ against real errors.

    Energy errors are total eV after the artifact's per-element reference;
    force errors are components in eV/Å. Returns, for ``energy`` and
    ``forces``: ``n``, ``mae``, ``nll`` (mean Gaussian NLL, nats), ``spearman``
    (rank correlation of σ with |error|), ``coverage_1sigma`` / ``coverage_2sigma``
    (fraction of |error| ≤ kσ; Gaussian: 0.683 / 0.954), and ``z_rms``.
    """
    from scipy.stats import norm

    artifact.check_model(model)
    L = artifact.llpr
    good, issues = model.validate(labelled, require_labels=True)
    structs = [labelled[i] for i in good]
    pred = model.predict(structs, forces=forces, batch_size=batch_size, progress=progress, validate=False)
    e_delta, f_err = _label_errors(structs, pred)
    shift = artifact.element_reference.predict([a.numbers for a in structs]) \
        if artifact.element_reference is not None else 0.0
    e_err = e_delta - shift
    e_sig = L.energy_sigma(pred.features, pred.n_atoms)
    out = {"skipped": [i.as_dict() for i in issues]}

    def block(err, sig):
        z = err / sig
        return {
            "n": int(len(err)),
            "mae": float(np.mean(np.abs(err))),
            "nll": float(np.mean(-norm.logpdf(err, scale=sig))),
            "spearman": _spearman(sig, np.abs(err)),
            "coverage_1sigma": float(np.mean(np.abs(z) <= 1)),
            "coverage_2sigma": float(np.mean(np.abs(z) <= 2)),
            "z_rms": float(np.sqrt(np.mean(z**2))),
        }

    out["energy"] = block(e_err, e_sig)
    if forces:
        f_var = L.force_variance(model, structs, batch_size=batch_size, progress=progress)
        out["forces"] = block(f_err.ravel(), np.sqrt(np.concatenate([v.ravel() for v in f_var])))
    return out
