"""Model adapters. :func:`load_model` resolves a name or a file path to an adapter."""

from __future__ import annotations

import os

from calib.models.base import BatchOutput, FeatureGraph, ModelAdapter, Prediction

__all__ = ["BatchOutput", "FeatureGraph", "ModelAdapter", "Prediction", "load_model"]


def shipped_mace_path() -> str:
    """Path of the small MACE model shipped with calib (datasets/models/mace-small, for tests and the demo)."""
    from calib.data.datasets import root

    return os.path.join(root(), "models", "mace-small", "mace-small.model")


def load_model(spec: "str | ModelAdapter" = "chgnet", device: str = "cpu", feature_set: str = "last") -> ModelAdapter:
    """An adapter from a name, a file or a module.

    * ``"chgnet"`` (CHGNet 0.3.0, shipped in the chgnet wheel) or ``"chgnet:VERSION"`` (``0.2.0``, ``r2scan``);
    * ``"mace-small"``: the small distilled MACE shipped under datasets/models (tests, demo; not for science);
    * a MACE ``.model`` file (MACE-MP-0 or a fine-tuned model), or ``"mace:PATH"``;
    * a MACE ``torch.nn.Module``, or any :class:`ModelAdapter`, passed through.

    ``feature_set`` selects CHGNet's last-layer features (``"last"`` or ``"last2"``).
    """
    if isinstance(spec, ModelAdapter):
        return spec
    if not isinstance(spec, (str, os.PathLike)):
        import torch

        if isinstance(spec, torch.nn.Module) and hasattr(spec, "readouts"):
            from calib.models.mace import MACEAdapter

            return MACEAdapter(spec, device=device)
        raise TypeError(f"cannot make a model from an object of type {type(spec).__name__}")
    spec = os.fspath(spec)
    if spec == "chgnet" or spec.startswith("chgnet:"):
        from calib.models.chgnet import CHGNetAdapter

        version = spec.split(":", 1)[1] if ":" in spec else "0.3.0"
        return CHGNetAdapter(version=version, device=device, feature_set=feature_set)
    if spec.startswith("mace:"):
        spec = spec.split(":", 1)[1]
    if spec == "mace-small":
        path = shipped_mace_path()
        if not os.path.exists(path):
            raise ValueError(f"the shipped small MACE model is missing ({path}); see datasets/models/mace-small")
        return _mace(path, "mace-small", device)
    if spec.endswith(".model") or os.path.isfile(spec):
        if not os.path.exists(spec):
            raise ValueError(f"model file not found: {spec}")
        return _mace(spec, os.path.abspath(spec), device)
    raise ValueError(f"unknown model {spec!r}: use 'chgnet', 'chgnet:VERSION', 'mace-small' or a MACE .model file")


def _mace(path: str, spec: str, device: str) -> ModelAdapter:
    try:
        from calib.models.mace import MACEAdapter
    except ImportError as exc:
        raise ValueError(f"{path}: MACE models need mace-torch: pip install -e '.[mace]' ({exc})") from None
    return MACEAdapter(path, device=device, version=spec)


def model_spec(model_info: dict) -> str:
    """The :func:`load_model` name of the model an artifact's provenance names."""
    name, version = model_info.get("model_name"), model_info.get("model_version")
    if name == "mace":
        return f"mace:{version}"
    return f"{name}:{version}" if version else str(name)
