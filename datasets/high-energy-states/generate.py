"""Generate the shipped high-energy-state dataset (Deng et al. protocol, scaled down).

For each chemistry: build the prototype cell (8-16 atoms), relax it with
CHGNet 0.3.0 (positions and cell), run Langevin NVT MD at 1000 K with CHGNet,
take frames every 150 steps, strain frame 2 by +3 % and frame 4 by -3 % (and,
in the 10-frame systems of ``PROTOTYPES``, frame 6 by +3 % and frame 8 by -3 %)
along all three lattice vectors (atoms scaled with the cell), and label every
frame with GPAW PAW-PBE through :func:`calib.data.labelers.label`.

The 14 first systems (``calib.data.prototypes.PROTOTYPES``) have 10 frames (1.5 ps);
the periodic-table extension (``calib.data.prototypes.PERIODIC_SYSTEMS``) has 6
(0.9 ps), which are the first 6 frames of the same protocol. The GPAW settings
per system (spin polarisation, initial moments, Hubbard U) come from ``settings``. The ternary compounds
(``calib.data.prototypes.TERNARY_SYSTEMS``) follow the extension's 6-frame protocol.

Resumable: the MD frames of a chemistry are written once to
``frames/<name>.extxyz`` and reused; labels stream to ``<name>.extxyz.partial``
(outside the dataset) and a rerun labels only what is missing; when every frame
is labelled (or failed for good, named in ``provenance.json``) the file becomes
``<name>.extxyz``. Seeded (``SEED``) throughout. Several
workers share the list round-robin (``--worker K/N``); ``provenance.json`` is
updated under a file lock.

Run from the repository root::

    OMP_NUM_THREADS=1 python datasets/high-energy-states/generate.py [--worker K/N] [NAME ...]
    OMP_NUM_THREADS=1 python datasets/high-energy-states/generate.py --periodic   # the extension only
    OMP_NUM_THREADS=1 python datasets/high-energy-states/generate.py --ternary    # the ternary compounds
"""

from __future__ import annotations

import contextlib
import fcntl
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

from calib.data.prototypes import PERIODIC_SYSTEMS, PROTOTYPES, TERNARY_SYSTEMS, prototype  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SEED = 20261122
TEMPERATURE_K = 1000.0
TIMESTEP_FS = 1.0
STEPS_PER_FRAME = 150  # 150 fs between frames (paper: 20 ps in all, see README)
STRAIN = 0.03
CUTOFF_EV = 450.0
KDENSITY = 2.0  # k-points per Å⁻¹ (see README for the convergence check)

#: systems labelled spin-polarised, with Materials Project's ferromagnetic initial moments and, on oxides and
#: fluorides of Co, Cr, Fe, Mn, Mo, Ni, V and W, its Hubbard U (calib.data.dft.materials_project_settings:
#: MPRelaxSet's MAGMOM and LDAUU, as CHGNet learned them from MPtrj). Everything else is non-spin-polarised PBE.
#: WO3 and MoO2 are labelled as Materials Project labels them (spin-polarised, U on W and Mo) though they are not
#: magnetic 3d systems: they are there for the "W (U)" and "Mo (U)" energy offsets.
MAGNETIC = ("Fe", "Co", "Ni", "Cr", "MnO", "FeO", "CoO", "NiO", "Cr2O3", "LiCoO2", "LiNiO2", "LiVO2", "LiMn2O4",
            "WO3", "MoO2", "MnS")


#: systems whose SCF starts with the careful mixer (calib.data.labelers.CAREFUL_MIXER, 1000 iterations) instead of
#: reaching it as the fallback: CoO's first two frames did not converge with GPAW's default mixer in 333
#: iterations (45 min of a core each, thrown away) and converged with the careful one
CAREFUL = ("CoO",)


def settings(name: str) -> dict:
    """GPAW settings beyond the shared ones for one system: spin, initial moments (μB) and U (eV)."""
    if name not in MAGNETIC:
        return {"spinpol": False}
    from calib.data.dft import materials_project_settings

    return {"spinpol": True, **materials_project_settings(prototype(name).get_chemical_symbols())}


def n_frames(name: str) -> int:
    """10 frames for the first systems (``PROTOTYPES``), 6 for the periodic-table extension."""
    return 6 if name in PERIODIC_SYSTEMS or name in TERNARY_SYSTEMS else 10


def factory(name: str):
    from calib.data.labelers import CAREFUL_MAXITER, CAREFUL_MIXER, GPAWFactory

    extra = settings(name)
    careful = {"mixer": dict(CAREFUL_MIXER), "maxiter": CAREFUL_MAXITER} if name in CAREFUL else {}
    return GPAWFactory(cutoff=CUTOFF_EV, kdensity=KDENSITY, spinpol=extra["spinpol"],
                       magmoms=extra.get("magmoms"), hubbard_u=extra.get("hubbard_u"), **careful)


