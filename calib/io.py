"""The calib artifact: every fitted piece in one versioned netCDF file (via xarray).

Variables (units in each variable's ``units`` attribute):

========================  =====================  ===========================================
name                      dims                   meaning
========================  =====================  ===========================================
hessian                   (feature, feature_b)   H = Σ f fᵀ (feature units²)
eigenvalues               (eig)                  λ_k of H, ascending
eigenvectors              (feature, eig)         u_k as columns
readout_weight            (feature)              w of the final linear layer
alpha2, sigma2            ()                     α²_E (1) and ς²_E (feature units²): energies
force_alpha2, force_sigma2 ()                    α²_F and ς²_F: forces
force_directions          (force_direction)      eigen-directions kept by approx force σ
force_truncation_factor   ()                     bias correction of approx force σ (1)
element_reference         (element)              μ_el, eV/atom (energy labels only)
cp_<target>_quantile      ()                     conformal quantile q (1), ``alpha`` attribute
cp_<target>_scores        (cp_<target>_point)    calibration scores |error|/σ, ascending (1)
cp_<target>_class_*       (cp_<target>_class)    Mondrian classes: name, quantile, size, fallback
cp_<target>_mix_*                                environment mixture (PCA + Gaussian components)
correction_factor         (correction_chemsys)   scalar force/stress correction c (1)
correction_ci_low/high    (correction_chemsys)   its bootstrap CI (1)
correction_anchor         (correction_chemsys)   energy anchor, eV/atom (model energy)
========================  =====================  ===========================================

Conformal targets (``conformal_targets`` attribute): ``energy`` (total eV),
``energy_difference`` (eV), ``forces`` (components, eV/Å), ``force_norm``
(per-atom error norm, eV/Å).

Global attributes carry the provenance: ``schema_version``, ``calib_version``,
``model_name``, ``model_version``, ``model_fingerprint`` (SHA-256 of the
weights), ``energy_convention``, ``n_structures``, ``stage`` ("hessian" or
"calibrated"), how ς² was chosen, and creation time.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field

import numpy as np

SCHEMA_VERSION = 1


class ArtifactError(ValueError):
    """An artifact that cannot be used: unreadable, wrong schema, or another model's."""


def _xr():
    import xarray as xr

    return xr


def _write(ds, path) -> None:
    """Write atomically: a crash mid-write never leaves a half file under ``path``."""
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    ds.to_netcdf(tmp, engine="netcdf4")
    os.replace(tmp, path)


def _read(path, what: str):
    xr = _xr()
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ArtifactError(f"{what} {path} does not exist")
    try:
        return xr.load_dataset(path, engine="netcdf4")
    except Exception as exc:
        raise ArtifactError(
            f"{what} {path} could not be read as netCDF (truncated or corrupt?): {type(exc).__name__}: {exc}"
        ) from exc


