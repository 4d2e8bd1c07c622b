"""The Hessian stage: H = Σ f fᵀ over unlabelled structures into an artifact of stage "hessian".

:func:`build_hessian` runs :func:`calib.workflows.accumulate.accumulate_hessian` (serial, checkpointed) or
:func:`calib.workflows.distributed.distributed_hessian` (a dask cluster) and diagonalises the result.
"""

from __future__ import annotations

from collections.abc import Sequence

from ase import Atoms

from calib.artifact import Artifact
from calib.data.structures import StructureIssue
from calib.models.base import ModelAdapter
from calib.uq.llpr import LLPR
from calib.uq.ood import QResidualDetector
from calib.workflows.accumulate import accumulate_hessian
from calib.workflows.settings import HESSIAN


def build_hessian(
    model: ModelAdapter,
    structures: Sequence[Atoms],
    *,
    batch_size: int = 16,
    force_weight: float = HESSIAN.force_weight,
    checkpoint=None,
    checkpoint_every: int = HESSIAN.checkpoint_every,
    progress: bool = True,
    source: str = "",
    client=None,
) -> tuple[Artifact, list[StructureIssue]]:
    """Accumulate H over unlabelled ``structures`` and return an artifact of stage "hessian".

    Returns (artifact, issues); ``issues`` lists the structures skipped. With a
    ``dask.distributed.Client`` the batches run on its workers, each loading the
    model by its name (calib.workflows.distributed); checkpoints are for serial runs.
    """
    if client is not None:
        from calib.models import spec_of
        from calib.workflows.distributed import distributed_hessian

        if checkpoint is not None:
            raise ValueError("checkpoints are for serial runs: a distributed accumulation reruns lost shards itself")
        res = distributed_hessian(client, spec_of(model), structures, device=str(model.device),
                                  batch_size=batch_size, force_weight=force_weight, progress=progress)
    else:
        res = accumulate_hessian(model, structures, batch_size=batch_size, force_weight=force_weight,
                                 checkpoint=checkpoint, checkpoint_every=checkpoint_every, progress=progress)
    if res.n_structures == 0:
        from calib.errors import InputError

        raise InputError("no valid structure to accumulate the Hessian from: "
                         + "; ".join(str(i) for i in res.issues[:5]))
    llpr = LLPR(energy_convention=model.energy_convention).fit(res.hessian, res.n_structures)
    ood = None
    if res.descriptor_stats is not None and len(res.descriptor_stats.sample) >= 2:
        ood = QResidualDetector().fit_stats(res.descriptor_stats, reference=f"the {res.n_structures} structures of "
                                            "the Hessian" + (f" ({source})" if source else ""))
    w, _ = model.readout
    art = Artifact(llpr=llpr, model_info=model.describe(), readout_weight=w, stage="hessian", ood=ood,
                   attrs={"hessian_source": source, "force_weight": force_weight,
                          "hessian_seconds": round(res.seconds, 2)})
    return art, res.issues
