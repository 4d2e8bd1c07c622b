"""Structure input: normalisation, validation and grouping by chemical system.

Everything that enters calib passes through here once. Inputs may be ASE
``Atoms``, pymatgen ``Structure`` objects, or file paths that ASE can read
(extxyz, CIF, POSCAR, ASE db, ...). Labelled structures carry a total energy
in eV, forces in eV/Å and optionally a stress in eV/Å³ (ASE sign convention),
either on an attached calculator (as extxyz files load them) or in
``atoms.info["energy"]`` / ``atoms.arrays["forces"]``.

Validation never raises on a batch: :func:`validate` returns the indices that
passed and one :class:`StructureIssue` per rejected structure, naming its index
and the problem, so the caller can report it and carry on with the rest.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols

#: closest allowed interatomic distance, Å
MIN_DISTANCE = 0.5


class StructureError(ValueError):
    """A structure that cannot be used, with its index and the problem."""

    def __init__(self, index: int | None, problem: str, name: str = ""):
        self.index = index
        self.problem = problem
        self.name = name
        where = f"structure {index}" if index is not None else "structure"
        if name:
            where += f" ({name})"
        super().__init__(f"{where}: {problem}")


class StructureReadError(ValueError):
    """Input that cannot be read: the message names the file, the frame (when one was reached) and the problem."""

    def __init__(self, message: str, path: str = "", frame: int | None = None):
        self.path, self.frame = path, frame
        super().__init__(message)


class StructureFileNotFound(StructureReadError, FileNotFoundError):
    """A structure file that does not exist."""


@dataclass(frozen=True)
class StructureIssue:
    """A structure skipped from a batch: its position in the input, where it was read from and why.

    ``source`` is ``file:frame`` (``file.db:id=N``) for structures read from files, "" for objects."""

    index: int
    name: str
    problem: str
    source: str = ""

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        where = ", ".join(x for x in (self.name, self.source if self.source != self.name else "") if x)
        return f"structure {self.index}" + (f" ({where})" if where else "") + f": {self.problem}"


def structure_name(atoms: Atoms) -> str:
    """A short human name: ``info['name']`` if present, else the formula."""
    return str(atoms.info.get("name") or atoms.get_chemical_formula())


def chemsys(atoms: Atoms) -> str:
    """Chemical system, e.g. ``"Li-Cl"``: the structure's distinct elements in one canonical spelling.

    Elements are ordered by Pauling electronegativity (ties by atomic number), the order in which
    chemists write formulas: ``Li-Cl``, ``Sr-Ti-O``, ``Si-C``. A chemical system is a *set* of elements:
    an ``atoms.info["chemsys"]`` tag in another order (pymatgen writes ``F-Na``) names the same system
    and is accepted; a tag that contradicts the structure's elements is never used: calib warns, naming
    the file, and goes on with the computed system.
    """
    computed = _ordered(frozenset(atoms.get_chemical_symbols()))
    tag = atoms.info.get("chemsys")
    if isinstance(tag, (bool, np.bool_)):  # extxyz reads the tag "F" (fluorine) as False and "T" as True
        tag = None
    if tag is not None and str(tag) != computed:
        try:
            same = canonical_chemsys(str(tag)) == computed
        except ValueError:
            same = False
        if not same:
            from calib.errors import CalibWarning

            where = str(atoms.info.get("source", structure_name(atoms))).rsplit(":", 1)[0]
            warnings.warn(f"{where}: the chemsys tag {str(tag)!r} contradicts the elements of its structure(s) "
                          f"({computed}); the computed system is used", CalibWarning, stacklevel=2)
    return computed


def canonical_chemsys(text: str) -> str:
    """The canonical spelling of a chemical system written in any order (``"F-Na"`` → ``"Na-F"``).

    Raises ValueError for a part that is not an element symbol."""
    parts = [p.strip() for p in str(text).split("-") if p.strip()]
    bad = [p for p in parts if p not in chemical_symbols[1:]]
    if bad or not parts:
        raise ValueError(f"{text!r} is not a chemical system (element symbols joined by '-')")
    return _ordered(frozenset(parts))


@functools.lru_cache(maxsize=4096)
def _ordered(symbols: frozenset) -> str:
    from pymatgen.core import Element

    def key(sym: str):
        el = Element(sym)
        with warnings.catch_warnings():  # noble gases have no Pauling value: pymatgen warns, gives NaN
            warnings.simplefilter("ignore", UserWarning)
            x = el.X
        return (x if np.isfinite(x) else 99.0, el.Z)

    return "-".join(sorted(symbols, key=key))


#: the words of every partial-occupancy skip (a disordered CIF or pymatgen Structure)
PARTIAL_OCCUPANCY = ("partial occupancy: order the structure first (pymatgen's "
                     "OrderDisorderedStructureTransformation)")


def partial_occupancy(atoms: Atoms) -> str:
    """Why ``atoms`` is a disordered structure ("" when it is ordered): ASE's CIF reader keeps one species per
    site (Cu0.5Au0.5 on fcc sites reads as pure Au) and records the occupancies in ``info["occupancy"]``; a site
    shared by several species, or one species below full occupancy, is partial occupancy."""
    occ = atoms.info.get("occupancy")
    if not isinstance(occ, dict):
        return ""
    for site, species in occ.items():
        if not isinstance(species, dict):
            continue
        values = {str(k): float(v) for k, v in species.items()}
        if len(values) > 1 or abs(sum(values.values()) - 1.0) > 1e-3:
            held = ", ".join(f"{el} {x:g}" for el, x in values.items())
            return f"{PARTIAL_OCCUPANCY}; site {site} holds {held}"
    return ""


def to_atoms(obj) -> Atoms:
    """Convert an ASE Atoms or pymatgen Structure to ASE Atoms (copy for Structure).

    Raises :class:`StructureConversionError` (a ValueError) naming the problem for a disordered Structure,
    a pymatgen Molecule (no periodic cell) or an object that is no structure at all."""
    if isinstance(obj, Atoms):
        return obj
    try:
        from pymatgen.core import Molecule, Structure
    except ImportError:  # pragma: no cover - pymatgen is a dependency
        Molecule = Structure = ()
    if Structure and isinstance(obj, Structure):
        if not obj.is_ordered:
            sites = [f"{site.species}" for site in obj if not site.is_ordered][:1]
            raise StructureConversionError(f"{PARTIAL_OCCUPANCY}; a site holds {sites[0]}" if sites
                                           else PARTIAL_OCCUPANCY, _formula(obj))
        from pymatgen.io.ase import AseAtomsAdaptor

        return AseAtomsAdaptor.get_atoms(obj)
    if Molecule and isinstance(obj, Molecule):
        raise StructureConversionError("is a pymatgen Molecule (no periodic cell): calib works with periodic "
                                       "crystals; put it in a box first (Molecule.get_boxed_structure)",
                                       _formula(obj))
    raise StructureConversionError(
        f"cannot use an object of type {type(obj).__name__} as a structure; "
        "pass ase.Atoms, pymatgen.core.Structure or a file path", type(obj).__name__)


class StructureConversionError(ValueError, TypeError):
    """An object that cannot become a structure (a ValueError, and a TypeError as calib 0.5 raised for a
    foreign type): ``problem`` says why, ``name`` names the object (its formula)."""

    def __init__(self, problem: str, name: str = ""):
        self.problem, self.name = problem, name
        super().__init__(f"{name}: {problem}" if name else problem)


def _formula(obj) -> str:
    try:
        return str(obj.composition.reduced_formula)
    except Exception:  # noqa: BLE001 - a name for a message only
        return type(obj).__name__


def take_subset(structures: Sequence[Atoms], every: int = 1, limit: int | None = None, shuffle: bool = False,
                seed: int = 0) -> list[Atoms]:
    """A subset of ``structures``: every ``every``-th one, then shuffled (``seed``) when asked, then the
    first ``limit``. Positions reported later (skipped structures, requests) are positions in the subset;
    ``info["source"]`` still names each structure's file and frame."""
    idx = np.arange(len(structures))[::max(1, int(every))]
    if shuffle:
        idx = np.random.default_rng(seed).permutation(idx)
    if limit is not None:
        idx = idx[: int(limit)]
    return [structures[int(i)] for i in idx]