@dataclass
class Artifact:
    """Fitted state: the LLPR posterior, the energy reference and provenance.

    Attributes
    ----------
    llpr : calib.llpr.LLPR
    model_info : dict — model_name, model_version, model_fingerprint, energy_convention, n_features
    readout_weight : (d,) array
    element_reference : calib.reference.ElementReference or None
    attrs : dict — provenance and notes
    conformal : dict target → ConformalCalibrator or ClassConformalCalibrator
    corrections : dict chemsys → {"c", "ci", "anchor"} (scalar correction, docs/softening.md)
    """

    llpr: object
    model_info: dict
    readout_weight: np.ndarray
    element_reference: object | None = None
    attrs: dict = field(default_factory=dict)
    conformal: dict = field(default_factory=dict)
    corrections: dict = field(default_factory=dict)

    @property
    def calibrated(self) -> bool:
        return self.attrs.get("stage") == "calibrated"

    def check_model(self, model) -> None:
        """Raise :class:`ArtifactError` unless ``model`` is the model this artifact was fitted with."""
        fp = model.fingerprint()
        if fp != self.model_info.get("model_fingerprint"):
            raise ArtifactError(
                f"artifact was fitted with {self.model_info.get('model_name')} "
                f"{self.model_info.get('model_version')} (weights {self.model_info.get('model_fingerprint', '')[:12]}), "
                f"but the model given is {model.name} {model.version} (weights {fp[:12]}); "
                "refit the artifact with this model"
            )
        mine = (self.model_info.get("feature_set", "last"), int(self.model_info.get("n_features", -1)))
        theirs = (getattr(model, "feature_set", "last"), int(model.n_features))
        if mine != theirs:
            raise ArtifactError(
                f"artifact was fitted on the {mine[0]!r} feature set ({mine[1]} features) but the model gives "
                f"{theirs[0]!r} ({theirs[1]} features); use the same feature set or refit"
            )

    # ------------------------------------------------------------------ dataset
    def to_dataset(self):
        import calib

        xr = _xr()
        L = self.llpr
        d = L.n_features
        ds = xr.Dataset(
            {
                "hessian": (("feature", "feature_b"), L.hessian_, {"units": "feature units^2",
                                                                    "description": "sum_n f_n f_n^T"}),
                "eigenvalues": (("eig",), L.eigenvalues_, {"units": "feature units^2"}),
                "eigenvectors": (("feature", "eig"), L.eigenvectors_, {"units": "1"}),
                "readout_weight": (("feature",), np.asarray(self.readout_weight, dtype=float),
                                   {"units": "eV/atom per feature unit" if self.model_info.get(
                                       "energy_convention") == "per_atom" else "eV per feature unit"}),
                "alpha2": ((), float(L.alpha2_), {"units": "1", "description": "posterior scale for energies"}),
                "force_alpha2": ((), float(getattr(L, "force_alpha2_", L.alpha2_)),
                                 {"units": "1", "description": "posterior scale for forces"}),
                "force_sigma2": ((), float(getattr(L, "force_sigma2_", L.sigma2_)),
                                 {"units": "feature units^2", "description": "regulariser for forces"}),
                "sigma2": ((), float(L.sigma2_), {"units": "feature units^2"}),
            },
            coords={"feature": np.arange(d), "eig": np.arange(d)},
        )
        if hasattr(L, "force_directions_"):
            ds["force_directions"] = (("force_direction",), np.asarray(L.force_directions_, dtype=np.int64))
            ds["force_truncation_factor"] = ((), float(L.force_truncation_factor_), {"units": "1"})
        if self.element_reference is not None:
            ref = self.element_reference
            ds["element_reference"] = (("element",), np.asarray(ref.values_, dtype=float),
                                       {"units": "eV/atom", "description": "mu_el, E_ref - E_model ~ sum n_el mu_el"})
            ds = ds.assign_coords(element=np.array(ref.elements_, dtype=str))
        for name, cal in self.conformal.items():
            for key, (dims, values, vattrs) in cal.to_variables(f"cp_{name}").items():
                ds[key] = (dims, values, vattrs)
        if self.corrections:
            chems = list(self.corrections)
            get = lambda k: np.array([float(self.corrections[c][k]) for c in chems])  # noqa: E731
            dim = ("correction_chemsys",)
            ds["correction_factor"] = (dim, get("c"), {"units": "1", "description": "forces and stress x c"})
            ds["correction_ci_low"] = (dim, np.array([self.corrections[c]["ci"][0] for c in chems]), {"units": "1"})
            ds["correction_ci_high"] = (dim, np.array([self.corrections[c]["ci"][1] for c in chems]), {"units": "1"})
            ds["correction_anchor"] = (dim, get("anchor"), {
                "units": "eV/atom", "description": "E = N*anchor + c*(E - N*anchor)"})
            ds = ds.assign_coords(correction_chemsys=np.array(chems, dtype=str))
        attrs = {
            "conformal_targets": ",".join(self.conformal),
            "schema_version": SCHEMA_VERSION,
            "calib_version": calib.__version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "n_structures": int(L.n_structures_),
            "rank": int(L.rank_),
            "regularisation_note": str(getattr(L, "regularisation_note_", "")),
        }
        attrs.update({k: v for k, v in self.model_info.items() if v is not None})
        attrs.update(self.attrs)
        ds.attrs = {k: (int(v) if isinstance(v, (bool, np.bool_)) else v) for k, v in attrs.items()}
        return ds

    @classmethod
    def from_dataset(cls, ds) -> Artifact:
        from .llpr import LLPR
        from .reference import ElementReference

        need = ["hessian", "eigenvalues", "eigenvectors", "readout_weight", "alpha2", "sigma2"]
        missing = [v for v in need if v not in ds]
        if missing:
            raise ArtifactError(f"artifact lacks variables {missing}: not a calib artifact?")
        version = int(ds.attrs.get("schema_version", -1))
        if version != SCHEMA_VERSION:
            raise ArtifactError(f"artifact schema version {version}; this calib reads version {SCHEMA_VERSION}")
        attrs = dict(ds.attrs)
        L = LLPR(energy_convention=attrs["energy_convention"])
        L.hessian_ = ds["hessian"].values.astype(np.float64)
        L.eigenvalues_ = ds["eigenvalues"].values.astype(np.float64)
        L.eigenvectors_ = ds["eigenvectors"].values.astype(np.float64)
        lam_max = L.eigenvalues_[-1] if L.eigenvalues_.size else 0.0
        L.rank_ = int(attrs.get("rank", np.sum(L.eigenvalues_ > L.rank_tol * lam_max)))
        L.n_structures_ = int(attrs.get("n_structures", 0))
        L.alpha2_ = float(ds["alpha2"].values)
        L.force_alpha2_ = float(ds["force_alpha2"].values) if "force_alpha2" in ds else L.alpha2_
        L.force_sigma2_ = float(ds["force_sigma2"].values) if "force_sigma2" in ds else L.sigma2_
        L.sigma2_ = float(ds["sigma2"].values)
        L.regularisation_note_ = attrs.get("regularisation_note", "")
        if "force_directions" in ds:
            L.force_directions_ = ds["force_directions"].values.astype(int)
            L.force_truncation_factor_ = float(ds["force_truncation_factor"].values)
        ref = None
        if "element_reference" in ds:
            ref = ElementReference.from_dict(
                dict(zip([str(e) for e in ds["element"].values], ds["element_reference"].values.astype(float))))
        conformal = {}
        for name in filter(None, str(attrs.pop("conformal_targets", "")).split(",")):
            from .conformal import ClassConformalCalibrator, ConformalCalibrator

            prefix = f"cp_{name}"
            try:
                kind = ClassConformalCalibrator if f"{prefix}_class_name" in ds else ConformalCalibrator
                conformal[name] = kind.from_variables(ds, prefix)
            except KeyError as exc:
                raise ArtifactError(f"artifact's conformal state for {name!r} is incomplete: missing {exc}") from exc
        corrections = {}
        if "correction_factor" in ds:
            for k, chem in enumerate(ds["correction_chemsys"].values):
                corrections[str(chem)] = {
                    "c": float(ds["correction_factor"].values[k]),
                    "ci": [float(ds["correction_ci_low"].values[k]), float(ds["correction_ci_high"].values[k])],
                    "anchor": float(ds["correction_anchor"].values[k])}
        info_keys = ("model_name", "model_version", "model_fingerprint", "energy_convention", "n_features",
                     "feature_set")
        model_info = {k: attrs.pop(k) for k in info_keys if k in attrs}
        return cls(llpr=L, model_info=model_info, readout_weight=ds["readout_weight"].values.astype(float),
                   element_reference=ref, attrs=attrs, conformal=conformal, corrections=corrections)

    # ------------------------------------------------------------------ files
    def save(self, path) -> None:
        _write(self.to_dataset(), path)

    @classmethod
    def load(cls, path, model=None) -> Artifact:
        """Read an artifact; with ``model``, fail unless it was fitted with that model."""
        art = cls.from_dataset(_read(path, "artifact"))
        if model is not None:
            art.check_model(model)
        return art


