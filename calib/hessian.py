"""Streaming accumulation of the LLPR pseudo-Hessian H = Σ f fᵀ, with merge and checkpoints.

H needs last-layer features only (no labels), over the model's *training*
distribution, so it must stream: :class:`HessianAccumulator` adds one batch at
a time in float64 on the model's device, two partial accumulators over
disjoint shards :meth:`~HessianAccumulator.merge` into the accumulator of their
union (the sum is exact up to float64 rounding), and the running state saves
to and resumes from a netCDF checkpoint. :func:`accumulate_hessian` runs the
whole loop over a list of structures.

This module knows nothing of the artifact: it hands a plain (d, d) array to
:class:`calib.llpr.LLPR`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from ase import Atoms

from . import ncio
from .models.base import ModelAdapter, batches, total_scale
from .models.gradients import feature_gradients
from .structures import StructureIssue, structures_fingerprint

CHECKPOINT_KIND = "calib-hessian-checkpoint"
CHECKPOINT_SCHEMA = 1


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

    Attributes
    ----------
    H : torch.Tensor (d, d), float64 — the running sum (feature units²).
    n_structures, n_batches : int — what has been added so far.
    """

    def __init__(self, n_features: int, device="cpu", force_weight: float = 0.0):
        self.n_features = int(n_features)
        self.device = torch.device(device)
        self.force_weight = float(force_weight)
        self.H = torch.zeros(self.n_features, self.n_features, dtype=torch.float64, device=self.device)
        self.n_structures = 0
        self.n_batches = 0

    def update(self, features: torch.Tensor) -> HessianAccumulator:
        """Add a batch of pooled features, shape (B, d)."""
        f = torch.as_tensor(features).detach().to(self.device, torch.float64)
        self.H.addmm_(f.T, f)
        self.n_structures += int(f.shape[0])
        return self

    def update_force_rows(self, jacobians: Sequence[np.ndarray], scales: Sequence[float]) -> HessianAccumulator:
        """Add force rows; ``jacobians[i]`` is ∂f/∂r of structure i, shape (d, N_i, 3)."""
        for jac, s in zip(jacobians, scales):
            J = torch.as_tensor(jac, dtype=torch.float64, device=self.device).reshape(self.n_features, -1)
            self.H.addmm_(J, J.T, alpha=self.force_weight * float(s) ** 2 / J.shape[1])
        return self

    def add_batch(self, model: ModelAdapter, structures: Sequence[Atoms]) -> HessianAccumulator:
        """Run ``model`` on one batch of validated structures and add its features (and force rows)."""
        out = model.forward_batch(structures, forces=False, stress=False)
        self.update(out.features)
        if self.force_weight:
            jac = feature_gradients(model, structures, np.eye(model.n_features))
            self.update_force_rows(jac, total_scale(out.n_atoms.cpu().numpy(), model.energy_convention))
        self.n_batches += 1
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

        ds = xr.Dataset(
            {"hessian": (("feature", "feature_b"), self.hessian(), {"units": "feature units^2",
                                                                   "description": "running sum_n f_n f_n^T"})},
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
        return acc, dict(ds.attrs)


@dataclass
class HessianResult:
    """Output of :func:`accumulate_hessian`.

    Attributes
    ----------
    hessian : (d, d) float64 — Σ f fᵀ (feature units², per-atom features for per-atom models).
    n_structures : int — structures accumulated.
    issues : list of StructureIssue — structures skipped, with the reason.
    input_fingerprint : str — identifies the (validated) input list.
    force_weight : float
    seconds : float
    """

    hessian: np.ndarray
    n_structures: int
    issues: list[StructureIssue] = field(default_factory=list)
    input_fingerprint: str = ""
    force_weight: float = 0.0
    seconds: float = 0.0


class Interrupted(RuntimeError):
    """Raised by :func:`accumulate_hessian` when ``stop_after`` batches are done (for tests/time limits)."""


def accumulate_hessian(
    model: ModelAdapter,
    structures: Sequence[Atoms],
    *,
    batch_size: int = 16,
    force_weight: float = 0.0,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 10,
    stop_after: int | None = None,
    progress: bool = True,
) -> HessianResult:
    """Stream ``structures`` through ``model`` and accumulate H = Σ f fᵀ (float64).

    Needs features only (no labels). Bad structures are skipped and reported.
    With ``checkpoint``, the running sum is saved every ``checkpoint_every``
    batches; a rerun with the same file and the same input resumes after the
    last saved batch and ends with a bitwise-identical H. ``stop_after`` stops
    (raising :class:`Interrupted`) after that many batches in this call.
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    good, issues = model.validate(structures)
    kept = [structures[i] for i in good]
    fingerprint = structures_fingerprint(kept)
    acc = HessianAccumulator(model.n_features, device=model.device, force_weight=force_weight)
    provenance = {"input_fingerprint": fingerprint, "model_fingerprint": model.fingerprint(),
                  "batch_size": int(batch_size)}
    if checkpoint is not None and os.path.exists(checkpoint):
        acc, state = HessianAccumulator.load(checkpoint, device=model.device)
        problems = []
        if state.get("input_fingerprint") != fingerprint:
            problems.append("the input structures differ")
        if state.get("model_fingerprint") != provenance["model_fingerprint"]:
            problems.append("the model differs")
        if int(state.get("batch_size", -1)) != batch_size or acc.force_weight != force_weight:
            problems.append("batch_size or force_weight differ")
        if problems:
            raise ValueError(f"checkpoint {checkpoint} does not belong to this run: {', '.join(problems)}; "
                             "delete it or pass another --checkpoint")
    start_batch = acc.n_batches
    all_batches = list(batches(len(kept), batch_size))
    done_here = 0
    bar = tqdm(total=len(all_batches), initial=start_batch, desc="hessian", unit="batch", disable=not progress)
    for idx in all_batches[start_batch:]:
        if stop_after is not None and done_here >= stop_after:
            bar.close()
            raise Interrupted(f"stopped after {done_here} batches ({acc.n_batches} in total)")
        acc.add_batch(model, [kept[i] for i in idx])
        done_here += 1
        bar.update(1)
        if checkpoint is not None and (acc.n_batches % checkpoint_every == 0 or acc.n_batches == len(all_batches)):
            acc.save(checkpoint, **provenance)
    bar.close()
    return HessianResult(
        hessian=acc.hessian(),
        n_structures=acc.n_structures,
        issues=issues,
        input_fingerprint=fingerprint,
        force_weight=force_weight,
        seconds=time.perf_counter() - t0,
    )
