"""Short recipes over the library: build H, calibrate, evaluate, measure softening, decide.

Each recipe validates its input once, predicts through
:class:`calib.predictor.CalibratedPredictor` (or the model adapter, for the
calibration fit itself), and returns plain results; the command line only
parses, calls one of these, and formats. Artifacts are never changed in
place: :func:`calibrate` and :func:`store_corrections` return new ones.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from ase import Atoms

from .artifact import Artifact
from .conformal import ConformalCalibrator, class_assigner
from .hessian import accumulate_hessian
from .llpr import LLPR
from .models.base import ModelAdapter, batches
from .models.gradients import feature_gradients
from .predictor import CalibratedPredictor
from .reference import ElementReference, cross_fitted_residuals
from .structures import StructureIssue, get_energy, get_forces
from .targets import TARGETS, build_points

# --------------------------------------------------------------------------- Hessian


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
    client=None,
) -> tuple[Artifact, list[StructureIssue]]:
    """Accumulate H over unlabelled ``structures`` and return an artifact of stage "hessian".

    Returns (artifact, issues); ``issues`` lists the structures skipped. With a
    ``dask.distributed.Client`` the batches run on its workers, each loading the
    model by its name (calib.distributed); checkpoints are for serial runs.
    """
    if client is not None:
        from .distributed import distributed_hessian
        from .models import model_spec

        if checkpoint is not None:
            raise ValueError("checkpoints are for serial runs: a distributed accumulation reruns lost shards itself")
        res = distributed_hessian(client, model_spec(model.describe()), structures, device=str(model.device),
                                  batch_size=batch_size, force_weight=force_weight, progress=progress)
    else:
        res = accumulate_hessian(model, structures, batch_size=batch_size, force_weight=force_weight,
                                 checkpoint=checkpoint, checkpoint_every=checkpoint_every, progress=progress)
    if res.n_structures == 0:
        raise ValueError("no valid structures to accumulate the Hessian from: "
                         + "; ".join(str(i) for i in res.issues[:5]))
    llpr = LLPR(energy_convention=model.energy_convention).fit(res.hessian, res.n_structures)
    w, _ = model.readout
    art = Artifact(llpr=llpr, model_info=model.describe(), readout_weight=w, stage="hessian",
                   attrs={"hessian_source": source, "force_weight": force_weight,
                          "hessian_seconds": round(res.seconds, 2)})
    return art, res.issues


# --------------------------------------------------------------------------- calibration


@dataclass
class CalibrationResult:
    """What :func:`calibrate` fitted and measured on the labelled set.

    Energies are total eV, forces eV/Å. ``energy_residual`` is reference minus
    model after removing the per-element reference (cross-fitted; NaN where
    the other folds do not determine a structure's shift).
    """

    artifact: Artifact
    issues: list[StructureIssue] = field(default_factory=list)
    n_structures: int = 0
    energy_residual: np.ndarray | None = None
    energy_sigma: np.ndarray | None = None
    summary: dict = field(default_factory=dict)


def label_errors(structs: Sequence[Atoms], energy, forces=None) -> tuple[np.ndarray, np.ndarray | None]:
    """Reference minus model: total energies (S,) in eV and, when given, forces (N_total, 3) in eV/Å
    (model forces concatenated over ``structs`` in order)."""
    e_delta = np.array([get_energy(a) for a in structs]) - np.asarray(energy)
    if forces is None:
        return e_delta, None
    ref = [get_forces(a) for a in structs]
    return e_delta, (np.concatenate(ref) if ref else np.zeros((0, 3))) - np.asarray(forces).reshape(-1, 3)


def _spearman(a, b) -> float:
    from .metrics import spearman

    return spearman(a, b) if len(a) >= 3 else float("nan")


def fit_difference_models(llpr, structs, pred, energy_residuals, n_bootstrap: int = 500,
                          confidence: float = 0.95) -> tuple[dict, tuple | None, dict]:
    """(models, (c, σ_c) per structure, summary) of the energy-difference variance models.

    Pairs: every pair of structures sharing chemsys and composition (the element reference cancels).
    ``raw`` is fitted on r = ΔE_ref − ΔE_model; ``corrected`` on r + (1 − c) ΔE_model with c fitted on
    the forces of each chemistry's structures (calib.softening, structure bootstrap for σ_c).
    """
    from .differences import DifferenceVarianceModel, pairs_within
    from .softening import correction_sigma, fit_softening_by_chemsys

    comp = [f"{c}|{a.get_chemical_formula()}" for c, a in zip(pred.chemsys, structs)]
    i, j = pairs_within(comp)
    if len(i) < 2:
        return {}, None, {"difference_note": f"{len(i)} pair(s) share a composition: no difference model"}
    f, n, e = pred.features, pred.n_atoms, pred.energy
    v = llpr.energy_difference_sigma(f[i], n[i], f[j], n[j]) ** 2
    dE = e[i] - e[j]
    r = np.asarray(energy_residuals)[i] - np.asarray(energy_residuals)[j]
    raw = DifferenceVarianceModel().fit(v, dE, r)
    soft = fit_softening_by_chemsys(pred.chemsys, [pred.forces_of(k) for k in range(len(structs))],
                                    [get_forces(a) for a in structs], n_bootstrap=n_bootstrap,
                                    confidence=confidence)
    c = np.array([soft[ch].correction for ch in pred.chemsys])
    sc = np.array([correction_sigma(soft[ch].correction_ci, confidence) for ch in pred.chemsys])
    corrected = DifferenceVarianceModel().fit(c[i] ** 2 * v, dE, r + (1 - c[i]) * dE, extra=(sc[i] * dE) ** 2)
    summary = {"difference_pairs": int(len(i))}
    for name, mdl in (("difference", raw), ("difference_corrected", corrected)):
        summary.update({f"{name}_beta": mdl.beta_, f"{name}_kappa2": mdl.kappa2_, f"{name}_tau2": mdl.tau2_,
                        f"{name}_nll": mdl.nll_})
    return {"raw": raw, "corrected": corrected}, (c, sc), summary


def fit_conformal(points: dict, alpha: float, classes=None, min_class_size: int = 30,
                  seed: int = 0) -> dict:
    """One calibrator per target of ``points``: split conformal, or Mondrian when ``classes`` is
    given (an int K for a mixture of ≤ K environment classes, "element" or "chemsys").
    Energy differences always use the global quantile."""
    out = {}
    for name, p in points.items():
        assigner = None if name.startswith("energy_difference") else class_assigner(classes, random_state=seed)
        out[name] = ConformalCalibrator(alpha, classes=assigner, min_class_size=min_class_size).fit_points(p)
    return out


def drop_zero_sigma(points: dict) -> tuple[dict, dict]:
    """Points without the force components (and atoms) whose σ is exactly zero, by symmetry (a dimer's
    transverse forces, an atom on an inversion centre): their score |error|/σ is undefined. Returns the
    points and, per target, how many were left out."""
    out, dropped = {}, {}
    for name, p in points.items():
        keep = np.asarray(p.sigma) > 0
        if name.startswith("force") and not keep.all():
            dropped[name] = int((~keep).sum())
            p = p.subset(keep)
        out[name] = p
    return out, dropped


def _check_energy_residuals(structs, e_cf, e_ok, energy_folds) -> None:
    """Refuse an energy (α², ς²) fit the data cannot determine, naming why (the element reference
    absorbs every energy error when each composition appears once)."""
    from collections import Counter

    n_ok = int(np.sum(e_ok))
    comps = Counter(a.get_chemical_formula(empirical=True) for a in structs)
    if n_ok >= 2 and np.max(np.abs(e_cf[e_ok])) > 1e-6:
        return
    why = (f"{n_ok} of {len(structs)} structures keep a cross-fitted energy residual ({energy_folds} folds)"
           if energy_folds else f"{len(structs)} in-sample residuals")
    raise ValueError(
        f"energy α² and ς² cannot be determined: {why}, and they are all below 1e-6 eV or too few; "
        f"{len(comps)} composition(s) over {len(structs)} structures ({sum(v == 1 for v in comps.values())} "
        "seen once), so the per-element reference absorbs the energy errors. Add structures that share a "
        "composition (rattled or strained copies), or calibrate with --target forces")


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
    energy_folds: int | None = 5,
    difference_model: bool = True,
    progress: bool = True,
) -> CalibrationResult:
    """Fit α², ς² (Gaussian NLL), the per-element energy reference and conformal quantiles.

    Returns a new artifact of stage "calibrated"; ``artifact`` is not changed.

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
    energy_folds : int or None
        Energy residuals for the (α², ς²) fit and the energy conformal scores are
        cross-fitted: each structure's residual uses an element reference fitted
        on the other folds (K folds of structures), so they are not shrunk by the
        fit as in-sample residuals are. Structures whose shift the other folds do
        not determine are left out (``energy_cross_fit_excluded``). The stored
        reference is the fit on all structures. None: in-sample (calib 0.1.0).
    difference_model : bool
        Fit the energy-difference variance model (calib.differences) on all pairs of
        structures that share a composition, raw and after the scalar correction each
        chemistry's forces give; the energy-difference conformal targets then use it.
        False: LLPR difference σ alone (calib 0.1.0).
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
    e_delta, f_res = label_errors(structs, pred.energy, pred.forces)
    numbers = [a.numbers for a in structs]
    ref = ElementReference().fit(numbers, e_delta)
    e_res = e_delta - ref.predict(numbers)  # in-sample: shrunk by the fit (docs/conformal.md)
    if energy_folds:
        e_cf, e_ok = cross_fitted_residuals(numbers, e_delta, n_folds=energy_folds, seed=0)
    else:
        e_cf, e_ok = e_res, np.ones(len(e_res), dtype=bool)
    if target in ("energy", "both"):
        _check_energy_residuals(structs, e_cf, e_ok, energy_folds)  # before the costly force gradients

    L = copy.deepcopy(artifact.llpr)  # the input artifact stays as it was
    # exact force gradients on the calibration set: for force calibration and the approx truncation
    U = L.eigenvectors_.T
    grads: list[np.ndarray] = []
    for idx in tqdm(list(batches(len(structs), batch_size)) if with_forces else [], desc="force gradients",
                    unit="batch", disable=not progress):
        grads.extend(feature_gradients(model, [structs[i] for i in idx], U))
    f_live = None
    if with_forces:  # force components whose σ is zero by symmetry (f·∂f/∂x = 0) carry no information
        f_rows_all = L.force_rows(grads, pred.n_atoms)
        amax = np.abs(f_rows_all).max(axis=1)
        f_live = amax > 1e-12 * max(float(amax.max(initial=0.0)), 1e-300)
    rows, res, groups = [], [], []
    if target in ("energy", "both"):
        rows.append(L.energy_rows(pred.features[e_ok], pred.n_atoms[e_ok]))
        res.append(e_cf[e_ok])
        groups.append(np.zeros(int(e_ok.sum()), dtype=int))
    if target in ("forces", "both"):
        rows.append(f_rows_all[f_live])
        res.append(f_res.reshape(-1)[f_live])
        groups.append(np.ones(int(f_live.sum()), dtype=int))
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
            "force_nll": L.nll(f_rows[f_live], f_res.reshape(-1)[f_live], observable="forces"),
            "force_spearman": _spearman(f_sigma[f_live], np.abs(f_res.reshape(-1)[f_live])),
            "approx_force_directions": int(len(L.force_directions_)),
            "force_components_zero_sigma": int((~f_live).sum()),
        }
    differences, correction, diff_summary = {}, None, {}
    if difference_model:
        differences, correction, diff_summary = fit_difference_models(L, structs, pred, e_res)
    conformal = {}
    if alpha is not None:
        points = build_points(L, features=pred.features, n_atoms=pred.n_atoms, chemsys=pred.chemsys,
                              energy_sigma=e_sigma, atom_structure=pred.atom_structure, numbers=pred.numbers,
                              atom_descriptors=pred.atom_descriptors,
                              force_sigma=f_sigma if with_forces else None, energy_errors=e_cf,
                              pair_errors=e_res, force_errors=f_res if with_forces else None,
                              energies=pred.energy, differences=differences, correction=correction)
        conformal = fit_conformal(drop_zero_sigma(points)[0], alpha, classes, min_class_size)
    summary = {
        "target": target,
        "n_structures": len(structs),
        "alpha2": L.alpha2_,
        "sigma2": L.sigma2_,
        "rank": L.rank_,
        "n_features": L.n_features,
        "regularisation_note": L.regularisation_note_,
        "energy_nll": L.nll(L.energy_rows(pred.features[e_ok], pred.n_atoms[e_ok]), e_cf[e_ok]),
        "energy_spearman": _spearman(e_sigma[e_ok], np.abs(e_cf[e_ok])),
        "energy_rmse_per_atom": float(np.sqrt(np.mean((e_cf[e_ok] / pred.n_atoms[e_ok]) ** 2))),
        "energy_scores": f"cross-fitted element reference ({energy_folds} folds)" if energy_folds
        else "in-sample element reference",
        "energy_cross_fit_excluded": int((~e_ok).sum()),
        "force_mae": float(np.mean(np.abs(f_res))),
        **force_summary,
        **diff_summary,
        "element_reference": ref.as_dict(),
        "alpha": alpha,
        "classes": classes,
        "conformal_quantile": {k: c.quantile_ for k, c in conformal.items()},
        "conformal_fallback": {k: dict(c.fallback_) for k, c in conformal.items()},
    }
    from .ood import QResidualDetector

    ood = QResidualDetector().fit(pred.atom_descriptors, pred.atom_structure)
    summary["ood_components"], summary["ood_threshold"] = ood.n_components_, ood.threshold_
    art = artifact.replace(llpr=L, stage="calibrated", element_reference=ref, conformal=conformal,
                           differences=differences, ood=ood,
                           attrs={**artifact.attrs, "calibration_target": target,
                                  "calibration_n_structures": len(structs),
                                  "element_reference_note": "least squares on element counts of E_ref - E_model "
                                                            "over the calibration set (eV/atom)",
                                  "energy_scores": summary["energy_scores"]})
    return CalibrationResult(artifact=art, issues=issues, n_structures=len(structs),
                             energy_residual=e_cf, energy_sigma=e_sigma, summary=summary)


