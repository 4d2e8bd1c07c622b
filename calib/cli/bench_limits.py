"""``calib bench limits``: what the error contract costs, measured now (docs/cli.md, rules 1 and 9).

* **Parameter errors**: seconds from start to exit of ``calib ... --json`` for parameters that are refused
  (each in a fresh process: the imports are the cost; target well under 1 s).
* **Degenerate structures**: seconds the validator takes on a cell 1e-6 Å thin, an atom 1e6 Å outside its
  cell and a dense cloud (target: milliseconds).
* **Memory of a far-out atom**: peak resident memory (MB, ``os.wait4``) of ``calib predict`` on four
  structures, one with an atom 1e7 Å outside its cell (calib 0.5: 18.9 GB; target below 2 GB).

Times and MB are numbers to read, not assertions: the tests check behaviour under hard limits.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

#: (name, argv) of parameter errors, each refused before any model loads
PARAMETER_ERRORS = [
    ("predict --batch-size 0", ["predict", "x.extxyz", "--batch-size", "0"]),
    ("predict --model bogus", ["predict", "x.extxyz", "--model", "bogus"]),
    ("label --kdensity 0", ["label", "x.extxyz", "-o", "l.extxyz", "--kdensity", "0"]),
    ("finetune --lr 0", ["finetune", "x.extxyz", "-o", "m.pt", "--lr", "0"]),
    ("loop -o missing/dir", ["loop", "x.extxyz", "-o", "missing/dir"]),
]


def _wall(argv: list, cwd: str) -> tuple[float, int, int]:
    """(seconds, exit code, peak RSS in kB) of one ``calib`` process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "calib.cli.main", *argv], cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    return time.perf_counter() - t0, os.waitstatus_to_exitcode(status), usage.ru_maxrss


def degenerate_structures() -> dict:
    """The validator's cases of docs/cli.md rule 9 (ase.Atoms, Å)."""
    import numpy as np
    from ase import Atoms

    return {
        "thin": Atoms("Si2", positions=[[0, 0, 0], [1.5, 1.5, 0]], cell=[[5, 0, 0], [0, 5, 0], [0, 0, 1e-6]],
                      pbc=True),
        "far": Atoms("Si2", positions=[[0, 0, 0], [1e6, 1.5, 0]], cell=[5, 5, 5], pbc=True),
        "dense": Atoms("Si200", positions=np.random.default_rng(0).uniform(0, 3, (200, 3)), cell=[3, 3, 3],
                       pbc=True),
    }


def far_atom_file(path: str) -> None:
    """Four structures, the second with one atom 1e7 Å outside its periodic cell (extxyz)."""
    import ase.io
    from ase.build import bulk

    frames = [bulk("Si", "diamond", 5.43, cubic=True), bulk("Si", "diamond", 5.43, cubic=True),
              bulk("NaCl", "rocksalt", 5.64, cubic=True), bulk("Cu", "fcc", 3.61, cubic=True)]
    frames[1].positions[3, 0] += 1e7
    for k, a in enumerate(frames):
        a.info["name"] = f"s{k}"
    ase.io.write(path, frames, format="extxyz")


def bench_limits(repeats: int = 3) -> dict:
    """Seconds of parameter errors (best of ``repeats`` fresh processes), seconds of the degenerate-structure
    checks, and the peak MB of ``calib predict`` on the far-atom file."""
    from calib.data.structures import StructureError, check_structure

    out = {}
    with tempfile.TemporaryDirectory(prefix="calib-bench-limits-") as work:
        worst = 0.0
        for name, argv in PARAMETER_ERRORS:
            runs = [_wall([*argv, "--json"], work) for _ in range(max(1, repeats))]
            best = min(r[0] for r in runs)
            out[f"parameter error {name}: seconds"] = round(best, 3)
            out[f"parameter error {name}: exit_code"] = runs[0][1]
            worst = max(worst, best)
        out["parameter errors: slowest seconds (target < 1)"] = round(worst, 3)
        for name, atoms in degenerate_structures().items():
            t0 = time.perf_counter()
            try:
                check_structure(atoms, cutoff=6.0)
            except StructureError:
                pass
            out[f"validate {name}: seconds"] = round(time.perf_counter() - t0, 4)
        path = os.path.join(work, "far.extxyz")
        far_atom_file(path)
        seconds, code, rss = _wall(["predict", path, "--json", "--quiet"], work)
        out["predict far atom: seconds"] = round(seconds, 1)
        out["predict far atom: exit_code"] = code
        out["predict far atom: peak_rss_mb (target < 2000)"] = round(rss / 1024, 0)
    return out