def chgnet_calculator():
    from chgnet.model import CHGNet
    from chgnet.model.dynamics import CHGNetCalculator

    with contextlib.redirect_stdout(io.StringIO()):
        model = CHGNet.load(model_name="0.3.0", use_device="cpu", verbose=False)
        return CHGNetCalculator(model=model, use_device="cpu")


def md_frames(name: str, calc) -> list[Atoms]:
    from calib.data.structures import chemsys

    path = os.path.join(HERE, "frames", f"{name}.extxyz")
    n = n_frames(name)
    if os.path.exists(path):
        return read(path, index=":")[:n]  # ZnO's frames were made for 10; its first 6 are the 6-frame protocol
    rng = np.random.default_rng(SEED + sum(map(ord, name)))
    atoms = prototype(name)
    atoms.calc = calc
    FIRE(FrechetCellFilter(atoms), logfile=None).run(fmax=0.05, steps=200)
    MaxwellBoltzmannDistribution(atoms, temperature_K=TEMPERATURE_K, rng=rng)
    Stationary(atoms)
    dyn = Langevin(atoms, timestep=TIMESTEP_FS * units.fs, temperature_K=TEMPERATURE_K,
                   friction=0.02, rng=rng, logfile=None)
    frames = []
    every = STEPS_PER_FRAME
    for k in range(n):
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


def _n_frames(path: str) -> int:
    with open(path) as fh:
        return sum("calib_key=" in line for line in fh)


@contextlib.contextmanager
def _locked_log(path: str):
    """``provenance.json`` read, handed out for update and written back under an exclusive lock."""
    with open(path + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        log = json.load(open(path)) if os.path.exists(path) else {}
        yield log
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w") as fh:
            json.dump(log, fh, indent=1, sort_keys=True)
        os.replace(tmp, path)


def main(names: list[str]) -> None:
    from calib.data.labelers import label

    calc = chgnet_calculator()
    log_path = os.path.join(HERE, "provenance.json")
    for name in names:
        t0 = time.perf_counter()
        frames = md_frames(name, calc)
        t_md = time.perf_counter() - t0
        gpaw = factory(name)
        final = os.path.join(HERE, f"{name}.extxyz")
        partial = final + ".partial"  # out of the dataset (datasets.load reads *.extxyz) until every frame is done
        if os.path.exists(final) and not os.path.exists(partial) and _n_frames(final) < len(frames):
            os.replace(final, partial)  # a system stopped mid-way by an older version of this script
        if os.path.exists(final):
            report = label(frames, final, gpaw, progress=False)
        else:
            report = label(frames, partial, gpaw, progress=False)
            if report.n_done_before + report.n_labelled == len(frames) or (
                    report.n_done_before + report.n_labelled + len(report.failures) == len(frames)):
                os.replace(partial, final)
                if os.path.exists(partial + ".errors.jsonl"):
                    os.replace(partial + ".errors.jsonl", final + ".errors.jsonl")
        with _locked_log(log_path) as log:
            entry = log.setdefault(name, {"md_seconds": 0.0, "dft_seconds": 0.0})
            entry["md_seconds"] = round((entry["md_seconds"] or 0.0) + t_md, 1)
            entry["dft_seconds"] = round(entry["dft_seconds"] + report.seconds, 1)
            entry["n_frames"] = len(frames)
            entry["n_failed"] = len(report.failures)
            # a frame whose SCF did not converge even with the careful mixer is left out, and named here
            entry["failed_frames"] = [{"name": f["name"], "error": f["error"][:300]} for f in report.failures]
            if name in PERIODIC_SYSTEMS or name in TERNARY_SYSTEMS:
                entry["gpaw"] = {"cutoff_eV": gpaw.cutoff, "kdensity": gpaw.kdensity, "xc": gpaw.xc,
                                 "smearing_eV": gpaw.smearing, "spinpol": gpaw.spinpol,
                                 "magmoms": gpaw.magmoms, "hubbard_u": gpaw.hubbard_u,
                                 "convergence": gpaw.convergence, "mixer": gpaw.mixer, "maxiter": gpaw.maxiter}
        print(f"{name}: {report.n_labelled} labelled, {report.n_done_before} done before, "
              f"{len(report.failures)} failed, md {t_md:.0f} s, dft {report.seconds:.0f} s", flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    worker, n_workers = 0, 1
    if args[:1] == ["--worker"]:
        worker, n_workers = map(int, args[1].split("/"))
        args = args[2:]
    if args == ["--periodic"]:
        args = list(PERIODIC_SYSTEMS)
    if args == ["--ternary"]:
        args = list(TERNARY_SYSTEMS)
    chosen = args or [*PROTOTYPES, *PERIODIC_SYSTEMS, *TERNARY_SYSTEMS]
    main(chosen[worker::n_workers])
