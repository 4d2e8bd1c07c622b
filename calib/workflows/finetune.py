"""Fine-tuning a universal potential on new reference labels, with replay, through the model's own trainer.

CHGNet is trained by ``chgnet.trainer.Trainer`` (calib writes no training loop). Two things are calib's:

* **The energy zero.** Reference labels from another DFT code (GPAW PAW-PBE) sit on another per-element energy
  zero than the model's training data (Materials Project VASP). That offset is bookkeeping, not physics, and
  must not be trained into the weights: an :class:`calib.uq.reference.ElementReference` of reference minus
  model energies is fitted on the new labels and removed from them, so the model learns their energy
  *differences*, forces and stresses.
* **Replay.** Structures of the equilibrium proxy (the stand-in for the training set), labelled by the base
  model itself (pseudo-labels), are mixed in, ``replay`` of them for the new labels: the one strategy
  fine-tuning studies found to keep a model's behaviour outside the new data.

The result is one file, readable by ``CHGNet.from_file`` and by :func:`calib.models.load_model` (``--model
FILE``), holding the weights and calib's provenance: the base model, the SHA-256 of the labels and of the
replay set, the label files, the hyper-parameters, the training error before and after, the element reference
removed, the calib, chgnet and torch versions and the time it was written (UTC). The file holds tensors and
plain data only (``torch.load(weights_only=True)`` reads it) and carries calib's format tag
(``calib["format"] == "calib-finetuned-chgnet"``), by which :func:`calib.models.load_model` recognises it
whatever its suffix.

**Units.** Labels in the wrong units (meV/Å for eV/Å) train a model that is wrong everywhere. Before any
training, every labelled structure is checked (:func:`check_label_units`): a reference force above
:data:`MAX_FORCE` (100 eV/Å), a per-structure force MAE against the base model above :data:`ERROR_FACTOR` (50)
× :data:`TYPICAL_FORCE_ERROR` (0.1 eV/Å), or an energy per atom off the base model by more than 50 ×
:data:`TYPICAL_ENERGY_ERROR` (0.03 eV/atom) after the element reference is refused, naming the structure
(``check_units=False``, ``--allow-unphysical-labels``, trains anyway).

The trainer's working folder is a temporary folder removed on every exit (an exception, SIGINT, SIGTERM);
one left by a process that was killed outright (SIGKILL) is removed by the next fine-tuning.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import hashlib
import io
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from ase import Atoms

from calib.data.ncio import replace_atomically
from calib.data.structures import get_energy, get_forces, get_stress, structures_fingerprint
from calib.errors import InputError
from calib.models.chgnet import FINETUNED_FORMAT as FORMAT
from calib.workflows.settings import FINETUNE

#: no reference force is larger than this (eV/Å): the largest forces of the shipped high-energy states are ~10
MAX_FORCE = 100.0
#: the base model's typical errors against DFT (CHGNet 0.3.0 on MPtrj's test set: 0.06–0.08 eV/Å, 0.03 eV/atom)
TYPICAL_FORCE_ERROR = 0.1  # eV/Å
TYPICAL_ENERGY_ERROR = 0.03  # eV/atom
#: a label further from the base model than this many typical errors is in other units, not a hard structure
ERROR_FACTOR = 50.0
_TMP_PREFIX = "calib-finetune-"
#: the adapters trained by a backend module calib.workflows.finetune_<name> (CHGNet is trained here)
BACKENDS = {"SevenNetAdapter": "sevennet", "MACEAdapter": "mace"}


class LabelUnitsError(InputError):
    """Labels whose numbers cannot be in eV and eV/Å (kind ``input``, exit 1): the message names the structure."""


@dataclass
class FinetuneResult:
    """What :func:`finetune` did: the model file, its provenance and the training errors (forces eV/Å,
    energies eV/atom after the element reference), before (base model) and after."""

    path: str
    provenance: dict
    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"model": self.path, **self.provenance, "before": self.before, "after": self.after}


def replay_set(model, n: int, seed: int = 0, batch_size: int = 32) -> list[Atoms]:
    """``n`` structures of the shipped equilibrium proxy (seeded), labelled by ``model`` itself: total energy
    (eV), forces (eV/Å), stress (eV/Å³). Pseudo-labels keep what the model knew."""
    from ase.calculators.singlepoint import SinglePointCalculator

    from calib import datasets

    if n <= 0:
        return []
    proxy = datasets.load("equilibrium-proxy")
    pick = np.random.default_rng(seed).choice(len(proxy), size=min(n, len(proxy)), replace=False)
    structs = [proxy[int(i)] for i in sorted(pick)]
    pred = model.predict(structs, forces=True, stress=True, batch_size=batch_size)
    out = []
    for k, i in enumerate(pred.indices):
        a = structs[int(i)].copy()
        a.calc = SinglePointCalculator(a, energy=float(pred.energy[k]), forces=pred.forces_of(k),
                                       stress=pred.stress[k])
        a.info["replay"] = True
        out.append(a)
    return out


def _errors(model, structs: Sequence[Atoms], shift: np.ndarray | None = None, pred=None) -> dict:
    """Force MAE (eV/Å) and energy MAE per atom (eV/atom, after ``shift``) of ``model`` on labelled structures
    (``pred``: the model's prediction of ``structs`` with forces, when already made)."""
    pred = pred if pred is not None else model.predict(list(structs), forces=True, batch_size=16)
    f_err = np.concatenate([np.abs(pred.forces_of(k) - get_forces(structs[int(i)])).ravel()
                            for k, i in enumerate(pred.indices)])
    ref = np.array([get_energy(structs[int(i)]) for i in pred.indices])
    if shift is not None:
        ref = ref - shift[pred.indices]
    e_err = (ref - pred.energy) / pred.n_atoms
    return {"force_mae": float(np.mean(f_err)), "energy_mae_per_atom": float(np.mean(np.abs(e_err - e_err.mean())))
            if len(e_err) else float("nan"), "n_structures": int(len(pred.indices))}


def _sha(structs: Sequence[Atoms]) -> str:
    return hashlib.sha256(structures_fingerprint(list(structs)).encode()).hexdigest()


def check_label_units(structs: Sequence[Atoms], pred, shift: np.ndarray) -> None:
    """Raise :class:`LabelUnitsError` naming the first structure of ``structs`` whose labels cannot be in eV and
    eV/Å (module doc): ``pred`` is the base model's prediction of ``structs`` with forces (eV, eV/Å), ``shift``
    the element reference (eV) removed from each reference energy."""
    from calib.data.structures import structure_name

    def where(k):
        a = structs[k]
        src = str(a.info.get("source", ""))
        return f"structure {k} ({structure_name(a)}{', ' + src if src else ''})"

    hint = ("are the labels in eV and eV/Å (not meV, Hartree, kcal/mol)? pass check_units=False to train on them "
            "anyway")
    for k, a in enumerate(structs):
        f = get_forces(a)
        big = float(np.abs(f).max()) if f.size else 0.0
        if big > MAX_FORCE:
            atom = int(np.unravel_index(np.argmax(np.abs(f)), f.shape)[0])
            raise LabelUnitsError(f"{where(k)}: a reference force component of {big:.4g} eV/Å (atom {atom}), above "
                                  f"{MAX_FORCE:g} eV/Å, which no physical structure reaches; {hint}")
    for k in range(len(pred.indices)):
        i = int(pred.indices[k])
        mae = float(np.mean(np.abs(pred.forces_of(k) - get_forces(structs[i]))))
        if mae > ERROR_FACTOR * TYPICAL_FORCE_ERROR:
            raise LabelUnitsError(f"{where(i)}: the reference forces are {mae:.4g} eV/Å from the base model's on "
                                  f"average, more than {ERROR_FACTOR:g}× its typical error ({TYPICAL_FORCE_ERROR} "
                                  f"eV/Å); {hint}")
        e = (get_energy(structs[i]) - shift[i] - pred.energy[k]) / pred.n_atoms[k]
        if abs(e) > ERROR_FACTOR * TYPICAL_ENERGY_ERROR:
            raise LabelUnitsError(f"{where(i)}: the reference energy is {e:+.4g} eV/atom from the base model's after "
                                  f"the element reference, more than {ERROR_FACTOR:g}× its typical error "
                                  f"({TYPICAL_ENERGY_ERROR} eV/atom); {hint}")


def _versions(**backend) -> dict:
    """The versions of calib, chgnet, torch and of ``backend``'s packages (key -> distribution name, e.g.
    ``mace="mace-torch"`` gives ``mace_version``)."""
    from importlib.metadata import PackageNotFoundError, version

    import calib

    out = {"calib_version": calib.__version__}
    for key, pkg in {"chgnet": "chgnet", "torch": "torch", **backend}.items():
        try:
            out[f"{key}_version"] = version(pkg)
        except PackageNotFoundError:  # pragma: no cover - dependencies, or the backend's own that it imported
            out[f"{key}_version"] = "unknown"
    return out


def _label_files(structs: Sequence[Atoms], given) -> list[str]:
    """The files the labels came from: the paths given, else the files named by each structure's source."""
    if given:
        return [os.fspath(p) for p in given]
    files = []
    for a in structs:
        src = str(a.info.get("source", "")).rsplit(":", 1)[0]
        if src and src not in files:
            files.append(src)
    return files


def _workdir() -> str:
    """A new trainer folder in the temporary folder, named by this process (the caller removes it on any exit;
    the CLI turns SIGINT and SIGTERM into exceptions), after removing those of fine-tunings killed outright."""
    _remove_stale_workdirs()
    return tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{os.getpid()}-")


def _remove_stale_workdirs() -> None:
    """Remove trainer folders left in the temporary folder by fine-tunings killed outright (their pid is gone)."""
    base = tempfile.gettempdir()
    for name in os.listdir(base):
        if not name.startswith(_TMP_PREFIX):
            continue
        pid = name[len(_TMP_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(base, name), ignore_errors=True)
        except PermissionError:  # another user's live process
            pass


def _training_data(train: Sequence[Atoms], shifts: np.ndarray, stress: bool, progress: bool):
    """chgnet's StructureData of the training structures: energies per atom after the element reference
    ``shifts`` (eV, as CHGNet predicts), forces (eV/Å) and, with ``stress`` when every structure has one, stresses
    (GPa with ASE's sign, as CHGNet's own stress head: calib.models.chgnet)."""
    from ase.units import GPa
    from chgnet.data.dataset import StructureData
    from pymatgen.io.ase import AseAtomsAdaptor

    energies = [(get_energy(a) - s) / len(a) for a, s in zip(train, shifts)]
    stresses = [get_stress(a) for a in train] if stress else [None]
    use_stress = all(s is not None for s in stresses)
    with contextlib.redirect_stdout(io.StringIO() if not progress else sys.stderr):  # chgnet prints; --json owns stdout
        return StructureData(structures=[AseAtomsAdaptor.get_structure(a) for a in train], energies=energies,
                             forces=[get_forces(a) for a in train],
                             stresses=[s / GPa for s in stresses] if use_stress else None, shuffle=False)


def _train(model, data, targets: str, n: int, *, epochs: int, lr: float, seed: int, batch_size: int,
           progress: bool):
    """A copy of ``model``'s CHGNet trained on ``data`` (``n`` structures, a tenth held for validation from 4 on)
    by chgnet's Trainer in a temporary folder that is removed on any exit; the base model stays as it was."""
    import torch
    from chgnet.data.dataset import get_train_val_test_loader
    from chgnet.trainer import Trainer

    torch.manual_seed(seed)
    val_ratio = max(1.0 / n, 0.1) if n >= 4 else 0.0
    loaders = get_train_val_test_loader(data, batch_size=batch_size, train_ratio=1.0 - val_ratio,
                                        val_ratio=val_ratio, return_test=False, pin_memory=False)
    train_loader, val_loader = loaders[0], loaders[1] if val_ratio else loaders[0]
    trainer = Trainer(model=copy.deepcopy(model.model), targets=targets,
                      optimizer="Adam", scheduler="CosLR", criterion="MSE",
                      epochs=int(epochs), learning_rate=float(lr), use_device=str(model.device), torch_seed=seed,
                      data_seed=seed, print_freq=10**9)
    work = _workdir()
    try:
        with contextlib.redirect_stdout(io.StringIO() if not progress else sys.stderr):
            trainer.train(train_loader, val_loader, save_dir=work, train_composition_model=False)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return trainer.model.to(model.device).eval()


def finetune(model, labelled: Sequence[Atoms], out, *, epochs: int = FINETUNE.epochs, replay: int = FINETUNE.replay,
             lr: float = FINETUNE.lr, seed: int = FINETUNE.seed, batch_size: int = FINETUNE.batch_size,
             stress: bool = False, progress: bool = True, check_units: bool = True,
             label_files: Sequence | None = None) -> FinetuneResult:
    """Fine-tune a CHGNet ``model`` (a calib adapter) on ``labelled`` structures (energy eV, forces eV/Å, and
    with ``stress`` the stress eV/Å³) plus ``replay`` pseudo-labelled proxy structures, with chgnet's Trainer;
    write the model to ``out``. Returns a :class:`FinetuneResult` (training errors before and after, eV/Å and
    eV/atom).

    Stress is off by default: on the ±3 % strained high-energy frames CHGNet's stress is soft by several GPa,
    and with chgnet's loss weights (stress 0.1 × MSE in GPa²) that term then dominates the forces (measured:
    6 epochs on 5 Si frames took the force MAE from 0.388 to 0.434 eV/Å with stress, to 0.329 without).

    ``check_units``: refuse labels in the wrong units (:func:`check_label_units`, module doc) before training;
    ``label_files``: the files the labels were read from, for the provenance (default: their sources)."""
    import torch

    from calib.models.chgnet import CHGNetAdapter
    from calib.uq.reference import ElementReference

    backend = "chgnet" if isinstance(model, CHGNetAdapter) else BACKENDS.get(type(model).__name__)
    if backend is None:
        raise ValueError(f"finetune trains CHGNet (chgnet's Trainer), SevenNet (sevenn's Trainer) and MACE models "
                         f"(mace_run_train from a foundation model); got {model.name} ({type(model).__name__})")
    if backend == "sevennet":
        from calib.workflows.finetune_sevennet import check_trainer

        check_trainer()
    good, issues = model.validate(list(labelled), require_labels=True)
    structs = [labelled[i] for i in good]
    if not structs:
        raise InputError("no valid labelled structure to fine-tune on: " + "; ".join(map(str, issues[:5])))
    t0 = time.perf_counter()
    # the DFT code's per-element energy zero is removed from the labels (fitted against the base model)
    base = model.predict(structs, forces=True, batch_size=batch_size)
    numbers = [a.numbers for a in structs]
    reference = ElementReference().fit(numbers, np.array([get_energy(a) for a in structs]) - base.energy)
    shift = reference.predict(numbers)
    if check_units:
        check_label_units(structs, base, shift)
    replayed = replay_set(model, replay, seed=seed)
    shifts = np.concatenate([shift, np.zeros(len(replayed))])
    before = _errors(model, structs, shift, pred=base)
    if backend != "chgnet":
        return _finetune_backend(backend, model, structs, replayed, shifts, reference, before, out, t0=t0,
                                 epochs=epochs, lr=lr, seed=seed, batch_size=batch_size, stress=stress,
                                 progress=progress, check_units=check_units, label_files=label_files, issues=issues)
    data = _training_data(structs + replayed, shifts, stress, progress)
    targets = "efs" if data.stresses is not None else "ef"
    tuned = _train(model, data, targets, len(structs) + len(replayed), epochs=epochs, lr=lr, seed=seed,
                   batch_size=batch_size, progress=progress)
    after = _errors(CHGNetAdapter(model=tuned, device=model.device), structs, shift)
    provenance = _provenance(model, structs, replayed, reference, t0, epochs=epochs, lr=lr, seed=seed,
                             batch_size=batch_size, targets=targets,
                             trainer="chgnet.trainer.Trainer (Adam, CosLR, MSE; composition model frozen)",
                             label_files=label_files, check_units=check_units, issues=issues)
    out = os.fspath(out)
    replace_atomically(out, lambda tmp: torch.save({"model": tuned.as_dict(),
                                                    "calib": {**provenance, "before": before, "after": after}}, tmp))
    return FinetuneResult(out, provenance, before, after)


def _provenance(model, structs, replayed, reference, t0, *, epochs, lr, seed, batch_size, targets, trainer,
                label_files, check_units, issues) -> dict:
    """calib's record of a fine-tuning (module doc), the same for every backend."""
    return {
        "format": FORMAT, "base_model": f"{model.name} {model.version}", "base_fingerprint": model.fingerprint(),
        "labels_sha256": _sha(structs), "n_labels": len(structs), "replay_sha256": _sha(replayed),
        "n_replay": len(replayed), "replay_source": "datasets/equilibrium-proxy, pseudo-labelled by the base model",
        "epochs": int(epochs), "learning_rate": float(lr), "seed": int(seed), "batch_size": int(batch_size),
        "targets": targets, "trainer": trainer,
        "element_reference_removed": reference.as_dict(), "seconds": round(time.perf_counter() - t0, 1),
        "label_files": _label_files(structs, label_files), "units_checked": bool(check_units),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **_versions(),
        "skipped": [i.as_dict() for i in issues]}


def _finetune_backend(backend, model, structs, replayed, shifts, reference, before, out, *, t0, epochs, lr, seed,
                      batch_size, stress, progress, check_units, label_files, issues) -> FinetuneResult:
    """The SevenNet and MACE branches of :func:`finetune`: the backend's own trainer (calib.workflows.finetune_sevennet:
    sevenn's Trainer, a sevenn checkpoint with calib's record under "calib"; calib.workflows.finetune_mace:
    mace_run_train, a mace ``.model`` file with calib's record in its ``calib_provenance`` attribute), in a
    temporary folder removed on any exit; the training error after is that of the file read back as ``--model
    FILE`` reads it."""
    import importlib

    be = importlib.import_module(f"calib.workflows.finetune_{backend}")
    train = list(structs) + list(replayed)
    hyper = dict(stress=stress, epochs=epochs, lr=lr, seed=seed, batch_size=batch_size, progress=progress)
    work = _workdir()
    try:
        if backend == "sevennet":
            net, config, targets = be.train_sevennet(model, train, shifts, **hyper)
            extra, suffix = {}, ".pth"

            def save(path, record):
                be.save_checkpoint(path, net, config, record)
        else:
            module, targets, args = be.train_mace(model, train, shifts, work, **hyper)
            extra, suffix = {"mace_arguments": args}, ".model"

            def save(path, record):
                be.save_model(path, module, record)
        provenance = {**_provenance(model, structs, replayed, reference, t0, epochs=epochs, lr=lr, seed=seed,
                                    batch_size=batch_size, targets=targets, trainer=be.TRAINER,
                                    label_files=label_files, check_units=check_units, issues=issues),
                      **_versions(**be.PACKAGES), **extra, "format": be.FORMAT}
        probe = os.path.join(work, "trained" + suffix)
        save(probe, provenance)
        after = _errors(be.adapter_of(probe, model.device), structs, reference.predict([a.numbers for a in structs]))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = os.fspath(out)
    replace_atomically(out, lambda tmp: save(tmp, {**provenance, "before": before, "after": after}))
    return FinetuneResult(out, provenance, before, after)
