"""Reference labels through any ASE calculator; GPAW PAW-PBE by default.

:func:`label` streams each finished structure to an extxyz file (total energy
in eV, forces in eV/Å, stress in eV/Å³ in ASE's sign convention), so an
interrupted run loses at most the structure in flight: rerunning with the same
output file skips every structure already there (matched by a fingerprint of
numbers, positions and cell). A structure whose calculation fails is written
to ``<out>.errors.jsonl`` with its error, and the run goes on; so is one whose
forces do not sum to zero (:data:`NET_FORCE_TOL`), after a retry at tighter SCF
convergence where the calculator factory has one (:meth:`GPAWFactory.fallback`).

Every labelled structure records how it was labelled in ``atoms.info``:
``calculator`` (e.g. ``"gpaw 26.7.0"``), ``xc``, ``cutoff_eV``, ``kpts`` (the
grid actually used), ``spinpol`` and ``label_seconds`` (wall time).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, kptdensity2monkhorstpack
from ase.calculators.singlepoint import SinglePointCalculator

from calib.data.dft import GPAW
from calib.data.ncio import replace_atomically
from calib.data.structures import NET_FORCE_TOL, UnbalancedForces, net_force_per_atom, structure_name

#: elements for which the default GPAW factory runs spin-polarised
MAGNETIC_ELEMENTS = frozenset({"V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Mo", "Ru", "Rh", "W", "Gd", "Eu"})


def structure_key(atoms: Atoms) -> str:
    """Fingerprint of one structure (numbers, positions rounded to 1e-6 Å, cell)."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(atoms.numbers, dtype=np.int64).tobytes())
    h.update(np.round(atoms.get_positions(), 6).astype(np.float64).tobytes())
    h.update(np.round(np.asarray(atoms.cell[:]), 6).astype(np.float64).tobytes())
    return h.hexdigest()[:20]


#: the retry of a structure whose SCF does not converge: Pulay mixing of the density (spin difference for a
#: spin-polarised run) with a small step and a long history, and more iterations (GPAW's default is 333)
CAREFUL_MIXER = {"backend": "pulay", "beta": 0.02, "nmaxold": 8, "weight": 100.0}
CAREFUL_MAXITER = 1000

#: SCF convergence of the default labeller: GPAW's defaults plus a force criterion (eV/Å), which
#: costs ~1 % on an 8-atom cell and bounds the SCF noise of the forces (measured: 2e-4 eV/Å without it)
DEFAULT_CONVERGENCE = {"energy": 0.0005, "density": 1.0e-4, "eigenstates": 4.0e-8, "forces": 1.0e-3}

#: the retry of a structure whose forces do not sum to zero (:class:`UnbalancedForces`): a density converged
#: 100× tighter and forces 10× tighter than :data:`DEFAULT_CONVERGENCE`
TIGHT_CONVERGENCE = {"energy": 5.0e-5, "density": 1.0e-6, "eigenstates": 4.0e-10, "forces": 1.0e-4}

