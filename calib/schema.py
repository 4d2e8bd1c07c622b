"""The output schema: every quantity calib reports, named, typed and with its unit, in one place.

The prediction Dataset (:class:`calib.predictor.CalibratedPredictor`) takes its variables' ``units`` and
``description`` attributes from here, the screen file (:mod:`calib.workflows.screen`) its columns, their types and
units, and the ASE calculator (:mod:`calib.calculator`) the ``results`` keys it fills from the Dataset
(``calculator``: the key, where it differs from the name or where the ecosystem has a convention). One name is one
quantity in every output: ``trusted`` is a bool and ``trust_reason`` its reason wherever they appear. Two more
tables declare the variables of the energy differences against one structure (:data:`DIFFERENCES`,
:meth:`calib.predictor.CalibratedPredictor.energy_differences`) and of an NEB band (:data:`BAND`,
:func:`calib.workflows.neb.band`, whose ``energy`` is E_i − E_0 along the path: its own table, its own names).

Energies are total (eV) unless the name says per atom; forces eV/Å; stress eV/Å³; scores and ratios "1"; ""
for text and booleans.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Column:
    """One reported quantity. ``dims``: "structure" (one value per structure), "atom" (per atom) or "atom3" (per
    atom and Cartesian component); in :data:`BAND`, the band's dimensions joined by commas ("variant,image");
    ``dtype``: "f" float, "i" integer, "b" bool, "s" text; ``units`` as above; ``calculator``: its key in the ASE
    calculator's ``results`` (None: not there); ``record``: when it is a key of the JSON records of ``calib
    predict`` (:func:`calib.data.records.to_records`): "always" where the Dataset has it, "finite" where its value
    is finite, "text" where it is not empty, None: not a plain key (composite keys, e.g. ``energy_interval``, are
    made in records.py)."""

    name: str
    dims: str
    dtype: str
    units: str
    description: str
    calculator: str | None = None
    record: str | None = None
    extra_dim: str = ""  # a further dimension of the variable (stress: voigt; features: feature)

    def value(self, values, k: int):
        """Row ``k`` of ``values`` as a plain Python value (float, int, bool, str; an array per atom); None for
        a float that is NaN (missing)."""
        if self.dims != _S:
            return np.asarray(values).copy()
        x = values[k]
        if np.ndim(x):  # a vector per structure (stress)
            return np.asarray(x).copy()
        if self.dtype == "f":
            return None if np.isnan(x) else float(x)
        return {"i": int, "b": bool, "s": str}[self.dtype](x)

    def in_record(self, values, k: int) -> bool:
        """Whether row ``k`` is a key of the JSON record (``record``)."""
        if self.record == "finite":
            return bool(np.isfinite(values[k]))
        return self.record == "always" or (self.record == "text" and bool(str(values[k])))


_S, _A, _A3 = "structure", "atom", "atom3"

COLUMNS: tuple[Column, ...] = (
    # identity
    Column("name", _S, "s", "", "info['name'] or the formula"),
    Column("chemsys", _S, "s", "", "elements, ordered by electronegativity"),
    Column("error", _S, "s", "", "why the structure could not be predicted ('' when it was)"),
    Column("source", _S, "s", "", "file:frame the structure was read from ('' for objects)"),
    Column("status", _S, "s", "", "screen rows: trusted, untrusted or failed"),
    Column("n_atoms", _S, "i", "1", "number of atoms", record="always"),
    Column("prediction", _S, "s", "", "which prediction energy, forces, sigma, intervals and the verdict "
           "describe: raw or corrected", calculator="prediction", record="always"),
    # energies
    Column("energy", _S, "f", "eV", "total energy of the reported prediction (the model's, or scalar-corrected: "
           "see prediction)", calculator="energy", record="always"),
    Column("energy_per_atom", _S, "f", "eV/atom", "energy / n_atoms", record="always"),
    Column("energy_model", _S, "f", "eV", "the model's own total energy (where the prediction is corrected)",
           calculator="uncorrected_energy", record="finite"),
    Column("energy_sigma", _S, "f", "eV", "sigma of the total energy from the energy error model "
           "(calib.uq.errormodel)", calculator="energy_uncertainty", record="always"),
    Column("energy_sigma_per_atom", _S, "f", "eV/atom", "energy_sigma / n_atoms"),
    Column("energy_sigma_llpr", _S, "f", "eV", "calibrated LLPR sigma of the total energy", record="finite"),
    Column("energy_disagreement", _S, "f", "eV/atom", "the committee model's energy minus the model's, per atom, "
           "less the per-element shift fitted to that difference on the calibration structures (an input of the "
           "energy sigma; with a committee calibration)", record="finite"),
    Column("local_energy_sigma", _A, "f", "eV", "LLPR sigma of the atom's energy contribution (local prediction "
           "rigidity)", calculator="energies_uncertainty"),
    Column("atom_force_error_bound", _A, "f", "eV/Å", "the atom's share of force_error_bound: the bound times "
           "the atom's largest force-component sigma over the structure's largest (its largest is the bound)",
           calculator="forces_error_bound"),
    Column("max_local_sigma", _S, "f", "eV", "largest per-atom energy sigma of the structure", record="always"),
    Column("energy_shift", _S, "f", "eV", "per-element reference sum_el n_el mu_el fitted at calibration",
           calculator="energy_shift", record="always"),
    Column("energy_centre", _S, "f", "eV", "energy + energy_shift: the model's estimate of the reference code's "
           "total energy", calculator="energy_centre"),
    Column("energy_reference_u", _S, "s", "", "elements whose GGA+U offset the energy shift used (Materials "
           "Project's U on oxides and fluorides of Co, Cr, Fe, Mn, Mo, Ni, V, W), '' for none"),
    Column("energy_halfwidth", _S, "f", "eV", "conformal half-width of the total energy (with or without an "
           "energy interval)", record="finite"),
    Column("energy_low", _S, "f", "eV", "lower end of the conformal interval for the reference-code total "
           "energy"),
    Column("energy_high", _S, "f", "eV", "upper end of the conformal interval for the reference-code total "
           "energy"),
    Column("energy_interval_reason", _S, "s", "", "why there is no absolute energy interval ('' when there is)",
           record="text"),
    Column("energy_class", _S, "s", "", "class of the energy quantile: 'seen' or 'new' composition", record="always"),
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
    Column("max_force", _S, "f", "eV/Å", "largest |force component| of the reported prediction", record="always"),
    Column("max_force_sigma", _S, "f", "eV/Å", "largest force-component sigma", record="always"),
    Column("max_force_halfwidth", _S, "f", "eV/Å", "widest conformal force half-width", record="always"),
    Column("stress", _S, "f", "eV/Å^3", "stress (ASE sign convention), Voigt order xx yy zz yz xz xy",
           calculator="stress", extra_dim="voigt"),
    # domain and verdict
    Column("q_score", _S, "f", "1", "largest atomic Q residual / threshold of the Hessian's structures (> 1: out "
           "of the model's domain)"),
    Column("t2_score", _S, "f", "1", "largest atomic Hotelling T^2 / threshold of the Hessian's structures"),
    Column("domain_score", _S, "f", "1", "max(q_score, t2_score): > 1 out of the model's domain", record="finite"),
    Column("force_error_bound", _S, "f", "eV/Å", "calibrated bound on the largest force-component error of the "
           "structure, at the artifact's confidence 1 - alpha (0.9)", calculator="force_error_bound", record="finite"),
    Column("force_error_bound_trust", _S, "f", "eV/Å", "the same bound at the trust policy's confidence "
           "(TrustPolicy.confidence): what the verdict holds to force_tol"),
    Column("trusted", _S, "b", "", "the verdict of calib.uq.trust: every check of the trust policy passed",
           calculator="trusted", record="always"),
    Column("trust_reason", _S, "s", "", "why a structure is not trusted (' | '-joined), '' when trusted",
           calculator="trust_reason", record="always"),
    Column("trust_checks_failed", _S, "s", "", "the verdict's failed checks (domain, forces, energy, element, not "
           "checked), comma-joined"),
    Column("trust_score", _S, "f", "1", "max(domain score, bound / force_tol[, half-width per atom / "
           "energy_tol]): <= 1 exactly when trusted, +inf where a check could not be made", record="finite"),
    Column("trust_notes", _S, "s", "", "information beside the verdict: elements no calibration label holds, "
           "extrapolation", record="text"),
    Column("extrapolated", _S, "b", "", "Q score above every calibration structure's: intervals extrapolated, "
           "not measured", record="always"),
    # scalar correction
    # (the calculator's results["correction"] is another quantity: the factor applied, 1 for a raw prediction)
    Column("correction", _S, "f", "1", "scalar correction c stored for the chemsys (NaN: none)"),
    Column("energy_corrected", _S, "f", "eV", "E_anchor + c (E - E_anchor) of the model's energy (NaN: no "
           "correction stored)"),
    Column("forces_corrected", _A3, "f", "eV/Å", "c * the model's forces (the model's where no correction is "
           "stored)"),
    Column("max_force_corrected", _S, "f", "eV/Å", "c * the model's largest |force component|"),
    # model internals
    Column("features", _S, "f", "1", "the model's pooled last-layer features of the structure",
           extra_dim="feature"),
    Column("atom_descriptors", _A, "f", "1", "the model's per-atom last-layer descriptors", extra_dim="feature"),
    Column("structure_index", _A, "i", "", "the structure coordinate of each atom"),
    Column("numbers", _A, "i", "", "atomic numbers"),
)

#: the energy differences against one reference structure (CalibratedPredictor.energy_differences), per structure
DIFFERENCES: tuple[Column, ...] = (
    Column("energy_difference", _S, "f", "eV", "E_i - E_reference (model)"),
    Column("energy_difference_sigma_llpr", _S, "f", "eV", "calibrated LLPR sigma of the difference"),
    Column("energy_difference_sigma", _S, "f", "eV", "sigma of the difference: the variance model of "
           "calib.uq.differences (with the softening term) where the artifact has one, else LLPR alone"),
    Column("energy_difference_low", _S, "f", "eV", "lower end of the conformal interval for the reference-code "
           "difference"),
    Column("energy_difference_high", _S, "f", "eV", "upper end of the conformal interval for the reference-code "
           "difference"),
    Column("energy_difference_corrected", _S, "f", "eV", "c (E_i - E_reference), c the chemistry's scalar "
           "correction (attribute correction)"),
    Column("energy_difference_corrected_sigma", _S, "f", "eV", "sigma of the corrected difference (the corrected "
           "variance model, with the uncertainty of c)"),
    Column("energy_difference_corrected_low", _S, "f", "eV", "lower end of the conformal interval of the corrected "
           "difference"),
    Column("energy_difference_corrected_high", _S, "f", "eV", "upper end of the conformal interval of the corrected "
           "difference"),
    Column("difference_reason", _S, "s", "", "why a row has no interval (another composition than the reference "
           "structure's, skipped; '' when it has one)"),
)

_VI, _VB = "variant,image", "variant,barrier"
#: the NEB band (calib.workflows.neb.band): variants raw and corrected, images 0 … M, barriers forward, reverse, kra
BAND: tuple[Column, ...] = (
    Column("energy", _VI, "f", "eV", "E_i - E_0 (corrected: c (E_i - E_0))"),
    Column("energy_sigma", _VI, "f", "eV", "sigma of E_i - E_0 (the difference model; 0 for image 0)"),
    Column("energy_low", _VI, "f", "eV", "lower end of the conformal interval: energy - q energy_sigma"),
    Column("energy_high", _VI, "f", "eV", "upper end of the conformal interval: energy + q energy_sigma"),
    Column("covariance", "variant,image_a,image_b", "f", "eV^2", "covariance of E_a - E_0 and E_b - E_0"),
    Column("barrier_height", _VB, "f", "eV", "forward E_m - E_0, reverse E_m - E_M, KRA E_m - (E_0 + E_M)/2 (m the "
           "highest model image)"),
    Column("barrier_sigma", _VB, "f", "eV", "sqrt(a^T C a): the barrier's sigma with the band covariance"),
    Column("barrier_sigma_independent", _VB, "f", "eV", "the barrier's sigma that ignores correlations (for "
           "comparison)"),
    Column("barrier_low", _VB, "f", "eV", "lower end of the barrier's interval: barrier_height - q barrier_sigma"),
    Column("barrier_high", _VB, "f", "eV", "upper end of the barrier's interval: barrier_height + q barrier_sigma"),
    Column("quantile", "variant", "f", "1", "conformal quantile of the difference target"),
    Column("correction", "variant", "f", "1", "scalar correction c of the variant (1 for raw)"),
)

BY_NAME: dict[str, Column] = {c.name: c for c in COLUMNS + DIFFERENCES}
BAND_BY_NAME: dict[str, Column] = {c.name: c for c in BAND}
#: the columns only the screen file has (calib.workflows.screen); every other one is a prediction variable
SCREEN_ONLY = ("status", "energy_sigma_per_atom")
PREDICTION = tuple(c.name for c in COLUMNS if c.name not in SCREEN_ONLY)


def attrs(name: str, table: dict | None = None) -> dict:
    """The netCDF/xarray attributes of a variable: ``units`` (where it has one) and ``description``; {} for a
    name the schema does not hold (coordinates, bookkeeping). ``table``: :data:`BY_NAME` (the default: the
    prediction and the energy differences) or :data:`BAND_BY_NAME`."""
    col = (BY_NAME if table is None else table).get(name)
    if col is None:
        return {}
    return {**({"units": col.units} if col.units else {}), "description": col.description}


def table(names, table: dict | None = None) -> str:
    """An RST table (name, dims, units, meaning) of the columns ``names`` (of ``table``, as in :func:`attrs`):
    what the predictor's, the screen file's and the NEB band's docstrings show, so that units and meanings are
    written here only."""
    dims = {_S: "structure", _A: "atom", _A3: "(atom, component)"}
    dims_of = (lambda c: dims.get(c.dims) or (f"({c.dims.replace(',', ', ')})" if "," in c.dims  # noqa: E731
                                              else c.dims))
    rows = [(c.name, dims_of(c) if not c.extra_dim else f"({dims_of(c)}, {c.extra_dim})", c.units or "-",
             c.description) for c in columns(names, table)]
    widths = [max(len(r[i]) for r in [("variable", "dims", "units", "meaning"), *rows]) for i in range(4)]
    rule = "  ".join("=" * w for w in widths)
    fmt = "  ".join(f"{{:<{w}}}" for w in widths[:3]) + "  {}"
    return "\n".join([rule, fmt.format("variable", "dims", "units", "meaning"), rule,
                      *(fmt.format(*r) for r in rows), rule])


def record_columns() -> list[Column]:
    """The per-structure columns that are plain keys of the JSON records, in schema order."""
    return [c for c in COLUMNS if c.record is not None]


def calculator_columns() -> list[Column]:
    """The columns the ASE calculator copies into ``results`` (under ``Column.calculator``)."""
    return [c for c in COLUMNS if c.calculator is not None]


def columns(names, table: dict | None = None) -> list[Column]:
    """The schema's columns of ``names`` (of ``table``, as in :func:`attrs`), in that order (KeyError naming any
    the schema lacks)."""
    table = BY_NAME if table is None else table
    missing = [n for n in names if n not in table]
    if missing:
        raise KeyError(f"not in calib.schema: {missing}")
    return [table[n] for n in names]
