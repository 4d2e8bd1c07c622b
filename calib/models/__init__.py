"""Model adapters, and the one resolver from a name, a file or an artifact's provenance to an adapter
(:mod:`calib.models.registry`)."""

from __future__ import annotations

import os

from calib.models.base import BatchOutput, FeatureGraph, ModelAdapter, Prediction
from calib.models.registry import (
    REGISTRY,
    ModelSpec,
    load_model,
    resolve_model,
    shipped_mace_path,
    spec_for,
    spec_from_provenance,
    spec_of,
)

__all__ = ["BatchOutput", "FeatureGraph", "ModelAdapter", "ModelSpec", "Prediction", "REGISTRY", "load_model",
           "model_hint", "resolve_model", "shipped_mace_path", "spec_for", "spec_from_provenance", "spec_of"]


def model_hint(model_info: dict) -> str:
    """The ``--model`` value that names the model an artifact's provenance describes (for messages)."""
    name, version = model_info.get("model_name"), model_info.get("model_version")
    if name == "mace":
        return f"mace:{version}"
    if version and os.sep in str(version):  # a model file (a fine-tuned CHGNet)
        return str(version)
    return f"{name}:{version}" if version else str(name)
