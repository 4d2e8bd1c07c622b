"""``CalibratedCalculator``: an ASE calculator with calibrated uncertainties and the scalar correction.

It drops into ``ase.optimize``, ``ase.md`` and ``ase.mep.NEB`` like any calculator. Besides
``energy`` (eV), ``free_energy``, ``forces`` (eV/Å) and ``stress`` (eV/Å³, Voigt), ``results`` hold,
as ASE's mixing calculators do with their extras:

======================  ==================================================================
key                     meaning
======================  ==================================================================
energy_uncertainty      σ of the total energy (the energy error model, calib.uq.errormodel), eV
forces_uncertainty      σ of each force component (the force error model), eV/Å, shape (N, 3)
force_error_bound       calibrated bound on the structure's largest force-component error, eV/Å
forces_error_bound      per atom (N,): the atom's share of that bound, U × its largest component σ ÷ the
                        structure's largest, eV/Å (the largest atom's is U; colour atoms by it in ASE's GUI or
                        OVITO)
energies_uncertainty    per atom (N,): LLPR σ of the atom's energy contribution (local prediction rigidity), eV;
                        ASE's per-atom ``energies`` naming
energy_interval         conformal interval (low, high) for the reference-code total energy, eV,
                        or None where the element reference does not determine it
energy_centre           its centre: the model energy + energy_shift, eV (None without an interval)
energy_shift            the per-element reference shift to the reference code's energy zero, eV
trusted, trust_reason   the one trust verdict (calib.uq.trust) and why not ("" when trusted); without a
                        calibration ``trusted`` is None and ``trust_reason`` says why
prediction              "corrected" or "raw": which prediction energy, forces, σ and the verdict describe
corrected               whether energy, forces and stress are the scalar-corrected ones
correction              the factor c used (1.0 when not corrected)
uncorrected_energy      the model's own energy, eV (present when corrected)
======================  ==================================================================

The correction is the one choice ``calib predict`` makes too (``--raw`` turns it off there, ``correction=False``
here): with a correction stored in the artifact for the structure's chemistry, and the structure inside that
correction's domain, ``energy`` is E_anchor + c (E − E_anchor) and ``forces``/``stress`` are multiplied by c
(docs/softening.md), and σ, intervals and the verdict are those of the corrected prediction (its own error
model). With ``uncertainties=False`` a call costs one model pass, as the plain model does.

Calculators built with the same model, calibration file and device share one loaded model and
artifact (as the images of an NEB do), or pass ``predictor=`` to share one explicitly.
"""

from __future__ import annotations

import os

import numpy as np
from ase.calculators.calculator import Calculator, all_changes

from calib.schema import calculator_columns

#: the columns left out of ``results`` with ``uncertainties=False`` (one model pass, as the plain model)
_UNCERTAINTIES = frozenset({"energy_sigma", "forces_sigma", "energy_shift", "energy_centre", "local_energy_sigma"})
#: the keys whose None is an answer (the element reference does not determine the shift), not an absence
_NONE_MEANS = frozenset({"energy_shift", "energy_centre"})

from calib.predictor import CalibratedPredictor

_SHARED: dict = {}


def shared_predictor(model="chgnet", calibration=None, device: str = "cpu", correction: bool = True) -> CalibratedPredictor:
    """One predictor per (model, calibration file, device, correction) in this process. ``calibration="default"``:
    the calibration calib ships for CHGNet 0.3.0 (none for another model: the plain model)."""
    if isinstance(calibration, str) and calibration == "default":
        from calib.data.datasets import default_calibration

        calibration = default_calibration(model if isinstance(model, str) else "")
    key = (str(model), None if calibration is None else os.path.abspath(os.fspath(calibration)), str(device),
           bool(correction))
    if key not in _SHARED:
        if calibration is None:
            from calib.models import load_model

            _SHARED[key] = CalibratedPredictor(load_model(model, device=device))
        else:
            _SHARED[key] = CalibratedPredictor.from_file(calibration, None if model in (None, "auto") else model,
                                                         device=device)
            _SHARED[key].correction = bool(correction)
    return _SHARED[key]