@dataclass
class GPAWFactory:
    """Builds a GPAW plane-wave calculator for one structure.

    Parameters
    ----------
    cutoff : float
        Plane-wave cutoff in eV.
    kdensity : float
        k-point density in points per Å⁻¹ (ASE's convention); the Γ-centred
        Monkhorst–Pack grid is derived per structure and recorded.
    xc : str
        Exchange-correlation functional.
    smearing : float
        Fermi–Dirac width in eV (energies are extrapolated to zero width by GPAW).
    spinpol : bool or None
        Spin polarisation; None: on when the structure holds one of ``MAGNETIC_ELEMENTS``.
    magmoms : dict or None
        Initial magnetic moment (μB) per element for a spin-polarised run; None: 2 μB on the
        ``MAGNETIC_ELEMENTS``, 0 elsewhere (unless the structure carries its own initial moments).
    hubbard_u : dict or None
        Dudarev U (eV) on the d shell per element (GPAW ``setups={el: ':d,U'}``), e.g. the
        Materials Project values for oxides of Co, Cr, Fe, Mn, Mo, Ni, V, W.
    convergence : dict
        GPAW SCF criteria (energy eV/electron, density electrons/electron, eigenstates eV²/electron,
        forces eV/Å).
    symmetry : "auto" | "off"
        "off" runs without point-group symmetry (GPAW's analysis fails on some high-symmetry cells; the
        k-point grid is then not reduced, which costs time, not accuracy).
    mixer : dict or None
        GPAW density mixer (``{"backend": "pulay", "beta": ..., "nmaxold": ..., "weight": ...}``); None: GPAW's
        default. :meth:`fallback` sets :data:`CAREFUL_MIXER` for a structure whose SCF did not converge.
    maxiter : int or None
        Most SCF iterations (None: GPAW's 333). GPAW raises when they are spent: an unconverged label is never
        written.

    Every setting that changes a number is written to the labelled structure's ``info``, and
    :meth:`from_info` rebuilds the factory from it.
    """

    cutoff: float = GPAW.cutoff
    kdensity: float = GPAW.kdensity
    xc: str = GPAW.xc
    smearing: float = 0.05
    spinpol: bool | None = None
    magmoms: dict | None = None
    hubbard_u: dict | None = None
    convergence: dict = field(default_factory=lambda: dict(DEFAULT_CONVERGENCE))
    symmetry: str = "auto"
    mixer: dict | None = None
    maxiter: int | None = None
    extra: dict = field(default_factory=dict)

    def __call__(self, atoms: Atoms) -> tuple[Calculator, dict]:
        from gpaw import GPAW, PW, __version__

        kpts = tuple(int(k) for k in kptdensity2monkhorstpack(atoms, self.kdensity, even=False))
        symbols = atoms.get_chemical_symbols()
        spinpol = (bool(set(symbols) & MAGNETIC_ELEMENTS) or bool(self.magmoms)) if self.spinpol is None \
            else bool(self.spinpol)
        if spinpol and (self.magmoms is not None or not np.any(atoms.get_initial_magnetic_moments())):
            moments = self.magmoms if self.magmoms is not None else dict.fromkeys(MAGNETIC_ELEMENTS, 2.0)
            atoms.set_initial_magnetic_moments([float(moments.get(s, 0.0)) for s in symbols])
        initial = {s: float(m) for s, m in zip(symbols, atoms.get_initial_magnetic_moments())} if spinpol else {}
        setups = {el: f":d,{u}" for el, u in (self.hubbard_u or {}).items() if el in symbols}
        calc = GPAW(
            mode=PW(self.cutoff),
            xc=self.xc,
            kpts={"size": kpts, "gamma": True},
            occupations={"name": "fermi-dirac", "width": self.smearing},
            spinpol=spinpol,
            convergence=dict(self.convergence),
            setups=setups or {},
            txt=None,
            **({"symmetry": "off"} if self.symmetry == "off" else {}),
            **({"mixer": {**self.mixer, "method": "difference" if spinpol else "separate"}} if self.mixer else {}),
            **({"maxiter": int(self.maxiter)} if self.maxiter else {}),
            **self.extra,
        )
        info = {
            "calculator": f"gpaw {__version__}",
            "setups": _setups_version(),
            "xc": self.xc,
            "cutoff_eV": float(self.cutoff),
            "kpts": np.array(kpts, dtype=int),
            "kpts_gamma": True,
            "kdensity": float(self.kdensity),
            "smearing_eV": float(self.smearing),
            "convergence": json.dumps(self.convergence, sort_keys=True),
            "spinpol": spinpol,
            "magmoms_initial": json.dumps(initial, sort_keys=True),
            "hubbard_u": json.dumps({el: float(u) for el, u in (self.hubbard_u or {}).items() if el in symbols},
                                    sort_keys=True),
            "symmetry": self.symmetry,
            "mixer": json.dumps(self.mixer or {}, sort_keys=True),
            "maxiter": int(self.maxiter or 333),
        }
        return calc, info

    def fallback(self, error: Exception | None = None) -> "GPAWFactory | None":
        """The factory to retry a failed structure with, or None when there is nothing left to try.

        An SCF that did not converge (GPAW's ``KohnShamConvergenceError``; common for spin-polarised +U oxides
        started from ferromagnetic moments) is retried with :data:`CAREFUL_MIXER` and :data:`CAREFUL_MAXITER`;
        forces that do not sum to zero (:class:`UnbalancedForces`) with :data:`TIGHT_CONVERGENCE` and the careful
        mixer; any other failure without point-group symmetry (GPAW's symmetry analysis fails on some
        high-symmetry cells). What was retried is recorded in the label (``convergence``, ``mixer``,
        ``maxiter``, ``symmetry``)."""
        import dataclasses

        if "ConvergenceError" in type(error).__name__ and self.mixer is None:
            return dataclasses.replace(self, mixer=dict(CAREFUL_MIXER), maxiter=CAREFUL_MAXITER)
        if isinstance(error, UnbalancedForces):
            if self.convergence == TIGHT_CONVERGENCE:
                return None  # already tight: the structure is left out, named in the errors file
            return dataclasses.replace(self, convergence=dict(TIGHT_CONVERGENCE),
                                       mixer=self.mixer or dict(CAREFUL_MIXER), maxiter=CAREFUL_MAXITER)
        if self.symmetry == "off":
            return None
        return dataclasses.replace(self, symmetry="off")

    @classmethod
    def from_info(cls, info: dict) -> "GPAWFactory":
        """The factory that made a label, from the ``info`` it recorded (labels of calib ≥ 0.5).

        Raises ``ValueError`` naming the missing key when ``info`` predates complete provenance."""
        missing = [k for k in ("xc", "cutoff_eV", "kdensity", "smearing_eV", "convergence", "spinpol",
                               "magmoms_initial", "hubbard_u") if k not in info]
        if missing:
            raise ValueError(f"label provenance lacks {', '.join(missing)}: it predates calib 0.5's complete "
                             "record and cannot be recomputed from info alone")
        return cls(cutoff=float(info["cutoff_eV"]), kdensity=float(info["kdensity"]), xc=str(info["xc"]),
                   smearing=float(info["smearing_eV"]), spinpol=bool(info["spinpol"]),
                   magmoms=json.loads(info["magmoms_initial"]) or None,
                   hubbard_u=json.loads(info["hubbard_u"]) or None,
                   convergence=json.loads(info["convergence"]), symmetry=str(info.get("symmetry", "auto")),
                   mixer=json.loads(info.get("mixer", "{}")) or None,
                   maxiter=int(info["maxiter"]) if int(info.get("maxiter", 333)) != 333 else None)