# --------------------------------------------------------------------------- labels


def get_energy(atoms: Atoms) -> float | None:
    """Reference total energy in eV, or None when the structure is unlabelled."""
    if atoms.calc is not None:
        try:
            return float(atoms.get_potential_energy())
        except Exception:
            pass
    for key in ("energy", "REF_energy", "dft_energy"):
        if key in atoms.info:
            return float(atoms.info[key])
    return None


def get_forces(atoms: Atoms) -> np.ndarray | None:
    """Reference forces in eV/Å, shape (n_atoms, 3), or None."""
    if atoms.calc is not None:
        try:
            return np.asarray(atoms.get_forces(), dtype=float)
        except Exception:
            pass
    for key in ("forces", "REF_forces", "dft_forces"):
        if key in atoms.arrays:
            return np.asarray(atoms.arrays[key], dtype=float)
    return None


def get_stress(atoms: Atoms) -> np.ndarray | None:
    """Reference stress as a 3×3 matrix in eV/Å³ (ASE sign convention), or None."""
    stress = None
    if atoms.calc is not None:
        try:
            stress = atoms.get_stress(voigt=False)
        except Exception:
            stress = None
    if stress is None and "stress" in atoms.info:
        stress = atoms.info["stress"]
    if stress is None:
        return None
    stress = np.asarray(stress, dtype=float)
    if stress.shape == (6,):
        from ase.stress import voigt_6_to_full_3x3_stress

        stress = voigt_6_to_full_3x3_stress(stress)
    return stress


