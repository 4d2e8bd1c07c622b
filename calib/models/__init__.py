"""Model adapters. :func:`load_model` resolves a name or a file path to an adapter."""

from __future__ import annotations

import os

from .base import BatchOutput, FeatureGraph, ModelAdapter, Prediction

__all__ = ["BatchOutput", "FeatureGraph", "ModelAdapter", "Prediction", "load_model"]


def load_model(spec: "str | ModelAdapter" = "chgnet", device: str = "cpu", feature_set: str = "last") -> ModelAdapter:
    """An adapter from a name or path.

    ``"chgnet"`` (CHGNet 0.3.0, shipped in the chgnet wheel) or ``"chgnet:VERSION"``
    (``0.2.0``, ``r2scan``). Any other adapter can be passed in directly.
    ``feature_set`` selects the last-layer features (``"last"`` or CHGNet's ``"last2"``).
    """
    if isinstance(spec, ModelAdapter):
        return spec
    spec = str(spec)
    if spec == "chgnet" or spec.startswith("chgnet:"):
        from .chgnet import CHGNetAdapter

        version = spec.split(":", 1)[1] if ":" in spec else "0.3.0"
        return CHGNetAdapter(version=version, device=device, feature_set=feature_set)
    if os.path.exists(spec):
        raise ValueError(
            f"{spec}: loading a model file (MACE) is not supported yet; this version supports 'chgnet' "
            "and 'chgnet:VERSION'"
        )
    raise ValueError(f"unknown model {spec!r}: use 'chgnet' or 'chgnet:VERSION'")


def model_spec(model_info: dict) -> str:
    """The :func:`load_model` name of the model an artifact's provenance names."""
    name, version = model_info.get("model_name"), model_info.get("model_version")
    return f"{name}:{version}" if version else str(name)
