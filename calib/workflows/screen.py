"""Screening: stream candidate structures through a calibrated predictor and flag the untrustworthy.

One row per input structure, written to a netCDF file that grows batch by
batch, so that neither the input nor the results are ever held whole:

{columns}

(every variable has the dimension ``structure``; ``trusted`` is int8 on disk, a bool when read back)

The verdict of each row is the predictor's, the one trust rule of
:mod:`calib.uq.trust`: inside the model's domain (domain score ≤ 1 against the
Hessian's structures) and the calibrated bound on the largest force error within
``force_tol`` (eV/Å); with ``energy_tol`` also the energy half-width per atom (eV/atom). A structure whose elements the energy reference does not determine
has no energy interval (``energy_interval_reason`` says why) and can still be
trusted: the offset cancels in every energy difference.

Resuming: beside the results lies ``<out>.resume.json`` holding the rows
committed (after the netCDF file was synced), the settings, and a chained
SHA-256 over the structures consumed. ``resume=True`` checks both, skips the
committed structures without predicting them and writes on from the next row;
rows written after the last commit are written again with the same values, so
a run killed at any point (SIGKILL included) resumes without gaps or
duplicates. The file is netCDF-3 (64-bit offset): its records are appended
in place, with no index structures that a kill mid-write could tear.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator

import numpy as np
from ase import Atoms

from calib import schema
from calib.data.readers import count_structures, iter_structures
from calib.data.structures import structures_fingerprint
from calib.uq.trust import ENERGY_TOL, FORCE_TOL, Check, TrustPolicy
from calib.workflows.settings import SCREEN

#: the screen file's columns, in order. Their types and units are calib.schema's (one name for one quantity, as
#: in the prediction Dataset); the file stores a bool as int8 and reads it back as bool
SCREEN_COLUMNS = ("name", "chemsys", "status", "error", "trusted", "trust_reason", "n_atoms", "energy",
                  "energy_per_atom", "energy_sigma", "energy_sigma_per_atom", "max_local_sigma", "energy_centre",
                  "energy_low", "energy_high", "q_score", "max_force", "max_force_sigma", "max_force_halfwidth",
                  "force_error_bound", "energy_halfwidth", "trust_score", "extrapolated", "energy_interval_reason",
                  "correction", "energy_corrected", "t2_score", "domain_score", "trust_checks_failed",
                  "trust_notes", "prediction", "force_error_bound_trust")
#: (name, kind, units) of every column; kind "f" float64, "i" int32, "b" bool (int8 on disk), "s" text
COLUMNS = [(c.name, c.dtype, c.units) for c in schema.columns(SCREEN_COLUMNS)]
if __doc__:  # the columns of the file, from the one schema
    __doc__ = __doc__.replace("{columns}", schema.table(SCREEN_COLUMNS))
_TEXT_LEN = {"name": 128, "chemsys": 64, "status": 16, "error": 512, "trust_reason": 512,
             "energy_interval_reason": 256, "trust_checks_failed": 64, "trust_notes": 256, "prediction": 16}
STATUSES = ("trusted", "untrusted", "failed")
REASON_SEP = " | "


# --------------------------------------------------------------------------- one batch


def screen_batch(predictor, structures: list, start: int, *, forces: bool = False, batch_size: int = 16) -> dict:
    """Rows for ``structures`` (input positions ``start`` ...): column name → array (see :data:`COLUMNS`); the
    verdict is the predictor's (its :class:`calib.uq.trust.TrustPolicy`)."""
    ds = predictor.predict(structures, forces=True, force_mode="approx" if forces else "none",
                           batch_size=batch_size, progress=False)
    n = len(structures)
    rows = {}
    dtypes = {"f": float, "i": np.int32, "b": np.int8}
    for name, kind, _ in COLUMNS:
        if name in ds and kind != "s":
            rows[name] = np.asarray(ds[name].values, dtype=dtypes[kind])
        else:
            rows[name] = np.full(n, np.nan) if kind == "f" else (np.zeros(n, dtypes[kind]) if kind in "ib"
                                                                   else np.array([""] * n, dtype=object))
    for name in ("name", "chemsys", "energy_interval_reason", "trust_checks_failed", "trust_notes", "prediction"):
        if name in ds:
            rows[name] = np.asarray(ds[name].values, dtype=object)
    rows["n_atoms"] = np.asarray(ds["n_atoms"].values, dtype=np.int32)
    ok = rows["n_atoms"] > 0
    rows["energy_sigma_per_atom"] = np.where(ok, rows["energy_sigma"] / np.maximum(rows["n_atoms"], 1), np.nan)
    errors = ds["error"].values
    for k in range(n):
        if errors[k]:
            rows["status"][k], rows["error"][k], rows["trusted"][k] = "failed", str(errors[k]), 0
            continue
        rows["status"][k] = "trusted" if rows["trusted"][k] else "untrusted"
        rows["trust_reason"][k] = str(ds["trust_reason"].values[k])
    rows["structure"] = np.arange(start, start + n)
    return rows


