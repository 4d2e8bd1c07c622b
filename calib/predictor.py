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

======================= ======================= ==========================================================
variable                dims                    meaning
======================= ======================= ==========================================================
name, chemsys           structure               ``info["name"]`` or the formula; elements by electronegativity
source                  structure               ``file:frame`` the structure was read from ("" for objects)
error                   structure               why a structure was skipped ("" when predicted)
n_atoms                 structure               atoms predicted (0 for a skipped structure)
energy                  structure               model total energy, eV
energy_per_atom         structure               eV/atom
energy_sigma            structure               calibrated LLPR σ of the total energy, eV
max_local_sigma         structure               largest per-atom energy σ, eV
q_score                 structure               largest atomic Q residual ÷ the threshold fitted on the
                                                Hessian's structures (> 1: out of the model's domain)
energy_shift            structure               per-element reference Σ n_el μ_el fitted at calibration, eV
energy_centre           structure               energy + energy_shift: the model's estimate of the
                                                reference code's total energy, eV (the centre of the interval)
energy_low/high         structure               conformal interval for the reference-code total energy, eV
                                                (NaN where the element reference does not determine the shift)
energy_interval_reason  structure               why a structure has no energy interval ("" when it has one)
energy_halfwidth        structure               conformal half-width of the total energy, eV (with or without
                                                an interval: the element reference does not change it)
force_error_bound       structure               calibrated bound on the largest force error, eV/Å (calib.uq.trust)
trusted, trust_reason   structure               the one trust verdict and why not (calib.uq.trust)
trust_score             structure               ≤ 1 exactly when trusted (ranks structures)
extrapolated            structure               outside every calibration structure (Q): intervals extrapolated
energy_class            structure               Mondrian class of the energy quantile
correction              structure               scalar correction c stored for the chemsys (NaN: none)
energy_corrected        structure               E_anchor + c (E − E_anchor), eV (NaN: no correction)
max_force               structure               largest |force component|, eV/Å
max_force_sigma         structure               largest force-component σ, eV/Å
max_force_halfwidth     structure               widest force-component conformal half-width, eV/Å
max_force_corrected     structure               c · max_force, eV/Å
stress                  (structure, voigt)      eV/Å³, ASE sign convention (``stress=True``)
structure_index         atom                    the ``structure`` coordinate of each atom
numbers                 atom                    atomic numbers
local_energy_sigma      atom                    σ of the atom's energy contribution w·φ_a + b, eV (energy α², ς²)
forces                  (atom, component)       eV/Å
forces_sigma            (atom, component)       calibrated LLPR σ, eV/Å
forces_low/high         (atom, component)       conformal interval for the reference force, eV/Å
forces_corrected        (atom, component)       c · forces, eV/Å (the uncorrected forces where no c)
features                (structure, feature)    pooled last-layer features (``descriptors=True``)
atom_descriptors        (atom, feature)         per-atom last-layer features (``descriptors=True``)
======================= ======================= ==========================================================

Attributes: ``energies`` ("total eV" unless a name says per atom), ``model_name``, ``model_version``,
``model_read_as``, ``model_energy_convention`` (what the *model* predicts internally: CHGNet "per_atom";
the energies here are totals either way), ``calibration`` (a path, "default", "in memory" or "none"),
``stage``, ``alpha``.

σ and intervals are those of the uncorrected model, which is what they were
calibrated on. A skipped structure keeps its row, with ``error`` set and NaN
numbers, so results never lose their place in the input.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
from ase import Atoms

from calib.artifact import Artifact, ArtifactError
from calib.models.base import ModelAdapter, Prediction
from calib.models.gradients import force_variance
from calib.uq.targets import Points, build_points
from calib.uq.trust import TrustPolicy, verdict

FORCE_MODES = ("exact", "approx", "none")