def _setups_version() -> str:
    try:
        import gpaw_data

        return f"gpaw-data {gpaw_data.__version__} paw"
    except ImportError:  # setups from GPAW_SETUP_PATH
        return "gpaw setups (GPAW_SETUP_PATH)"


def _calculator_info(calc: Calculator) -> dict:
    name = getattr(calc, "name", type(calc).__name__)
    return {"calculator": str(name)}


@dataclass
class LabelReport:
    """What a :func:`label` run did: counts and the failures with their errors."""

    out: str
    n_input: int
    n_done_before: int = 0
    n_labelled: int = 0
    failures: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    repaired: str = ""  # what was dropped from a torn last frame of ``out``, if anything

    def as_dict(self) -> dict:
        return {
            "out": self.out,
            "n_input": self.n_input,
            "n_done_before": self.n_done_before,
            "n_labelled": self.n_labelled,
            "n_failed": len(self.failures),
            "failures": self.failures,
            "seconds": self.seconds,
            "repaired": self.repaired,
        }


def _frames(data: bytes) -> tuple[list[tuple[int, int, bytes]], int]:
    """(complete frames as (start, end, comment line), end of the last complete frame) of extxyz bytes.

    A frame is its count line, its comment line and that many atom lines, each ending in a newline."""
    pos = good = 0
    frames = []
    while pos < len(data):
        nl = data.find(b"\n", pos)
        if nl < 0:
            break
        header = data[pos:nl].strip()
        if not header:  # blank line between frames
            pos = good = nl + 1
            continue
        try:
            natoms = int(header)
        except ValueError:
            break
        lines, end = [], pos
        for _ in range(natoms + 2):
            nl = data.find(b"\n", end)
            if nl < 0:
                end = -1
                break
            lines.append(data[end:nl])
            end = nl + 1
        if end < 0:
            break
        frames.append((pos, end, lines[1]))
        pos = good = end
    return frames, good


def repair_torn_tail(path: str) -> str:
    """Cut an extxyz file back to its last complete frame; returns what was dropped ('' if nothing).

    Frames are appended one at a time, each ending in a newline, so a run killed mid-write can only tear the
    last one. Only files :func:`label` wrote are repaired (:func:`check_own_output` runs first)."""
    with open(path, "rb") as fh:
        data = fh.read()
    frames, good = _frames(data)
    if good == len(data):
        return ""
    with open(path, "r+b") as fh:
        fh.truncate(good)
    return (f"{path}: dropped a torn last frame ({len(data) - good} bytes after {len(frames)} complete frame(s)), "
            "the structure in flight when the previous run stopped; it is labelled again")


