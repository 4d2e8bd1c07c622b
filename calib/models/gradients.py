"""Feature gradients: the model side of force uncertainties.

For eigen-directions u_k of the LLPR Hessian, ∂(u_k · f)/∂r is what turns the
posterior over readout weights into a variance of every force component
(calib.uq.llpr). One reverse pass per direction serves every structure of a batch
at once, because each structure's features depend only on its own positions.
:func:`force_variance` is the model-running half of the force σ; the sums over
eigen-directions are :meth:`calib.uq.llpr.LLPR.force_variance` on arrays.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from ase import Atoms

from calib.models.base import ModelAdapter, atom_chunks, batches


def feature_gradients(
    model: ModelAdapter,
    structures: Sequence[Atoms],
    directions: np.ndarray,
    *,
    mechanism: str = "loop",
    max_atoms: int | None = None,
) -> list[np.ndarray]:
    """∂(u_k · f)/∂r for every direction u_k and structure, in one batch.

    Parameters
    ----------
    directions : (k, d) array — the u_k (rows).
    mechanism : "loop" (one ``autograd.grad`` per direction, graph retained) or
        "batched" (``is_grads_batched=True``, vmap over directions). Chosen by
        measurement (``calib bench llpr``); on CPU the loop is faster for CHGNet.
    max_atoms : the structures are taken in consecutive chunks of at most this many atoms (a
        structure larger than that alone), since the graph kept for the k backward passes grows with
        the atoms in one pass. Default ``model.gradient_atoms`` (24 on CPU, unbounded on a GPU;
        measured in :func:`calib.models.base.atom_chunks`).

    Returns
    -------
    list of (k, N_i, 3) float64 arrays, units of f per Å.
    """
    chunks = atom_chunks(structures, model.gradient_atoms if max_atoms is None else max_atoms)
    if len(chunks) > 1:
        return [g for chunk in chunks for g in _feature_gradients(model, chunk, directions, mechanism)]
    return _feature_gradients(model, structures, directions, mechanism)


def _feature_gradients(model, structures, directions, mechanism) -> list[np.ndarray]:
    fg = model.feature_graph(structures)
    U = torch.as_tensor(np.asarray(directions), dtype=fg.features.dtype, device=fg.features.device)
    k = U.shape[0]
    pos = fg.positions
    if mechanism == "loop":
        per_dir = []
        for j in range(k):
            grads = torch.autograd.grad(
                fg.features @ U[j], pos, grad_outputs=torch.ones(fg.features.shape[0], dtype=U.dtype,
                                                                 device=U.device),
                retain_graph=j < k - 1, allow_unused=True,
            )
            per_dir.append([torch.zeros_like(p) if g is None else g for g, p in zip(grads, pos)])
        out = [torch.stack([per_dir[j][i] for j in range(k)]) for i in range(len(pos))]
    elif mechanism == "batched":
        B = fg.features.shape[0]
        grad_out = U[:, None, :].expand(k, B, U.shape[1]).contiguous()
        grads = torch.autograd.grad(fg.features, pos, grad_outputs=grad_out, is_grads_batched=True,
                                    allow_unused=True)
        out = [torch.zeros(k, *p.shape, dtype=p.dtype, device=p.device) if g is None else g
               for g, p in zip(grads, pos)]
    else:
        raise ValueError(f"mechanism must be 'loop' or 'batched', got {mechanism!r}")
    if len(out) == 1 and fg.features.shape[0] > 1:  # one positions tensor for the whole batch
        out = list(torch.split(out[0], fg.n_atoms.tolist(), dim=1))
    return [o.detach().to("cpu", torch.float64).numpy() for o in out]


def gradients_in_batches(model: ModelAdapter, structures: Sequence[Atoms], directions: np.ndarray, *,
                         batch_size: int = 16, mechanism: str = "loop", progress: bool = False,
                         desc: str = "feature gradients") -> list[np.ndarray]:
    """:func:`feature_gradients` over ``structures`` in batches, with a progress bar: one (k, N_i, 3)
    array per structure, units of f per Å."""
    from tqdm.auto import tqdm

    out: list[np.ndarray] = []
    for idx in tqdm(list(batches(len(structures), batch_size)), desc=desc, unit="batch", disable=not progress):
        out.extend(feature_gradients(model, [structures[i] for i in idx], directions, mechanism=mechanism))
    return out


def force_variance(model: ModelAdapter, structures: Sequence[Atoms], llpr, *, mode: str = "exact",
                   batch_size: int = 16, mechanism: str = "loop", progress: bool = False) -> list[np.ndarray]:
    """Variance of every force component, eV²/Å², one (N_i, 3) array per structure: the model's feature
    gradients along the eigen-directions ``llpr`` sums over for ``mode`` (:meth:`calib.uq.llpr.LLPR.
    force_directions`: "exact", d reverse passes per batch, or "approx", the kept ones), handed to
    :meth:`calib.uq.llpr.LLPR.force_variance`. Gradients are taken one batch at a time, so memory does
    not grow with the number of structures."""
    from tqdm.auto import tqdm

    dirs, _ = llpr.force_directions(mode)
    U = llpr.eigenvectors_[:, dirs].T
    out: list[np.ndarray] = []
    for idx in tqdm(list(batches(len(structures), batch_size)), desc="force sigma", unit="batch",
                    disable=not progress):
        batch = [structures[i] for i in idx]
        grads = feature_gradients(model, batch, U, mechanism=mechanism)
        out.extend(llpr.force_variance(grads, [len(a) for a in batch], mode))
    return out
