"""One resolver from a name, a file or an artifact's provenance to a model adapter.

Every route that needs a model (the command line, :meth:`calib.predictor.CalibratedPredictor.from_file`,
the dask workers, :func:`calib.workflows.hessian.build_hessian` on a cluster) goes through
:func:`resolve_model`, so the feature set an artifact was fitted on travels with it.

A :class:`ModelSpec` is what identifies a model to load: a registered name (``chgnet``, ``chgnet:VERSION``,
``mace-small``) or a model file *the user passed*, and the feature set. It is small and picklable, which
is what a dask worker receives.

Trust: a MACE ``.model`` file is a pickle, and unpickling runs code. calib loads such a file only from a
path the user gives (``--model PATH``, ``load_model(PATH)``, ``model=``). An artifact is data: when its
provenance names a model file, calib refuses to load that path and asks for ``--model`` (the artifact's
weights fingerprint is then checked against the model given).

A model *file* is routed by its content, not its name (:func:`sniff_model_file`): calib's own fine-tuned
CHGNet files carry the format tag ``calib-finetuned-chgnet`` and load with ``torch.load(weights_only=True)``
(no code runs); a CHGNet file in ``CHGNet.from_file``'s format loads the same way; anything else is read
as MACE when its pickle refers to mace's classes (found by reading the pickle's opcodes, without running
them). The adapter's ``read_as`` says which (commands print it under ``model``).

This module imports no torch at import time, so that a command can check ``--model`` before any model loads
(:func:`check_model_name`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from calib.models.base import ModelAdapter


@dataclass(frozen=True)
class ModelSpec:
    """A model to load: ``name`` (a registered name or a model file the user passed) and ``feature_set``."""

    name: str
    feature_set: str = "last"

    def load(self, device: str = "cpu") -> ModelAdapter:
        """The adapter of this spec on ``device``."""
        return load_model(self.name, device=device, feature_set=self.feature_set)


def check_model_name(spec) -> None:
    """Raise ValueError unless ``spec`` (a ``--model`` value; None passes) names a model calib could load: a
    registered name, ``chgnet:VERSION``, ``mace:NAME-OR-PATH`` or an existing file. Cheap (no torch, nothing
    loaded), so that commands refuse a bogus ``--model`` with the other parameters."""
    if spec is None or not isinstance(spec, (str, os.PathLike)):
        return
    spec = os.fspath(spec)
    name, _, version = spec.partition(":")
    if name in REGISTRY:
        return
    path = version if name == "mace" else spec
    if path in REGISTRY or os.path.isfile(path):
        return
    if os.path.isdir(path):
        raise ValueError(f"{path} is a folder, not a model file")
    if path.endswith((".model", ".pt", ".pth")) or os.sep in path:
        raise ValueError(f"model file not found: {path}")
    raise ValueError(f"unknown model {spec!r}: use {', '.join(repr(k) for k in REGISTRY)}, 'chgnet:VERSION' or a "
                     "model file (a MACE .model, a sevenn checkpoint, or a CHGNet file such as calib finetune writes)")


def sniff_model_file(path: str) -> tuple[str, dict | None, str]:
    """What the model file at ``path`` holds, read without running code: (kind, state, how it was told).

    kind is ``"chgnet"`` (``state``: the loaded dict, ``{"model": {"state_dict", "model_args"}}`` with calib's
    ``"calib"`` provenance for a fine-tuned file), ``"mace"`` (a pickled mace module: ``state`` None, it is
    loaded only by :class:`calib.models.mace.MACEAdapter`; ``calib finetune``'s carry the format tag
    ``calib-finetuned-mace`` in their ``calib_provenance`` attribute), ``"sevennet"`` or ``"unknown"``."""
    import pickle

    import torch

    from calib.models.chgnet import FINETUNED_FORMAT

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain data only
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError, ValueError, EOFError) as exc:
        state, why = None, f"{type(exc).__name__}"
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the model file: {exc}") from None
    else:
        why = ""
    if isinstance(state, dict) and isinstance(state.get("model"), dict) and "model_args" in state["model"]:
        tag = (state.get("calib") or {}).get("format") if isinstance(state.get("calib"), dict) else None
        how = (f"CHGNet (calib's format tag {tag!r})" if tag == FINETUNED_FORMAT
               else "CHGNet (CHGNet.from_file's format)")
        return "chgnet", state, how
    modules, strings = _pickle_scan(path)
    if any(m == "mace" or m.startswith("mace.") for m in modules):
        from calib.models.mace import FINETUNED_FORMAT as MACE_FORMAT

        if MACE_FORMAT in strings:
            return "mace", None, f"MACE (its pickle refers to mace's classes; calib's format tag {MACE_FORMAT!r})"
        return "mace", None, "MACE (its pickle refers to mace's classes)"
    if "model_state_dict" in strings and "reduce_hidden_to_energy.linear.weight" in strings:
        return "sevennet", None, "SevenNet (a sevenn checkpoint: model_state_dict with SevenNet's readout)"
    found = "plain data" if state is not None else (why or "unreadable")
    return "unknown", None, found


def _pickle_scan(path: str) -> tuple[set[str], set[str]]:
    """(the modules a torch file's pickle refers to (GLOBAL / STACK_GLOBAL opcodes), the strings it holds),
    read with pickletools: nothing is unpickled, no code runs."""
    import pickletools
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            name = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
            if name is None:
                return set(), set()
            data = z.read(name)
    except (zipfile.BadZipFile, OSError):
        try:
            with open(path, "rb") as fh:
                data = fh.read(1 << 24)
        except OSError:
            return set(), set()
    out, strings = set(), []
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                strings.append(str(arg))
            elif op.name == "GLOBAL":
                out.add(str(arg).split(" ")[0])
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                out.add(strings[-2])
    except Exception:  # noqa: BLE001 - a damaged pickle: whatever was found so far
        pass
    return out, set(strings)


def _chgnet(version: str, device: str, feature_set: str) -> ModelAdapter:
    from calib.models.chgnet import CHGNetAdapter

    return CHGNetAdapter(version=version or "0.3.0", device=device, feature_set=feature_set)


def _sevennet(version: str, device: str, feature_set: str) -> ModelAdapter:
    if feature_set != "last":
        raise ValueError(f"feature_set={feature_set!r}: SevenNet models have one feature set, 'last'")
    from calib.models.sevennet import PRETRAINED, SevenNetAdapter, pretrained_path

    return SevenNetAdapter(pretrained_path(version), device=device, version=version or PRETRAINED[0])


def _sevennet_file(path: str, device: str, feature_set: str) -> ModelAdapter:
    if feature_set != "last":
        raise ValueError(f"feature_set={feature_set!r}: SevenNet models have one feature set, 'last'")
    from calib.models.sevennet import SevenNetAdapter

    adapter = SevenNetAdapter(path, device=device, version=os.path.abspath(path))
    return _with_spec(adapter, ModelSpec(os.path.abspath(path)))


def _mace_small(version: str, device: str, feature_set: str) -> ModelAdapter:
    path = shipped_mace_path()
    if not os.path.exists(path):
        raise ValueError(f"the shipped small MACE model is missing ({path}); see datasets/models/mace-small")
    return _mace_file(path, "mace-small", device, feature_set)


#: name -> loader(version, device, feature_set): the models calib loads without a path from outside
#: (weights inside a wheel or shipped with calib). "chgnet:VERSION" passes VERSION to the loader.
REGISTRY: dict[str, Callable[[str, str, str], ModelAdapter]] = {"chgnet": _chgnet, "mace-small": _mace_small,
                                                                 "sevennet": _sevennet}


def shipped_mace_path() -> str:
    """Path of the small MACE model shipped with calib (datasets/models/mace-small, for tests and the demo)."""
    from calib.data.datasets import root

    return os.path.join(root(), "models", "mace-small", "mace-small.model")


def load_model(spec: str | os.PathLike | ModelAdapter = "chgnet", device: str = "cpu",
               feature_set: str = "last") -> ModelAdapter:
    """An adapter from a name, a file or a module.

    * ``"chgnet"`` (CHGNet 0.3.0, shipped in the chgnet wheel) or ``"chgnet:VERSION"`` (``0.2.0``, ``r2scan``);
    * ``"mace-small"``: the small distilled MACE shipped under datasets/models (tests, demo; not for science);
    * ``"sevennet"`` (SevenNet-0 of 11 July 2024, shipped in the sevenn wheel; the ``sevennet`` extra) or
      ``"sevennet:NAME"`` (``SevenNet_0__22May2024``);
    * a model file, routed by its content whatever its suffix (:func:`sniff_model_file`): a CHGNet file
      (``calib finetune``'s output, loaded without running code) or a MACE ``.model`` file (MACE-MP-0 or a
      fine-tuned model; ``"mace:PATH"`` too) or a sevenn checkpoint: pickles, loaded because you name them
      (load only files you trust);
    * a MACE ``torch.nn.Module``, or any :class:`ModelAdapter`, passed through.

    ``feature_set`` selects CHGNet's last-layer features (``"last"`` or ``"last2"``); MACE has one.
    The adapter's ``read_as`` says how it was read (e.g. ``"CHGNet (calib's format tag ...)"``).
    """
    from calib.models.base import ModelAdapter
    from calib.models.threads import apply_pending

    apply_pending()  # the CLI's thread choice, made only now that a model loads
    if isinstance(spec, ModelAdapter):
        return spec
    if not isinstance(spec, (str, os.PathLike)):
        import torch

        if isinstance(spec, torch.nn.Module) and hasattr(spec, "readouts"):
            from calib.models.mace import MACEAdapter

            return _with_spec(MACEAdapter(spec, device=device), ModelSpec("mace-module"))
        raise TypeError(f"cannot make a model from an object of type {type(spec).__name__}")
    spec = os.fspath(spec)
    name, _, version = spec.partition(":")
    if name in REGISTRY and name != "mace":
        return _with_spec(REGISTRY[name](version, device, feature_set), ModelSpec(spec, feature_set))
    path = version if name == "mace" else spec
    if path in REGISTRY:  # "mace:mace-small"
        return load_model(path, device, feature_set)
    if path.endswith(".model") or os.path.isfile(path):
        if not os.path.exists(path):
            raise ValueError(f"model file not found: {path}")
        kind, state, how = sniff_model_file(path)
        if kind == "chgnet":
            adapter = _chgnet_state(path, state, device, feature_set)
        elif kind == "mace":
            adapter = _mace_file(path, os.path.abspath(path), device, feature_set)
        elif kind == "sevennet":
            adapter = _sevennet_file(path, device, feature_set)
        else:
            raise ValueError(f"{path} is not a MACE model calib can read, nor a CHGNet file ({how}): calib reads "
                             "CHGNet files ({'model': {'state_dict', 'model_args'}}, as calib finetune writes) and "
                             "MACE .model files")
        adapter.read_as = how
        if (kind == "chgnet") == path.endswith(".model"):
            import warnings

            from calib.errors import CalibWarning

            warnings.warn(f"{path} was read as {how} from its content, whatever its suffix suggests",
                          CalibWarning, stacklevel=2)
        return adapter
    raise ValueError(f"unknown model {spec!r}: use {', '.join(repr(k) for k in REGISTRY)}, 'chgnet:VERSION' "
                     "or a model file (a MACE .model, a sevenn checkpoint, or a CHGNet file such as calib finetune "
                     "writes)")


def _mace_file(path: str, version: str, device: str, feature_set: str) -> ModelAdapter:
    if feature_set != "last":
        raise ValueError(f"feature_set={feature_set!r}: MACE models have one feature set, 'last'")
    try:
        from calib.models.mace import MACEAdapter
    except ImportError as exc:
        raise ValueError(f"{path}: MACE models need mace-torch: pip install -e '.[mace]' ({exc})") from None
    try:
        adapter = MACEAdapter(path, device=device, version=version)
    except (TypeError, AttributeError, KeyError, RuntimeError, EOFError, OSError, ValueError) as exc:
        raise ValueError(f"{path} is not a MACE model calib can read ({type(exc).__name__}: {exc})") from None
    return _with_spec(adapter, ModelSpec(os.path.abspath(path) if version != "mace-small" else "mace-small"))


def _chgnet_state(path: str, state: dict, device: str, feature_set: str) -> ModelAdapter:
    """The adapter of a CHGNet file's ``state`` (as :func:`sniff_model_file` read it)."""
    from calib.models.chgnet import CHGNetAdapter, chgnet_from_state

    model, provenance = chgnet_from_state(state)
    adapter = CHGNetAdapter(model=model, device=device, feature_set=feature_set)
    adapter.version = os.path.abspath(path)  # the file names this model (the weights fingerprint identifies it)
    adapter.provenance = provenance
    return _with_spec(adapter, ModelSpec(os.path.abspath(path), feature_set))


