"""Generate the shipped high-energy-state dataset (Deng et al. protocol, scaled down).

For each chemistry: build the prototype cell (8-16 atoms), relax it with
CHGNet 0.3.0 (positions and cell), run Langevin NVT MD at 1000 K with CHGNet,
take 10 evenly spaced frames, strain 2 of them by +3 % and 2 by -3 % along all
three lattice vectors (atoms scaled with the cell), and label every frame with
GPAW PAW-PBE through :func:`calib.labelers.label`.

Resumable: the MD frames of a chemistry are written once to
``frames/<name>.extxyz`` and reused; labels stream to ``<name>.extxyz`` and a
rerun labels only what is missing. Seeded (``SEED``) throughout.

Run from the repository root::

    OMP_NUM_THREADS=1 python datasets/high-energy-states/generate.py [NAME ...]
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time

import numpy as np
from ase import Atoms, units
from ase.filters import FrechetCellFilter
from ase.io import read, write
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
from ase.optimize import FIRE

from calib.data.prototypes import PROTOTYPES, prototype  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SEED = 20261122
TEMPERATURE_K = 1000.0
TIMESTEP_FS = 1.0
N_STEPS = 1500  # 1.5 ps: 10 frames every 150 steps (paper: 20 ps, see README)
N_FRAMES = 10
STRAIN = 0.03
CUTOFF_EV = 450.0
KDENSITY = 2.0  # k-points per Å⁻¹ (see README for the convergence check)


def chgnet_calculator():
    from chgnet.model import CHGNet
    from chgnet.model.dynamics import CHGNetCalculator

    with contextlib.redirect_stdout(io.StringIO()):
        model = CHGNet.load(model_name="0.3.0", use_device="cpu", verbose=False)
        return CHGNetCalculator(model=model, use_device="cpu")


def md_frames(name: str, calc) -> list[Atoms]:
    from calib.data.structures import chemsys

    path = os.path.join(HERE, "frames", f"{name}.extxyz")
    if os.path.exists(path):
        return read(path, index=":")
    rng = np.random.default_rng(SEED + sum(map(ord, name)))
    atoms = prototype(name)
    atoms.calc = calc
    FIRE(FrechetCellFilter(atoms), logfile=None).run(fmax=0.05, steps=200)
    MaxwellBoltzmannDistribution(atoms, temperature_K=TEMPERATURE_K, rng=rng)
    Stationary(atoms)
    dyn = Langevin(atoms, timestep=TIMESTEP_FS * units.fs, temperature_K=TEMPERATURE_K,
                   friction=0.02, rng=rng, logfile=None)
    frames = []
    every = N_STEPS // N_FRAMES
    for k in range(N_FRAMES):
        dyn.run(every)
        frame = Atoms(atoms.numbers, positions=atoms.get_positions(), cell=atoms.cell[:], pbc=True)
        strain = STRAIN if k in (2, 6) else -STRAIN if k in (4, 8) else 0.0
        if strain:
            frame.set_cell(frame.cell[:] * (1 + strain), scale_atoms=True)
        frame.info.update(name=f"{name}-md{k}", chemsys=chemsys(frame), md_step=every * (k + 1),
                          temperature_K=TEMPERATURE_K, strain=strain, seed=SEED)
        frames.append(frame)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write(path, frames, format="extxyz")
    return frames


def main(names: list[str]) -> None:
    from calib.data.labelers import GPAWFactory, label

    calc = chgnet_calculator()
    log_path = os.path.join(HERE, "provenance.json")
    log = json.load(open(log_path)) if os.path.exists(log_path) else {}
    for name in names:
        t0 = time.perf_counter()
        frames = md_frames(name, calc)
        t_md = time.perf_counter() - t0
        report = label(frames, os.path.join(HERE, f"{name}.extxyz"),
                       GPAWFactory(cutoff=CUTOFF_EV, kdensity=KDENSITY), progress=False)
        entry = log.setdefault(name, {"md_seconds": 0.0, "dft_seconds": 0.0})
        entry["md_seconds"] += round(t_md, 1)
        entry["dft_seconds"] += round(report.seconds, 1)
        entry["n_failed"] = len(report.failures)
        with open(log_path, "w") as fh:
            json.dump(log, fh, indent=1, sort_keys=True)
        print(f"{name}: {report.n_labelled} labelled, {report.n_done_before} done before, "
              f"{len(report.failures)} failed, md {t_md:.0f} s, dft {report.seconds:.0f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or list(PROTOTYPES))