def check_own_output(path: str) -> None:
    """Raise FileExistsError unless ``path`` is empty or every complete frame in it was written by :func:`label`
    (each carries ``calib_key``): a label run resumes its own file and never truncates or appends to another."""
    with open(path, "rb") as fh:
        data = fh.read()
    if not data.strip():
        return
    frames, good = _frames(data)
    comments = [comment for _, _, comment in frames]
    lines = data[good:].lstrip(b"\n").split(b"\n", 2)
    if len(lines) > 2 or (len(lines) == 2 and data.endswith(b"\n")):  # the torn frame's comment line is whole
        comments.append(lines[1])
    foreign = not comments or any(b"calib_key=" not in comment for comment in comments)
    if foreign:
        raise FileExistsError(f"{path} exists and was not written by calib label (its frames carry no calib_key): "
                              "label into a new file, or pass overwrite=True to replace it")


def _done_keys(out: str) -> set[str]:
    if not os.path.exists(out) or os.path.getsize(out) == 0:
        return set()
    import ase.io

    # a stored key was taken from the input in memory; the same structure read back from a text file (8
    # decimals) can round to another 1e-6 Å key, so the key of the written frame counts as done too
    return {key for a in ase.io.read(out, index=":", format="extxyz") for key in (str(a.info.get("calib_key")), structure_key(a))}


def label(
    structures: Sequence[Atoms],
    out: str | os.PathLike,
    calculator: Calculator | Callable[[Atoms], Calculator | tuple[Calculator, dict]] | None = None,
    *,
    properties: Sequence[str] = ("energy", "forces", "stress"),
    progress: bool = True,
    retry_failed: bool = False,
    overwrite: bool = False,
) -> LabelReport:
    """Label ``structures`` with a reference calculator, streaming to ``out`` (extxyz).

    Parameters
    ----------
    structures
        Structures to label. Their ``info`` (name, chemsys, ...) is kept.
    out
        extxyz file appended to after each structure; existing entries are
        skipped on rerun.
    calculator
        An ASE calculator (reused for every structure), or a factory
        ``atoms -> calc`` or ``atoms -> (calc, info)``. Default: :class:`GPAWFactory`.
    properties
        Which of energy (eV), forces (eV/Å), stress (eV/Å³) to compute.
    retry_failed
        Also retry structures listed in ``<out>.errors.jsonl``.
    overwrite
        Replace ``out`` (and its errors file) instead of resuming it. Without it, an existing ``out`` is
        resumed only when calib label wrote it (:func:`check_own_output`): another file is never truncated.

    Returns
    -------
    LabelReport
    """
    import ase.io
    from tqdm.auto import tqdm

    out = os.fspath(out)
    errors_path = out + ".errors.jsonl"
    if calculator is None:
        calculator = GPAWFactory()
    repaired = _prepare_output(out, errors_path, overwrite)
    done = _done_keys(out)
    old_failures = _read_failures(errors_path)
    failed_before = set() if retry_failed else set(old_failures)
    report = LabelReport(out=out, n_input=len(structures), repaired=repaired)
    t_start = time.perf_counter()
    todo = []
    for i, atoms in enumerate(structures):
        key = structure_key(atoms)
        if key in done or key in failed_before:
            report.n_done_before += 1
        else:
            todo.append((i, key))
    for i, key in tqdm(todo, desc="labelling", unit="structure", disable=not progress):
        t0 = time.perf_counter()
        attempts: list[str] = []
        try:
            results, info = _compute_with_retries(structures[i], calculator, properties, attempts)
        except Exception as exc:  # any SCF/IO failure: record it and go on
            _record_failure(errors_path, old_failures, report, {
                "index": i, "key": key, "name": structure_name(structures[i]),
                "error": f"{type(exc).__name__}: {exc}", "attempts": attempts})
            continue
        labelled = _labelled(structures[i], key, results, info, attempts, time.perf_counter() - t0)
        ase.io.write(out, labelled, format="extxyz", append=True)
        report.n_labelled += 1
        if key in old_failures:  # labelled on retry: no longer a failure
            old_failures.pop(key)
            _rewrite_errors(errors_path, old_failures.values(), report.failures)
    report.seconds = time.perf_counter() - t_start
    return report


def _prepare_output(out: str, errors_path: str, overwrite: bool) -> str:
    """Make ``out`` ready to append to: removed with its errors file (``overwrite``), else checked to be
    :func:`label`'s own and its torn last frame cut off; returns what was cut ("" if nothing)."""
    if os.path.exists(out):
        if overwrite:
            for path in (out, errors_path):
                if os.path.exists(path):
                    os.remove(path)
        else:
            check_own_output(out)
    return repair_torn_tail(out) if os.path.exists(out) else ""


