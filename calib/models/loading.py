"""How calib loads what the backends need: e3nn 0.4.4's import under torch ≥ 2.6, and a model's weights
fingerprint (the SHA-256 every artifact records and checks against the model it is given)."""

from __future__ import annotations

import contextlib
import hashlib
import os

import torch


@contextlib.contextmanager
def e3nn_constants_loadable():
    """Within: ``torch.load`` without ``weights_only`` (``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``), which e3nn 0.4.4
    needs on import to read its own packaged constants (a pickle with ``slice`` objects) under torch ≥ 2.6;
    mace-torch pins that e3nn, and sevenn 0.10 runs on it. The variable is restored on exit: every other
    ``torch.load`` keeps its default."""
    flag = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"
    before = os.environ.get(flag)
    os.environ[flag] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(flag, None)
        else:
            os.environ[flag] = before


def weights_hash(state_dict) -> str:
    """SHA-256 (hex) of a state dict: its names and values (float64), in name order."""
    h = hashlib.sha256()
    for key, tensor in sorted(state_dict.items()):
        h.update(key.encode())
        h.update(tensor.detach().to("cpu", torch.float64).contiguous().numpy().tobytes())
    return h.hexdigest()
