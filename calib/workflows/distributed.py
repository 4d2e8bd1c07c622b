"""Dask: Hessian accumulation and screening on a cluster (a ``LocalCluster`` or any scheduler).

Dask is the engine xarray users already run, from a laptop (``LocalCluster``)
to SLURM or Kubernetes (``dask-jobqueue``, ``dask-kubernetes``): calib only
submits plain functions to a ``dask.distributed.Client``.

* **Hessian.** The valid structures are cut into contiguous shards; each task
  accumulates a partial H = Σ f fᵀ on its worker and the driver merges them
  (:meth:`calib.uq.hessian.HessianAccumulator.merge`): the result equals the
  serial H up to float64 summation order (tested to 1e-12 relative).
* **Screening.** The driver reads the input stream in batches and keeps at
  most ``max_in_flight`` batches on the cluster; results come back in input
  order and are written by the driver alone (:mod:`calib.workflows.screen`), so resume
  works as in a serial run.

Each worker process loads the model (and the artifact) once and keeps it for
every later task. With ``device="cuda"`` on a worker that sees several GPUs,
the worker takes ``cuda:<k>`` with k its worker number modulo the GPU count,
so that a multi-GPU node runs one worker per GPU. Workers need the artifact
path (a shared file system, as on any cluster) and torch with calib installed.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from calib.workflows.settings import HESSIAN

_CACHE: dict = {}


def start_client(workers: int | None = None, scheduler: str | None = None, threads_per_worker: int = 1):
    """A Client: a new ``LocalCluster`` of ``workers`` processes, or one joining ``scheduler`` (address)."""
    from dask.distributed import Client, LocalCluster

    if scheduler:
        return Client(scheduler)
    if not workers or workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    cluster = LocalCluster(n_workers=int(workers), threads_per_worker=threads_per_worker, processes=True,
                           dashboard_address=None, silence_logs=40)
    return Client(cluster)


def close_client(client) -> None:
    cluster = getattr(client, "cluster", None)
    client.close()
    if cluster is not None:
        cluster.close()


def worker_device(device: str) -> str:
    """This worker's device: ``cuda:<worker number mod GPU count>`` for a bare "cuda" on a multi-GPU worker."""
    if str(device) != "cuda":
        return str(device)
    import torch

    n = torch.cuda.device_count()
    if n <= 1:
        return "cuda"
    try:
        from dask.distributed import get_worker

        name = get_worker().name
        k = int(name) if str(name).isdigit() else abs(hash(name))
    except (ValueError, ImportError):
        k = 0
    return f"cuda:{k % n}"


def _set_threads() -> None:
    """One torch thread per dask thread: the worker's CPUs are shared out by dask, not by OpenMP."""
    import torch

    try:
        from dask.distributed import get_worker

        torch.set_num_threads(max(1, int(get_worker().state.nthreads)))
    except (ValueError, AttributeError):
        pass


def worker_model(spec, device: str = "cpu"):
    """The model adapter of ``spec`` (a :class:`calib.models.ModelSpec`, or a name) on this process, loaded once."""
    from calib.models import spec_for

    spec = spec_for(spec)
    key = ("model", spec, device)
    if key not in _CACHE:
        _set_threads()
        _CACHE[key] = spec.load(worker_device(device))
    return _CACHE[key]


def worker_predictor(calibration: str, model, device: str = "cpu", trust=None):
    """The CalibratedPredictor of an artifact file on this process, loaded once (model once per spec): the
    model ``model`` names (a spec or a name) or, when None, the one the artifact was fitted with, with its
    feature set, and the trust policy ``trust`` (calib.uq.trust.TrustPolicy)."""
    from calib.artifact import Artifact
    from calib.models import spec_for
    from calib.predictor import CalibratedPredictor

    key = ("predictor", os.path.abspath(calibration), os.path.getmtime(calibration), model, device, trust)
    if key not in _CACHE:
        art = Artifact.load(calibration)
        _CACHE[key] = CalibratedPredictor(worker_model(spec_for(model, artifact=art), device), art, trust=trust)
    return _CACHE[key]


# --------------------------------------------------------------------------- Hessian