def _with_spec(adapter: ModelAdapter, spec: ModelSpec) -> ModelAdapter:
    adapter.spec = spec
    if not getattr(adapter, "read_as", None):
        adapter.read_as = {"chgnet": "CHGNet (registered name)", "mace-small": "MACE (shipped mace-small)",
                           "sevennet": "SevenNet (registered name, weights from the sevenn wheel)",
                           "mace-module": "MACE (a module passed in)"}.get(spec.name.partition(":")[0], spec.name)
    return adapter


def spec_of(model: ModelAdapter) -> ModelSpec:
    """The :class:`ModelSpec` that loads ``model`` again (on a dask worker): the one it was loaded from, or
    for an adapter built by hand, the registered name its provenance gives."""
    spec = getattr(model, "spec", None)
    if isinstance(spec, ModelSpec) and spec.name != "mace-module":
        return spec
    return spec_from_provenance(model.describe(), what="this model")


def spec_from_provenance(model_info: dict, what: str = "the artifact") -> ModelSpec:
    """The :class:`ModelSpec` an artifact's provenance names, for the registered models only.

    Raises ValueError when the provenance names a model file (or a model calib cannot load by name): an
    artifact never makes calib unpickle a file; pass the model yourself."""
    name, version = str(model_info.get("model_name")), str(model_info.get("model_version") or "")
    feature_set = str(model_info.get("feature_set", "last"))
    if name == "chgnet" and (os.sep in version or version.endswith((".pt", ".pth", ".tar"))):
        raise ValueError(f"{what} was fitted with the CHGNet model file {version}; calib does not load a model "
                         "file that an artifact names (it is a pickle: loading it runs code): pass --model "
                         f"{version} (model=... in Python) if you trust that file")
    if name == "chgnet":
        return ModelSpec(f"chgnet:{version}" if version else "chgnet", feature_set)
    if name == "sevennet":
        from calib.models.sevennet import PRETRAINED

        if version in ("", *PRETRAINED):
            return ModelSpec(f"sevennet:{version}" if version else "sevennet", feature_set)
        raise ValueError(f"{what} was fitted with the SevenNet checkpoint {version}; calib does not load a model "
                         "file that an artifact names (a checkpoint is a pickle: loading it runs code): pass "
                         f"--model {version} (model=... in Python) if you trust that file")
    if name == "mace" and version == "mace-small":
        return ModelSpec("mace-small", feature_set)
    if name == "mace":
        raise ValueError(f"{what} was fitted with the MACE model file {version}; calib does not load a model "
                         "file that an artifact names (a .model file is a pickle: loading it runs code): pass "
                         f"--model {version} (model=... in Python) if you trust that file")
    raise ValueError(f"{what} was fitted with the model {name!r} {version}, which calib cannot load by name: "
                     "pass the model (--model, or model=... in Python)")


