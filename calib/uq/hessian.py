"""Streaming accumulation of the LLPR pseudo-Hessian H = Σ f fᵀ, with merge and checkpoints.

H needs last-layer features only (no labels), over the model's *training*
distribution, so it must stream: :class:`HessianAccumulator` adds one batch at
a time in float64 on the model's device, two partial accumulators over
disjoint shards :meth:`~HessianAccumulator.merge` into the accumulator of their
union (the sum is exact up to float64 rounding), and the running state saves
to and resumes from a netCDF checkpoint. The loop that runs a model over
structures is :func:`calib.workflows.accumulate.accumulate_hessian`.

This module runs no model and knows nothing of the artifact: it takes feature
tensors and hands a plain (d, d) array to :class:`calib.uq.llpr.LLPR`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from calib.data import ncio
from calib.data.structures import StructureIssue
from calib.uq.ood import DescriptorStats

CHECKPOINT_KIND = "calib-hessian-checkpoint"
CHECKPOINT_SCHEMA = 2  # 2: with the per-atom descriptor statistics (calib 0.5)


class HessianAccumulator:
    """Streaming float64 accumulator of H = Σ f fᵀ on the model's device.

    Parameters
    ----------
    n_features : int
    device : str or torch.device
    force_weight : float
        Weight of the force rows relative to the energy rows (0 = energy only).
        A structure's force rows add ``force_weight · s² / (3N) · J Jᵀ`` with
        ``J = ∂f/∂r`` (d × 3N): the Gauss–Newton term of a mean-squared force
        loss, since ∂F/∂w = -s Jᵀ.

    descriptor_dims : int or None
        Also accumulate :class:`calib.uq.ood.DescriptorStats` of the first ``descriptor_dims`` per-atom
        descriptors (the out-of-distribution detector is fitted on the structures of H).

    Attributes
    ----------
    H : torch.Tensor (d, d), float64 — the running sum (feature units²).
    stats : DescriptorStats or None
    n_structures, n_batches : int — what has been added so far.
    """

    def __init__(self, n_features: int, device="cpu", force_weight: float = 0.0, descriptor_dims: int | None = None):
        self.n_features = int(n_features)
        self.device = torch.device(device)
        self.force_weight = float(force_weight)
        self.H = torch.zeros(self.n_features, self.n_features, dtype=torch.float64, device=self.device)
        self.stats = DescriptorStats(descriptor_dims) if descriptor_dims else None
        self.n_structures = 0
        self.n_batches = 0

    def update(self, features: torch.Tensor) -> HessianAccumulator:
        """Add a batch of pooled features, shape (B, d)."""
        f = torch.as_tensor(features).detach().to(self.device, torch.float64)
        self.H.addmm_(f.T, f)
        self.n_structures += int(f.shape[0])
        return self

    def update_descriptors(self, descriptors, atom_structure, keys) -> HessianAccumulator:
        """Add one batch's per-atom descriptors to :attr:`stats` (see :meth:`DescriptorStats.update`)."""
        if self.stats is not None:
            self.stats.update(descriptors, atom_structure, keys)
        return self

    def update_force_rows(self, jacobians: Sequence[np.ndarray], scales: Sequence[float]) -> HessianAccumulator:
        """Add force rows; ``jacobians[i]`` is ∂f/∂r of structure i, shape (d, N_i, 3)."""
        for jac, s in zip(jacobians, scales):
            J = torch.as_tensor(jac, dtype=torch.float64, device=self.device).reshape(self.n_features, -1)
            self.H.addmm_(J, J.T, alpha=self.force_weight * float(s) ** 2 / J.shape[1])
        return self

    def merge(self, other: HessianAccumulator) -> HessianAccumulator:
        """A new accumulator holding both sums (disjoint shards of one input; same weights)."""
        if other.n_features != self.n_features:
            raise ValueError(f"cannot merge accumulators of {self.n_features} and {other.n_features} features")
        if other.force_weight != self.force_weight:
            raise ValueError(f"cannot merge accumulators with force weights {self.force_weight} and "
                             f"{other.force_weight}")
        out = HessianAccumulator(self.n_features, self.device, self.force_weight)
        out.H = self.H + other.H.to(self.device)
        if self.stats is not None and other.stats is not None:
            out.stats = self.stats.merge(other.stats)
        out.n_structures = self.n_structures + other.n_structures
        out.n_batches = self.n_batches + other.n_batches
        return out

    def hessian(self) -> np.ndarray:
        """H as a float64 numpy array (a copy)."""
        return self.H.to("cpu").numpy().copy()

    # ------------------------------------------------------------------ checkpoints
    def save(self, path, **provenance) -> None:
        """Write the running sum to a netCDF checkpoint (atomic). ``provenance`` goes into the attributes."""
        import xarray as xr

        extra = self.stats.to_variables() if self.stats is not None else {}
        ds = xr.Dataset(
            {"hessian": (("feature", "feature_b"), self.hessian(), {"units": "feature units^2",
                                                                   "description": "running sum_n f_n f_n^T"}),
             **extra},
            attrs={"kind": CHECKPOINT_KIND, "schema_version": CHECKPOINT_SCHEMA,
                   "n_structures": int(self.n_structures), "n_batches": int(self.n_batches),
                   "force_weight": float(self.force_weight), **provenance},
        )
        ncio.write_atomic(ds, path)

    @classmethod
    def load(cls, path, device="cpu") -> tuple[HessianAccumulator, dict]:
        """(accumulator, provenance attributes) from a checkpoint written by :meth:`save`."""
        ds = ncio.read(path, "checkpoint")
        if ds.attrs.get("kind") != CHECKPOINT_KIND:
            raise ncio.ArtifactError(f"{path} is not a calib Hessian checkpoint")
        H = ds["hessian"].values
        acc = cls(H.shape[0], device=device, force_weight=float(ds.attrs["force_weight"]))
        acc.H = torch.as_tensor(H, dtype=torch.float64, device=acc.device).clone()
        acc.n_structures = int(ds.attrs["n_structures"])
        acc.n_batches = int(ds.attrs["n_batches"])
        if "ood_stats_n" in ds:
            acc.stats = DescriptorStats.from_variables(ds)
        return acc, dict(ds.attrs)


@dataclass
class HessianResult:
    """Output of :func:`calib.workflows.accumulate.accumulate_hessian`.

    Attributes
    ----------
    hessian : (d, d) float64 — Σ f fᵀ (feature units², per-atom features for per-atom models).
    n_structures : int — structures accumulated.
    issues : list of StructureIssue — structures skipped, with the reason.
    input_fingerprint : str — identifies the (validated) input list.
    force_weight : float
    seconds : float
    descriptor_stats : DescriptorStats or None — per-atom descriptor statistics of the structures
    """

    hessian: np.ndarray
    n_structures: int
    issues: list[StructureIssue] = field(default_factory=list)
    input_fingerprint: str = ""
    force_weight: float = 0.0
    seconds: float = 0.0
    descriptor_stats: DescriptorStats | None = None


class Interrupted(RuntimeError):
    """Raised by :func:`calib.workflows.accumulate.accumulate_hessian` when ``stop_after`` batches are done (for tests/time limits)."""
