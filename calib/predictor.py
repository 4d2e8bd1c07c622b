"""``CalibratedPredictor``: structures in, one labelled ``xarray.Dataset`` out.

The single path from structures to numbers that every consumer uses (the
command line, evaluation, softening, decisions, the demo; the ASE calculator,
NEB and screening build on it). It runs the model in batches, adds LLPR σ,
conformal intervals and stored scalar corrections, and returns xarray with
units on every variable.

Dimensions: ``structure`` (coordinate: the position of each structure in the
caller's input, skipped ones included), ``atom`` (the atoms of the predicted
structures, concatenated; ``structure_index`` says whose), ``component``
(x, y, z) and, with ``descriptors=True``, ``feature``.

{variables}

(per variable, as :mod:`calib.schema` holds them: energies are totals unless the name says per atom;
``energy_low/high`` and ``forces_low/high`` are NaN where no interval applies)

Attributes: ``energies`` ("total eV" unless a name says per atom), ``model_name``, ``model_version``,
``model_read_as``, ``model_energy_convention`` (what the *model* predicts internally: CHGNet "per_atom";
the energies here are totals either way), ``calibration`` (a path, "default", "in memory" or "none"),
``stage``, ``alpha``.

σ comes from the error models of calib.uq.errormodel (which know the chemistry, and were cross-fitted by
chemical system at calibration), the intervals from their conformal quantiles, and both describe the reported
prediction: where the artifact's scalar correction applies (and ``correction=True``), the corrected one, judged
by the error model of corrected forces. An artifact from before calib 0.6 has no error models: σ is then LLPR's.
A skipped structure keeps its row, with ``error`` set and NaN numbers, so results never lose their place in the
input.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
from ase import Atoms

from calib import schema
from calib.artifact import Artifact, ArtifactError
from calib.models.base import ModelAdapter, Prediction
from calib.models.gradients import force_variance
from calib.uq.differences import composition, difference_sigmas, reference_pairs
from calib.uq.errormodel import AtomInputs, component_scale, energy_disagreement, structure_features
from calib.uq.targets import Points, build_points
from calib.uq.trust import Check, TrustPolicy, extrapolated, notes, verdict

if __doc__:  # the table of the variables, from the one schema (python -OO strips docstrings)
    __doc__ = __doc__.replace("{variables}", schema.table(schema.PREDICTION))

FORCE_MODES = ("exact", "approx", "none")

class CalibratedPredictor:
    """A model and its calibration artifact: structures → xarray.Dataset of predictions with σ.

    Parameters
    ----------
    model : calib.models.ModelAdapter
    artifact : calib.artifact.Artifact, optional
        The calibration. Without one, the predictor gives the model's own
        energies and forces in the same Dataset layout (no σ, no intervals).
    require_calibrated : bool
        Refuse an artifact that holds a Hessian only (default). With False,
        σ of such an artifact uses α² = 1 and the default ς² (uncalibrated).
    trust : calib.uq.trust.TrustPolicy, optional
        What the trust verdict checks (``trusted``, ``trust_reason``); default: the domain and a force-error
        bound ≤ 0.3 eV/Å. With a calibrated artifact σ and the verdict need the model's forces, which the
        predictor then computes even when ``forces=False`` (without reporting them).
    correction : bool
        Report the scalar-corrected prediction (Deng et al.: forces × c, E_anchor + c (E − E_anchor)) of a
        structure whose chemistry has a correction in the artifact and which lies in that correction's domain
        (default; ``prediction`` says "corrected" and ``energy_model``/``forces_model`` keep the model's own
        numbers); its σ, bound, intervals and verdict are those of the corrected prediction. False: the model's
        own prediction everywhere.

    Examples
    --------
    >>> from calib import CalibratedPredictor
    >>> ds = CalibratedPredictor.from_file("CAL.nc").predict(atoms, forces=True)   # doctest: +SKIP
    >>> ds.energy_sigma.values, ds.forces_high - ds.forces_low                      # doctest: +SKIP
    """

    def __init__(self, model: ModelAdapter, artifact: Artifact | None = None, *, require_calibrated: bool = True,
                 trust: TrustPolicy | None = None, calibration: str | None = None, correction: bool = True):
        if artifact is not None:
            artifact.check_model(model)
            if require_calibrated and not artifact.calibrated:
                raise ArtifactError("this artifact holds a Hessian only; run `calib calibrate` on labelled data first")
        self.model = model
        self.artifact = artifact
        #: the trust policy, its confidence decided against the calibration (TrustPolicy.resolved)
        self.trust = (trust or TrustPolicy()).resolved(artifact)
        if artifact is None:
            calibration = "none"
        elif calibration is None:
            calibration = "default" if artifact.attrs.get("default_calibration") else "in memory"
        #: which calibration produced the predictions: a path, "default", "in memory" or "none"
        self.calibration = str(calibration)
        self.correction = bool(correction)
        self._second = None  # the committee model, loaded at the first prediction that needs it

    def raw(self) -> CalibratedPredictor:
        """The same model and artifact reporting the model's own prediction everywhere (no scalar correction):
        what softening measurements and decisions read."""
        if not self.correction:
            return self
        import copy

        out = copy.copy(self)
        out.correction = False
        return out

    @property
    def _verdict_forces(self) -> bool:
        """Whether σ and the verdict need the model's forces (the error models read them; a calib 0.5 force bound
        too)."""
        art = self.artifact
        return art is not None and (art.error_models is not None or (art.force_error is not None
                                                                     and self.trust.force_tol is not None))

    @classmethod
    def from_file(cls, path=None, model=None, *, device: str = "cpu", require_calibrated: bool = True,
                  trust: TrustPolicy | None = None):
        """The predictor of the artifact at ``path``; the model named in its provenance when ``model`` is None.

        ``path=None`` (or ``"default"``): calib's default calibration, as the command line uses without
        ``--calibration`` (:meth:`default`)."""
        from calib.models import resolve_model

        if path is None or (isinstance(path, str) and path == "default"):
            return cls.default(model, device=device, trust=trust)
        art = Artifact.load(path)
        return cls(resolve_model(model, artifact=art, device=device), art, require_calibrated=require_calibrated,
                   trust=trust, calibration=os.fspath(path))

    @classmethod
    def default(cls, model=None, *, device: str = "cpu", trust: TrustPolicy | None = None):
        """The predictor of calib's default calibration (CHGNet 0.3.0, or SevenNet-0 with ``model="sevennet"``;
        shipped GPAW PAW-PBE labels), as ``calib predict`` without ``--calibration``. ``model``: None,
        ``"chgnet"``/``"chgnet:0.3.0"``, ``"sevennet"`` or an adapter (ArtifactError unless its weights are
        CHGNet 0.3.0's); ValueError for another model name."""
        from calib.data.datasets import default_calibration
        from calib.models import resolve_model

        name = model if isinstance(model, (str, os.PathLike)) else "chgnet"
        path = default_calibration(os.fspath(name))
        if path is None:
            raise ValueError(f"calib ships default calibrations for CHGNet 0.3.0 and SevenNet-0 only, not for "
                             f"{name!r}: calibrate "
                             "your own (calib hessian, calib calibrate) and use CalibratedPredictor.from_file(path)")
        art = Artifact.load(path)
        return cls(resolve_model(model, artifact=art, device=device), art, trust=trust, calibration="default")

    # ------------------------------------------------------------------ public
    def predict(self, structures, *, forces: bool = False, force_mode: str = "exact", batch_size: int = 16,
                descriptors: bool = False, require_labels: bool = False, stress: bool = False,
                progress: bool = True, return_points: bool = False):
        """Predictions for every structure of ``structures`` as one xarray Dataset (see the module doc).

        Parameters
        ----------
        structures : one ASE Atoms or pymatgen Structure, a file path, or a list / iterable of these.
        forces : bool — also forces (eV/Å) and, with an artifact, their σ and intervals.
        force_mode : "exact" (one reverse pass per feature direction per batch), "approx" (the
            directions kept at calibration: several times cheaper, error measured by
            ``calib bench llpr``) or "none" (forces without σ).
        batch_size : int — structures per model call.
        descriptors : bool — add the pooled features and per-atom descriptors.
        require_labels : bool — skip (and report) structures without reference labels.
        stress : bool — also the stress (eV/Å³, Voigt order xx yy zz yz xz xy, ASE sign convention).
        progress : bool — a progress bar on stderr.
        return_points : bool — also return the conformal points the intervals were made from
            (:class:`calib.uq.targets.Points` of "energy", "forces" and "force_norm", errors None, ``structure``
            the input position), as ``(dataset, points)``: evaluation attaches errors to them.
        """
        parts, points = [], []
        for kept, pred in self.model.iter_predict(as_structures(structures), forces=forces or self._verdict_forces,
                                                  stress=stress,
                                                  batch_size=batch_size, progress=progress,
                                                  require_labels=require_labels, desc="predict"):
            parts.append(self._arrays(kept, pred, forces, force_mode, batch_size, descriptors, points))
        ds = self._dataset(_concat(parts), forces)
        if not return_points:
            return ds
        batches = [p for p in points if p]
        return ds, {k: Points.concat([p[k] for p in batches]) for k in (batches[0] if batches else {})}

    def iter_predict(self, structures: Iterable, *, forces: bool = False, force_mode: str = "exact",
                     batch_size: int = 16, descriptors: bool = False, require_labels: bool = False,
                     stress: bool = False, progress: bool = True) -> Iterator:
        """The same Datasets, one per batch (``structure`` coordinates are positions in the whole input),
        so that a stream of any length never has to be held in memory."""
        for kept, pred in self.model.iter_predict(as_structures(structures), forces=forces or self._verdict_forces,
                                                  stress=stress, batch_size=batch_size, progress=progress,
                                                  require_labels=require_labels, desc="predict"):
            yield self._dataset(self._arrays(kept, pred, forces, force_mode, batch_size, descriptors, []), forces)

    def energy_differences(self, structures, *, reference: int = 0, batch_size: int = 16, progress: bool = True):
        """Energies relative to one structure of the list (e.g. NEB images relative to image 0), with σ and
        conformal intervals, raw and, where a scalar correction is stored for the chemistry, corrected.

        Returns an xarray Dataset over ``structure`` (``name``, ``chemsys``, ``error`` as in :meth:`predict`); the
        intervals where the artifact has the difference quantiles, the corrected variables where a correction is
        stored for the reference structure's chemistry (calib.schema.DIFFERENCES):

        {differences}
        """
        if self.artifact is None:
            raise ValueError("energy differences with σ need a calibration artifact")
        structs = list(as_structures(structures))
        ds = self.raw().predict(structs, batch_size=batch_size, descriptors=True, progress=progress)
        art, L = self.artifact, self.artifact.llpr
        if str(ds["error"].values[reference]):
            raise ValueError(f"the reference structure {reference} was skipped: {ds['error'].values[reference]}")
        f, n, e = ds["features"].values, ds["n_atoms"].values, ds["energy"].values
        ok = ds["error"].values == ""
        v = np.full(len(e), np.nan)
        v[ok] = L.energy_difference_sigma(f[ok], n[ok], np.repeat(f[[reference]], ok.sum(), 0),
                                          np.repeat(n[[reference]], ok.sum())) ** 2
        dE = e - e[reference]
        comp = [composition(a) for a in structs]
        paired = reference_pairs(comp, reference)
        reason = np.array(["" if ok[k] and paired[k] else
                           (str(ds["error"].values[k]) or f"composition {comp[k]} differs from the reference "
                            f"structure's {comp[reference]}: the element reference does not cancel")
                           for k in range(len(e))], dtype=object)
        valid = reason == ""
        chem = str(ds["chemsys"].values[reference])
        c, sc = (float(x[0]) for x in art.corrections.per_structure([chem]))
        sig, sig_c = difference_sigmas(art.differences, v, dE, c, sc)
        out = ds[["name", "chemsys", "error"]].copy()
        for name, values, more in _difference_columns(art, dE, np.sqrt(v), sig, sig_c, c, valid):
            out[name] = ("structure", values, {**schema.attrs(name), **more})
        out["difference_reason"] = ("structure", reason.astype(str), schema.attrs("difference_reason"))
        out.attrs = {**ds.attrs, "reference": int(reference)}
        return out

    # ------------------------------------------------------------------ one batch
    def _arrays(self, kept, pred: Prediction, forces: bool, force_mode: str, batch_size: int,
                descriptors: bool, points_out: list) -> dict:
        """name -> (dim kind, array) for one batch: "s" per structure row, "a" per atom row. The batch's
        conformal points are appended to ``points_out`` (their ``structure`` made input positions)."""
        if force_mode not in FORCE_MODES:
            raise ValueError(f"force_mode must be one of {FORCE_MODES}, got {force_mode!r}")
        ok = pred.indices
        bad = np.array([i.index for i in pred.issues], dtype=int)
        rows = np.sort(np.concatenate([ok, bad]).astype(int))
        at_ok, at_bad = np.searchsorted(rows, ok), np.searchsorted(rows, bad)

        def s(values, fill=np.nan):
            """A structure variable: predicted rows from ``values``, skipped rows ``fill``."""
            values = np.asarray(values)
            text = isinstance(fill, str)
            full = np.full((len(rows), *values.shape[1:]), fill, dtype=object if text else np.result_type(values, fill))
            full[at_ok] = values
            return full.astype(str) if text else full

        corrected = self._correct(pred) if self.artifact is not None and self.correction else None
        raw_energy, raw_forces = pred.energy, pred.forces
        if corrected is not None:
            pred = corrected[0]
        names = s(np.array([_name(a) for a in kept], dtype=object), fill="").astype(object)
        names[at_bad] = [i.name for i in pred.issues]
        sources = s(np.array([str(a.info.get("source", "")) for a in kept], dtype=object), fill="").astype(object)
        sources[at_bad] = [i.source for i in pred.issues]
        errors = np.full(len(rows), "", dtype=object)
        errors[at_bad] = [i.problem for i in pred.issues]
        out = {
            "structure": ("s", rows),
            "name": ("s", names.astype(str)),
            "source": ("s", sources.astype(str)),
            "chemsys": ("s", s(np.array(pred.chemsys, dtype=object), fill="")),
            "error": ("s", errors.astype(str)),
            "n_atoms": ("s", s(pred.n_atoms.astype(int), fill=0)),
            "energy": ("s", s(pred.energy)),
            "energy_per_atom": ("s", s(pred.energy / np.maximum(pred.n_atoms, 1))),
            "structure_index": ("a", ok[pred.atom_structure]),
            "numbers": ("a", pred.numbers),
        }
        max_force = _per_structure_max(np.abs(pred.forces), pred) if forces else None
        if forces:
            out["forces"] = ("a", pred.forces)
            out["max_force"] = ("s", s(max_force))
        if pred.stress is not None:
            out["stress"] = ("s", s(pred.stress.reshape(-1, 9)[:, [0, 4, 8, 5, 2, 1]]))
        if descriptors:
            out["features"] = ("s", s(pred.features))
            out["atom_descriptors"] = ("a", pred.atom_descriptors)
        art = self.artifact
        if art is None:
            return out
        cols = _Columns(s, pred)
        cols.applied = corrected[1] if corrected is not None else np.zeros(len(pred), dtype=bool)
        cols.seen = np.zeros(len(pred), dtype=bool)
        cols.raw_energy, cols.raw_forces = raw_energy, raw_forces
        cols.struct("prediction", np.where(cols.applied, "corrected", "raw").astype(object), fill="")
        if self.correction and len(art.corrections):  # every batch alike: results concatenate over batches
            cols.struct("energy_model", raw_energy)
            if forces:
                cols.atom("forces_model", raw_forces)
        self._uncertainty_columns(cols, kept, pred, forces, force_mode, batch_size)
        shift, why = self._shift(pred)
        self._interval_columns(cols, pred, forces, shift, why, points_out, ok)
        self._trust_columns(cols, pred)
        self._correction_columns(cols, pred, forces, max_force)
        out.update(cols.out)
        return out

    # -- column groups of one batch (each adds to ``cols``; see the module docstring for every name)
    def _uncertainty_columns(self, cols, kept, pred: Prediction, forces: bool, force_mode: str, batch_size: int):
        """σ: the error models' (energy per structure, every force component) and LLPR's (energy always; force
        components with ``force_mode`` exact or approx, which costs reverse passes)."""
        art, L = self.artifact, self.artifact.llpr
        e_llpr = L.energy_sigma(pred.features, pred.n_atoms)
        local = L.local_energy_sigma(pred.atom_descriptors)
        cols.atom("local_energy_sigma", local)
        cols.struct("max_local_sigma", _per_structure_max(local[:, None], pred))
        inputs = self._error_inputs(pred, local, kept, batch_size, cols.raw_energy)
        em = art.error_models
        e_sig = e_llpr
        cols.energy_labels = None
        if em is not None and em.energy is not None:
            per_atom, cls = em.energy_sigma(inputs, _split_numbers(pred))
            e_sig = per_atom * pred.n_atoms
            cols.energy_labels = {"composition": cls.astype(str)}
            cols.struct("energy_sigma_llpr", e_llpr)
            if inputs.energy_disagreement is not None:
                cols.struct("energy_disagreement", inputs.energy_disagreement)
        cols.struct("energy_sigma", e_sig)
        cols.energy_sigma = e_sig
        f_sig = None
        if em is not None and em.forces is not None and pred.forces is not None:
            cols.force_sigma_all = em.forces.sigma(inputs)  # every structure: the bound needs it
            cols.seen = np.isfinite(em.force_scale(pred.chemsys)) & ~cols.applied
            if cols.seen.any():  # a calibrated chemistry: its own scale over the cross-chemistry model
                r = np.nan_to_num(em.force_scale(pred.chemsys), nan=1.0)
                cols.force_sigma_all = cols.force_sigma_all * np.sqrt(np.where(cols.seen, r, 1.0))[
                    pred.atom_structure][:, None]
            if em.forces_corrected is not None and cols.applied.any():  # the corrected forces' own model
                on = cols.applied[pred.atom_structure]
                cols.force_sigma_all = np.where(on[:, None], em.forces_corrected.sigma(inputs), cols.force_sigma_all)
            if forces:
                f_sig = cols.force_sigma_all
        if forces and force_mode != "none":
            fvar = force_variance(self.model, kept, L, mode=force_mode, batch_size=batch_size)
            llpr_sig = np.sqrt(np.concatenate([v for v in fvar])) if fvar else np.zeros((0, 3))
            if f_sig is None:
                f_sig = llpr_sig
            else:
                cols.atom("forces_sigma_llpr", llpr_sig)
        if f_sig is not None:
            cols.atom("forces_sigma", f_sig)
            cols.struct("max_force_sigma", _per_structure_max(f_sig, pred))
        cols.force_sigma = f_sig

    def _error_inputs(self, pred: Prediction, local, kept, batch_size: int, raw_energy=None) -> AtomInputs:
        """The error models' inputs for one batch (with each structure's reference leverage, and the committee
        model's forces and energy disagreement where the calibration has one: NaN for a structure it cannot
        predict, whose σ and bound are then NaN and its force check "not checked"). The disagreement is with the
        model's own energy, ``raw_energy`` (total eV, before a scalar correction), as on the calibration set."""
        ref = self.artifact.element_reference
        numbers = _split_numbers(pred)
        lev = ref.leverage(numbers) if ref is not None else np.full(len(pred), np.nan)
        second = disagreement = None
        spec = self.artifact.attrs.get("committee_model")
        if spec and pred.forces is not None:
            from calib.models.base import second_model_outputs

            if self._second is None:
                from calib.models import load_model

                try:
                    self._second = load_model(str(spec))
                except (ImportError, ValueError, FileNotFoundError) as exc:
                    raise ArtifactError(f"this calibration's error model reads the forces of a second model, "
                                        f"{spec}, which cannot be loaded here ({exc}); docs/errormodel.md") from None
            second_energy, second, _ = second_model_outputs(self._second, kept, batch_size)
            em = self.artifact.error_models
            if em is not None and em.committee_reference is not None:
                model_energy = pred.energy if raw_energy is None else raw_energy
                disagreement = energy_disagreement(numbers, second_energy - model_energy, em.committee_reference)
        return AtomInputs(pred.numbers, pred.forces if pred.forces is not None else np.zeros((len(pred.numbers), 3)),
                          pred.atom_structure, pred.atom_descriptors, local, lev, len(pred), second, disagreement)

    def _shift(self, pred: Prediction):
        """(per-element shift to the reference code's zero (eV; NaN where undetermined), why not) per structure."""
        ref = self.artifact.element_reference
        if ref is None:
            return np.zeros(len(pred)), [""] * len(pred)
        numbers = _split_numbers(pred)
        known, why = ref.determined(numbers)
        return np.where(known, ref.predict(numbers), np.nan), why

    def _interval_columns(self, cols, pred: Prediction, forces: bool, shift, why, points_out: list, ok):
        """Conformal intervals of the reference-code energy and force components, from the σ of the batch."""
        art, L = self.artifact, self.artifact.llpr
        points = build_points(L, features=pred.features, n_atoms=pred.n_atoms, chemsys=pred.chemsys,
                              energy_sigma=cols.energy_sigma, atom_structure=pred.atom_structure, numbers=pred.numbers,
                              atom_descriptors=pred.atom_descriptors, force_sigma=cols.force_sigma,
                              targets=("energy", "forces", "force_norm"), energy_labels=cols.energy_labels)
        if len(pred):
            points_out.append({k: Points(p.target, p.sigma, p.descriptors, p.labels, ok[p.structure])
                               for k, p in points.items()})
        if art.element_reference is not None or art.conformal.energy is not None:
            cols.struct("energy_shift", shift)
            cols.struct("energy_centre", pred.energy + shift)
        if art.element_reference is not None:  # which offsets: an element under GGA+U has its own, "Fe (U)"
            ref = art.element_reference
            cols.struct("energy_reference_u", np.array([", ".join(ref.species(n)) for n in _split_numbers(pred)],
                                                       dtype=object), fill="")
        if art.conformal.energy is not None:
            h, cls = art.conformal.energy.half_width_points(points["energy"])
            cols.energy_halfwidth = h
            cols.struct("energy_halfwidth", h)
            cols.struct("energy_low", pred.energy + shift - h)
            cols.struct("energy_high", pred.energy + shift + h)
            cols.struct("energy_interval_reason", np.array(why, dtype=object), fill="")
            if cls is not None:
                cols.struct("energy_class", np.asarray(cls, dtype=object), fill="")
        if cols.force_sigma is not None and art.conformal.forces is not None:
            on = np.repeat(cols.applied[pred.atom_structure], 3)  # components of corrected structures
            h = art.conformal.force_half_width(points["forces"], on)[0].reshape(-1, 3)
            cols.atom("forces_low", pred.forces - h)
            cols.atom("forces_high", pred.forces + h)
            cols.struct("max_force_halfwidth", _per_structure_max(h, pred))

    def _trust_columns(self, cols, pred: Prediction):
        """The verdict (calib.uq.trust.verdict) from the domain score, the force bound and the energy half-width
        per atom, and the notes: extrapolated beyond the calibration structures, elements no label contains."""
        art = self.artifact
        n = len(pred)
        domain = q = None
        missing = {}
        if art.ood is not None:
            q = art.ood.structure_scores(pred.atom_descriptors, pred.atom_structure, n)
            t2 = art.ood.structure_t2_scores(pred.atom_descriptors, pred.atom_structure, n)
            cols.struct("q_score", q)
            if art.ood.has_t2:
                cols.struct("t2_score", t2)
            domain = np.fmax(q, t2)
            cols.struct("domain_score", domain)
        else:
            missing[Check.DOMAIN] = "the calibration has no domain detector"
        bound = trust_bound = None
        em = art.error_models
        if em is not None and em.bound is not None and cols.force_sigma_all is not None:
            bound, trust_bound = self._force_bounds(cols, pred, em)
        elif art.force_error is not None and pred.forces is not None:  # a calib 0.5 artifact: one quantile
            bound = trust_bound = np.array([art.force_error.bound(pred.forces[sl]) for sl in pred.atom_slices()])
        else:
            missing[Check.FORCES] = "the calibration has no force-error model"
        h = cols.energy_halfwidth
        if h is None:
            missing[Check.ENERGY] = "the calibration has no energy intervals"
        unlabelled = em.unlabelled(_split_numbers(pred)) if em is not None and em.elements is not None else None
        v = verdict(self.trust, domain=domain, force_bound=trust_bound,
                    energy_halfwidth=None if h is None else h / pred.n_atoms, unlabelled=unlabelled, missing=missing)
        cols.struct("trusted", v.trusted, fill=False)
        cols.struct("trust_reason", v.reasons, fill="")
        cols.struct("trust_checks_failed", v.checks_failed(), fill="")
        cols.struct("trust_score", v.score)
        if bound is not None:
            cols.struct("force_error_bound", bound)
            cols.struct("force_error_bound_trust", trust_bound)
            if cols.force_sigma_all is not None:  # each atom's share: U × its largest σ ÷ the structure's largest
                atom_max = cols.force_sigma_all.max(axis=1)
                top = _per_structure_max(atom_max[:, None], pred)[pred.atom_structure]
                cols.atom("atom_force_error_bound", bound[pred.atom_structure] * atom_max / np.where(top > 0, top, np.nan))
        cal_max = getattr(art.ood, "calibration_max_", np.nan) if art.ood is not None else np.nan
        beyond = extrapolated(q, cal_max, n)
        cols.struct("extrapolated", beyond, fill=False)
        cols.struct("trust_notes", notes(unlabelled, beyond), fill="")

    def _force_bounds(self, cols, pred: Prediction, em) -> tuple[np.ndarray, np.ndarray]:
        """(U at the artifact's 1 − α, U at the trust policy's confidence), eV/Å, per structure: a corrected
        prediction by the corrected forces' bound, a calibrated chemistry by its scaled component bound, a new
        chemistry by the structure model (the component bound where the artifact has none)."""
        n = len(pred)
        alpha_trust = 1.0 - self.trust.confidence
        parts = [em.bound_corrected if cols.applied[k] and em.bound_corrected is not None
                 else em.bound_seen if cols.seen[k] and em.bound_seen is not None
                 else None if em.structure is not None else em.bound for k in range(n)]
        slices = list(pred.atom_slices())
        bound, trust = np.full(n, np.nan), np.full(n, np.nan)
        for k, (b, sl) in enumerate(zip(parts, slices)):
            if b is not None:
                bound[k], trust[k] = b.bound(cols.force_sigma_all[sl]), b.bound(cols.force_sigma_all[sl], alpha_trust)
        new = np.array([b is None for b in parts], dtype=bool)
        if new.any():
            inputs = AtomInputs(pred.numbers, pred.forces, pred.atom_structure, n_structures=n)
            X = structure_features(inputs, component_scale(cols.force_sigma_all, pred.n_atoms))[new]
            bound[new] = em.structure.bound(X, em.bound.alpha)
            trust[new] = em.structure.bound(X, alpha_trust)
        return bound, trust

    def _correct(self, pred: Prediction):
        """(the batch with the stored scalar correction applied where it applies, which structures) or None.

        It applies to a structure whose chemistry has a correction and whose domain score is within the
        largest score of the structures the correction was fitted on (``ChemistryCorrection.domain``; no recorded
        domain: it applies)."""
        import dataclasses

        corr = self.artifact.corrections
        if not len(corr) or not len(pred):
            return None
        c, _ = corr.per_structure(pred.chemsys)
        applied = np.isfinite(c)
        if self.artifact.ood is not None and applied.any():
            score = self.artifact.ood.domain_scores(pred.atom_descriptors, pred.atom_structure, len(pred))
            limit = np.array([np.inf if (d := corr.domain(ch)) is None else d for ch in pred.chemsys])
            applied &= ~(score > limit)
        if not applied.any():
            return None
        energy = pred.energy.copy()
        forces = None if pred.forces is None else pred.forces.copy()
        stress = None if pred.stress is None else pred.stress.copy()
        for k, sl in enumerate(pred.atom_slices()):
            if applied[k]:
                e, f, st = corr.apply(pred.chemsys[k], int(pred.n_atoms[k]), energy[k],
                                      None if forces is None else forces[sl], None if stress is None else stress[k])
                energy[k] = e
                if forces is not None:
                    forces[sl] = f
                if stress is not None:
                    stress[k] = st
        return dataclasses.replace(pred, energy=energy, forces=forces, stress=stress), applied

    def _correction_columns(self, cols, pred: Prediction, forces: bool, max_force):
        corr = self.artifact.corrections
        if not len(corr):
            return
        c, _ = corr.per_structure(pred.chemsys)
        e_corr = np.array([corr.apply(ch, n, energy=e)[0] if ch in corr else np.nan
                           for ch, n, e in zip(pred.chemsys, pred.n_atoms, cols.raw_energy)])
        cols.struct("correction", c)
        cols.struct("energy_corrected", e_corr)
        if forces:
            c_atom = np.nan_to_num(c, nan=1.0)[pred.atom_structure]
            cols.atom("forces_corrected", c_atom[:, None] * cols.raw_forces)
            raw_max = _per_structure_max(np.abs(cols.raw_forces), pred)
            cols.struct("max_force_corrected", c * raw_max)

    def _dataset(self, arrays: dict, forces: bool):
        import xarray as xr

        dims = {"s": "structure", "a": "atom"}
        ds = xr.Dataset(coords={"structure": arrays["structure"][1], "component": ["x", "y", "z"]})
        if "stress" in arrays:
            ds = ds.assign_coords(voigt=["xx", "yy", "zz", "yz", "xz", "xy"])
        for name, (kind, values) in arrays.items():
            if name == "structure":
                continue
            d = (dims[kind],)
            if values.ndim == 2:
                d = d + ({"features": "feature", "atom_descriptors": "feature", "stress": "voigt"}.get(name, "component"),)
            ds[name] = (d, values, schema.attrs(name))  # units and description: calib.schema, one place
        info = {"energies": "total eV (every energy variable, unless its name says per atom)",
                "model_energy_convention": self.model.energy_convention, "model_name": self.model.name,
                "model_version": self.model.version,
                "model_read_as": str(getattr(self.model, "read_as", "") or self.model.name),
                "calibration": self.calibration}
        art = self.artifact
        if art is not None:
            info["stage"] = art.stage
            info["trust_confidence"] = self.trust.confidence
            alpha = art.conformal.alpha
            if alpha is not None:
                info["alpha"] = alpha
        ds.attrs = info
        return ds


# --------------------------------------------------------------------------- helpers


if CalibratedPredictor.energy_differences.__doc__:  # its variables' table, from the one schema
    CalibratedPredictor.energy_differences.__doc__ = CalibratedPredictor.energy_differences.__doc__.replace(
        "{differences}", schema.table([c.name for c in schema.DIFFERENCES]).replace("\n", "\n        "))


def as_structures(obj) -> Iterable[Atoms]:
    """One structure or file, a list of them (read now), or any other iterable (converted lazily), under the
    skip rule of :mod:`calib.data.readers`: a named file must exist; whatever cannot become a structure (an
    unreadable frame, a disordered Structure, a Molecule, another object) becomes a placeholder that
    validation skips and reports, so one bad entry never costs the others."""
    from calib.data.readers import iter_structures, read_skipping

    single = isinstance(obj, (str, os.PathLike, Atoms)) or type(obj).__name__ in ("Structure", "Molecule")
    if single:
        return read_skipping([obj])
    if isinstance(obj, Sequence):
        return read_skipping(list(obj))
    return iter_structures(obj, strict=False)


def _difference_columns(art: Artifact, dE, sigma_llpr, sigma, sigma_c, c: float, valid) -> list[tuple]:
    """(name, values, attributes beside the schema's) of :meth:`CalibratedPredictor.energy_differences`'s numbers
    (eV): the differences and their σ, the conformal intervals where the artifact has the quantile (NaN where
    not ``valid``), and the corrected ones where ``sigma_c`` is given (c the chemistry's correction)."""

    def interval(name, d, s, cal):
        h = np.where(valid, cal.half_width(s), np.nan) if cal is not None else None
        return [] if h is None else [(f"{name}_low", d - h, {}), (f"{name}_high", d + h, {})]

    model = "with the softening term" if art.differences.raw is not None else "LLPR alone"
    rows = [("energy_difference", dE, {}), ("energy_difference_sigma_llpr", sigma_llpr, {}),
            ("energy_difference_sigma", sigma, {"description": model}),
            *interval("energy_difference", dE, sigma, art.conformal.energy_difference)]
    if sigma_c is not None:
        rows += [("energy_difference_corrected", c * dE, {"correction": c}),
                 ("energy_difference_corrected_sigma", sigma_c, {}),
                 *interval("energy_difference_corrected", c * dE, sigma_c, art.conformal.energy_difference_corrected)]
    return rows


def _name(atoms) -> str:
    from calib.data.structures import structure_name

    return structure_name(atoms)


def _split_numbers(pred: Prediction) -> list[np.ndarray]:
    return [pred.numbers[sl] for sl in pred.atom_slices()]


def _per_structure_max(values: np.ndarray, pred: Prediction) -> np.ndarray:
    """Largest entry of per-atom rows for each predicted structure."""
    return np.array([np.max(values[sl]) if sl.stop > sl.start else np.nan for sl in pred.atom_slices()])


class _Columns:
    """The columns of one batch as the column groups add them: per structure (``struct``, skipped rows filled)
    or per atom (``atom``), plus what later groups read (σ, the energy half-width)."""

    def __init__(self, s, pred: Prediction):
        self._s, self.out = s, {}
        self.energy_sigma = self.force_sigma = self.force_sigma_all = self.energy_halfwidth = None
        self.energy_labels = None
        self.applied = self.seen = np.zeros(0, dtype=bool)

    def struct(self, name: str, values, fill=np.nan):
        self.out[name] = ("s", self._s(values, fill=fill))

    def atom(self, name: str, values):
        self.out[name] = ("a", np.asarray(values))


def _concat(parts: list[dict]) -> dict:
    """Concatenate per-batch arrays along their first dimension (keys present in every batch)."""
    if not parts:
        return {}
    keys = [k for k in parts[0] if all(k in p for p in parts)]
    return {k: (parts[0][k][0], np.concatenate([p[k][1] for p in parts])) for k in keys}