def spec_for(model=None, *, artifact=None, feature_set: str | None = None) -> ModelSpec:
    """The :class:`ModelSpec` of ``model`` (a name or a file you pass) or, when it is None, of the model
    ``artifact`` (an :class:`calib.artifact.Artifact`) was fitted with, or CHGNet 0.3.0 without either.
    ``feature_set`` defaults to the artifact's (``"last"`` without one)."""
    if isinstance(model, ModelSpec):
        return model
    info = artifact.model_info if artifact is not None else {}
    feature_set = feature_set or str(info.get("feature_set", "last"))
    if model is None:
        name = spec_from_provenance(info).name if artifact is not None else "chgnet"
        return ModelSpec(name, feature_set)
    return ModelSpec(os.fspath(model), feature_set)


def resolve_model(model=None, *, artifact=None, device: str = "cpu", feature_set: str | None = None
                  ) -> ModelAdapter:
    """The adapter to use: :func:`spec_for` loaded on ``device``; an adapter or a module passes through.

    A ``last2`` artifact gets a ``last2`` model on every route. The model is not checked against the
    artifact here (``Artifact.check_model`` does it)."""
    if model is not None and not isinstance(model, (str, os.PathLike, ModelSpec)):
        return load_model(model, device=device)
    return spec_for(model, artifact=artifact, feature_set=feature_set).load(device)