# --------------------------------------------------------------------------- results file


class ResultsWriter:
    """Append screening rows to a netCDF-3 file with an unlimited ``structure`` dimension, and
    commit the row count to ``<path>.resume.json`` after each sync (see the module doc). An exclusive lock
    (``flock`` on ``<path>.lock``, released by the system if the process dies) keeps a second run off the
    same file."""

    def __init__(self, path, settings: dict, *, resume: bool = False, overwrite: bool = False):
        import fcntl

        self.path = os.fspath(path)
        self.journal = self.path + ".resume.json"
        self.lockfile = self.path + ".lock"
        self._lock = open(self.lockfile, "a")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            from calib.errors import OutputError

            raise OutputError(f"another calib screen is writing {self.path} (it holds {self.lockfile}); wait for it "
                              "or write to another file") from None
        try:
            self._open(settings, resume, overwrite)
        except BaseException:
            self.close()
            raise

    def _open(self, settings: dict, resume: bool, overwrite: bool) -> None:
        import netCDF4

        self.settings = settings
        self.rows, self.chain, self.complete = 0, "", False
        if resume and os.path.exists(self.path) and os.path.exists(self.journal):
            with open(self.journal) as fh:
                state = json.load(fh)
            if state.get("settings") != settings:
                diff = sorted(k for k in set(settings) | set(state.get("settings", {}))
                              if settings.get(k) != state.get("settings", {}).get(k))
                raise ValueError(f"{self.path} was written with other settings ({', '.join(diff)}); "
                                 "rerun with the same options or write to another file")
            self.rows, self.chain = int(state["rows"]), str(state["chain"])
            self.complete = bool(state.get("complete"))
            self.nc = netCDF4.Dataset(self.path, "a")
            return
        if os.path.exists(self.path) and not overwrite:
            hint = "pass resume=True to continue it or overwrite=True to replace it" if os.path.exists(self.journal) \
                else "pass overwrite=True to replace it"
            raise FileExistsError(f"{self.path} exists; {hint}")
        self.nc = netCDF4.Dataset(self.path, "w", format="NETCDF3_64BIT_OFFSET")
        self.nc.createDimension("structure", None)
        for name, n in _TEXT_LEN.items():
            self.nc.createDimension(f"{name}_strlen", n)
        v = self.nc.createVariable("structure", "i4", ("structure",))
        v.description = "position of the structure in the input stream"
        for name, kind, units in COLUMNS:
            if kind == "s":
                v = self.nc.createVariable(name, "S1", ("structure", f"{name}_strlen"))
                v._Encoding = "utf-8"
            else:
                v = self.nc.createVariable(name, {"f": "f8", "i": "i4", "b": "i1"}[kind], ("structure",),
                                           fill_value=np.nan if kind == "f" else None)
                if kind == "b":
                    v.setncattr("dtype", "bool")  # xarray decodes the int8 as bool
                elif units:
                    v.units = units
        self.nc.setncatts({k: (json.dumps(v) if isinstance(v, (dict, list, bool)) or v is None else v)
                           for k, v in settings.items()})
        self._commit()

    def write(self, rows: dict, fingerprint: str) -> None:
        """Write one batch at the next rows, sync, then commit the count and the chained input hash."""
        start = int(rows["structure"][0])
        if start != self.rows:
            raise RuntimeError(f"batch starts at row {start}, expected {self.rows}")
        sl = slice(start, start + len(rows["structure"]))
        self.nc["structure"][sl] = rows["structure"]
        for name, kind, _ in COLUMNS:
            if kind == "s":
                n = _TEXT_LEN[name]
                text = [_clip(str(t), n).decode("utf-8") for t in rows[name]]
                self.nc[name][sl] = np.array(text, dtype=f"U{n}")  # to chars by the variable's _Encoding
            else:
                self.nc[name][sl] = rows[name]
        self.nc.sync()
        self.rows = sl.stop
        self.chain = chain_hash(self.chain, fingerprint)
        self._commit()

    def finish(self) -> None:
        self.complete = True
        self._commit()
        self.close()

    def close(self) -> None:
        if getattr(self, "nc", None) is not None and self.nc.isopen():
            self.nc.close()
        if not self._lock.closed:
            os.remove(self.lockfile)  # before the unlock: a waiting run then creates its own
            self._lock.close()

    def _commit(self) -> None:
        tmp = f"{self.journal}.tmp-{os.getpid()}"
        with open(tmp, "w") as fh:
            json.dump({"rows": self.rows, "chain": self.chain, "complete": self.complete,
                       "settings": self.settings}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.journal)


