"""The output schema: every quantity calib reports, named, typed and with its unit, in one place.

The prediction Dataset (:class:`calib.predictor.CalibratedPredictor`) takes its variables' ``units`` and
``description`` attributes from here, the screen file (:mod:`calib.workflows.screen`) its columns, their types and
units, and the ASE calculator (:mod:`calib.calculator`) the ``results`` keys it fills from the Dataset
(``calculator``: the key, where it differs from the name or where the ecosystem has a convention). One name is one
quantity in every output: ``trusted`` is a bool and ``trust_reason`` its reason wherever they appear.

Energies are total (eV) unless the name says per atom; forces eV/Å; stress eV/Å³; scores and ratios "1"; ""
for text and booleans.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Column:
    """One reported quantity. ``dims``: "structure" (one value per structure), "atom" (per atom) or "atom3" (per
    atom and Cartesian component); ``dtype``: "f" float, "i" integer, "b" bool, "s" text; ``units`` as above;
    ``calculator``: its key in the ASE calculator's ``results`` (None: not there)."""

    name: str
    dims: str
    dtype: str
    units: str
    description: str
    calculator: str | None = None


_S, _A, _A3 = "structure", "atom", "atom3"

COLUMNS: tuple[Column, ...] = (
    # identity
    Column("name", _S, "s", "", "info['name'] or the formula"),
    Column("chemsys", _S, "s", "", "elements, ordered by electronegativity"),
    Column("error", _S, "s", "", "why the structure could not be predicted ('' when it was)"),
    Column("status", _S, "s", "", "screen rows: trusted, untrusted or failed"),
    Column("n_atoms", _S, "i", "1", "number of atoms"),
    Column("prediction", _S, "s", "", "which prediction energy, forces, sigma, intervals and the verdict "
           "describe: raw or corrected", calculator="prediction"),
    # energies
    Column("energy", _S, "f", "eV", "total energy of the reported prediction (the model's, or scalar-corrected: "
           "see prediction)", calculator="energy"),
    Column("energy_per_atom", _S, "f", "eV/atom", "energy / n_atoms"),
    Column("energy_model", _S, "f", "eV", "the model's own total energy (where the prediction is corrected)",
           calculator="uncorrected_energy"),
    Column("energy_sigma", _S, "f", "eV", "sigma of the total energy from the energy error model "
           "(calib.uq.errormodel)", calculator="energy_uncertainty"),
    Column("energy_sigma_per_atom", _S, "f", "eV/atom", "energy_sigma / n_atoms"),
    Column("energy_sigma_llpr", _S, "f", "eV", "calibrated LLPR sigma of the total energy"),
    Column("local_energy_sigma", _A, "f", "eV", "LLPR sigma of the atom's energy contribution (local prediction "
           "rigidity)"),
    Column("max_local_sigma", _S, "f", "eV", "largest per-atom energy sigma of the structure"),
    Column("energy_shift", _S, "f", "eV", "per-element reference sum_el n_el mu_el fitted at calibration",
           calculator="energy_shift"),
    Column("energy_centre", _S, "f", "eV", "energy + energy_shift: the model's estimate of the reference code's "
           "total energy", calculator="energy_centre"),
    Column("energy_reference_u", _S, "s", "", "elements whose GGA+U offset the energy shift used (Materials "
           "Project's U on oxides and fluorides of Co, Cr, Fe, Mn, Mo, Ni, V, W), '' for none"),
    Column("energy_halfwidth", _S, "f", "eV", "conformal half-width of the total energy (with or without an "
           "energy interval)"),
    Column("energy_low", _S, "f", "eV", "lower end of the conformal interval for the reference-code total "
           "energy"),
    Column("energy_high", _S, "f", "eV", "upper end of the conformal interval for the reference-code total "
           "energy"),
    Column("energy_interval_reason", _S, "s", "", "why there is no absolute energy interval ('' when there is)"),
    Column("energy_class", _S, "s", "", "class of the energy quantile: 'seen' or 'new' composition"),
    # forces and stress
    Column("forces", _A3, "f", "eV/Å", "forces of the reported prediction", calculator="forces"),
    Column("forces_model", _A3, "f", "eV/Å", "the model's own forces (where the prediction is corrected)"),
    Column("forces_sigma", _A3, "f", "eV/Å", "sigma of each force component from the force error model "
           "(calib.uq.errormodel)", calculator="forces_uncertainty"),
    Column("forces_sigma_llpr", _A3, "f", "eV/Å", "calibrated LLPR sigma of each force component (force_mode "
           "exact or approx)"),
    Column("forces_low", _A3, "f", "eV/Å", "lower end of the conformal interval for the reference force "
           "component"),
    Column("forces_high", _A3, "f", "eV/Å", "upper end of the conformal interval for the reference force "
           "component"),
    Column("max_force", _S, "f", "eV/Å", "largest |force component| of the reported prediction"),
    Column("max_force_sigma", _S, "f", "eV/Å", "largest force-component sigma"),
    Column("max_force_halfwidth", _S, "f", "eV/Å", "widest conformal force half-width"),
    Column("stress", _S, "f", "eV/Å^3", "stress, Voigt order xx yy zz yz xz xy", calculator="stress"),
    # domain and verdict
    Column("q_score", _S, "f", "1", "largest atomic Q residual / threshold of the Hessian's structures (> 1: out "
           "of the model's domain)"),
    Column("t2_score", _S, "f", "1", "largest atomic Hotelling T^2 / threshold of the Hessian's structures"),
    Column("domain_score", _S, "f", "1", "max(q_score, t2_score): > 1 out of the model's domain"),
    Column("force_error_bound", _S, "f", "eV/Å", "calibrated bound on the largest force-component error of the "
           "structure, at the artifact's confidence 1 - alpha (0.9)", calculator="force_error_bound"),
    Column("force_error_bound_trust", _S, "f", "eV/Å", "the same bound at the trust policy's confidence "
           "(TrustPolicy.confidence): what the verdict holds to force_tol"),
    Column("trusted", _S, "b", "", "the verdict of calib.uq.trust: every check of the trust policy passed",
           calculator="trusted"),
    Column("trust_reason", _S, "s", "", "why a structure is not trusted (' | '-joined), '' when trusted",
           calculator="trust_reason"),
    Column("trust_checks_failed", _S, "s", "", "the verdict's failed checks (domain, forces, energy, element, not "
           "checked), comma-joined"),
    Column("trust_score", _S, "f", "1", "max(domain score, bound / force_tol[, half-width per atom / "
           "energy_tol]): <= 1 exactly when trusted, +inf where a check could not be made"),
    Column("trust_notes", _S, "s", "", "information beside the verdict: elements no calibration label holds, "
           "extrapolation"),
    Column("extrapolated", _S, "b", "", "Q score above every calibration structure's: intervals extrapolated, "
           "not measured"),
    # scalar correction
    # (the calculator's results["correction"] is another quantity: the factor applied, 1 for a raw prediction)
    Column("correction", _S, "f", "1", "scalar correction c stored for the chemsys (NaN: none)"),
    Column("energy_corrected", _S, "f", "eV", "E_anchor + c (E - E_anchor) of the model's energy (NaN: no "
           "correction stored)"),
    Column("forces_corrected", _A3, "f", "eV/Å", "c * the model's forces (the model's where no correction is "
           "stored)"),
    Column("max_force_corrected", _S, "f", "eV/Å", "c * the model's largest |force component|"),
    # model internals
    Column("features", _S, "f", "1", "the model's last-layer features of the structure"),
    Column("atom_descriptors", _A, "f", "1", "the model's per-atom last-layer descriptors"),
)

BY_NAME: dict[str, Column] = {c.name: c for c in COLUMNS}


def attrs(name: str) -> dict:
    """The netCDF/xarray attributes of a variable: ``units`` (where it has one) and ``description``; {} for a
    name the schema does not hold (coordinates, bookkeeping)."""
    col = BY_NAME.get(name)
    if col is None:
        return {}
    return {**({"units": col.units} if col.units else {}), "description": col.description}


def columns(names) -> list[Column]:
    """The schema's columns of ``names``, in that order (KeyError naming any the schema lacks)."""
    missing = [n for n in names if n not in BY_NAME]
    if missing:
        raise KeyError(f"not in calib.schema: {missing}")
    return [BY_NAME[n] for n in names]