# --------------------------------------------------------------------------- checkpoints


def write_checkpoint(path, *, hessian, n_structures, n_batches, batch_size, force_weight,
                     input_fingerprint, model_fingerprint) -> None:
    """Save a running Hessian sum (netCDF, float64, written atomically)."""
    xr = _xr()
    ds = xr.Dataset(
        {"hessian": (("feature", "feature_b"), np.asarray(hessian, dtype=np.float64),
                     {"units": "feature units^2"})},
        attrs={"kind": "calib-hessian-checkpoint", "schema_version": SCHEMA_VERSION,
               "n_structures": int(n_structures), "n_batches": int(n_batches), "batch_size": int(batch_size),
               "force_weight": float(force_weight), "input_fingerprint": input_fingerprint,
               "model_fingerprint": model_fingerprint},
    )
    _write(ds, path)


def read_checkpoint(path) -> dict:
    ds = _read(path, "checkpoint")
    if ds.attrs.get("kind") != "calib-hessian-checkpoint":
        raise ArtifactError(f"{path} is not a calib Hessian checkpoint")
    out = {k: ds.attrs[k] for k in ("input_fingerprint", "model_fingerprint")}
    out.update({k: int(ds.attrs[k]) for k in ("n_structures", "n_batches", "batch_size")})
    out["force_weight"] = float(ds.attrs["force_weight"])
    out["hessian"] = ds["hessian"].values
    return out
