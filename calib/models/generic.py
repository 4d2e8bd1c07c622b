"""A generic adapter: any torch potential whose energy ends in one ``torch.nn.Linear`` readout.

For a model that is neither CHGNet nor MACE, calib needs four things, given here as arguments instead
of a subclass:

* ``module`` — the potential (its weights identify it);
* ``readout`` — the final ``nn.Linear(d, 1)`` applied to per-atom features; a forward hook captures
  its input φ_a, which become the last-layer features;
* ``collate(structures, device, dtype)`` — builds the model's input for a batch of ASE ``Atoms`` and
  returns ``(inputs, positions, batch)``: whatever ``module(**inputs)`` takes, the Cartesian positions
  tensor (N_total, 3) in Å *that the inputs were built from* (forces and force σ differentiate with
  respect to it), and the structure index of every atom (N_total,);
* ``energy(output)`` — the total energy per structure (eV) from the module's output.

The energy must then be E = w · Σ_a φ_a + offset (``energy_convention="total"``) or
E/N = w · mean_a φ_a + offset (``"per_atom"``); the adapter records ``offset`` as whatever the model
adds beyond w·f, so a test of a new model should rebuild E from the features (tests/test_mace.py shows
how). Forces are −∂E/∂r by autograd; stress is not provided.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from ase import Atoms

from calib.models.base import BatchOutput, FeatureGraph, ModelAdapter, layer_calls, linear_readout, pool_atoms, wrapped


class LinearReadoutAdapter(ModelAdapter):
    """Adapter for a torch potential ending in one ``nn.Linear`` readout (see the module doc).

    Parameters
    ----------
    module : torch.nn.Module
    readout : torch.nn.Linear — with ``out_features == 1``
    collate : callable (structures, device, dtype) -> (inputs dict, positions (N, 3), batch (N,))
    energy : callable (module output) -> (B,) total energies, eV
    energy_convention : "total" (sum pooling) or "per_atom" (mean pooling, energy per atom)
    elements : atomic numbers the model supports; cutoff : Å; name, version : provenance
    """

    def __init__(self, module: torch.nn.Module, readout: torch.nn.Linear, collate: Callable, energy: Callable,
                 *, energy_convention: str = "total", elements: Sequence[int] = range(1, 95),
                 cutoff: float = 6.0, name: str = "generic", version: str = "", dtype=torch.float64):
        if not isinstance(readout, torch.nn.Linear) or readout.out_features != 1:
            raise TypeError("readout must be a torch.nn.Linear with one output")
        if energy_convention not in ("total", "per_atom"):
            raise ValueError(f"energy_convention must be 'total' or 'per_atom', got {energy_convention!r}")
        self.model, self._readout = module.eval(), readout
        self._collate, self._energy = collate, energy
        self.energy_convention = energy_convention
        self.supported_elements = frozenset(int(z) for z in elements)
        self.cutoff, self.name, self.version, self.dtype = float(cutoff), name, version, dtype
        self.n_features = int(readout.in_features)
        self.feature_set = "last"

    @property
    def readout(self) -> tuple[np.ndarray, float]:
        return linear_readout(self._readout)

    def _run(self, structures):
        inputs, positions, batch = self._collate([wrapped(a) for a in structures], self.device, self.dtype)
        with layer_calls(self._readout, once=True) as (calls,):
            energy = self._energy(self.model(**inputs))
        phi, _ = calls[0]  # the readout's one call: (its input φ_a, its output)
        feats, n_atoms = pool_atoms(phi, batch, len(structures), self.energy_convention)
        return energy, phi, feats, n_atoms, positions

    def forward_batch(self, structures: Sequence[Atoms], *, forces: bool, stress: bool) -> BatchOutput:
        if stress:
            raise NotImplementedError(f"{self.name}: the generic adapter gives no stress")
        with torch.enable_grad() if forces else torch.no_grad():
            energy, phi, feats, n_atoms, positions = self._run(structures)
            f = None
            if forces:
                (g,) = torch.autograd.grad(energy.sum(), positions)
                f = -g.detach()
        energy = energy.detach().to(torch.float64)
        w, b = self.readout
        lin = feats.detach().to(torch.float64) @ torch.as_tensor(w, dtype=torch.float64, device=feats.device) + b
        scale = n_atoms.to(torch.float64) if self.energy_convention == "per_atom" else 1.0
        return BatchOutput(features=feats.detach(), atom_features=phi.detach(), n_atoms=n_atoms, energy=energy,
                           energy_offset=energy / scale - lin, forces=f)

    def feature_graph(self, structures: Sequence[Atoms]) -> FeatureGraph:
        with torch.enable_grad():
            _, _, feats, n_atoms, positions = self._run(structures)
        return FeatureGraph(features=feats, positions=[positions], n_atoms=n_atoms)
