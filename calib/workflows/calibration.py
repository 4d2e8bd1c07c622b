"""Calibration: fit α², ς² (Gaussian NLL), the per-element energy reference, the energy-difference
variance models and the conformal quantiles on labelled structures, into a new artifact."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from ase import Atoms

from calib.artifact import Artifact
from calib.data.structures import StructureIssue, get_energy, get_forces
from calib.errors import DataError
from calib.models.base import ModelAdapter
from calib.models.gradients import gradients_in_batches
from calib.uq.conformal import ConformalCalibrator, class_assigner
from calib.uq.differences import DifferenceModels
from calib.uq.errormodel import (
    AtomInputs,
    CrossFit,
    EnergyVariance,
    ErrorModels,
    ForceBound,
    ForceComponentVariance,
    StructureErrorModel,
    component_scale,
    cross_fit,
    energy_terms,
    force_terms,
    structure_features,
)
from calib.uq.llpr import LLPRFit
from calib.uq.reference import ElementReference, cross_fitted_residuals
from calib.uq.targets import TARGETS, ConformalSet, Points, build_points
from calib.workflows.settings import CalibrationSettings


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
    summary: CalibrationSummary | None = None


@dataclass
class DifferenceFit:
    """The energy-difference variance models fitted on the pairs of calibration structures that share a
    composition: ``models`` (:class:`calib.uq.differences.DifferenceModels`: raw, corrected), the (c, σ_c) of each structure's chemistry, and why
    there are none when too few pairs exist."""

    models: DifferenceModels = field(default_factory=DifferenceModels)
    correction: tuple | None = None
    n_pairs: int = 0
    note: str = ""

    def as_dict(self) -> dict:
        if not self.models:
            return {"difference_note": self.note}
        out = {"difference_pairs": self.n_pairs}
        for m, key in ((self.models.raw, "difference"), (self.models.corrected, "difference_corrected")):
            if m is None:
                continue
            out.update({f"{key}_beta": m.beta_, f"{key}_kappa2": m.kappa2_, f"{key}_tau2": m.tau2_,
                        f"{key}_nll": m.nll_})
        return out


@dataclass
class CalibrationSummary:
    """What :func:`calibrate` fitted and measured, for reports and ``calib calibrate --json``.

    ``fit`` is the LLPR fit's own measurement (NLL in nats per residual, Spearman of σ against |error|,
    energy RMSE per atom after the element reference in eV/atom, force σ and counts); ``force_mae`` is the
    model's force MAE on the set (eV/Å); the conformal quantiles are dimensionless; the OOD threshold in
    descriptor units²."""

    target: str
    n_structures: int
    n_features: int
    rank: int
    alpha2: float
    sigma2: float
    regularisation_note: str
    fit: LLPRFit
    energy_scores: str
    force_mae: float
    force_alpha2: float | None
    force_sigma2: float | None
    differences: DifferenceFit
    element_reference: dict
    alpha: float | None
    classes: object
    conformal_quantile: dict
    conformal_fallback: dict
    ood_components: int
    ood_threshold: float

    def as_dict(self) -> dict:
        """The flat JSON record (keys as in calib 0.4; the force keys only when force gradients were taken)."""
        f = self.fit
        out = {"target": self.target, "n_structures": self.n_structures, "alpha2": self.alpha2,
               "sigma2": self.sigma2, "rank": self.rank, "n_features": self.n_features,
               "regularisation_note": self.regularisation_note, "energy_nll": f.energy_nll,
               "energy_spearman": f.energy_spearman, "energy_rmse_per_atom": f.energy_rmse_per_atom,
               "energy_scores": self.energy_scores, "energy_cross_fit_excluded": f.energy_excluded,
               "force_mae": self.force_mae}
        if self.force_alpha2 is not None:
            out.update(force_alpha2=self.force_alpha2, force_sigma2=self.force_sigma2, force_nll=f.force_nll,
                       force_spearman=f.force_spearman, approx_force_directions=f.approx_force_directions,
                       force_components_zero_sigma=f.force_components_zero_sigma)
        out.update(self.differences.as_dict())
        out.update(element_reference=self.element_reference, alpha=self.alpha, classes=self.classes,
                   conformal_quantile=self.conformal_quantile, conformal_fallback=self.conformal_fallback,
                   ood_components=self.ood_components, ood_threshold=self.ood_threshold)
        return out


def label_errors(structs: Sequence[Atoms], energy, forces=None) -> tuple[np.ndarray, np.ndarray | None]:
    """Reference minus model: total energies (S,) in eV and, when given, forces (N_total, 3) in eV/Å
    (model forces concatenated over ``structs`` in order); NaN for a structure without a reference energy."""
    e_delta = np.array([np.nan if (e := get_energy(a)) is None else e for a in structs]) - np.asarray(energy)
    if forces is None:
        return e_delta, None
    ref = [get_forces(a) for a in structs]
    return e_delta, (np.concatenate(ref) if ref else np.zeros((0, 3))) - np.asarray(forces).reshape(-1, 3)


def fit_difference_models(llpr, structs, pred, energy_residuals, n_bootstrap: int = 500,
                          confidence: float = 0.95) -> DifferenceFit:
    """The energy-difference variance models (:class:`DifferenceFit`).

    Pairs: every pair of structures of one composition (calib.uq.differences.difference_pairs).
    ``raw`` is fitted on r = ΔE_ref − ΔE_model; ``corrected`` on r + (1 − c) ΔE_model with c fitted on
    the forces of each chemistry's structures (calib.softening.scale, structure bootstrap for σ_c).
    """
    from calib.softening.correction import ScalarCorrection
    from calib.softening.scale import fit_softening_by_chemsys
    from calib.uq.differences import DifferenceVarianceModel, composition, corrected_errors, difference_pairs

    i, j = difference_pairs([composition(a) for a in structs])
    if len(i) < 2:
        return DifferenceFit(note=f"{len(i)} pair(s) share a composition: no difference model")
    f, n, e = pred.features, pred.n_atoms, pred.energy
    v = llpr.energy_difference_sigma(f[i], n[i], f[j], n[j]) ** 2
    dE = e[i] - e[j]
    r = np.asarray(energy_residuals)[i] - np.asarray(energy_residuals)[j]
    raw = DifferenceVarianceModel().fit(v, dE, r)
    # chemistries whose scale cannot be measured (all forces zero: relaxed, symmetric cells) get no correction
    soft = fit_softening_by_chemsys(pred.chemsys, [pred.forces_of(k) for k in range(len(structs))],
                                    [get_forces(a) for a in structs], n_bootstrap=n_bootstrap,
                                    confidence=confidence, failures={})
    c, sc = ScalarCorrection.from_results(soft).per_structure(pred.chemsys)
    has = np.isfinite(c[i])
    corrected = (DifferenceVarianceModel().fit(v[has], dE[has], corrected_errors(r[has], dE[has], c[i][has]),
                                               c=c[i][has], c_sigma=sc[i][has]) if has.sum() >= 2 else None)
    return DifferenceFit(DifferenceModels(raw, corrected), (c, sc), int(len(i)))


def fit_conformal(points: dict, alpha: float, classes=None, min_class_size: int = 30,
                  seed: int = 0) -> ConformalSet:
    """One calibrator per target of ``points``: split conformal, or Mondrian when ``classes`` is
    given (an int K for a mixture of ≤ K environment classes, "element" or "chemsys").
    Energy differences and corrected forces always use the global quantile; the energy is Mondrian over seen / new
    compositions when its points carry that label."""
    out = {}
    from calib.uq.conformal import LabelClasses

    for name, p in points.items():
        plain = not TARGETS[name].classes
        assigner = None if plain else class_assigner(classes, random_state=seed)
        if name == "energy" and "composition" in p.labels and (np.asarray(p.labels["composition"]) == "seen").any():
            assigner = LabelClasses("composition")  # seen / new compositions (fit_error_models), whatever ``classes``
        out[name] = ConformalCalibrator(alpha, classes=assigner, min_class_size=min_class_size).fit_points(p)
    return ConformalSet(out)


def drop_zero_sigma(points: dict) -> tuple[dict, dict]:
    """Points without the force components (and atoms) whose σ is exactly zero, by symmetry (a dimer's
    transverse forces, an atom on an inversion centre): their score |error|/σ is undefined. Returns the
    points and, per target, how many were left out."""
    out, dropped = {}, {}
    for name, p in points.items():
        keep = np.asarray(p.sigma) > 0
        if TARGETS[name].atomic and not keep.all():
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
    raise DataError(
        f"energy α² and ς² cannot be determined: {why}, and they are all below 1e-6 eV or too few; "
        f"{len(comps)} composition(s) over {len(structs)} structures ({sum(v == 1 for v in comps.values())} "
        "seen once), so the per-element reference absorbs the energy errors. Add structures that share a "
        "composition (rattled or strained copies), or calibrate the forces only (target=\"forces\")")


def _domain_detector(artifact: Artifact, pred):
    """The artifact's out-of-distribution detector (fitted on the Hessian's structures), with the largest
    score it gives a calibration structure; an artifact from before calib 0.5 has none, and gets one fitted
    on the calibration structures as then."""
    from calib.uq.ood import QResidualDetector

    if artifact.ood is not None:
        ood = copy.deepcopy(artifact.ood)
    else:
        ood = QResidualDetector().fit(pred.atom_descriptors, pred.atom_structure,
                                      reference="the calibration structures (a Hessian artifact from before calib 0.5)")
    return ood.fit_calibration_max(pred.atom_descriptors, pred.atom_structure, len(pred))


#: fewest cross-fitted energy residuals the energy error model and its conformal quantile are fitted on
MIN_ENERGY_POINTS = 10


def fit_error_models(inputs: AtomInputs, force_errors, numbers, delta_energy, chemsys, reference, *,
                     alpha: float = 0.1, n_folds: int = 10, chemistry_scale: bool = True,
                     structure_model: bool = False, second_delta_energy=None) -> tuple[ErrorModels, CrossFit]:
    """The error models of :mod:`calib.uq.errormodel` and their grouped cross-fit on calibration structures.

    Groups are the chemical systems (every structure scored by models fitted without its chemistry), or the
    structures themselves when the set holds one chemistry only. Energies: when fewer than
    :data:`MIN_ENERGY_POINTS` residuals survive the grouped cross-fit (the other chemistries do not fix the
    compositions' offsets), the structures are the groups, and the energy scores then measure the error of a
    chemistry the reference has seen (``energy_groups`` says which). ``force_errors`` (N, 3) eV/Å,
    ``delta_energy`` (S,) total eV (reference − model) or None; ``reference`` the element reference fitted on
    all structures (its leverage of each structure goes into the full energy model's inputs).
    ``second_delta_energy`` (S,) total eV, a committee model's energy minus the model's: the energy model then
    reads their disagreement (calib.uq.errormodel.energy_disagreement) beside its other terms."""
    chem = np.asarray(chemsys).astype(str)
    structures = np.arange(len(chem)).astype(str)
    groups = chem if len(set(chem.tolist())) >= 2 else structures
    have_e = delta_energy is not None and np.isfinite(np.asarray(delta_energy, dtype=float)).sum() >= 3
    fmodel = {"terms": force_terms(inputs)}  # with a second model's forces: the committee term
    second = second_delta_energy if have_e else None
    cf = cross_fit(inputs, force_errors, numbers=numbers, delta_energy=delta_energy if have_e else None,
                   groups=groups, n_splits=n_folds, force_model=fmodel, second_delta_energy=second)
    energy_groups = "chemical system" if groups is chem else "structure"
    if have_e and (cf.energy_errors is None or np.isfinite(cf.energy_sigma).sum() < MIN_ENERGY_POINTS) \
            and groups is chem:
        by_structure = cross_fit(inputs, None, numbers=numbers, delta_energy=delta_energy, groups=structures,
                                 n_splits=n_folds, second_delta_energy=second)
        cf = CrossFit(cf.force_sigma, by_structure.energy_sigma, by_structure.energy_errors, by_structure.leverage,
                      cf.n_folds, energy_disagreement=by_structure.energy_disagreement)
        energy_groups = "structure"
    ends = np.cumsum(inputs.n_atoms)[:-1]
    fe = np.asarray(force_errors, dtype=float).reshape(-1, 3)
    models = ErrorModels(forces=ForceComponentVariance(**fmodel).fit(inputs, fe),
                         bound=ForceBound(alpha).fit(np.split(cf.force_sigma, ends), np.split(fe, ends)),
                         elements=np.array(sorted(set(inputs.numbers.tolist())), dtype=int),
                         force_groups="chemical system" if groups is chem else "structure")
    if structure_model and groups is chem and len(set(chem.tolist())) >= MIN_STRUCTURE_MODEL_GROUPS \
            and len(chem) >= MIN_STRUCTURE_MODEL_STRUCTURES:
        scale = component_scale(cf.force_sigma, inputs.n_atoms)  # cross-fitted: a new chemistry's scale
        worst = np.array([np.abs(e).max() if e.size else np.nan for e in np.split(fe, ends)])
        models.structure = StructureErrorModel().fit(structure_features(inputs, scale), worst, chem)
    if chemistry_scale and groups is chem:
        _fit_chemistry_scales(models, inputs, fe, chem, alpha)
    corrected = _fit_corrected_forces(models, inputs, fe, chem, groups, alpha, n_folds)
    if corrected is not None:
        cf.corrected_force_sigma, cf.corrected_force_errors = corrected
    if cf.energy_sigma is not None and np.isfinite(cf.energy_sigma).sum() >= 3:
        train = AtomInputs(inputs.numbers, inputs.forces, inputs.structure, inputs.descriptors, inputs.local_sigma,
                           cf.leverage, inputs.n_structures, energy_disagreement=cf.energy_disagreement)
        models.energy = EnergyVariance(terms=energy_terms(train)).fit(train, cf.energy_errors, groups=chem)
        if second is not None:  # the committee's own reference, fitted where the energy reference is
            delta = np.asarray(delta_energy, dtype=float)
            rows = np.flatnonzero(np.isfinite(delta))
            models.committee_reference = ElementReference().fit(
                [numbers[i] for i in rows], np.asarray(second, dtype=float)[rows])
        models.energy_groups = energy_groups
        _fit_seen_energy(models, cf, inputs, numbers, delta_energy, structures, n_folds)
    return models, cf


def _fit_chemistry_scales(models: ErrorModels, inputs: AtomInputs, force_errors, chem, alpha: float) -> None:
    """A calibrated ("seen") chemistry's own force-variance scale over what the cross-chemistry model predicts
    (:func:`calib.uq.errormodel.chemistry_scales`, σ of the model fitted on everything), and the bound's quantile
    for such chemistries over leave-one-out scores: each structure judged with the scale of its chemistry's other
    structures, as a new structure of a calibrated chemistry is."""
    from calib.uq.errormodel import chemistry_scales

    ends = np.cumsum(inputs.n_atoms)[:-1]
    sig = np.split(models.forces.sigma(inputs), ends)
    err = np.split(force_errors, ends)
    scales, loo = chemistry_scales(sig, err, chem)
    rows = np.flatnonzero(np.isfinite(loo))
    if len(rows) < MIN_CORRECTED_STRUCTURES:
        return
    from calib.softening.correction import _key

    models.force_scales = {_key(c): r for c, r in scales.items()}
    models.bound_seen = ForceBound(alpha).fit([sig[i] * np.sqrt(loo[i]) for i in rows], [err[i] for i in rows])


#: fewest chemical systems and structures the structure error model (the bound of a new chemistry) is fitted on;
#: below, the component model's bound serves alone
MIN_STRUCTURE_MODEL_GROUPS = 5
MIN_STRUCTURE_MODEL_STRUCTURES = 60

#: fewest structures with a leave-one-out correction that the corrected force model is fitted on
MIN_CORRECTED_STRUCTURES = 20


def _fit_corrected_forces(models: ErrorModels, inputs: AtomInputs, force_errors, chem, groups, alpha: float,
                          n_folds: int):
    """The error model of scalar-corrected forces c·F (Deng et al.'s correction, calib.softening): on every
    calibration structure whose chemistry has other structures, c is fitted on those others
    (:func:`calib.uq.errormodel.leave_one_out_corrections`), the corrected error g − c F and the corrected forces
    as inputs make a second force model and its cross-fitted bound, which judge a prediction the artifact's
    stored correction applies to. Returns the cross-fitted σ and the corrected errors (eV/Å) of those
    structures' components, for the conformal target ``forces_corrected``, or None with too few."""
    from calib.uq.errormodel import leave_one_out_corrections

    ends = np.cumsum(inputs.n_atoms)[:-1]
    f_parts, e_parts = np.split(inputs.forces, ends), np.split(force_errors, ends)
    c = leave_one_out_corrections(f_parts, e_parts, chem)
    rows = np.flatnonzero(np.isfinite(c))
    if len(rows) < MIN_CORRECTED_STRUCTURES or len(set(np.asarray(groups)[rows].tolist())) < 2:
        return None
    sub = inputs.subset(rows)
    c_atom = np.repeat(c[rows], sub.n_atoms)[:, None]
    sub.forces = c_atom * sub.forces
    e_c = np.concatenate([e_parts[i] + (1.0 - c[i]) * f_parts[i] for i in rows])  # g − c f = e + (1 − c) f
    fmodel = {"terms": force_terms(sub)}
    cf = cross_fit(sub, e_c, groups=np.asarray(groups)[rows], n_splits=n_folds, force_model=fmodel)
    e2 = np.cumsum(sub.n_atoms)[:-1]
    models.forces_corrected = ForceComponentVariance(**fmodel).fit(sub, e_c)
    models.bound_corrected = ForceBound(alpha).fit(np.split(cf.force_sigma, e2), np.split(e_c, e2))
    return cf.force_sigma, e_c


def _fit_seen_energy(models: ErrorModels, cf: CrossFit, inputs: AtomInputs, numbers, delta_energy, structures,
                     n_folds: int) -> None:
    """The energy model of the "seen" class: structures whose composition another calibration structure shares,
    scored with the element reference fitted without them alone (folds of structures): their error is the
    chemistry's own, a few times smaller than a new compound's (docs/conformal.md)."""
    from collections import Counter

    from calib.uq.reference import reduced_formula

    comps = [reduced_formula(n) for n in numbers]
    counts = Counter(comps)
    repeated = np.array([counts[c] >= 2 for c in comps])
    if repeated.sum() < MIN_ENERGY_POINTS:
        return
    seen = cross_fit(inputs, None, numbers=numbers, delta_energy=delta_energy, groups=structures, n_splits=n_folds,
                     energy_model={"terms": ("force",)})
    errors = np.where(repeated, seen.energy_errors, np.nan)
    if np.isfinite(seen.energy_sigma[repeated]).sum() < MIN_ENERGY_POINTS:
        return
    models.energy_seen = EnergyVariance(terms=("force",)).fit(inputs, errors)
    models.compositions = np.array(sorted({c for c, r in zip(comps, repeated) if r}), dtype=str)
    cf.seen_energy_sigma = np.where(repeated, seen.energy_sigma, np.nan)
    cf.seen_energy_errors = errors


@dataclass
class _Labelled:
    """The valid labelled structures of a calibration, the model's prediction of them and their errors: total
    energies (eV; ``e_delta`` reference − model, ``e_res`` after the in-sample element reference ``ref``,
    ``e_cf`` cross-fitted, valid where ``e_ok``) and force components (``f_res``, eV/Å, (N, 3))."""

    structs: list
    issues: list
    pred: object
    numbers: list
    energies: bool
    e_delta: np.ndarray
    f_res: np.ndarray
    ref: ElementReference | None
    e_res: np.ndarray
    e_cf: np.ndarray
    e_ok: np.ndarray


def _labelled_residuals(model, labelled, *, target: str, batch_size: int, progress: bool,
                        energy_folds: int | None) -> _Labelled:
    """Validate and predict the labelled structures and take their errors (:class:`_Labelled`); InputError
    for fewer than 2 valid ones, ValueError when the energies cannot determine an energy fit."""
    # forces alone calibrate the forces: energies are then optional (without them: no element reference, no
    # energy conformal, no difference model)
    good, issues = model.validate(labelled, require_labels="forces" if target == "forces" else True)
    if len(good) < 2:
        from calib.errors import InputError

        raise InputError(f"calibration needs at least 2 valid labelled structures, got {len(good)}; "
                         + "; ".join(str(i) for i in issues[:5]))
    structs = [labelled[i] for i in good]
    pred = model.predict(structs, forces=True, batch_size=batch_size, progress=progress, validate=False)
    e_delta, f_res = label_errors(structs, pred.energy, pred.forces)
    numbers = [a.numbers for a in structs]
    energies = bool(np.isfinite(e_delta).all())
    ref = ElementReference().fit(numbers, e_delta) if energies else None
    e_res = e_delta - ref.predict(numbers) if energies else e_delta  # in-sample: shrunk by the fit
    if energy_folds and energies:
        e_cf, e_ok = cross_fitted_residuals(numbers, e_delta, n_folds=energy_folds, seed=0)
    else:
        e_cf, e_ok = e_res, np.isfinite(e_res)
    if target in ("energy", "both"):
        _check_energy_residuals(structs, e_cf, e_ok, energy_folds)  # before the costly force gradients
    return _Labelled(structs, issues, pred, numbers, energies, e_delta, f_res, ref, e_res, e_cf, e_ok)


def _calibration_points(L, lab: _Labelled, fit, errors, cf, diff) -> dict:
    """The conformal points of every target. Energy and force points carry the cross-fitted error-model σ and
    residuals: each calibration point is scored as a new chemistry's would be (calib.uq.errormodel); the energy
    adds the "seen" class (Mondrian over seen / new compositions) and the corrected forces their own target."""
    pred, structs = lab.pred, lab.structs
    e_pts = cf.energy_errors is not None and errors.energy is not None
    n_at = pred.n_atoms.astype(float)
    points = build_points(L, features=pred.features, n_atoms=pred.n_atoms, chemsys=pred.chemsys,
                          energy_sigma=cf.energy_sigma * n_at if e_pts else fit.energy_sigma,
                          atom_structure=pred.atom_structure, numbers=pred.numbers,
                          atom_descriptors=pred.atom_descriptors, force_sigma=cf.force_sigma,
                          energy_errors=(np.where(np.isfinite(cf.energy_sigma), cf.energy_errors, np.nan) * n_at
                                         if e_pts else lab.e_cf),
                          pair_errors=lab.e_res, force_errors=lab.f_res, energies=pred.energy,
                          differences=diff.models, correction=diff.correction,
                          targets=None if lab.energies else ("forces", "force_norm"),
                          energy_labels={"composition": np.full(len(structs), "new")})
    if e_pts and cf.seen_energy_sigma is not None:
        seen = np.isfinite(cf.seen_energy_sigma) & np.isfinite(cf.seen_energy_errors)
        chem = np.asarray(pred.chemsys, dtype=str)[seen]
        points["energy"] = Points.concat([points["energy"], Points(
            "energy", cf.seen_energy_sigma[seen] * n_at[seen], pred.features[seen],
            {"chemsys": chem, "element": chem, "composition": np.full(int(seen.sum()), "seen")},
            np.flatnonzero(seen), cf.seen_energy_errors[seen] * n_at[seen])])
    if cf.corrected_force_sigma is not None:
        sig = cf.corrected_force_sigma.ravel()
        points["forces_corrected"] = Points("forces_corrected", sig, np.zeros((sig.size, 0)), {}, None,
                                            cf.corrected_force_errors.ravel())
    return points


def calibrate(artifact: Artifact, model: ModelAdapter, labelled: Sequence[Atoms],
              settings: CalibrationSettings | None = None, *, batch_size: int = 16, progress: bool = True,
              **options) -> CalibrationResult:
    """Fit α², ς² (Gaussian NLL), the per-element energy reference, the error models and the conformal
    quantiles on labelled structures (energies eV, forces eV/Å).

    ``settings`` (:class:`CalibrationSettings`, every field documented there) or any of its fields as keywords
    (``calibrate(art, model, structs, alpha=0.05)``). Returns a :class:`CalibrationResult` whose artifact has
    stage "calibrated"; ``artifact`` is not changed.
    """
    s = dataclasses.replace(settings or CalibrationSettings(), **options)
    target, alpha, with_forces, energy_folds = s.target, s.alpha, s.with_forces, s.energy_folds or None
    artifact.check_model(model)
    lab = _labelled_residuals(model, labelled, target=target, batch_size=batch_size, progress=progress,
                              energy_folds=energy_folds)
    structs, pred, energies, ref = lab.structs, lab.pred, lab.energies, lab.ref
    L = copy.deepcopy(artifact.llpr)  # the input artifact stays as it was
    # exact force gradients on the calibration set: for force calibration and the approx truncation
    grads = gradients_in_batches(model, structs, L.eigenvectors_.T, batch_size=batch_size, progress=progress,
                                 desc="force gradients") if with_forces else None
    fit = L.fit_residuals(features=pred.features, n_atoms=pred.n_atoms,
                          energy_residuals=np.where(lab.e_ok, lab.e_cf, np.nan) if energies else None,
                          gradients=grads, force_n_atoms=pred.n_atoms if with_forces else None,
                          force_residuals=lab.f_res if with_forces else None, target=target,
                          approx_coverage=s.approx_coverage)
    if fit.energy_sigma is None:  # forces only: energy σ under the force-fitted (α², ς²)
        fit.energy_sigma = L.energy_sigma(pred.features, pred.n_atoms)
    diff = (fit_difference_models(L, structs, pred, lab.e_res) if s.difference_model and energies
            else DifferenceFit(note="not fitted" if energies else "no reference energies"))
    second_energy, second = _committee_outputs(s.committee, structs, batch_size)
    inputs = AtomInputs(pred.numbers, pred.forces, pred.atom_structure, pred.atom_descriptors,
                        L.local_energy_sigma(pred.atom_descriptors), n_structures=len(structs), second_forces=second)
    errors, cf = fit_error_models(inputs, lab.f_res, lab.numbers, lab.e_delta if energies else None, pred.chemsys,
                                  ref, alpha=alpha if alpha is not None else 0.1, n_folds=s.error_folds,
                                  chemistry_scale=s.chemistry_scale, structure_model=s.structure_model,
                                  second_delta_energy=None if second_energy is None else second_energy - pred.energy)
    conformal = ConformalSet()
    if alpha is not None:
        points = _calibration_points(L, lab, fit, errors, cf, diff)
        conformal = fit_conformal(drop_zero_sigma(points)[0], alpha, s.classes, s.min_class_size)
    ood = _domain_detector(artifact, pred)
    energy_scores = (f"cross-fitted element reference ({energy_folds} folds)" if energy_folds
                     else "in-sample element reference")
    summary = CalibrationSummary(
        target=target, n_structures=len(structs), n_features=L.n_features, rank=L.rank_, alpha2=L.alpha2_,
        sigma2=L.sigma2_, regularisation_note=L.regularisation_note_, fit=fit, energy_scores=energy_scores,
        force_mae=float(np.mean(np.abs(lab.f_res))), force_alpha2=L.force_alpha2_ if with_forces else None,
        force_sigma2=L.force_sigma2_ if with_forces else None, differences=diff,
        element_reference=ref.as_dict() if ref is not None else {}, alpha=alpha, classes=s.classes,
        conformal_quantile={k: c.quantile_ for k, c in conformal.items()},
        conformal_fallback={k: dict(c.fallback_) for k, c in conformal.items()},
        ood_components=ood.n_components_, ood_threshold=ood.threshold_)
    art = _calibrated_artifact(artifact, L, ref, conformal, diff, ood, errors, structs, target, energy_scores,
                               s.committee)
    return CalibrationResult(artifact=art, issues=lab.issues, n_structures=len(structs),
                             energy_residual=lab.e_cf, energy_sigma=fit.energy_sigma, summary=summary)


def _committee_outputs(spec: str | None, structs: Sequence[Atoms], batch_size: int):
    """The committee model's total energies (S,) eV and forces (N, 3) eV/Å on the calibration structures ((None,
    None) without one). A structure it cannot predict is an error: the calibration's every score needs both
    models."""
    if not spec:
        return None, None
    from calib.models import load_model
    from calib.models.base import second_model_outputs

    energy, forces, issues = second_model_outputs(load_model(spec), structs, batch_size)
    if issues:
        raise DataError(f"the committee model {spec} cannot predict {len(issues)} calibration structure(s): "
                        + "; ".join(f"{i.name or i.index}: {i.problem}" for i in issues[:5]))
    return energy, forces


def _calibrated_artifact(artifact, L, ref, conformal, diff, ood, errors, structs, target, energy_scores,
                         committee: str | None = None) -> Artifact:
    """The new artifact of stage "calibrated" from the fitted pieces (``artifact`` is not changed). Its
    ``committee_model`` is this calibration's own: one inherited from a calibrated input would make the predictor
    run a second model the new error models do not read."""
    from calib.data.labelers import structure_key

    inherited = {k: v for k, v in artifact.attrs.items() if k != "committee_model"}
    return artifact.replace(llpr=L, stage="calibrated", element_reference=ref, conformal=conformal,
                            differences=diff.models, ood=ood, force_error=None, error_models=errors,
                            calibration_keys=[structure_key(a) for a in structs],  # evaluate: held out or not
                            attrs={**inherited, **({"committee_model": str(committee)} if committee else {}),
                                   "calibration_target": target,
                                   "calibration_n_structures": len(structs),
                                   "element_reference_note": "least squares on element counts of E_ref - E_model "
                                                             "over the calibration set (eV/atom)",
                                   "energy_scores": energy_scores})
