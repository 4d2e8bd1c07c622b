"""Model adapters, and the one resolver from a name, a file or an artifact's provenance to an adapter
(:mod:`calib.models.registry`).

The names below are imported lazily: ``import calib.models.threads`` or :func:`model_hint` must not pull in
torch, so that a command checks its parameters in a fraction of a second (docs/cli.md, rule 1).
"""

from __future__ import annotations

import os
from importlib import import_module

_LAZY = {
    "BatchOutput": "calib.models.base", "FeatureGraph": "calib.models.base", "ModelAdapter": "calib.models.base",
    "Prediction": "calib.models.base", "REGISTRY": "calib.models.registry", "ModelSpec": "calib.models.registry",
    "check_model_name": "calib.models.registry", "load_model": "calib.models.registry",
    "resolve_model": "calib.models.registry", "shipped_mace_path": "calib.models.registry",
    "sniff_model_file": "calib.models.registry", "spec_for": "calib.models.registry",
    "spec_from_provenance": "calib.models.registry", "spec_of": "calib.models.registry",
}

__all__ = [*_LAZY, "model_hint"]


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'calib.models' has no attribute {name!r}")
    return getattr(import_module(_LAZY[name]), name)


def model_hint(model_info: dict) -> str:
    """The ``--model`` value that names the model an artifact's provenance describes (for messages)."""
    name, version = model_info.get("model_name"), model_info.get("model_version")
    if name == "mace":
        return f"mace:{version}"
    if version and os.sep in str(version):  # a model file (a fine-tuned CHGNet)
        return str(version)
    return f"{name}:{version}" if version else str(name)
