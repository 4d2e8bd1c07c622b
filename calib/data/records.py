"""JSON-ready records of a predictor Dataset: what ``calib predict --json`` prints (under ``records``)."""

from __future__ import annotations

import numpy as np


def to_records(ds, structures=None) -> list[dict]:
    """One JSON-ready record per structure of a predictor Dataset, in input order.

    Keys: ``index``, ``name``, ``chemsys``; the columns of :mod:`calib.schema` marked ``record`` (their names,
    units and the rule for when each appears are there: ``energy``, ``energy_sigma`` (eV), ``max_force`` (eV/Å),
    ``trusted``, ...); and the composites of :func:`_composite`: ``energy_interval`` [low, high] (eV; None with
    ``energy_interval_reason`` where the element reference does not determine the structure's shift),
    ``energy_offsets_u``, ``trust_checks_failed`` (a list), ``correction``, ``energy_corrected`` (eV),
    ``max_force_corrected`` (eV/Å). A skipped structure carries ``error`` instead of numbers (and its chemsys
    when ``structures`` are given and it can be formed).
    """
    from calib.data.structures import chemsys as get_chemsys
    from calib.schema import record_columns

    plain = [c for c in record_columns() if c.name in ds]
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
        for col in plain:  # the schema's plain keys (calib.schema.Column.record)
            values = ds[col.name].values
            if col.in_record(values, k):
                rec[col.name] = col.value(values, k)
        _composite(rec, ds, k)
        out.append(rec)
    return out


def _composite(rec: dict, ds, k: int) -> None:
    """The record keys made of several variables or of a list: ``energy_interval`` [low, high],
    ``energy_offsets_u``, ``trust_checks_failed`` and the scalar-correction group."""
    if "energy_low" in ds:
        lo, hi = float(ds["energy_low"].values[k]), float(ds["energy_high"].values[k])
        reason = str(ds["energy_interval_reason"].values[k]) if "energy_interval_reason" in ds else ""
        rec["energy_interval"] = None if reason or not np.isfinite(lo) else [lo, hi]
    if "energy_reference_u" in ds:
        rec["energy_offsets_u"] = [x for x in str(ds["energy_reference_u"].values[k]).split(", ") if x]
    if "trusted" in ds and "trust_checks_failed" in ds:
        rec["trust_checks_failed"] = [c for c in str(ds["trust_checks_failed"].values[k]).split(",") if c]
    if "correction" in ds and np.isfinite(ds["correction"].values[k]):
        rec["correction"] = float(ds["correction"].values[k])
        rec["energy_corrected"] = float(ds["energy_corrected"].values[k])
        if "max_force_corrected" in ds:
            rec["max_force_corrected"] = float(ds["max_force_corrected"].values[k])