def _clip(text: str, n: int) -> bytes:
    """UTF-8 bytes of ``text`` cut to at most ``n`` bytes without splitting a character."""
    raw = text.encode("utf-8")
    return raw if len(raw) <= n else raw[:n].decode("utf-8", errors="ignore").encode("utf-8")


def chain_hash(previous: str, fingerprint: str) -> str:
    return hashlib.sha256((previous + fingerprint).encode()).hexdigest()


def batch_fingerprint(structures: list) -> str:
    """Identity of one batch of input: atoms, cells and names (read errors included)."""
    names = "\0".join(f"{a.info.get('name', '')}|{a.info.get('read_error', '')}" for a in structures)
    return hashlib.sha256((structures_fingerprint(structures) + names).encode()).hexdigest()


def read_results(path):
    """The screening results at ``path`` as an xarray Dataset (text decoded, in memory)."""
    import xarray as xr

    with xr.open_dataset(path) as ds:
        return ds.load()


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- the run


def _batched(stream: Iterable, size: int) -> Iterator[list]:
    chunk = []
    for item in stream:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def screen(sources, calibration, out, *, model=None, device: str = "cpu", forces: bool = False,
           force_tol: float | None = FORCE_TOL, energy_tol: float | None = ENERGY_TOL,
           batch_size: int = SCREEN.batch_size, resume: bool = False, overwrite: bool = False, client=None,
           progress: bool = True, stop_after: int | None = None, on_commit=None,
           policy: TrustPolicy | None = None) -> dict:
    """Screen every structure of ``sources`` and write one row each to ``out`` (netCDF).

    Parameters
    ----------
    sources : files (extxyz, ASE db, any ASE-readable format), folders of such files, or Atoms.
    calibration : path of a calibrated artifact (stage "calibrated").
    out : path of the results file; it must not exist unless ``resume`` or ``overwrite``.
    model : model spec or adapter; None: the one named in the artifact.
    forces : bool — also the LLPR force σ and conformal half-widths (approximate mode); the verdict does not
        need them.
    policy : calib.uq.trust.TrustPolicy or None — the verdict's policy, validated by TrustPolicy itself (None:
        ``TrustPolicy(force_tol=force_tol, energy_tol=energy_tol)``); part of the resume settings.
    force_tol, energy_tol : float or None, eV/Å and eV/atom — a short way to a default policy with these two
        tolerances (kept for callers of calib ≤ 0.5); ignored when ``policy`` is given.
    batch_size : int — structures per batch (one row of the file is committed per batch).
    resume : bool — continue an interrupted run of the same input and settings.
    client : dask.distributed.Client or None — screen batches on its workers (calib.workflows.distributed).
    stop_after : int or None — stop after that many batches in this call (tests, time limits).
    on_commit : callable(rows) or None — called after each batch is committed (the netCDF file synced and the
        journal written) with the number of committed rows: a progress hook, and the deterministic point at
        which a test kills a run (a signal sent from here always finds exactly ``rows`` committed).

    Returns a summary: ``n_total``, ``n_trusted``, ``n_untrusted``, ``n_failed``, per chemistry
    counts, the untrusted structures per failed check (``trust_checks_failed``, :data:`CHECK_WORDS`), the output path and
    ``resumed_from`` (the rows already committed when this call started; 0 for a new file).
    """
    from tqdm.auto import tqdm

    from calib.errors import positive_int

    calibration = os.fspath(calibration)
    positive_int("batch_size", batch_size)
    policy = policy or TrustPolicy(force_tol=force_tol, energy_tol=energy_tol)  # the one validation of tolerances
    sources = [sources] if isinstance(sources, (str, os.PathLike, Atoms)) else list(sources)
    missing = [os.fspath(s) for s in sources if isinstance(s, (str, os.PathLike)) and os.fspath(s) != "-"
               and not os.path.exists(s)]
    if missing:  # a file named by the caller that is not there is an input error, not a failed row
        from calib.data.structures import StructureFileNotFound

        raise StructureFileNotFound(f"structure file not found: {', '.join(missing)}", missing[0])
    settings = {"calibration_sha256": file_sha256(calibration), "forces": int(forces),
                **{f"policy_{k}": ("none" if v is None else float(v) if not isinstance(v, bool) else int(v))
                   for k, v in policy.as_dict().items()},
                "batch_size": int(batch_size), "model": str(model or "")}
    options = dict(forces=forces, batch_size=batch_size)
    writer = ResultsWriter(out, settings, resume=resume, overwrite=overwrite)
    resumed_from = writer.rows
    try:
        own = (out, writer.journal, writer.lockfile)  # a folder holding the results: not read as candidates
        stream = _batched(iter_structures(sources, strict=False, exclude=own), batch_size)
        _skip_committed(stream, writer, out)
        total = count_structures(sources, exclude=own)
        bar = tqdm(total=total, initial=writer.rows, desc="screen", unit="structure", disable=not progress,
                   smoothing=0.1)
        if client is None:
            predictor = _predictor(calibration, model, device, policy)
            if not model:  # the model the artifact names: say which
                writer.nc.setncattr("model", f"{predictor.model.name} {os.path.basename(str(predictor.model.version))}")
            results = _serial(predictor, stream, writer, options)
        else:
            from calib.models import ModelAdapter, spec_of
            from calib.workflows.distributed import ordered_batches

            on_workers = spec_of(model) if isinstance(model, ModelAdapter) else model  # a spec travels, not weights
            results = ordered_batches(client, _screen_on_worker, stream, writer.rows,
                                      os.path.abspath(calibration), on_workers, device, policy, options)
        _commit(results, writer, bar, on_commit, stop_after)
        bar.close()
    finally:
        writer.close()
    done = summarize(out) if writer.complete else {"output": os.fspath(out), "complete": False, "rows": writer.rows}
    return {**done, "resumed_from": resumed_from}