_UNITS = {
    "energy": "eV", "energy_per_atom": "eV/atom", "energy_sigma": "eV", "local_energy_sigma": "eV",
    "max_local_sigma": "eV", "energy_shift": "eV",
    "energy_centre": "eV", "energy_low": "eV", "energy_high": "eV", "correction": "1",
    "energy_corrected": "eV", "max_force": "eV/Å", "max_force_sigma": "eV/Å", "max_force_halfwidth": "eV/Å",
    "max_force_corrected": "eV/Å", "forces": "eV/Å", "forces_sigma": "eV/Å", "forces_low": "eV/Å",
    "forces_high": "eV/Å", "forces_corrected": "eV/Å", "features": "1", "atom_descriptors": "1",
    "stress": "eV/Å^3", "q_score": "1", "energy_halfwidth": "eV", "force_error_bound": "eV/Å", "trust_score": "1",
}
_DESCRIPTIONS = {
    "energy": "model total energy",
    "energy_sigma": "calibrated LLPR sigma of the total energy",
    "local_energy_sigma": "LLPR sigma of the atom's energy contribution (local prediction rigidity)",
    "max_local_sigma": "largest per-atom energy sigma of the structure",
    "energy_shift": "per-element reference sum_el n_el mu_el fitted at calibration",
    "q_score": "largest atomic Q residual / threshold of the Hessian's structures (> 1: out of the model's domain)",
    "energy_centre": "energy + energy_shift: the model's estimate of the reference code's total energy",
    "energy_low": "lower end of the conformal interval for the reference-code total energy",
    "energy_high": "upper end of the conformal interval for the reference-code total energy",
    "correction": "scalar correction c stored for the chemsys (NaN: none)",
    "energy_corrected": "E_anchor + c (E - E_anchor) (NaN: no correction stored)",
    "forces_sigma": "calibrated LLPR sigma of each force component",
    "forces_low": "lower end of the conformal interval for the reference force component",
    "forces_high": "upper end of the conformal interval for the reference force component",
    "forces_corrected": "c * forces (the uncorrected forces where no correction is stored)",
    "energy_halfwidth": "conformal half-width of the total energy (with or without an energy interval)",
    "force_error_bound": "calibrated bound on the largest force-component error of the structure",
    "trusted": "the verdict of calib.uq.trust: in the model's domain, force bound and energy half-width within "
               "tolerance",
    "trust_reason": "why a structure is not trusted (' | '-joined), '' when trusted",
    "trust_score": "max(Q, bound / force_tol, half-width per atom / energy_tol): <= 1 exactly when trusted",
    "extrapolated": "Q score above every calibration structure's: intervals extrapolated, not measured",
}


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
        Tolerances of the trust verdict (``trusted``, ``trust_reason``); default force 0.3 eV/Å, energy
        0.1 eV/atom, out-of-domain untrusted. With a calibrated artifact the verdict needs the model's
        forces, which the predictor then computes even when ``forces=False`` (without reporting them).

    Examples
    --------
    >>> from calib import CalibratedPredictor
    >>> ds = CalibratedPredictor.from_file("CAL.nc").predict(atoms, forces=True)   # doctest: +SKIP
    >>> ds.energy_sigma.values, ds.forces_high - ds.forces_low                      # doctest: +SKIP
    """

    def __init__(self, model: ModelAdapter, artifact: Artifact | None = None, *, require_calibrated: bool = True,
                 trust: TrustPolicy | None = None, calibration: str | None = None):
        if artifact is not None:
            artifact.check_model(model)
            if require_calibrated and not artifact.calibrated:
                raise ArtifactError("this artifact holds a Hessian only; run `calib calibrate` on labelled data first")
        self.model = model
        self.artifact = artifact
        self.trust = trust or TrustPolicy()
        if artifact is None:
            calibration = "none"
        elif calibration is None:
            calibration = "default" if artifact.attrs.get("default_calibration") else "in memory"
        #: which calibration produced the predictions: a path, "default", "in memory" or "none"
        self.calibration = str(calibration)

    @property
    def _verdict_forces(self) -> bool:
        """Whether the trust verdict needs the model's forces (a force bound in the artifact and a tolerance)."""
        return self.artifact is not None and self.artifact.force_error is not None and self.trust.force_tol is not None

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
        """The predictor of calib's default calibration (CHGNet 0.3.0, shipped GPAW PAW-PBE labels), as
        ``calib predict`` without ``--calibration``. ``model``: None, ``"chgnet"``/``"chgnet:0.3.0"`` or an
        adapter (ArtifactError unless its weights are CHGNet 0.3.0's); ValueError for another model name."""
        from calib.data.datasets import default_calibration
        from calib.models import resolve_model

        name = model if isinstance(model, (str, os.PathLike)) else "chgnet"
        path = default_calibration(os.fspath(name))
        if path is None:
            raise ValueError(f"calib ships a default calibration for CHGNet 0.3.0 only, not for {name!r}: calibrate "
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

        Returns an xarray Dataset over ``structure``: ``energy_difference`` (E_i − E_ref, eV),
        ``energy_difference_sigma_llpr`` (LLPR alone), ``energy_difference_sigma`` (with the softening
        term of calib.uq.differences when the artifact has it), ``energy_difference_low/high`` (conformal,
        for the reference-code difference), and with a correction ``energy_difference_corrected``
        (c·ΔE), ``energy_difference_corrected_sigma``, ``..._corrected_low/high``; ``difference_reason``
        says why a row has no interval (another composition than the reference structure, skipped).
        """
        if self.artifact is None:
            raise ValueError("energy differences with σ need a calibration artifact")
        structs = list(as_structures(structures))
        ds = self.predict(structs, batch_size=batch_size, descriptors=True, progress=progress)
        art, L = self.artifact, self.artifact.llpr
        if str(ds["error"].values[reference]):
            raise ValueError(f"the reference structure {reference} was skipped: {ds['error'].values[reference]}")
        f, n, e = ds["features"].values, ds["n_atoms"].values, ds["energy"].values
        ok = ds["error"].values == ""
        v = np.full(len(e), np.nan)
        v[ok] = L.energy_difference_sigma(f[ok], n[ok], np.repeat(f[[reference]], ok.sum(), 0),
                                          np.repeat(n[[reference]], ok.sum())) ** 2
        dE = e - e[reference]
        comp = [a.get_chemical_formula() for a in structs]
        reason = np.array(["" if ok[k] and comp[k] == comp[reference] else
                           (str(ds["error"].values[k]) or f"composition {comp[k]} differs from the reference "
                            f"structure's {comp[reference]}: the element reference does not cancel")
                           for k in range(len(e))], dtype=object)
        valid = reason == ""
        raw = art.differences.get("raw")
        sig = raw.sigma(v, dE) if raw is not None else np.sqrt(v)
        out = ds[["name", "chemsys", "error"]].copy()
        units = {"units": "eV"}
        out["energy_difference"] = ("structure", dE, {**units, "description": "E_i - E_reference (model)"})
        out["energy_difference_sigma_llpr"] = ("structure", np.sqrt(v), units)
        out["energy_difference_sigma"] = ("structure", sig, {**units, "description": "with the softening term"
                                                             if raw is not None else "LLPR alone"})
        cal = art.conformal.get("energy_difference")
        if cal is not None:
            h = np.where(valid, cal.half_width(sig), np.nan)
            out["energy_difference_low"] = ("structure", dE - h, units)
            out["energy_difference_high"] = ("structure", dE + h, units)
        chem = str(ds["chemsys"].values[reference])
        cor, cal_c = art.differences.get("corrected"), art.conformal.get("energy_difference_corrected")
        c, sc = (float(x[0]) for x in art.corrections.per_structure([chem]))
        if np.isfinite(c) and cor is not None:
            sig_c = cor.sigma(v, dE, c, sc)
            out["energy_difference_corrected"] = ("structure", c * dE, {**units, "correction": c})
            out["energy_difference_corrected_sigma"] = ("structure", sig_c, units)
            if cal_c is not None:
                h = np.where(valid, cal_c.half_width(sig_c), np.nan)
                out["energy_difference_corrected_low"] = ("structure", c * dE - h, units)
                out["energy_difference_corrected_high"] = ("structure", c * dE + h, units)
        out["difference_reason"] = ("structure", reason.astype(str))
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
        n_ok = len(ok)

        def s(values, fill=np.nan):
            """A structure variable: predicted rows from ``values``, skipped rows ``fill``."""
            values = np.asarray(values)
            text = isinstance(fill, str)
            full = np.full((len(rows), *values.shape[1:]), fill, dtype=object if text else np.result_type(values, fill))
            full[at_ok] = values
            return full.astype(str) if text else full

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
        L = art.llpr
        e_sig = L.energy_sigma(pred.features, pred.n_atoms)
        out["energy_sigma"] = ("s", s(e_sig))
        local = L.local_energy_sigma(pred.atom_descriptors)
        out["local_energy_sigma"] = ("a", local)
        out["max_local_sigma"] = ("s", s(_per_structure_max(local[:, None], pred)))
        q = art.ood.structure_scores(pred.atom_descriptors, pred.atom_structure, n_ok) if art.ood is not None else None
        if q is not None:
            out["q_score"] = ("s", s(q))
        f_sig = None
        if forces and force_mode != "none":
            fvar = force_variance(self.model, kept, L, mode=force_mode, batch_size=batch_size)
            f_sig = np.sqrt(np.concatenate([v for v in fvar])) if fvar else np.zeros((0, 3))
            out["forces_sigma"] = ("a", f_sig)
            out["max_force_sigma"] = ("s", s(_per_structure_max(f_sig, pred)))
        points = build_points(L, features=pred.features, n_atoms=pred.n_atoms, chemsys=pred.chemsys,
                              energy_sigma=e_sig, atom_structure=pred.atom_structure, numbers=pred.numbers,
                              atom_descriptors=pred.atom_descriptors, force_sigma=f_sig,
                              targets=("energy", "forces", "force_norm"))
        if n_ok:
            points_out.append({k: Points(p.target, p.sigma, p.descriptors, p.labels, ok[p.structure])
                               for k, p in points.items()})
        if art.element_reference is not None or "energy" in art.conformal:
            shift, why = np.zeros(n_ok), [""] * n_ok
            if art.element_reference is not None:
                numbers = _split_numbers(pred)
                shift = art.element_reference.predict(numbers)
                known, why = art.element_reference.determined(numbers)
                shift = np.where(known, shift, np.nan)  # an undetermined shift is no number at all
            out["energy_shift"] = ("s", s(shift))
            out["energy_centre"] = ("s", s(pred.energy + shift))
        h_energy = None
        if "energy" in art.conformal and n_ok:
            h, cls = art.conformal["energy"].half_width_points(points["energy"])
            h_energy = h
            out["energy_halfwidth"] = ("s", s(h))
            out["energy_low"] = ("s", s(pred.energy + shift - h))
            out["energy_high"] = ("s", s(pred.energy + shift + h))
            out["energy_interval_reason"] = ("s", s(np.array(why, dtype=object), fill=""))
            if cls is not None:
                out["energy_class"] = ("s", s(np.asarray(cls, dtype=object), fill="").astype(str))
        if f_sig is not None and "forces" in art.conformal and n_ok:
            h, _ = art.conformal["forces"].half_width_points(points["forces"])
            h = h.reshape(-1, 3)
            out["forces_low"] = ("a", pred.forces - h)
            out["forces_high"] = ("a", pred.forces + h)
            out["max_force_halfwidth"] = ("s", s(_per_structure_max(h, pred)))
        if n_ok:
            out.update(self._verdict(pred, s, q, h_energy))
        corr = art.corrections
        if len(corr):
            c, _ = corr.per_structure(pred.chemsys)
            e_corr = np.array([corr.apply(ch, n, energy=e)[0] if ch in corr else np.nan
                               for ch, n, e in zip(pred.chemsys, pred.n_atoms, pred.energy)])
            out["correction"] = ("s", s(c))
            out["energy_corrected"] = ("s", s(e_corr))
            if forces:
                c_atom = np.nan_to_num(c, nan=1.0)[pred.atom_structure]
                out["forces_corrected"] = ("a", c_atom[:, None] * pred.forces)
                out["max_force_corrected"] = ("s", s(c * max_force))
        return out

    def _verdict(self, pred: Prediction, s, q, h_energy) -> dict:
        """The trust columns of one batch (calib.uq.trust.verdict) from the Q score ``q``, the force bound of the
        model's forces and the energy half-width per atom (``h_energy`` eV)."""
        art = self.artifact
        bound = None
        if art.force_error is not None and pred.forces is not None:
            bound = np.array([art.force_error.bound(pred.forces[sl]) for sl in pred.atom_slices()])
        trusted, why, score = verdict(self.trust, q_score=q, force_bound=bound,
                                      energy_halfwidth=None if h_energy is None else h_energy / pred.n_atoms)
        cols = {"trusted": ("s", s(trusted, fill=False)), "trust_reason": ("s", s(why, fill="")),
                "trust_score": ("s", s(score))}
        if bound is not None:
            cols["force_error_bound"] = ("s", s(bound))
        cal_max = getattr(art.ood, "calibration_max_", np.nan) if art.ood is not None else np.nan
        cols["extrapolated"] = ("s", s(q > cal_max if q is not None and np.isfinite(cal_max)
                                         else np.zeros(len(pred), dtype=bool), fill=False))
        return cols

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
            attrs = {}
            if name in _UNITS:
                attrs["units"] = _UNITS[name]
            if name in _DESCRIPTIONS:
                attrs["description"] = _DESCRIPTIONS[name]
            ds[name] = (d, values, attrs)
        info = {"energies": "total eV (every energy variable, unless its name says per atom)",
                "model_energy_convention": self.model.energy_convention, "model_name": self.model.name,
                "model_version": self.model.version,
                "model_read_as": str(getattr(self.model, "read_as", "") or self.model.name),
                "calibration": self.calibration}
        art = self.artifact
        if art is not None:
            info["stage"] = art.stage
            alpha = next((c.alpha for c in art.conformal.values()), None)
            if alpha is not None:
                info["alpha"] = alpha
        ds.attrs = info
        return ds


# --------------------------------------------------------------------------- helpers


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


def _name(atoms) -> str:
    from calib.data.structures import structure_name

    return structure_name(atoms)


def _split_numbers(pred: Prediction) -> list[np.ndarray]:
    return [pred.numbers[sl] for sl in pred.atom_slices()]


def _per_structure_max(values: np.ndarray, pred: Prediction) -> np.ndarray:
    """Largest entry of per-atom rows for each predicted structure."""
    return np.array([np.max(values[sl]) if sl.stop > sl.start else np.nan for sl in pred.atom_slices()])


def _concat(parts: list[dict]) -> dict:
    """Concatenate per-batch arrays along their first dimension (keys present in every batch)."""
    if not parts:
        return {}
    keys = [k for k in parts[0] if all(k in p for p in parts)]
    return {k: (parts[0][k][0], np.concatenate([p[k][1] for p in parts])) for k in keys}
