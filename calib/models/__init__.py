"""Model adapters. :func:`load_model` resolves a name or a file path to an adapter."""

from __future__ import annotations

import os

from .base import BatchOutput, FeatureGraph, ModelAdapter, Prediction

__all__ = ["BatchOutput", "FeatureGraph", "ModelAdapter", "Prediction", "load_model"]


def load_model(spec: "str | ModelAdapter" = "chgnet", device: str = "cpu") -> ModelAdapter:
    """An adapter from a name or path.

    ``"chgnet"`` (CHGNet 0.3.0, shipped in the chgnet wheel), ``"chgnet:VERSION"``,
    or a path to a MACE ``.model`` file (needs the ``mace`` extra).
    """
    if isinstance(spec, ModelAdapter):
        return spec
    spec = str(spec)
    if spec == "chgnet" or spec.startswith("chgnet:"):
        from .chgnet import CHGNetAdapter

        version = spec.split(":", 1)[1] if ":" in spec else "0.3.0"
        return CHGNetAdapter(version=version, device=device)
    if os.path.exists(spec):
        from .mace import MACEAdapter

        return MACEAdapter.from_file(spec, device=device)
    raise ValueError(f"unknown model {spec!r}: use 'chgnet', 'chgnet:VERSION' or a path to a MACE .model file")
