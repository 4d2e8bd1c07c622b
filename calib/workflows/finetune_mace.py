"""Fine-tuning MACE through mace's own training entry point (``mace_run_train --foundation_model``).

:func:`calib.workflows.finetune.finetune` does what is calib's for every backend (the element reference removed
from the labels, the units check, replay, the provenance); this module writes the labels and the replay set to
an extxyz file, runs mace's trainer on it in a subprocess (``python -m mace.cli.run_train``, the module behind the
``mace_run_train`` console script, with the interpreter calib runs in), and reads the model it writes.

What calib passes to mace, and why:

* ``--foundation_model BASE`` (the base model saved to the trainer's folder: the very weights calib measured
  "before" with, whether they came from a file, ``mace-small`` or a module), ``--multiheads_finetuning False``
  (plain fine-tuning: multi-head replay needs MACE-MP's own training set; calib's replay is in the training
  file), ``--foundation_model_elements True`` (the tuned model keeps every element of the base model, not only
  those in the labels).
* ``--E0s foundation``: the base model's own atomic energies. They are fixed buffers of the model, so the
  energy zero is not trained in; the labels are already on the base model's zero (calib removed its element
  reference). Checked: one epoch at a learning rate of 1e-14 reproduces the base model's energies and forces to
  1e-12.
* ``--energy_key/--forces_key/--stress_key calib_energy/calib_forces/calib_stress``, the keys calib writes
  (total energy eV, forces eV/Å, stress eV/Å³ in ASE's sign and Voigt order).
* ``--loss weighted`` (energy per atom and forces; ``stress`` with ``stress=True``) with mace's default weights
  (energy 1, forces 100, stress 1), Adam (AMSGrad) at ``lr``, mace's default scheduler (ReduceLROnPlateau,
  which does not act within a few epochs), no EMA; ``--max_num_epochs``, ``--batch_size`` (at most the number
  of training structures: mace drops an incomplete last batch), ``--seed`` from calib's options;
  ``--default_dtype`` the adapter's (float64 by default); the adapter's device.
* ``--valid_file`` = the training file: a fine-tuning on a few labels cannot spare some for validation. mace
  keeps the epoch with the lowest loss on it, i.e. on the training set (with a falling loss, the last one).

The output is one ``.model`` file, ``torch.save`` of the module as mace writes it, with calib's provenance as a
plain dict in the module's ``calib_provenance`` attribute (format tag ``"calib-finetuned-mace"``). mace's own
loaders (``MACECalculator``) and :func:`calib.models.load_model` (``--model FILE``) read it; the adapter exposes
the record as ``adapter.provenance``. Like every MACE file it is a pickle: calib loads it only because you name it.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
from collections.abc import Sequence

import numpy as np
from ase import Atoms

from calib.data.structures import get_energy, get_forces, get_stress
from calib.errors import CalibError
from calib.models.mace import FINETUNED_FORMAT as FORMAT
from calib.models.mace import PROVENANCE_ATTRIBUTE as ATTRIBUTE

KEYS = {"energy": "calib_energy", "forces": "calib_forces", "stress": "calib_stress"}
TRAINER = ("mace_run_train --foundation_model (mace.cli.run_train: E0s of the base model, all its elements kept, "
           "no multi-head replay; weighted loss, energy 1 / forces 100 [/ stress 1]; Adam (AMSGrad), "
           "ReduceLROnPlateau; no EMA; validation on the training set)")
#: the packages whose versions the provenance records (key -> distribution)
PACKAGES = {"mace": "mace-torch"}
_NAME = "calib-finetuned"
_LOG_TAIL = 30  # lines of mace's log quoted when it fails


class TrainerError(CalibError):
    """The model's own trainer failed (kind ``trainer``, exit 1): the message ends with the tail of its log."""

    kind = "trainer"


def write_training_set(path: str, structs: Sequence[Atoms], shifts: np.ndarray, stress: bool) -> bool:
    """Write ``structs`` to the extxyz file ``path`` under :data:`KEYS`: total energy after the element reference
    ``shifts`` (eV), forces (eV/Å) and, with ``stress`` when every structure has one, the stress (eV/Å³, ASE's
    sign, Voigt order xx yy zz yz xz xy, as mace reads it). Returns whether the stress was written."""
    import ase.io
    from ase.stress import full_3x3_to_voigt_6_stress

    stresses = [get_stress(a) for a in structs] if stress else [None]
    use_stress = all(s is not None for s in stresses)
    out = []
    for k, (a, s) in enumerate(zip(structs, shifts)):
        b = Atoms(a.numbers, a.positions, cell=a.cell, pbc=a.pbc)
        b.info[KEYS["energy"]] = float(get_energy(a) - s)
        b.arrays[KEYS["forces"]] = np.asarray(get_forces(a), dtype=float)
        if use_stress:
            b.info[KEYS["stress"]] = full_3x3_to_voigt_6_stress(np.asarray(stresses[k], dtype=float))
        out.append(b)
    ase.io.write(path, out, format="extxyz")
    return use_stress