def partial_hessian(spec, device: str, structures: Sequence, batch_size: int,
                    force_weight: float = HESSIAN.force_weight):
    """(H as float64 array, number of structures, batches, descriptor statistics) of one shard of
    already-validated structures."""
    from calib.models.base import batches
    from calib.uq.hessian import HessianAccumulator
    from calib.workflows.accumulate import add_batch

    model = worker_model(spec, device)
    acc = HessianAccumulator(model.n_features, device=model.device, force_weight=force_weight,
                             descriptor_dims=model.descriptor_dims)
    for idx in batches(len(structures), batch_size):
        add_batch(acc, model, [structures[i] for i in idx])
    return acc.hessian(), acc.n_structures, acc.n_batches, acc.stats


def distributed_hessian(client, spec, structures: Sequence, *, device: str = "cpu", batch_size: int = 16,
                        force_weight: float = HESSIAN.force_weight, n_shards: int | None = None, progress: bool = True):
    """H over ``structures`` accumulated on the cluster: a :class:`calib.uq.hessian.HessianResult`.

    Structures are validated here (bad ones skipped and reported) and cut into
    ``n_shards`` contiguous shards (default: 4 per worker, whole batches each).
    """
    import time

    import torch
    from dask.distributed import as_completed
    from tqdm.auto import tqdm

    from calib.data.structures import structures_fingerprint, validate
    from calib.models import ModelSpec, spec_for
    from calib.uq.hessian import HessianAccumulator, HessianResult

    if not isinstance(spec, (str, ModelSpec)):
        raise TypeError("distributed accumulation needs the model as a ModelSpec or a load_model name (e.g. "
                        "'chgnet'): each worker loads it itself")
    spec = spec_for(spec)
    t0 = time.perf_counter()
    model = worker_model(spec, "cpu")  # here only for its elements, cutoff and feature count
    good, issues = validate(structures, supported_elements=model.supported_elements, cutoff=model.cutoff,
                            max_atoms=model.max_atoms if force_weight else None)
    kept = [structures[i] for i in good]
    n_workers = max(1, len(client.scheduler_info().get("workers", {})))
    n_batches = -(-len(kept) // batch_size)
    n_shards = max(1, min(n_batches, n_shards or 4 * n_workers))
    edges = np.linspace(0, n_batches, n_shards + 1).round().astype(int) * batch_size
    shards = [kept[a:b] for a, b in zip(edges[:-1], np.minimum(edges[1:], len(kept))) if b > a]
    futures = [client.submit(partial_hessian, spec, device, shard, batch_size, force_weight, pure=False)
               for shard in shards]
    acc = HessianAccumulator(model.n_features, device="cpu", force_weight=force_weight,
                             descriptor_dims=model.descriptor_dims)
    bar = tqdm(total=len(kept), desc=f"hessian ({n_workers} workers)", unit="structure", disable=not progress)
    sizes = {f.key: len(s) for f, s in zip(futures, shards)}
    for fut in as_completed(futures):
        H, n, nb, stats = fut.result()
        part = HessianAccumulator(model.n_features, device="cpu", force_weight=force_weight)
        part.H, part.stats = torch.as_tensor(H, dtype=torch.float64), stats
        part.n_structures, part.n_batches = int(n), int(nb)
        acc = acc.merge(part)
        bar.update(sizes[fut.key])
    bar.close()
    return HessianResult(hessian=acc.hessian(), n_structures=acc.n_structures, issues=issues,
                         input_fingerprint=structures_fingerprint(kept), force_weight=force_weight,
                         seconds=time.perf_counter() - t0, descriptor_stats=acc.stats)


# --------------------------------------------------------------------------- screening


def ordered_batches(client, task, stream: Iterable[list], start: int, *args,
                    max_in_flight: int | None = None) -> Iterator[tuple[list, object]]:
    """(batch, ``task(*args, batch, start)``) for every batch of ``stream``, run on the cluster and yielded
    in input order, with at most ``max_in_flight`` batches (default 2 per worker) submitted at once.

    ``task`` must be importable on the workers (a module-level function); calib.workflows.screen passes one that
    screens a batch with :func:`worker_predictor`.
    """
    n_workers = max(1, len(client.scheduler_info().get("workers", {})))
    max_in_flight = max_in_flight or 2 * n_workers
    pending: deque = deque()
    for batch in stream:
        pending.append((batch, client.submit(task, *args, batch, start, pure=False)))
        start += len(batch)
        if len(pending) >= max_in_flight:
            b, fut = pending.popleft()
            yield b, fut.result()
    while pending:
        b, fut = pending.popleft()
        yield b, fut.result()