def has_labels(atoms: Atoms) -> bool:
    return get_energy(atoms) is not None and get_forces(atoms) is not None


# --------------------------------------------------------------------------- validation


def check_structure(
    atoms: Atoms,
    *,
    index: int | None = None,
    supported_elements: Iterable[int] | None = None,
    cutoff: float | None = None,
    require_labels: bool | str = False,
    max_atoms: int | None = None,
) -> None:
    """Raise :class:`StructureError` naming the first problem with ``atoms``.

    ``require_labels``: True (energy and forces), "energy" or "forces" (that one only), False.
    ``max_atoms``: the most atoms one structure may have (None: no limit); a differentiated pass (forces,
    feature gradients) keeps a graph of about 1.1 MB per atom for CHGNet, so the model adapters set it on CPU
    (:attr:`calib.models.base.ModelAdapter.max_atoms`).

    Checks, in order: non-empty; finite positions and cell; positive cell
    volume (calib works with periodic crystals); elements supported by the
    model; no two atoms closer than 0.5 Å (periodic images included); every
    atom has a neighbour within the model cutoff (Å); and, when labels are
    present or required, a finite energy (eV) and forces (eV/Å) of shape
    (n_atoms, 3).
    """
    name = structure_name(atoms) if len(atoms) or atoms.info.get("name") else "empty"
    # each check may assume the ones before it passed (finite positions and cell before the neighbour search)
    problem = (_contents_problem(atoms, max_atoms) or _cell_problem(atoms)
               or _elements_problem(atoms, supported_elements) or _distance_problem(atoms, cutoff)
               or _labels_problem(atoms, require_labels))
    if problem:
        raise StructureError(index, problem, name)


def _contents_problem(atoms: Atoms, max_atoms: int | None) -> str:
    """Why the atoms themselves cannot be used (unreadable, none, too many, partial occupancy, a non-finite
    position), or ""."""
    if atoms.info.get("read_error"):
        return str(atoms.info["read_error"])
    if len(atoms) == 0:
        return "has no atoms"
    if max_atoms is not None and len(atoms) > max_atoms:
        return (f"has {len(atoms)} atoms, more than the {max_atoms} calib differentiates in one pass here (forces "
                f"need about 1.1 MB of memory per atom in one graph): split it, or raise the limit with "
                f"CALIB_MAX_ATOMS=N")
    occupancy = partial_occupancy(atoms)
    if occupancy:
        return occupancy
    pos = atoms.get_positions()
    if not np.all(np.isfinite(pos)):
        bad = int(np.where(~np.isfinite(pos).all(axis=1))[0][0])
        return f"non-finite position for atom {bad}"
    return ""