def _read_failures(errors_path: str) -> dict:
    """The failures an earlier run recorded, by structure key (the latest record of each)."""
    failures: dict = {}
    if os.path.exists(errors_path):
        with open(errors_path) as fh:
            for line in fh:
                if line.strip():
                    rec = json.loads(line)
                    failures[rec["key"]] = rec
    return failures


def _compute_with_retries(structure: Atoms, calculator, properties, attempts: list) -> tuple[dict, dict]:
    """:func:`_compute` on a copy of ``structure``, again with the factory's ``fallback`` settings after a
    failure (at most three retries); ``attempts`` gets one line per failed attempt, the last failure is raised."""
    current = calculator
    while True:
        try:
            return _compute(structure.copy(), current, properties)
        except Exception as exc:  # a factory may know a safer setting (GPAWFactory.fallback)
            attempts.append(f"{type(exc).__name__}: {exc or 'not converged'} ({_settings_word(current)})")
            fallback = getattr(current, "fallback", None)
            current = fallback(exc) if fallback is not None else None
            if current is None or len(attempts) > 3:
                raise


def _record_failure(errors_path: str, old_failures: dict, report: LabelReport, record: dict) -> None:
    """Report a structure that failed and keep its record: appended to the errors file, or, for a structure
    retried, in place of its earlier line (one line per failing structure, its latest error)."""
    report.failures.append(record)
    if record["key"] in old_failures:
        old_failures[record["key"]] = record
        _rewrite_errors(errors_path, old_failures.values(), report.failures)
    else:
        with open(errors_path, "a") as fh:
            fh.write(json.dumps(record) + "\n")


def _labelled(structure: Atoms, key: str, results: dict, info: dict, attempts: list, seconds: float) -> Atoms:
    """A copy of ``structure`` carrying its labels (a single-point calculator), how they were made (``info``,
    ``calib_key``, ``label_seconds``, the failed attempts before) and the final magnetic moments (μB)."""
    labelled = structure.copy()
    labelled.info.update(info)
    labelled.info["calib_key"] = key
    labelled.info["label_seconds"] = round(seconds, 2)
    if attempts:  # what failed before the settings this label was made with
        labelled.info["label_retried"] = " || ".join(a.replace("\n", " ")[:200] for a in attempts)
    if "magmoms" in results:  # final moments per atom (μB), beside the cell's total in info
        labelled.arrays["final_magmoms"] = results.pop("magmoms")
    labelled.calc = SinglePointCalculator(labelled, **results)
    return labelled


def _settings_word(calculator) -> str:
    """The settings a failed attempt ran with, for the record of retries."""
    if isinstance(calculator, GPAWFactory):
        return f"mixer {calculator.mixer or 'default'}, maxiter {calculator.maxiter or 333}, symmetry {calculator.symmetry}"
    return type(calculator).__name__


def _compute(atoms: Atoms, calculator, properties) -> tuple[dict, dict]:
    """(results, info) of one structure with a calculator or a factory (see :func:`label`)."""
    atoms.calc = None
    if isinstance(calculator, Calculator):
        calc, info = calculator, _calculator_info(calculator)
    else:
        made = calculator(atoms)
        calc, info = made if isinstance(made, tuple) else (made, _calculator_info(made))
    atoms.calc = calc
    results = {"energy": float(atoms.get_potential_energy())}
    if "forces" in properties:
        results["forces"] = np.asarray(atoms.get_forces(), dtype=float)
        net = net_force_per_atom(atoms.get_forces(apply_constraint=False))
        if net > NET_FORCE_TOL:
            raise UnbalancedForces(f"forces sum to {net:.3g} eV/Å per atom (largest Cartesian component of "
                                   f"Σ F ÷ {len(atoms)} atoms), over the {NET_FORCE_TOL} a converged "
                                   "calculation meets")
    if "stress" in properties:
        results["stress"] = np.asarray(atoms.get_stress(voigt=True), dtype=float)
    if info.get("spinpol"):
        info = {**info, "magmom_total": round(float(atoms.get_magnetic_moment()), 4)}  # μB per cell
        results["magmoms"] = np.asarray(atoms.get_magnetic_moments(), dtype=float)  # μB per atom
    return results, info


def _rewrite_errors(path: str, old, new) -> None:
    """The errors file with one line per structure still failing (latest record of each key)."""
    latest = {r["key"]: r for r in old}
    latest.update({r["key"]: r for r in new})

    def write(tmp):
        with open(tmp, "w") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in latest.values())

    replace_atomically(path, write)
