"""The calib artifact: every fitted piece in one versioned netCDF file (via xarray).

The artifact only assembles: each piece writes and reads its own variables
(``to_variables`` / ``from_variables``), and :data:`PIECES` lists them once (one :class:`Piece` each: the
field, the class, the prefix, how to tell the file holds it): :class:`calib.uq.llpr.LLPR` (always),
:class:`calib.uq.reference.ElementReference`, :class:`calib.uq.conformal.ConformalCalibrator` (one per
target, prefixed ``cp_<target>``), the difference models, :class:`calib.softening.correction.ScalarCorrection`,
the domain detector and the error models.

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
cp_<target>_quantile      ()                     conformal quantile q (1); attributes ``alpha``,
                                                 ``classes`` (none, element, chemsys, mixture)
cp_<target>_scores        (cp_<target>_point)    calibration scores |error|/σ, ascending (1)
cp_<target>_class_*       (cp_<target>_class)    Mondrian classes: name, quantile, size, fallback
cp_<target>_mix_*                                environment mixture (PCA + Gaussian components)
correction_factor         (correction_chemsys)   scalar force/stress correction c (1)
correction_ci_low/high    (correction_chemsys)   its bootstrap CI (1)
correction_anchor         (correction_chemsys)   energy anchor, eV/atom (model energy)
difference_<m>_beta       ()                     energy-difference variance model ``raw`` or
difference_<m>_kappa2     ()                     ``corrected``: β (1), κ² (1), τ² (eV²),
difference_<m>_tau2       ()                     see calib.uq.differences
element_reference_basis   (element_basis, element)  span of the calibration compositions (1)
ood_mean, ood_components  (ood_dim), (ood_component, ood_dim)  Q-residual PCA of the per-atom
ood_threshold             ()                     descriptors of the Hessian's structures (calib.uq.ood)
force_error_kappa1/2      ()                     force error model of the trust verdict:
force_error_tau           ()                     σ_i² = κ₁² F_i² + κ₂² F_rms² + τ² (τ in eV/Å) and the
force_error_quantile      ()                     conformal quantile of its structure bound (calib 0.5)
errmodel_forces_*                                the force-component error model (calib.uq.errormodel):
errmodel_energy_*                                GLM coefficients, standardisation; the energy model
errmodel_bound_quantile   ()                     the structure force bound's conformal quantile (1) and
errmodel_bound_scores     (errmodel_bound_structure)  its cross-fitted scores
errmodel_elements         (errmodel_element)     atomic numbers of the calibration force labels
element_reference_leverage (element, element_b)  (XᵀX)⁺ of the calibration compositions (reference leverage)
calibration_structure_key (calibration_structure)  content fingerprint of each calibration structure
                                                 (calib.data.labelers.structure_key: numbers, positions
                                                 and cell to 1e-6 Å), covered by the checksum; ``calib
                                                 evaluate`` counts its inputs among them (since calib 0.6)
========================  =====================  ===========================================

Conformal targets (``conformal_targets`` attribute): see :mod:`calib.uq.targets`.

Global attributes carry the provenance: ``schema_version``, ``calib_version``,
``model_name``, ``model_version``, ``model_fingerprint`` (SHA-256 of the
weights), ``energy_convention``, ``feature_set``, ``n_structures``, ``stage``
(``"hessian"``: H only; ``"calibrated"``: α², ς², reference and conformal
state fitted), how ς² was chosen, and creation time.

Schema history: version 1 (calib 0.1.0) kept the conformal class setting in
one artifact attribute; version 2 stores it with each target.
:func:`upgrade` turns a version-1 dataset into version 2 on load.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from calib.data.ncio import ArtifactError, read, write_atomic
from calib.softening.correction import ScalarCorrection
from calib.uq.conformal import ConformalCalibrator
from calib.uq.differences import DifferenceModels, DifferenceVarianceModel
from calib.uq.errormodel import ErrorModels
from calib.uq.llpr import LLPR
from calib.uq.ood import QResidualDetector
from calib.uq.reference import ElementReference
from calib.uq.targets import ConformalSet
from calib.uq.trust import ForceErrorModel

__all__ = ["Artifact", "ArtifactError", "SCHEMA_VERSION", "STAGES", "upgrade"]

SCHEMA_VERSION = 2
CHECKSUM_SCHEME = 2  # 1 (calib 0.4): data variables; 2: and every global attribute but the creation time
STAGES = ("hessian", "calibrated")
_MODEL_KEYS = ("model_name", "model_version", "model_fingerprint", "energy_convention", "n_features", "feature_set")


@dataclass(frozen=True)
class Piece:
    """One fitted piece the artifact holds, as its registry entry (like xarray's backend entrypoints): the
    :class:`Artifact` field it fills, the class that writes and reads its variables (``to_variables`` /
    ``from_variables``), the variable ``prefix``, the variable whose presence says the file holds it
    (``marker``; None: always read) and, for a piece of named parts (a conformal calibrator per target), the
    global attribute that lists the names (``names_attr``; each part's prefix is ``prefix + "_" + name``) and the
    typed container the parts make (``parts``: built from a dict name → part, with ``items()``). ``prefixed``:
    the class's methods take the prefix."""

    field: str
    cls: type
    prefix: str = ""
    marker: str | None = None
    names_attr: str = ""
    prefixed: bool = True
    parts: Callable | None = None

    def present(self, ds) -> bool:
        """Whether the dataset ``ds`` holds this piece."""
        if self.names_attr:
            return bool(str(ds.attrs.get(self.names_attr, "")))
        if hasattr(self.cls, "present"):
            return bool(self.cls.present(ds))
        return self.marker is None or self.marker in ds

    def _args(self, name: str = "") -> tuple:
        return ((f"{self.prefix}_{name}" if name else self.prefix),) if self.prefixed else ()

    def to_variables(self, value) -> dict:
        """netCDF variables (name -> (dims, values, attrs)) of the piece's fitted ``value``."""
        if self.names_attr:
            return {k: v for name, part in value.items() for k, v in part.to_variables(*self._args(name)).items()}
        return value.to_variables(*self._args())

    def names(self, value) -> dict:
        """The global attribute that lists a named piece's parts (``names_attr`` → "name,name"); {} for another."""
        return {self.names_attr: ",".join(name for name, _ in value.items())} if self.names_attr else {}

    def from_variables(self, ds):
        """The piece read back from ``ds`` (its ``parts`` container for a named piece)."""
        if self.names_attr:
            names = filter(None, str(ds.attrs.get(self.names_attr, "")).split(","))
            return self.parts({name: self.cls.from_variables(ds, *self._args(name)) for name in names})
        return self.cls.from_variables(ds, *self._args())


#: every fitted piece besides the LLPR posterior, in the order the file holds them; a new piece is one entry here
PIECES: tuple[Piece, ...] = (
    Piece("element_reference", ElementReference, marker="element_reference", prefixed=False),
    Piece("conformal", ConformalCalibrator, "cp", names_attr="conformal_targets", parts=ConformalSet),
    Piece("differences", DifferenceVarianceModel, "difference", names_attr="difference_models",
          parts=DifferenceModels.from_parts),
    Piece("corrections", ScalarCorrection, prefixed=False),
    Piece("ood", QResidualDetector, "ood", marker="ood_threshold"),
    Piece("force_error", ForceErrorModel, "force_error", marker="force_error_quantile"),
    Piece("error_models", ErrorModels, prefixed=False),
)


@dataclass
class Artifact:
    """Fitted state: the LLPR posterior, energy reference, conformal state, corrections, provenance.

    Attributes
    ----------
    llpr : calib.uq.llpr.LLPR
    model_info : dict — model_name, model_version, model_fingerprint, energy_convention,
        n_features, feature_set
    readout_weight : (d,) array — w of the final linear layer
    stage : "hessian" | "calibrated"
    element_reference : calib.uq.reference.ElementReference or None
    conformal : calib.uq.targets.ConformalSet — one calib.uq.conformal.ConformalCalibrator per target
        (``conformal.forces``, ...; a dict target → calibrator given here is made one)
    differences : calib.uq.differences.DifferenceModels — the ``raw`` and ``corrected`` energy-difference
        variance models (a dict "raw" | "corrected" → model given here is made one)
    corrections : calib.softening.correction.ScalarCorrection (per chemsys c, its CI, anchor)
    ood : calib.uq.ood.QResidualDetector or None — the domain detector (the Hessian's structures)
    force_error : calib.uq.trust.ForceErrorModel or None — the force bound of a calib 0.5 artifact
    error_models : calib.uq.errormodel.ErrorModels or None — force and energy σ, the force bound (calib ≥ 0.6)
    calibration_keys : list of str or None — the content fingerprints of the calibration structures
        (None: an artifact calibrated before calib 0.6, or a Hessian)
    attrs : dict — provenance and notes
    """

    llpr: LLPR
    model_info: dict
    readout_weight: np.ndarray
    stage: str = "hessian"
    element_reference: ElementReference | None = None
    conformal: ConformalSet = field(default_factory=ConformalSet)
    differences: DifferenceModels = field(default_factory=DifferenceModels)
    corrections: ScalarCorrection = field(default_factory=ScalarCorrection)
    ood: QResidualDetector | None = None
    force_error: ForceErrorModel | None = None
    error_models: ErrorModels | None = None
    attrs: dict = field(default_factory=dict)
    calibration_keys: list | None = None

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ArtifactError(f"unknown artifact stage {self.stage!r}; expected one of {STAGES}")
        if not isinstance(self.conformal, ConformalSet):
            self.conformal = ConformalSet(self.conformal)
        if not isinstance(self.differences, DifferenceModels):
            self.differences = DifferenceModels.from_parts(self.differences)

    @property
    def calibrated(self) -> bool:
        return self.stage == "calibrated"

    def replace(self, **changes) -> Artifact:
        """A new artifact with some fields replaced (the others shared, as in ``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    def with_corrections(self, corrections: ScalarCorrection) -> Artifact:
        """A new artifact with these scalar corrections added (replacing the same chemsys)."""
        return self.replace(corrections=self.corrections.merged(corrections))

    def check_model(self, model) -> None:
        """Raise :class:`ArtifactError` unless ``model`` is the model this artifact was fitted with."""
        from calib.models import model_hint

        fp = model.fingerprint()
        if fp != self.model_info.get("model_fingerprint"):
            raise ArtifactError(
                f"artifact was fitted with {self.model_info.get('model_name')} "
                f"{self.model_info.get('model_version')} (weights {self.model_info.get('model_fingerprint', '')[:12]}), "
                f"but the model given is {model.name} {model.version} (weights {fp[:12]}); "
                f"pass the model it was fitted with (--model {model_hint(self.model_info)} on the command line) or refit "
                "the artifact with this one"
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
        import xarray as xr

        import calib

        variables = dict(self.llpr.to_variables())
        variables["readout_weight"] = (("feature",), np.asarray(self.readout_weight, dtype=float), {
            "units": "eV/atom per feature unit" if self.model_info.get("energy_convention") == "per_atom"
            else "eV per feature unit"})
        for piece in PIECES:
            value = getattr(self, piece.field)
            if value is not None:
                variables.update(piece.to_variables(value))
        if self.calibration_keys is not None:
            variables["calibration_structure_key"] = (
                ("calibration_structure",), np.array([str(k) for k in self.calibration_keys], dtype=object),
                {"description": "content fingerprint of each calibration structure (numbers, positions and cell "
                                "to 1e-6 Å; calib.data.labelers.structure_key)"})
        coords = {k: variables.pop(k) for k in ("element", "correction_chemsys") if k in variables}
        d = self.llpr.n_features
        ds = xr.Dataset(variables, coords={"feature": np.arange(d), "eig": np.arange(d), **coords})
        attrs = {"created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **self.attrs,
                 **self.llpr.to_attrs(), **{k: v for k, v in self.model_info.items() if v is not None},
                 **{k: v for piece in PIECES for k, v in piece.names(getattr(self, piece.field)).items()},
                 "stage": self.stage,
                 "schema_version": SCHEMA_VERSION, "calib_version": calib.__version__}
        ds.attrs = {k: (int(v) if isinstance(v, (bool, np.bool_)) else v) for k, v in attrs.items()}
        ds.attrs["checksum_scheme"] = CHECKSUM_SCHEME
        ds.attrs["data_sha256"] = data_checksum(ds)
        return ds

    @classmethod
    def from_dataset(cls, ds) -> Artifact:
        try:
            return cls._from_dataset(ds)
        except KeyError as exc:  # calib's variable names without calib's attributes: written by something else
            raise ArtifactError(f"artifact lacks {exc}: not a calib artifact, or written by another tool") from exc

    @classmethod
    def _from_dataset(cls, ds) -> Artifact:
        need = ["hessian", "eigenvalues", "eigenvectors", "readout_weight", "alpha2", "sigma2"]
        missing = [v for v in need if v not in ds]
        if missing:
            raise ArtifactError(f"artifact lacks variables {missing}: not a calib artifact?")
        ds = upgrade(ds)
        attrs = dict(ds.attrs)
        try:
            llpr = LLPR.from_variables(ds)
        except KeyError as exc:
            raise ArtifactError(f"artifact lacks the attribute {exc}: not a calib artifact?") from exc
        pieces = {}
        for piece in PIECES:
            if not piece.present(ds):
                continue
            try:
                pieces[piece.field] = piece.from_variables(ds)
            except KeyError as exc:
                raise ArtifactError(f"artifact's {piece.field} state is incomplete: missing {exc}") from exc
            except ValueError as exc:  # a part this calib does not know (a named piece)
                raise ArtifactError(f"artifact's {piece.field} state: {exc}") from exc
        for piece in PIECES:
            attrs.pop(piece.names_attr, None)
        model_info = {k: attrs.pop(k) for k in _MODEL_KEYS if k in attrs}
        for k in ("n_structures", "rank", "regularisation_note", "schema_version", "calib_version", "data_sha256",
                  "checksum_scheme"):
            attrs.pop(k, None)
        return cls(llpr=llpr, model_info=model_info, readout_weight=ds["readout_weight"].values.astype(float),
                   stage=str(attrs.pop("stage")), **pieces, attrs=attrs,
                   calibration_keys=([str(k) for k in ds["calibration_structure_key"].values]
                                     if "calibration_structure_key" in ds else None))

    # ------------------------------------------------------------------ files
    def save(self, path) -> None:
        """Write the artifact (netCDF, atomically)."""
        write_atomic(self.to_dataset(), path)

    @classmethod
    def load(cls, path, model=None, *, unverified: bool = False) -> Artifact:
        """Read an artifact; with ``model``, fail unless it was fitted with that model.

        The checksum (``data_sha256``) is verified: since calib 0.5 it covers the data variables and every
        global attribute but the creation time (convention, stage, model identity, targets: anything that
        changes a number); calib 0.4 covered the data variables only, and its files are verified that way.
        A file that records a ``checksum_scheme`` is verified by it whatever its ``schema_version`` says (an
        edit that sets the schema back cannot skip the check), and refused without its checksum. An artifact
        of schema ≥ 2 without a checksum is refused (:class:`ArtifactError`, naming the file): it was written
        before calib 0.4 or edited; ``unverified=True`` loads it anyway (then ``save`` it again to give it a
        checksum) once you know where it came from. A genuine schema-1 file (calib 0.1, no checksum, no
        scheme) loads with a :class:`calib.errors.CalibWarning` that it is unverified.
        """
        ds = read(path, "artifact")
        try:
            version = int(ds.attrs.get("schema_version", 0))
        except (TypeError, ValueError):
            version = 0
        stored = ds.attrs.get("data_sha256")
        scheme = ds.attrs.get("checksum_scheme")
        if stored is None and not unverified:
            if scheme is not None:  # whatever its schema says, a file that names a scheme was written with a sum
                raise ArtifactError(f"artifact {path} has no checksum (data_sha256) although it records checksum "
                                    f"scheme {scheme}: it was edited after it was saved; refit or restore it, or if "
                                    "you trust it, load it with Artifact.load(path, unverified=True) and save it "
                                    "again")
            if version >= 2:
                raise ArtifactError(f"artifact {path} has no checksum (data_sha256): written before calib 0.4 or "
                                    "edited; if you trust it, load it with Artifact.load(path, unverified=True) "
                                    "and save it again")
        if stored is None and not unverified and version == 1:  # (no schema at all: not a calib artifact, below)
            later = _newer_than_schema_1(ds)
            if later:
                raise ArtifactError(f"artifact {path} says schema 1 (calib 0.1, no checksum) but holds {later}, which "
                                    "calib 0.1 never wrote: it was edited; refit or restore it")
            import warnings

            from calib.errors import CalibWarning

            warnings.warn(f"artifact {path} is unverified: schema {version} (calib 0.1) files carry no checksum, so "
                          "a change to it cannot be detected; save it again (Artifact.load(path).save(new)) to give "
                          "it one", CalibWarning, stacklevel=2)
        if stored is not None and str(stored) != data_checksum(ds):
            raise ArtifactError(f"artifact {path} is corrupt: its contents no longer match the checksum written "
                                "with them (changed or damaged after it was saved); refit or restore it")
        try:
            art = cls.from_dataset(ds)
        except ArtifactError as exc:
            raise ArtifactError(f"{path}: {exc}") from None
        if model is not None:
            art.check_model(model)
        return art


# --------------------------------------------------------------------------- integrity


def _newer_than_schema_1(ds) -> str:
    """What in ``ds`` only calib ≥ 0.2 writes ("" for a genuine calib 0.1 file): a later calib_version, or
    variables and attributes that came after schema 1."""
    version = str(ds.attrs.get("calib_version", "0.1"))
    if not version.startswith("0.1"):
        return f"calib_version {version}"
    later = [v for v in ("ood_threshold", "force_error_quantile", "element_reference_basis", "correction_domain_q")
             if v in ds]
    later += [f"the attribute {a}" for a in ("difference_models", "checksum_scheme") if a in ds.attrs]
    return ", ".join(later)



def _canonical(value) -> bytes:
    """Bytes of a variable's values or an attribute that survive a netCDF round trip unchanged:
    numbers as float64, text as UTF-8."""
    a = np.asarray(value)
    if a.dtype.kind in "biuf":
        return np.ascontiguousarray(a, dtype="<f8").tobytes() + repr(a.shape).encode()
    return "\x1f".join(map(str, a.ravel().tolist())).encode("utf-8") + repr(a.shape).encode()


def data_checksum(ds) -> str:
    """SHA-256 over an artifact: data variables and coordinates (names, values, attributes, in name order) and,
    from checksum scheme 2 (calib 0.5) on, every global attribute but ``created`` and the checksum itself."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(map(str, ds.variables)):
        var = ds.variables[name]
        h.update(name.encode() + b"\x00" + _canonical(var.values))
        for key in sorted(k for k in var.attrs if not k.startswith("_")):
            h.update(key.encode() + b"=" + _canonical(var.attrs[key]))
    if int(ds.attrs.get("checksum_scheme", 1)) >= 2:
        for key in sorted(k for k in ds.attrs if k not in ("created", "data_sha256")):
            h.update(b"attr:" + key.encode() + b"=" + _canonical(ds.attrs[key]))
    return h.hexdigest()


# --------------------------------------------------------------------------- schema upgrades


def _upgrade_1_to_2(ds):
    """Version 1 kept the class setting of every conformal target in the artifact attribute
    ``conformal_classes`` (K, element, chemsys or none; energy differences always global)."""
    ds = ds.copy()
    setting = str(ds.attrs.pop("conformal_classes", "none"))
    for name in filter(None, str(ds.attrs.get("conformal_targets", "")).split(",")):
        q = ds[f"cp_{name}_quantile"]
        kind = "none"
        if f"cp_{name}_class_name" in ds:
            kind = "mixture" if q.attrs.get("classes_from") == "mixture" else setting
            if kind == "mixture":
                ds[f"cp_{name}_mix_threshold"].attrs["n_classes"] = int(q.attrs.get("n_classes", 8))
        q.attrs["classes"] = kind
        q.attrs.pop("classes_from", None)
    ds.attrs.setdefault("stage", "calibrated" if ds.attrs.get("conformal_targets") else "hessian")
    ds.attrs["schema_version"] = 2
    return ds


_UPGRADES = {1: _upgrade_1_to_2}


def upgrade(ds):
    """The dataset of an older artifact, brought to :data:`SCHEMA_VERSION` (the input is not changed)."""
    if "schema_version" not in ds.attrs:
        raise ArtifactError("artifact lacks the attribute 'schema_version': not a calib artifact, or written by "
                            "another tool")
    version = int(ds.attrs["schema_version"])
    if version > SCHEMA_VERSION or (version < SCHEMA_VERSION and version not in _UPGRADES):
        raise ArtifactError(f"artifact schema version {version}; this calib reads versions "
                            f"{sorted(_UPGRADES)} and {SCHEMA_VERSION}")
    while version < SCHEMA_VERSION:
        ds = _UPGRADES[version](ds)
        version = int(ds.attrs["schema_version"])
    return ds