def _cell_problem(atoms: Atoms) -> str:
    """Why the cell is not a periodic crystal's (non-finite, zero or negative volume, not periodic), or ""."""
    cell = np.asarray(atoms.cell[:], dtype=float)
    if not np.all(np.isfinite(cell)):
        return "non-finite cell vectors"
    volume = float(np.linalg.det(cell))
    if volume <= 1e-8:
        return (f"cell volume is {volume:.4g} Å³ (zero or negative): calib needs a "
                "periodic cell with right-handed, linearly independent vectors")
    if not all(atoms.pbc):
        return "is not periodic in all three directions; set atoms.pbc = True with a cell"
    return ""


def _elements_problem(atoms: Atoms, supported_elements: Iterable[int] | None) -> str:
    """The elements of ``atoms`` the model does not support, in words, or ""."""
    if supported_elements is None:
        return ""
    bad = sorted({int(z) for z in atoms.numbers} - {int(z) for z in supported_elements})
    if not bad:
        return ""
    names = ", ".join(chemical_symbols[z] if 0 < z < len(chemical_symbols) else str(z) for z in bad)
    return f"contains elements the model does not support: {names}"


def _distance_problem(atoms: Atoms, cutoff: float | None) -> str:
    """Atoms closer than MIN_DISTANCE Å (periodic images included), or an atom without a neighbour within the
    model's ``cutoff`` (Å), in words, or ""."""
    # bounded cost for any input: a cell narrower than the closest allowed distance puts every atom that
    # close to its own image (refused with no search); the close-pair search runs at MIN_DISTANCE, so the
    # cutoff search below only ever sees physical densities
    cell = np.asarray(atoms.cell[:], dtype=float)
    widths = abs(np.linalg.det(cell)) / np.linalg.norm(np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1)
    if widths.min() < MIN_DISTANCE:
        k = int(np.argmin(widths))
        return (f"the cell is {widths[k]:.3g} Å wide across lattice vector {k}: every atom is closer than "
                f"{MIN_DISTANCE} Å to its own periodic image")
    i, j, d = _neighbors(atoms, MIN_DISTANCE)
    if len(d):
        k = int(np.argmin(d))
        return f"atoms {int(i[k])} and {int(j[k])} are {d[k]:.3f} Å apart (closer than {MIN_DISTANCE} Å)"
    if cutoff is not None:
        i, j, d = _neighbors(atoms, max(MIN_DISTANCE, cutoff))
        lonely = np.where(np.bincount(i, minlength=len(atoms)) == 0)[0]
        if len(lonely):
            return (f"atom {int(lonely[0])} ({atoms.get_chemical_symbols()[lonely[0]]}) has no "
                    f"neighbour within the model cutoff of {cutoff} Å (isolated atom)")
    return ""


def _labels_problem(atoms: Atoms, require_labels: bool | str) -> str:
    """A required label that is missing, or a label present that is not finite or has the wrong shape (energy
    eV, forces eV/Å, stress eV/Å³), in words, or ""."""
    energy = get_energy(atoms)
    forces = get_forces(atoms)
    need = {True: ("energy", "forces"), "energy": ("energy",), "forces": ("forces",)}.get(require_labels, ())
    missing = [k for k, v in (("energy", energy), ("forces", forces)) if k in need and v is None]
    if missing:
        what = {"energy": "total energy in eV", "forces": "forces in eV/Å"}
        return f"has no reference {missing[0]} (this needs {' and '.join(what[k] for k in need)})"
    if energy is not None and not np.isfinite(energy):
        return f"reference energy is not finite ({energy})"
    if forces is not None:
        if forces.shape != (len(atoms), 3):
            return f"reference forces have shape {forces.shape}, expected ({len(atoms)}, 3)"
        if not np.all(np.isfinite(forces)):
            return "reference forces contain non-finite values"
    stress = get_stress(atoms)
    if stress is not None and not np.all(np.isfinite(stress)):
        return "reference stress contains non-finite values"
    return ""