def mace_arguments(base: str, train: str, *, stress: bool, epochs: int, lr: float, seed: int, batch_size: int,
                   device: str, dtype: str, head: str | None = None) -> list[str]:
    """mace_run_train's arguments for fine-tuning the model file ``base`` on the extxyz file ``train`` (module
    doc), run in its working folder."""
    args = ["--name", _NAME, "--work_dir", ".", "--seed", str(int(seed)), "--device", device, "--default_dtype", dtype,
            "--foundation_model", base, "--multiheads_finetuning", "False", "--foundation_model_elements", "True",
            "--E0s", "foundation", "--train_file", train, "--valid_file", train,
            "--energy_key", KEYS["energy"], "--forces_key", KEYS["forces"], "--stress_key", KEYS["stress"],
            "--loss", "stress" if stress else "weighted", "--lr", repr(float(lr)),
            "--batch_size", str(int(batch_size)), "--valid_batch_size", str(int(batch_size)),
            "--max_num_epochs", str(int(epochs)), "--eval_interval", "1", "--save_cpu", "--plot", "False"]
    if head is not None:
        args += ["--foundation_head", head]
    return args


def train_mace(model, train: Sequence[Atoms], shifts: np.ndarray, work: str, *, stress: bool, epochs: int,
               lr: float, seed: int, batch_size: int, progress: bool):
    """(the trained module, the targets trained on, mace's arguments) for the MACE adapter ``model`` on ``train``
    (labels minus ``shifts``, eV), by mace_run_train run in the folder ``work`` (the caller removes it); the base
    model stays as it was. Raises :class:`TrainerError` with the tail of mace's log when it fails."""
    import torch

    base = os.path.join(work, "base.model")
    torch.save(model.module, base)  # the weights calib measured "before" with, in the adapter's dtype
    use_stress = write_training_set(os.path.join(work, "train.extxyz"), train, shifts, stress)
    # mace drops a last incomplete batch: a batch larger than the training set would leave it no batch at all
    args = mace_arguments("base.model", "train.extxyz", stress=use_stress, epochs=epochs, lr=lr, seed=seed,
                          batch_size=min(int(batch_size), len(train)), device=model.device.type,
                          dtype="float64" if model.dtype == torch.float64 else "float32",
                          head=model.head if len(model.heads) > 1 else None)
    _run([sys.executable, "-m", "mace.cli.run_train", *args], work, progress)
    path = os.path.join(work, f"{_NAME}.model")
    if not os.path.exists(path):
        raise TrainerError(f"mace_run_train finished without writing {_NAME}.model")
    return read_module(path), "efs" if use_stress else "ef", args


def _run(argv: list[str], work: str, progress: bool) -> None:
    """Run mace's trainer in ``work``: its output goes to ``work/mace.log`` (and to stderr with ``progress``); the
    process is killed if calib is interrupted."""
    import torch

    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}  # calib's thread choice
    tail: collections.deque = collections.deque(maxlen=_LOG_TAIL)
    with open(os.path.join(work, "mace.log"), "w") as log:
        proc = subprocess.Popen(argv, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace",
                                preexec_fn=_die_with_parent())
        try:
            for line in proc.stdout:
                log.write(line)
                tail.append(line.rstrip())
                if progress:
                    sys.stderr.write(line)
            rc = proc.wait()
        finally:  # an exception here (SIGINT, SIGTERM as exceptions) must not leave the trainer running
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
    if rc != 0:
        raise TrainerError(f"mace_run_train failed (exit {rc}); the end of its log:\n" + "\n".join(tail))


def _die_with_parent():
    """On Linux, the function the trainer's process runs before mace: it asks to be sent SIGTERM when calib dies,
    even by SIGKILL, so that no orphaned trainer writes into a folder the next fine-tuning removes (None
    elsewhere). prctl is looked up here, in calib's process, so that the child only calls it."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes
    import signal

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # pragma: no cover - a libc without prctl
        return None
    PR_SET_PDEATHSIG, sigterm = ctypes.c_int(1), ctypes.c_ulong(int(signal.SIGTERM))
    return lambda: prctl(PR_SET_PDEATHSIG, sigterm)


def read_module(path: str):
    """The MACE module of a ``.model`` file (a pickle: only files calib or mace just wrote, or the user named)."""
    import torch

    from calib.models.mace import _import_mace

    _import_mace()  # mace's classes, imported before e3nn
    return torch.load(path, map_location="cpu", weights_only=False)


def save_model(path: str, module, record: dict) -> None:
    """Write ``module`` to ``path`` as mace does (``torch.save`` of the module) with calib's ``record`` (plain
    data) as its :data:`ATTRIBUTE`."""
    import torch

    setattr(module, ATTRIBUTE, dict(record))
    torch.save(module, path)


def adapter_of(path: str, device):
    """The MACE adapter of a model file ``path`` calib just wrote, read as ``--model FILE`` reads it."""
    from calib.models.registry import load_model

    return load_model(os.fspath(path), device=str(device))
