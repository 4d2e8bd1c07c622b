"""Model adapters. :func:`load_model` resolves a name or a file path to an adapter."""

from __future__ import annotations

import os

from .base import BatchOutput, FeatureGraph, ModelAdapter, Prediction

__all__ = ["BatchOutput", "FeatureGraph", "ModelAdapter", "Prediction", "load_model"]


def load_model(spec: "str | ModelAdapter" = "chgnet", device: str = "cpu") -> ModelAdapter:
    """An adapter from a name or path.

    ``"chgnet"`` (CHGNet 0.3.0, shipped in the chgnet wheel) or ``"chgnet:VERSION"``
    (``0.2.0``, ``r2scan``). Any other adapter can be passed in directly.
    """
    if isinstance(spec, ModelAdapter):
        return spec
    spec = str(spec)
    if spec == "chgnet" or spec.startswith("chgnet:"):
        from .chgnet import CHGNetAdapter

        version = spec.split(":", 1)[1] if ":" in spec else "0.3.0"
        return CHGNetAdapter(version=version, device=device)
    if os.path.exists(spec):
        raise ValueError(
            f"{spec}: loading a model file (MACE) is not supported yet; this version supports 'chgnet' "
            "and 'chgnet:VERSION'"
        )
    raise ValueError(f"unknown model {spec!r}: use 'chgnet' or 'chgnet:VERSION'")