def _neighbors(atoms: Atoms, r: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, distance) of all pairs closer than ``r`` Å, periodic images included, self excluded.

    pymatgen's compiled ``find_points_in_spheres`` is used rather than ASE's
    pure-Python ``neighbor_list``: validation runs on every structure of every
    batch and must stay negligible beside the model's forward pass.
    """
    from pymatgen.optimization.neighbors import find_points_in_spheres

    pos = np.ascontiguousarray(atoms.get_positions(wrap=True), dtype=float)  # far-out atoms: no image blow-up
    i, j, images, d = find_points_in_spheres(
        pos, pos, r=float(r), pbc=np.ascontiguousarray(atoms.pbc, dtype=np.int64),
        lattice=np.ascontiguousarray(atoms.cell[:], dtype=float), tol=1e-8,
    )
    # drop each atom's pair with itself in the home cell only: two distinct atoms on one site stay (d = 0)
    keep = ~((i == j) & np.all(np.asarray(images) == 0, axis=1))
    return i[keep].astype(int), j[keep].astype(int), d[keep]


def validate(
    structures: Sequence[Atoms],
    *,
    supported_elements: Iterable[int] | None = None,
    cutoff: float | None = None,
    require_labels: bool = False,
    max_atoms: int | None = None,
) -> tuple[list[int], list[StructureIssue]]:
    """Check every structure; return (indices that passed, issues of those that did not).

    Never raises for a bad structure: each is reported once as a
    :class:`StructureIssue` and the others go on.
    """
    supported = None if supported_elements is None else set(int(z) for z in supported_elements)
    good: list[int] = []
    issues: list[StructureIssue] = []
    for i, atoms in enumerate(structures):
        try:
            check_structure(
                atoms,
                index=i,
                supported_elements=supported,
                cutoff=cutoff,
                require_labels=require_labels,
                max_atoms=max_atoms,
            )
        except StructureError as err:
            issues.append(StructureIssue(i, err.name, err.problem, str(atoms.info.get("source", ""))))
        else:
            good.append(i)
    return good, issues


def group_by_chemsys(structures: Sequence[Atoms]) -> dict[str, list[int]]:
    """Indices of ``structures`` grouped by :func:`chemsys`, in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for i, atoms in enumerate(structures):
        groups.setdefault(chemsys(atoms), []).append(i)
    return groups


def structures_fingerprint(structures: Sequence[Atoms]) -> str:
    """SHA-256 over numbers, positions and cells: identifies an input list for resume."""
    import hashlib

    h = hashlib.sha256()
    for atoms in structures:
        h.update(np.ascontiguousarray(atoms.numbers, dtype=np.int64).tobytes())
        h.update(np.ascontiguousarray(atoms.get_positions(), dtype=np.float64).tobytes())
        h.update(np.ascontiguousarray(atoms.cell[:], dtype=np.float64).tobytes())
    return h.hexdigest()


#: largest net force a label may have, eV/Å per atom (|Σ_i F_i| per Cartesian component, ÷ N atoms). The forces
#: of a periodic cell sum to zero (translational invariance); the shipped GPAW labels reach 0.008 (+U oxides).
NET_FORCE_TOL = 0.02


class UnbalancedForces(RuntimeError):
    """A calculation whose forces do not sum to zero within :data:`NET_FORCE_TOL`: an SCF that did not settle
    the forces (seen once in a spin-polarised +U oxide that GPAW reported converged). Never kept as a label."""


def net_force_per_atom(forces) -> float:
    """max over x, y, z of |Σ_i F_i| ÷ N, eV/Å per atom (0 for no atoms)."""
    f = np.asarray(forces, dtype=float).reshape(-1, 3)
    return float(np.abs(f.sum(axis=0)).max() / len(f)) if len(f) else 0.0