def _skip_committed(stream, writer, out) -> None:
    """Re-read (not predict) the input's structures that ``writer`` has committed, and raise ValueError when
    they are not the ones the file was started on (a resume must continue the same input)."""
    chain, skipped = "", 0
    while skipped < writer.rows:
        batch = next(stream, None)
        if batch is None:
            raise ValueError(f"the input has fewer structures ({skipped}) than {out} has committed rows "
                             f"({writer.rows}): not the same input")
        chain = chain_hash(chain, batch_fingerprint(batch))
        skipped += len(batch)
    if skipped != writer.rows or chain != writer.chain:
        raise ValueError(f"the input differs from the one {out} was started on (its first {writer.rows} "
                         "structures do not match); pass the same files or write to another file")


def _commit(results, writer, bar, on_commit, stop_after: int | None) -> None:
    """Write each (batch, rows) of ``results`` as it arrives, in order; finish the file unless ``stop_after``
    batches stopped the run first."""
    done = 0
    for batch, rows in results:
        writer.write(rows, batch_fingerprint(batch))
        if on_commit is not None:
            on_commit(writer.rows)
        bar.update(len(batch))
        done += 1
        if stop_after is not None and done >= stop_after:
            return
    writer.finish()


def _serial(predictor, stream, writer, options):
    start = writer.rows
    for batch in stream:
        yield batch, screen_batch(predictor, batch, start, **options)
        start += len(batch)


def _screen_on_worker(calibration, model, device, policy, options, batch, start):
    """One batch on a dask worker, with the predictor that worker keeps (calib.workflows.distributed)."""
    from calib.workflows.distributed import worker_predictor

    return screen_batch(worker_predictor(calibration, model, device, policy), batch, start, **options)


def _predictor(calibration, model, device, policy):
    from calib.predictor import CalibratedPredictor

    return CalibratedPredictor.from_file(calibration, model=model, device=device, trust=policy)


#: the words of each failed check in the summary's counts (calib.uq.trust.Check.words)
CHECK_WORDS = {c.value: c.words for c in Check}


def summarize(path) -> dict:
    """Counts of a results file: totals, per chemistry, and the commonest reasons."""
    ds = read_results(path)
    status = ds["status"].values.astype(str)
    chem = ds["chemsys"].values.astype(str)
    per_chem: dict = {}
    for c, s in zip(chem, status):
        per_chem.setdefault(c or "(failed)", dict.fromkeys(STATUSES, 0))[s] += 1
    reasons: dict = {}
    checks = ds["trust_checks_failed"].values.astype(str) if "trust_checks_failed" in ds else [""] * len(status)
    for s, failed in zip(status, checks):
        if s == "untrusted":
            for key in {CHECK_WORDS.get(c, c) for c in failed.split(",") if c}:
                reasons[key] = reasons.get(key, 0) + 1
    return {"output": os.fspath(path), "complete": True, "n_total": int(len(status)),
            "n_trusted": int((status == "trusted").sum()), "n_untrusted": int((status == "untrusted").sum()),
            "n_failed": int((status == "failed").sum()), "by_chemsys": per_chem,
            "reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1]))}
