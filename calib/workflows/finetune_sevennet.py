"""Fine-tuning SevenNet through sevenn's own trainer (:class:`sevenn.train.trainer.Trainer`).

:func:`calib.workflows.finetune.finetune` does what is calib's for every backend (the element reference removed
from the labels, the units check, replay, the provenance); this module only turns the labels into sevenn's
graphs, runs sevenn's trainer on a copy of the network built from the base checkpoint, and writes a sevenn
checkpoint (``config`` and ``model_state_dict``, as sevenn writes them) with calib's provenance under
``"calib"``. ``sevenn.util.load_checkpoint`` and ``calib.load_model`` (``--model FILE``) both read it.

The loss is sevenn's, from the base model's own configuration (SevenNet-0: Huber with δ = 0.01 on energy per
atom and forces, force weight 1); calib sets the optimiser (Adam at ``lr``), a linear learning-rate decay to 1 %
over the epochs, CPU or the adapter's device, and no data parallelism.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import warnings
from collections.abc import Sequence

import numpy as np
from ase import Atoms

from calib.data.structures import get_energy, get_forces, get_stress

TRAINER = "sevenn.train.trainer.Trainer (Adam, linear LR decay to 1 %, the base model's loss)"
FORMAT = "calib-finetuned-sevennet"
#: the packages whose versions the provenance records (key -> distribution)
PACKAGES = {"sevenn": "sevenn"}


def check_trainer() -> None:
    """ValueError unless the installed sevenn has the checkpoint and Trainer API this module drives (sevenn ≥
    0.11). sevenn 0.10, the one pip installs beside mace-torch (e3nn 0.4.4), predicts with SevenNet-0 but trains
    through another API."""
    import sevenn
    import sevenn.util

    if not hasattr(sevenn.util, "load_checkpoint"):
        raise ValueError(f"fine-tuning SevenNet needs sevenn >= 0.11 (its checkpoint and Trainer API); this "
                         f"environment has sevenn {sevenn.__version__}, the last that installs beside mace-torch. "
                         "Fine-tune in an environment without mace: pip install -e '.[sevennet]' (README)")


def sevenn_stress(sigma) -> np.ndarray:
    """sevenn's stress label from a 3×3 stress (eV/Å³, ASE sign): −σ in the order xx yy zz xy yz zx. (ASE's Voigt
    order is xx yy zz yz xz xy; get_stress returns the full matrix.)"""
    from ase.stress import full_3x3_to_voigt_6_stress

    return -full_3x3_to_voigt_6_stress(np.asarray(sigma, dtype=float).reshape(3, 3))[[0, 1, 2, 5, 3, 4]]


def _graphs(structs: Sequence[Atoms], shifts: np.ndarray, cutoff: float, stress: bool) -> list:
    """sevenn's labelled graphs: total energy after the element reference ``shifts`` (eV), forces (eV/Å) and,
    with ``stress`` when every structure has one, the stress in sevenn's convention (−σ, eV/Å³, order xx yy zz
    xy yz zx); NaN stress otherwise (sevenn then leaves it out of the loss)."""
    from sevenn.atom_graph_data import AtomGraphData
    from sevenn.train.dataload import atoms_to_graph

    out = []
    for a, s in zip(structs, shifts):
        b = Atoms(a.numbers, a.positions, cell=a.cell, pbc=a.pbc)
        b.info["y_energy"] = float(get_energy(a) - s)
        b.arrays["y_force"] = np.asarray(get_forces(a), dtype=float)
        sigma = get_stress(a) if stress else None
        if sigma is not None:
            b.info["y_stress"] = sevenn_stress(sigma)
        out.append(AtomGraphData.from_numpy_dict(atoms_to_graph(b, cutoff, transfer_info=False)))
    return out


def train_sevennet(model, train: Sequence[Atoms], shifts: np.ndarray, *, stress: bool, epochs: int, lr: float,
                   seed: int, batch_size: int, progress: bool):
    """(the trained network, its sevenn config, the targets trained on) for the SevenNet adapter ``model`` on
    ``train`` (labels minus ``shifts``, eV), by sevenn's Trainer; the base model stays as it was."""
    import torch
    from sevenn import _keys as KEY
    from sevenn.train.trainer import Trainer
    from sevenn.util import load_checkpoint
    from torch_geometric.loader import DataLoader
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cp = load_checkpoint(model.checkpoint_path)
        net = cp.build_model()
    config = cp.config
    use_stress = bool(stress) and all(get_stress(a) is not None for a in train)
    graphs = _graphs(train, shifts, model.cutoff, use_stress)
    config.update({KEY.IS_TRAIN_STRESS: use_stress, KEY.OPTIMIZER: "adam", KEY.OPTIM_PARAM: {"lr": float(lr)},
                   KEY.SCHEDULER: "linearlr", KEY.DEVICE: str(model.device), KEY.IS_DDP: False,
                   KEY.SCHEDULER_PARAM: {"start_factor": 1.0, "end_factor": 0.01, "total_iters": max(1, int(epochs))}})
    trainer = Trainer.from_config(net.to(model.device), config)
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(graphs, batch_size=int(batch_size), shuffle=True, generator=generator)
    with contextlib.redirect_stdout(io.StringIO() if not progress else sys.stderr):
        for _ in tqdm(range(int(epochs)), desc="sevenn fine-tune", unit="epoch", disable=not progress):
            trainer.run_one_epoch(loader, is_train=True)
            trainer.scheduler_step()
    net = trainer.model.eval()
    return net, config, "efs" if use_stress else "ef"


def save_checkpoint(path: str, net, config: dict, calib_record: dict) -> None:
    """Write a sevenn checkpoint of ``net`` (``config``, ``model_state_dict``, as sevenn's own) with calib's
    record (plain data) under ``"calib"``. The config's ``version`` becomes the running sevenn's: the state dict
    is already in its layout, and an older version would make ``load_checkpoint`` convert it a second time
    (SevenNet-0's checkpoint says 0.9.1, whose convolution weights sevenn re-sorts on load)."""
    import datetime
    import uuid

    import sevenn
    import torch

    config = {**config, "version": sevenn.__version__}
    torch.save({"model_state_dict": net.state_dict(), "config": config, "calib": calib_record,
                "time": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "hash": uuid.uuid4().hex,
                "epoch": int(calib_record.get("epochs", 0))}, path)


def adapter_of(path: str, device):
    """The SevenNet adapter of a checkpoint ``path`` calib just wrote."""
    from calib.models.sevennet import SevenNetAdapter

    return SevenNetAdapter(os.fspath(path), device=device, version=os.path.abspath(path))
