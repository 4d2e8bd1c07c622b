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


#: conformal targets: name -> (unit, what one point is)
CONFORMAL_TARGETS = {
    "energy": ("eV", "total energy of a structure (after the element reference)"),
    "energy_difference": ("eV", "E_a - E_b for disjoint random pairs within a chemical system"),
    "forces": ("eV/Å", "one Cartesian force component"),
    "force_norm": ("eV/Å", "|F_ref - F_model| of one atom against sqrt(σx² + σy² + σz²)"),
}


def difference_pairs(chemsys: Sequence[str], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint random pairs (i, j) of structures within each chemical system (seeded)."""
    rng = np.random.default_rng(seed)
    first, second = [], []
    labels = np.asarray(chemsys)
    for c in sorted(set(labels.tolist())):
        idx = rng.permutation(np.flatnonzero(labels == c))
        first.extend(idx[0:len(idx) - 1:2])
        second.extend(idx[1:len(idx):2])
    return np.asarray(first, dtype=int), np.asarray(second, dtype=int)


def conformal_points(L: LLPR, pred, e_err: np.ndarray, f_err: np.ndarray | None,
                     f_sigma: np.ndarray | None, atom_numbers: np.ndarray | None = None) -> dict:
    """Per target: errors, σ (target unit), per-point descriptors and chemsys/element labels.

    ``f_sigma`` holds per-component force σ in the order of ``f_err.ravel()``;
    ``atom_numbers`` (concatenated over structures) gives the element labels of atoms.
    """
    from ase.data import chemical_symbols

    e_sig = L.energy_sigma(pred.features, pred.n_atoms)
    chem = np.asarray(pred.chemsys)
    out = {"energy": dict(errors=e_err, sigma=e_sig, descriptors=pred.features, chemsys=chem, element=chem)}
    i, j = difference_pairs(pred.chemsys)
    if len(i):
        out["energy_difference"] = dict(
            errors=e_err[i] - e_err[j],
            sigma=L.energy_difference_sigma(pred.features[i], pred.n_atoms[i], pred.features[j], pred.n_atoms[j]),
            descriptors=pred.features[i] - pred.features[j], chemsys=chem[i], element=chem[i])
    if f_err is not None and f_sigma is not None:
        atom_chem = chem[pred.atom_structure]
        symbols = (np.array([chemical_symbols[z] for z in atom_numbers]) if atom_numbers is not None
                   else atom_chem)
        sig3 = f_sigma.reshape(-1, 3)
        out["forces"] = dict(errors=f_err.ravel(), sigma=f_sigma.ravel(),
                             descriptors=np.repeat(pred.atom_descriptors, 3, axis=0),
                             chemsys=np.repeat(atom_chem, 3), element=np.repeat(symbols, 3))
        out["force_norm"] = dict(errors=np.linalg.norm(f_err.reshape(-1, 3), axis=1),
                                 sigma=np.sqrt((sig3**2).sum(axis=1)), descriptors=pred.atom_descriptors,
                                 chemsys=atom_chem, element=symbols)
    return out


def fit_conformal(points: dict, alpha: float, classes: int | str | None = None,
                  min_class_size: int = 30, seed: int = 0) -> dict:
    """One calibrator per target: split CP, or Mondrian CP when ``classes`` is given.

    ``classes``: an int K (mixture of up to K environment classes on the
    descriptors), ``"element"`` or ``"chemsys"`` (labels), or None.
    Energy differences always use the global (split) calibrator.
    """
    from .conformal import ClassConformalCalibrator, ConformalCalibrator

    out = {}
    for name, p in points.items():
        if classes in (None, 0, "none") or name == "energy_difference":
            out[name] = ConformalCalibrator(alpha).fit(p["errors"], p["sigma"])
            continue
        cp = ClassConformalCalibrator(alpha, n_classes=classes if isinstance(classes, int) else 8,
                                      min_class_size=min_class_size, random_state=seed)
        if isinstance(classes, int):
            out[name] = cp.fit(p["errors"], p["sigma"], descriptors=p["descriptors"])
        elif classes in ("element", "chemsys"):
            out[name] = cp.fit(p["errors"], p["sigma"], labels=p[classes])
        else:
            raise ValueError(f"classes must be an integer, 'element', 'chemsys' or None; got {classes!r}")
    return out


def _conformal_classes(artifact: Artifact) -> int | str:
    """The ``classes`` setting the artifact's conformal state was fitted with (int K or a label kind)."""
    classes = artifact.attrs.get("conformal_classes", "none")
    return int(classes) if str(classes).isdigit() else classes


def half_widths(calibrator, point: dict, classes: int | str | None) -> tuple[np.ndarray, np.ndarray | None]:
    """(q·σ per point, class per point or None) for a fitted calibrator."""
    from .conformal import ClassConformalCalibrator

    if isinstance(calibrator, ClassConformalCalibrator):
        if calibrator.mixture_ is not None:
            cls = calibrator.assign(descriptors=point["descriptors"])
        else:
            cls = calibrator.assign(labels=point[classes if classes in ("element", "chemsys") else "chemsys"])
        return calibrator.quantile_for(cls) * point["sigma"], cls
    return calibrator.half_width(point["sigma"]), None


def calibrate(
    artifact: Artifact,
    model: ModelAdapter,
    labelled: Sequence[Atoms],
    *,
    target: str = "both",
    batch_size: int = 16,
    approx_coverage: float = 0.95,
    with_forces: bool = True,
    alpha: float | None = 0.1,
    classes: int | str | None = None,
    min_class_size: int = 30,
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
    alpha : float or None
        Miscoverage level of the conformal intervals fitted on the same set
        (None: no conformal state). The conformal scores |error|/σ depend on
        this set only through ς² (α² cancels in q·σ), see docs/conformal.md.
    classes : int, "element", "chemsys" or None
        Mondrian classes for the conformal quantiles: a mixture of up to K
        environment classes on the per-atom descriptors, or labels.
    min_class_size : int
        Classes with fewer calibration points use the global quantile.
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
    f_sigma = None
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
    conformal = {}
    if alpha is not None:
        points = conformal_points(L, pred, e_res, f_res if with_forces else None, f_sigma,
                                  np.concatenate([a.numbers for a in structs]))
        conformal = fit_conformal(points, alpha, classes, min_class_size)
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
        "alpha": alpha,
        "classes": classes,
        "conformal_quantile": {k: c.quantile_ for k, c in conformal.items()},
        "conformal_fallback": {k: dict(getattr(c, "fallback_", {})) for k, c in conformal.items()},
    }
    art = Artifact(llpr=L, model_info=artifact.model_info, readout_weight=artifact.readout_weight,
                   element_reference=ref, conformal=conformal,
                   attrs={**artifact.attrs, "stage": "calibrated", "calibration_target": target,
                          "conformal_classes": "none" if classes is None else str(classes),
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

    With a conformal state: ``energy_interval`` [low, high] (eV) for the
    reference-code total energy, centred on ``energy + energy_shift`` (the
    per-element reference fitted at calibration, eV), ``energy_class`` for
    Mondrian calibrators, and with ``forces`` ``max_force_halfwidth`` (eV/Å,
    the widest per-component conformal half-width).

    With a scalar correction stored for the structure's chemistry
    (``calib softening/decide -o``): ``correction`` (c), ``energy_corrected``
    (eV, anchored, docs/softening.md) and with ``forces`` ``max_force_corrected``
    (eV/Å). σ and intervals stay those of the uncorrected model, which is
    what they were calibrated on.
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
    shift = (artifact.element_reference.predict([a.numbers for a in kept])
             if artifact.element_reference is not None else np.zeros(len(kept)))
    classes = _conformal_classes(artifact)
    e_half = e_cls = f_half = None
    if "energy" in artifact.conformal and len(kept):
        e_half, e_cls = half_widths(artifact.conformal["energy"], {
            "sigma": sig, "descriptors": pred.features, "chemsys": np.asarray(pred.chemsys),
            "element": np.asarray(pred.chemsys)}, classes)
    if forces and "forces" in artifact.conformal and len(kept):
        from ase.data import chemical_symbols

        atom_chem = np.asarray(pred.chemsys)[pred.atom_structure]
        f_sig = np.sqrt(np.concatenate([v.ravel() for v in fvar]))
        numbers = np.concatenate([a.numbers for a in kept])
        f_half, _ = half_widths(artifact.conformal["forces"], {
            "sigma": f_sig, "descriptors": np.repeat(pred.atom_descriptors, 3, axis=0),
            "chemsys": np.repeat(atom_chem, 3),
            "element": np.repeat([chemical_symbols[z] for z in numbers], 3)}, classes)
        f_half = np.split(f_half, 3 * np.cumsum(pred.n_atoms)[:-1])
    from .softening import ScalarCorrection

    correction = ScalarCorrection.from_artifact(artifact)
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
        if e_half is not None:
            centre = rec["energy"] + float(shift[j])
            rec["energy_shift"] = float(shift[j])
            rec["energy_interval"] = [centre - float(e_half[j]), centre + float(e_half[j])]
            if e_cls is not None:
                rec["energy_class"] = str(e_cls[j])
        if forces:
            rec["max_force"] = float(np.abs(pred.forces_of(j)).max())
            rec["max_force_sigma"] = float(np.sqrt(fvar[j].max()))
            if f_half is not None:
                rec["max_force_halfwidth"] = float(f_half[j].max())
        if rec["chemsys"] in correction.factors:
            c, _ = correction.factor(rec["chemsys"])
            rec["correction"] = c
            rec["energy_corrected"] = float(correction.apply(rec["chemsys"], rec["n_atoms"], energy=rec["energy"])[0])
            if forces:
                rec["max_force_corrected"] = c * rec["max_force"]
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
    ``z_rms``. With ``return_points`` the per-point errors, σ, half-widths and
    classes come back under ``"points"`` (for plots).
    """
    from . import metrics

    artifact.check_model(model)
    L = artifact.llpr
    good, issues = model.validate(labelled, require_labels=True)
    if not good:
        raise ValueError("no valid labelled structures to evaluate: " + "; ".join(str(i) for i in issues[:5]))
    structs = [labelled[i] for i in good]
    pred = model.predict(structs, forces=forces, batch_size=batch_size, progress=progress, validate=False)
    e_delta, f_err = _label_errors(structs, pred)
    shift = artifact.element_reference.predict([a.numbers for a in structs]) \
        if artifact.element_reference is not None else 0.0
    f_sigma = None
    if forces:
        f_var = L.force_variance(model, structs, batch_size=batch_size, progress=progress)
        f_sigma = np.sqrt(np.concatenate([v.ravel() for v in f_var]))
    points = conformal_points(L, pred, e_delta - shift, f_err, f_sigma,
                              np.concatenate([a.numbers for a in structs]))
    classes = _conformal_classes(artifact)
    alpha = next((c.alpha for c in artifact.conformal.values()), None)
    out: dict = {"alpha": alpha, "n_structures": len(structs), "skipped": [i.as_dict() for i in issues]}
    kept = {}
    for name, p in points.items():
        cal = artifact.conformal.get(name)
        if cal is not None:
            h, cls = half_widths(cal, p, classes)
            block = metrics.report(p["errors"], p["sigma"], h, cls)
        else:
            h, cls = None, None
            block = {k: v for k, v in metrics.report(p["errors"], p["sigma"], p["sigma"]).items()
                     if k not in ("coverage", "mean_width", "per_class")}
        z = p["errors"] / p["sigma"]
        block.update(coverage_1sigma=float(np.mean(np.abs(z) <= 1)), coverage_2sigma=float(np.mean(np.abs(z) <= 2)),
                     z_rms=float(np.sqrt(np.mean(z**2))), unit=CONFORMAL_TARGETS[name][0])
        out[name] = block
        kept[name] = {"errors": p["errors"], "sigma": p["sigma"], "half_width": h, "classes": cls,
                      "calibrator": cal}
    if return_points:
        out["points"] = kept
    return out