# --------------------------------------------------------------------------- prediction on labelled data


@dataclass
class LabelledPrediction:
    """A predictor Dataset of labelled structures with their reference-minus-model errors.

    ``structures`` are the valid labelled structures in the order of the
    Dataset's predicted rows (``ds.error == ""``); ``issues`` the skipped ones.
    ``energy_errors`` (S,) eV and ``force_errors`` (N, 3) eV/Å are reference
    minus the model's own prediction (no element reference removed).
    """

    ds: object
    structures: list
    issues: list
    energy_errors: np.ndarray
    force_errors: np.ndarray | None

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
                     progress: bool = True) -> LabelledPrediction:
    """Predict labelled structures (skipping and reporting unlabelled or invalid ones) and their errors."""
    from .structures import StructureIssue

    ds = predictor.predict(labelled, forces=forces, force_mode=force_mode, batch_size=batch_size,
                           descriptors=descriptors, require_labels=True, progress=progress)
    err = ds["error"].values
    ok_rows = np.flatnonzero(err == "")
    structs = [labelled[int(i)] for i in ds["structure"].values[ok_rows]]
    issues = [StructureIssue(int(ds["structure"].values[k]), str(ds["name"].values[k]), str(err[k]))
              for k in np.flatnonzero(err != "")]
    e_err, f_err = label_errors(structs, ds["energy"].values[ok_rows], ds["forces"].values if forces else None)
    return LabelledPrediction(ds, structs, issues, e_err, f_err)


