"""JSON-ready records of a predictor Dataset: what ``calib predict --json`` prints (under ``records``)."""

from __future__ import annotations

import numpy as np


def to_records(ds, structures=None) -> list[dict]:
    """One JSON-ready record per structure of a predictor Dataset, in input order.

    Keys: ``index``, ``name``, ``chemsys``, ``n_atoms``, ``energy``, ``energy_per_atom``,
    ``energy_sigma`` and, when present, ``energy_shift``, ``energy_interval`` [low, high] (eV; None with
    ``energy_interval_reason`` where the element reference does not determine the structure's shift),
    ``energy_class``, ``max_force``, ``max_force_sigma``, ``max_force_halfwidth`` (eV/Å),
    ``correction``, ``energy_corrected`` (eV), ``max_force_corrected``. A skipped structure
    carries ``error`` instead of numbers (and its chemsys when ``structures`` are given and it
    can be formed).
    """
    from calib.data.structures import chemsys as get_chemsys

    scalar = ["energy", "energy_per_atom", "energy_sigma", "max_local_sigma", "energy_shift"]
    optional = ["energy_sigma_llpr", "energy_model", "domain_score"]  # present where known
    optional_f = ["max_force", "max_force_sigma", "max_force_halfwidth"]
    out = []
    for k, idx in enumerate(ds["structure"].values.tolist()):
        rec = {"index": int(idx), "name": str(ds["name"].values[k]), "chemsys": str(ds["chemsys"].values[k])}
        err = str(ds["error"].values[k])
        if err:
            rec["chemsys"] = None
            if structures is not None:
                try:
                    rec["chemsys"] = get_chemsys(structures[idx])
                except Exception:  # e.g. unknown element symbols
                    pass
            rec["error"] = err
            out.append(rec)
            continue
        rec["n_atoms"] = int(ds["n_atoms"].values[k])
        if "prediction" in ds:
            rec["prediction"] = str(ds["prediction"].values[k])
        for key in scalar:
            if key in ds:
                rec[key] = float(ds[key].values[k])
        for key in optional:
            if key in ds and np.isfinite(ds[key].values[k]):
                rec[key] = float(ds[key].values[k])
        if "energy_low" in ds:
            lo, hi = float(ds["energy_low"].values[k]), float(ds["energy_high"].values[k])
            reason = str(ds["energy_interval_reason"].values[k]) if "energy_interval_reason" in ds else ""
            rec["energy_interval"] = None if reason or not np.isfinite(lo) else [lo, hi]
            if reason:
                rec["energy_interval_reason"] = reason
        if "energy_reference_u" in ds:
            rec["energy_offsets_u"] = [x for x in str(ds["energy_reference_u"].values[k]).split(", ") if x]
        if "energy_class" in ds:
            rec["energy_class"] = str(ds["energy_class"].values[k])
        for key in optional_f:
            if key in ds:
                rec[key] = float(ds[key].values[k])
        for key in ("force_error_bound", "energy_halfwidth", "trust_score"):
            if key in ds and np.isfinite(ds[key].values[k]):
                rec[key] = float(ds[key].values[k])
        if "trusted" in ds:
            rec["trusted"] = bool(ds["trusted"].values[k])
            rec["trust_reason"] = str(ds["trust_reason"].values[k])
            rec["extrapolated"] = bool(ds["extrapolated"].values[k])
            if "trust_checks_failed" in ds:
                rec["trust_checks_failed"] = [c for c in str(ds["trust_checks_failed"].values[k]).split(",") if c]
            if "trust_notes" in ds and str(ds["trust_notes"].values[k]):
                rec["trust_notes"] = str(ds["trust_notes"].values[k])
        if "correction" in ds and np.isfinite(ds["correction"].values[k]):
            rec["correction"] = float(ds["correction"].values[k])
            rec["energy_corrected"] = float(ds["energy_corrected"].values[k])
            if "max_force_corrected" in ds:
                rec["max_force_corrected"] = float(ds["max_force_corrected"].values[k])
        out.append(rec)
    return out
