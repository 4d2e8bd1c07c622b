"""The loop that runs a model over structures into a :class:`calib.uq.hessian.HessianAccumulator`.

:func:`accumulate_hessian` streams a list of structures through a model in batches (validated, skipped
ones reported), checkpointed and resumable; :func:`add_batch` is its one step, which the dask workers of
:mod:`calib.workflows.distributed` run on their shards too.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import numpy as np
from ase import Atoms

from calib.data.structures import structures_fingerprint
from calib.data.units import total_scale
from calib.models.base import ModelAdapter, batches
from calib.models.gradients import feature_gradients
from calib.uq.hessian import HessianAccumulator, HessianResult, Interrupted
from calib.uq.ood import structure_key
from calib.workflows.settings import HESSIAN


def add_batch(acc: HessianAccumulator, model: ModelAdapter, structures: Sequence[Atoms]) -> HessianAccumulator:
    """Run ``model`` on one batch of validated structures and add its features (and force rows) to ``acc``."""
    out = model.forward_batch(structures, forces=False, stress=False)
    acc.update(out.features)
    if acc.stats is not None:
        owners = np.repeat(np.arange(len(structures)), out.n_atoms.cpu().numpy())
        keys = [structure_key(structures_fingerprint([a])) for a in structures]
        acc.update_descriptors(out.atom_features.cpu().numpy(), owners, keys)
    if acc.force_weight:
        jac = feature_gradients(model, structures, np.eye(model.n_features))
        acc.update_force_rows(jac, total_scale(out.n_atoms.cpu().numpy(), model.energy_convention))
    acc.n_batches += 1
    return acc


def accumulate_hessian(
    model: ModelAdapter,
    structures: Sequence[Atoms],
    *,
    batch_size: int = 16,
    force_weight: float = HESSIAN.force_weight,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = HESSIAN.checkpoint_every,
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
    good, issues = model.validate(structures, differentiated=force_weight > 0)
    kept = [structures[i] for i in good]
    fingerprint = structures_fingerprint(kept)
    acc = HessianAccumulator(model.n_features, device=model.device, force_weight=force_weight,
                             descriptor_dims=model.descriptor_dims)
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
        if acc.stats is None:
            problems.append("it predates calib 0.5 (no descriptor statistics for the domain detector)")
        if problems:
            raise ValueError(f"checkpoint {checkpoint} does not belong to this run: {', '.join(problems)}; "
                             "delete it or pass another checkpoint path")
    start_batch = acc.n_batches
    all_batches = list(batches(len(kept), batch_size))
    done_here = 0
    bar = tqdm(total=len(all_batches), initial=start_batch, desc="hessian", unit="batch", disable=not progress)
    for idx in all_batches[start_batch:]:
        if stop_after is not None and done_here >= stop_after:
            bar.close()
            raise Interrupted(f"stopped after {done_here} batches ({acc.n_batches} in total)")
        add_batch(acc, model, [kept[i] for i in idx])
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
        descriptor_stats=acc.stats,
    )