class CalibratedCalculator(Calculator):
    """ASE calculator: a calib model with calibrated σ, conformal intervals and the scalar correction.

    Parameters
    ----------
    model : str or ModelAdapter — "chgnet" (default) or any name :func:`calib.load_model` takes.
    calibration : path to a calibrated artifact; "default" (the default): the calibration calib ships for
        CHGNet 0.3.0 (GPAW PAW-PBE labels); for another model (a fine-tuned file, MACE) calib has none, so the
        calculator warns (:class:`calib.errors.CalibWarning`) and runs the plain model; None: the plain model,
        no σ. Without a calibration ``results["trusted"]`` is None and ``results["trust_reason"]`` says why.
        ``results["calibration"]`` names the one used.
    correction : bool — report the scalar-corrected prediction where the artifact's correction applies (the
        default, as ``calib predict``); False: the model's own prediction everywhere (also with ``predictor=``).
    uncertainties : bool — compute σ (force σ costs one reverse pass per feature direction, or
        per kept direction with ``force_mode="approx"``).
    force_mode : "exact" or "approx" (the directions kept at calibration).
    device : str
    predictor : CalibratedPredictor, optional — share one across calculators.
    trust : calib.uq.trust.TrustPolicy, optional — what the verdict in ``results`` checks (default: the
        predictor's, the domain and a force bound ≤ 0.3 eV/Å).
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, model="chgnet", calibration="default", *, correction: bool = True, uncertainties: bool = True,
                 force_mode: str = "exact", device: str = "cpu", predictor: CalibratedPredictor | None = None,
                 trust=None, **kwargs):
        super().__init__(**kwargs)
        if predictor is not None:
            self.predictor = predictor if correction else predictor.raw()
        else:
            self.predictor = shared_predictor(model, calibration, device, correction)
        if trust is not None:  # a TrustPolicy of its own: a copy of the shared predictor that holds it
            import copy

            self.predictor = copy.copy(self.predictor)
            self.predictor.trust = trust
        has_artifact = self.predictor.artifact is not None
        self.uncalibrated_reason = ""
        if not has_artifact:
            if predictor is None and isinstance(calibration, str) and calibration == "default":
                import warnings

                from calib.errors import CalibWarning

                self.uncalibrated_reason = (f"no calibration: calib ships default calibrations for CHGNet 0.3.0 and "
                                            f"SevenNet-0 only, not for {model!r}; pass calibration=PATH (calib "
                                            "calibrate) for σ and the trust verdict")
                warnings.warn(f"CalibratedCalculator: {self.uncalibrated_reason}; running the plain model",
                              CalibWarning, stacklevel=2)
            else:
                self.uncalibrated_reason = "no calibration (calibration=None): the plain model has no trust verdict"
        self.calibration = ("none" if not has_artifact else "default" if self.predictor.artifact.attrs.get(
            "default_calibration") else "given")
        self.correction = self.predictor.correction and has_artifact
        self.uncertainties = bool(uncertainties) and has_artifact
        self.force_mode = force_mode

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        want_stress = "stress" in properties
        ds = self.predictor.predict([self.atoms], forces=True, stress=want_stress,
                                    force_mode=self.force_mode if self.uncertainties else "none", progress=False)
        err = str(ds["error"].values[0])
        if err:
            raise ValueError(f"calib cannot evaluate this structure: {err}")
        corrected = "prediction" in ds and str(ds["prediction"].values[0]) == "corrected"
        results = {"corrected": bool(corrected), "calibration": self.calibration,
                   # the factor applied (1 for a raw prediction), not the Dataset's stored c (calib.schema)
                   "correction": float(ds["correction"].values[0]) if corrected else 1.0,
                   "prediction": "corrected" if corrected else "raw"}
        skip = set() if self.uncertainties else _UNCERTAINTIES
        skip |= (set() if want_stress else {"stress"}) | (set() if corrected else {"energy_model"})
        for col in calculator_columns():  # the keys calib.schema names, the reported prediction's values
            if col.name in ds and col.name not in skip:
                value = col.value(ds[col.name].values, 0)
                if value is not None or col.name in _NONE_MEANS:
                    results[col.calculator] = value
        results["free_energy"] = results["energy"]
        if self.uncertainties and "energy_low" in ds:
            lo, hi = float(ds["energy_low"].values[0]), float(ds["energy_high"].values[0])
            results["energy_interval"] = (lo, hi) if np.isfinite(lo) else None
        if self.predictor.artifact is None:
            results["trusted"] = None
            results["trust_reason"] = self.uncalibrated_reason or "no calibration: the plain model has no trust verdict"
        self.results = results