# --------------------------------------------------------------------------- evaluation


def stored_correction(artifact: Artifact, chemsys) -> tuple[np.ndarray, np.ndarray] | None:
    """(c, σ_c) per structure from the artifact's stored scalar corrections (NaN where none)."""
    corr = artifact.corrections
    if not len(corr):
        return None
    c = np.array([corr.factor(ch)[0] if ch in corr else np.nan for ch in chemsys])
    return c, np.array([corr.sigma(ch) for ch in chemsys])


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
    determined by the calibration compositions (calib.reference); the others are
    ``n_without_interval``. With ``return_points`` the per-point errors, σ,
    half-widths and classes come back under ``"points"`` (for plots).
    """
    from . import metrics

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
                          correction=stored_correction(artifact, chem))
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


# --------------------------------------------------------------------------- softening


@dataclass
class SofteningRun:
    """Per-chemistry softening results with the prediction they came from (for plots)."""

    results: dict
    issues: list
    labelled: LabelledPrediction | None = None
    failures: dict = field(default_factory=dict)  # chemsys → {"n_structures", "reason"}: not measurable

    def parity_plots(self, folder) -> list[str]:
        """One force parity plot per chemistry in ``folder`` (PNG); the paths written."""
        import os

        from .softening import parity_plot

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
                      n_bootstrap: int = 2000, confidence: float = 0.95, seed: int = 0,
                      progress: bool = True, predictor: CalibratedPredictor | None = None) -> SofteningRun:
    """Softening scale, correction and cMAE per chemical system of ``labelled`` (docs/softening.md)."""
    lp = predict_labelled(predictor or CalibratedPredictor(model), labelled, forces=True,
                          batch_size=batch_size, progress=progress)
    return _softening_run(lp, n_bootstrap=n_bootstrap, confidence=confidence, seed=seed)


def _softening_run(lp: LabelledPrediction, **kw) -> SofteningRun:
    from .softening import fit_softening_by_chemsys

    ok = lp.ok
    if not lp.structures:
        return SofteningRun({}, lp.issues, lp)
    failures: dict = {}
    results = fit_softening_by_chemsys(
        ok["chemsys"].values, [lp.forces_of(k) for k in range(len(lp.structures))],
        [get_forces(a) for a in lp.structures], model_energies=ok["energy"].values,
        reference_energies=[get_energy(a) for a in lp.structures], n_atoms=ok["n_atoms"].values,
        compositions=[a.get_chemical_formula(empirical=True) for a in lp.structures], failures=failures, **kw)
    return SofteningRun(results, lp.issues, lp, failures)


def store_corrections(artifact: Artifact, results: dict, only=None) -> Artifact:
    """A new artifact with the scalar corrections of these softening results (those in ``only``)."""
    from .softening import ScalarCorrection

    return artifact.with_corrections(ScalarCorrection.from_results(results, only=only))


# --------------------------------------------------------------------------- decisions


def decide(artifact: Artifact, model: ModelAdapter, labelled: Sequence[Atoms],
           targets: Sequence[Atoms] | None = None, *, thresholds=None, force_mode: str = "approx",
           batch_size: int = 16, n_bootstrap: int = 2000, seed: int = 0,
           progress: bool = True) -> tuple[list, list]:
    """Decide per chemistry (calib.decide's rules): every chemistry of ``targets`` when they are given
    (those without labelled structures are decided "label"), else every chemistry of ``labelled``. Targets
    (default: the labelled structures) are judged for calibrated uncertainty and, when given, for
    distribution shift against the labelled structures (Q residual). Returns (decisions, skipped issues)."""
    from .decide import Thresholds, decide_chemistry, unmeasured
    from .ood import QResidualDetector

    t = thresholds or Thresholds()
    predictor = CalibratedPredictor(model, artifact)
    use_labelled = targets is None
    lp = predict_labelled(predictor, labelled, forces=True, force_mode=force_mode if use_labelled else "none",
                          batch_size=batch_size, descriptors=True, progress=progress)
    if not lp.structures:
        from .errors import InputError

        raise InputError("no valid labelled structure to decide from: " + "; ".join(str(i) for i in lp.issues[:5]))
    run = _softening_run(lp, n_bootstrap=n_bootstrap, confidence=t.confidence, seed=seed)
    soft = run.results
    issues = list(lp.issues)
    lab = lp.ok
    if use_labelled:  # the labelled structures are the targets: reuse their prediction
        tds = lab
    else:
        full = predictor.predict(list(targets), forces=True, force_mode=force_mode, batch_size=batch_size,
                                 descriptors=True, progress=progress)
        from .structures import StructureIssue

        err = full["error"].values
        issues += [StructureIssue(int(full["structure"].values[k]), str(full["name"].values[k]), str(err[k]))
                   for k in np.flatnonzero(err != "")]
        tds = full.isel(structure=np.flatnonzero(err == ""))
    t_index = tds["structure"].values
    t_owner = tds["structure_index"].values
    sig2 = tds["forces_sigma"].values ** 2
    sigma_rms = np.array([np.sqrt(sig2[t_owner == i].mean()) for i in t_index])
    lab_chem_atom = dict(zip(lab["structure"].values.tolist(), lab["chemsys"].values.tolist()))
    lab_atom_chem = np.array([lab_chem_atom[int(i)] for i in lab["structure_index"].values])
    decisions = []
    chems = set(tds["chemsys"].values.tolist())  # with targets: the chemistries the user wants to simulate
    if use_labelled:
        chems |= set(soft) | set(run.failures)
    for chem in sorted(chems):
        rows = np.flatnonzero(tds["chemsys"].values == chem)
        if chem not in soft:  # not measurable: label, with requests among its targets
            why = (f"softening not measured: {run.failures[chem]['reason']}" if chem in run.failures
                   else "no labelled structure of this chemistry: the model's error here is unknown")
            decisions.append(unmeasured(
                chem, why, t, n_structures=run.failures.get(chem, {}).get("n_structures", 0),
                target_features=tds["features"].values[rows] if len(rows) else None,
                target_sigma_rms=sigma_rms[rows], target_indices=[int(t_index[r]) for r in rows]))
            continue
        s = soft[chem]
        lab_atoms = lab_atom_chem == chem
        ood = None  # the labelled structures are in their own distribution: test only real targets
        if not use_labelled and len(rows) and lab_atoms.sum() >= 3:
            det = QResidualDetector().fit(lab["atom_descriptors"].values[lab_atoms])
            local = {int(t_index[r]): k for k, r in enumerate(rows)}
            atom_mask = np.isin(t_owner, t_index[rows])
            owners = np.array([local[int(o)] for o in t_owner[atom_mask]])
            ood = det.structure_scores(tds["atom_descriptors"].values[atom_mask], owners, len(rows))
        decisions.append(decide_chemistry(
            s, t, target_features=tds["features"].values[rows] if len(rows) else None,
            target_sigma_rms=sigma_rms[rows] if len(rows) else None, target_ood=ood,
            target_indices=[int(t_index[r]) for r in rows]))
    return decisions, issues


def decision_corrections(decisions):
    """The :class:`~calib.softening.ScalarCorrection` of the chemistries decided "scale"."""
    from .softening import ScalarCorrection

    scaled = [d for d in decisions if d.decision == "scale"]
    return ScalarCorrection(
        {d.chemsys: (float(d.softening["correction"]), float(d.softening["energy_anchor_per_atom"] or 0.0))
         for d in scaled},
        {d.chemsys: tuple(map(float, d.softening["correction_ci"])) for d in scaled})


def write_requests(pool: Sequence[Atoms], indices: Sequence[int], path) -> int:
    """Write the requested structures (labels stripped, ``info["calib_request_index"]`` = position in
    ``pool``) to an extxyz file; returns how many."""
    import ase.io

    reqs = []
    for i in indices:
        a = pool[i].copy()
        a.calc = None
        a.info["calib_request_index"] = int(i)
        reqs.append(a)
    ase.io.write(path, reqs, format="extxyz")
    return len(reqs)
