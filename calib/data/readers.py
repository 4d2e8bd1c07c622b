"""The one structure reader: files, folders, ASE databases, standard input and objects, streamed.

Every command and library entry point reads through :func:`iter_structures` with one set of rules:

* a file is read frame by frame (``ase.io.iread``; a ``.gz`` file is decompressed as it streams, so a
  file cut short still gives its intact frames first); an ASE database (``.db``) row by row;
* a folder file by file in sorted order (hidden files and the paths in ``exclude`` left out), every
  frame of each;
* ``"-"`` is extended XYZ on standard input, streamed, and may be given once;
* ``ase.Atoms`` pass through and pymatgen ``Structure`` objects are converted.

Each structure read from a file carries ``info["source"]`` (``file:frame``, or ``file.db:id=N``: the file read
now, whatever source the file itself recorded, which is kept as ``info["origin"]``) and,
when the file gives it no name, ``info["name"]``: the file's stem for single-structure formats (CIF,
POSCAR, ...), the source for database rows and multi-frame files keep the formula.

What happens to input that cannot be read depends on ``strict``: ``strict=True`` raises
:class:`calib.data.structures.StructureReadError` naming the file, the frame and the problem; with
``strict=False`` one placeholder is yielded whose ``info["read_error"]`` says why, so that validation skips
it as one reported structure and the stream goes on.

**The skip rule** (every command and :meth:`calib.predictor.CalibratedPredictor.predict`): a file named by
the caller must exist (:func:`check_named`: an input error before anything runs); everything else that
cannot become a structure is skipped and reported with its file and frame, and the others go on: a file
in a folder that holds no structures (a README), a broken CIF, a ``.gz`` cut short (its intact frames are
kept), a disordered CIF or pymatgen ``Structure`` (partial occupancy), a pymatgen ``Molecule``, an object
that is no structure. Commands read with :func:`read_skipping`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

from ase import Atoms

from calib.data.structures import StructureConversionError, StructureFileNotFound, StructureReadError, to_atoms

#: formats that hold one structure per file: their structures are named after the file
_SINGLE = (".cif", ".vasp", ".poscar", ".contcar", ".res", ".pdb", ".cell", ".in", ".json")


def iter_structures(sources, *, strict: bool = True, exclude: Iterable = ()) -> Iterator[Atoms]:
    """Structures from ``sources`` (a path, an object, or an iterable of these), one at a time; see the
    module docstring for the rules. ``exclude``: paths a folder walk leaves out (e.g. the results file a
    run writes into the folder it reads)."""
    if isinstance(sources, (str, os.PathLike, Atoms)) or not isinstance(sources, Iterable):
        sources = [sources]
    skip = {os.path.realpath(os.fspath(p)) for p in exclude if p is not None}
    state = {"stdin": False}
    for src in sources:
        if isinstance(src, (str, os.PathLike)):
            yield from _read_path(os.fspath(src), strict, skip, state)
        elif isinstance(src, Atoms):
            yield src
        else:
            try:
                yield to_atoms(src)
            except StructureConversionError as exc:
                if strict:
                    raise
                yield Atoms(info={"name": exc.name, "read_error": exc.problem})


def read_structures(sources, *, exclude: Iterable = (), strict: bool = True) -> list[Atoms]:
    """All structures of ``sources`` in a list (:func:`iter_structures`, strict by default)."""
    return list(iter_structures(sources, exclude=exclude, strict=strict))


def check_named(sources) -> None:
    """Raise :class:`calib.data.structures.StructureFileNotFound` (a FileNotFoundError) naming every path of
    ``sources`` that does not exist ("-", standard input, always does), and a StructureReadError when "-" is
    given more than once."""
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    if not isinstance(sources, (list, tuple)):
        return
    if sum(isinstance(s, (str, os.PathLike)) and os.fspath(s) == "-" for s in sources) > 1:
        raise StructureReadError("standard input (-) is given more than once; it can be read only once", "-")
    missing = [os.fspath(s) for s in sources if isinstance(s, (str, os.PathLike)) and os.fspath(s) != "-"
               and not os.path.exists(s)]
    if missing:
        raise StructureFileNotFound(f"structure file not found: {', '.join(missing)}", missing[0])


def read_skipping(sources, *, exclude: Iterable = ()) -> list[Atoms]:
    """The skip rule (module doc): named paths checked (:func:`check_named`), then every structure read, a
    placeholder with ``info["read_error"]`` standing for each thing that cannot be one."""
    check_named(sources)
    return read_structures(sources, exclude=exclude, strict=False)


def _problem(strict: bool, path: str, frame: int | None, message: str, name: str) -> Iterator[Atoms]:
    """Raise the read error (strict) or yield its placeholder; ``message`` names the file itself."""
    if strict:
        cls = StructureFileNotFound if message.startswith("structure file not found") else StructureReadError
        raise cls(message, path, frame)
    yield Atoms(info={"name": name, "read_error": message, "source": name})


def _read_path(path: str, strict: bool, skip: set, state: dict) -> Iterator[Atoms]:
    if path == "-":
        if state["stdin"]:
            yield from _problem(strict, path, None, "standard input (-) is given more than once; it can be read "
                                "only once", "-")
            return
        state["stdin"] = True
        yield from _read_stream(path, strict)
        return
    if os.path.isdir(path):
        for f in sorted(os.listdir(path)):
            full = os.path.join(path, f)
            if f.startswith(".") or os.path.realpath(full) in skip:
                continue
            yield from _read_path(full, strict, skip, state)
        return
    if not os.path.exists(path):
        yield from _problem(strict, path, None, f"structure file not found: {path}", path)
        return
    if os.path.getsize(path) == 0:
        yield from _problem(strict, path, None, f"{path} is empty", os.path.basename(path))
        return
    if path.endswith(".db"):
        yield from _read_db(path)
        return
    yield from _read_stream(path, strict)


def _set_source(atoms: Atoms, source: str) -> None:
    """Where ``atoms`` was read now (``file:frame``); a ``source`` the file itself carried (a structure written
    by calib after it read it elsewhere) is kept as ``origin``, so that messages name the file being read."""
    prev = atoms.info.get("source")
    if prev and str(prev) != source:
        atoms.info.setdefault("origin", str(prev))
    atoms.info["source"] = source


def _read_db(path: str) -> Iterator[Atoms]:
    from ase.db import connect

    for row in connect(path).select():
        atoms = row.toatoms(add_additional_information=True)
        atoms.info.update(atoms.info.pop("key_value_pairs", {}) or {})
        _set_source(atoms, f"{os.path.basename(path)}:id={row.id}")
        atoms.info.setdefault("name", atoms.info["source"])
        yield atoms


def _read_stream(path: str, strict: bool) -> Iterator[Atoms]:
    """Frames of one file (or of standard input for "-"), each with its source; an unreadable frame ends
    the file with one problem that names it."""
    import ase.io
    from ase.io.formats import UnknownFileTypeError

    if path == "-":
        import sys

        label, tag, fmt, handle = "standard input (-)", "stdin", "extxyz", sys.stdin
    else:
        import gzip

        label, tag = path, os.path.basename(path)
        fmt = _format(path.removesuffix(".gz"))
        handle = None if fmt != "extxyz" else gzip.open(path, "rt") if path.endswith(".gz") else open(path)
    single = path != "-" and (os.path.splitext(path.removesuffix(".gz"))[1].lower() in _SINGLE
                              or tag.upper().startswith(("POSCAR", "CONTCAR")))
    k = 0
    frames = _xyz_frames(handle) if handle is not None else ase.io.iread(path, index=":", format=fmt)
    try:
        for atoms in frames:
            _set_source(atoms, f"{tag}:{k}")
            if single:
                atoms.info.setdefault("name", os.path.splitext(tag.removesuffix(".gz"))[0])
            k += 1
            yield atoms
    except UnknownFileTypeError:
        ext = os.path.splitext(path)[1] or "(none)"
        yield from _problem(strict, label, None, f"{path}: ASE cannot tell the format of this file (extension {ext}); "
                            "use extxyz, CIF, POSCAR/CONTCAR, an ASE .db or a trajectory", tag)
        return
    except Exception as exc:  # ASE and gzip raise many types for unreadable files
        where = f"frame {k} (after {k} complete frame(s); cut short?)" if k else "its first structure"
        yield from _problem(strict, label, k, f"could not read {where} of {label}: {type(exc).__name__}: {exc}",
                            f"{tag}:{k}")
        return
    finally:
        if handle is not None and path != "-":
            handle.close()
    if k == 0:
        what = "is empty; pipe extended XYZ into it" if path == "-" else "holds no structures"
        yield from _problem(strict, label, None, f"{label} {what}", tag)


def _xyz_frames(handle) -> Iterator[Atoms]:
    """Frames of an (extended) XYZ stream, one at a time: the atom count, the comment line and that many atom
    lines are cut from the stream and parsed by ASE. ASE's own reader scans the whole file for frame offsets
    first, so a stream (standard input, a .gz file) cut short would fail before its first frame."""
    import io

    import ase.io

    while True:
        line = handle.readline()
        if not line:
            return
        if not line.strip():
            continue
        n = int(line)  # not an atom count: not (ext)xyz, or a frame that is not where the last one ended
        lines = [line]
        for _ in range(n + 1):
            nxt = handle.readline()
            if not nxt:
                raise EOFError(f"the file ends inside a frame ({len(lines) - 1} of {n + 1} lines after its count)")
            lines.append(nxt)
        yield ase.io.read(io.StringIO("".join(lines)), format="extxyz")


def _format(path: str) -> str | None:
    """ASE's format name for ``path`` from its extension (None: let ASE guess from the name and content)."""
    ext = os.path.splitext(path)[1].lower()
    return {".xyz": "extxyz", ".extxyz": "extxyz"}.get(ext)


def count_structures(sources, exclude: Iterable = ()) -> int | None:
    """Number of structures in ``sources`` when it can be known cheaply (for a progress bar), else None."""
    skip = {os.path.realpath(os.fspath(p)) for p in exclude if p is not None}
    total = 0
    for src in ([sources] if isinstance(sources, (str, os.PathLike, Atoms)) else sources):
        if isinstance(src, Atoms):
            total += 1
            continue
        if not isinstance(src, (str, os.PathLike)) or os.fspath(src) == "-":
            return None
        path = os.fspath(src)
        if os.path.isdir(path):
            n = count_structures([os.path.join(path, f) for f in os.listdir(path) if not f.startswith(".")
                                  and os.path.realpath(os.path.join(path, f)) not in skip])
        elif path.endswith(".db") and os.path.exists(path):
            from ase.db import connect

            n = connect(path).count()
        elif path.endswith((".xyz", ".extxyz")) and os.path.exists(path):
            n = _count_xyz_frames(path)
        elif os.path.isfile(path) and not path.endswith((".traj", ".xyz", ".extxyz", ".gz")):
            n = 1  # CIF / POSCAR: one structure per file (a multi-frame file only moves the bar on)
        else:
            n = None
        if n is None:
            return None
        total += n
    return total


def _count_xyz_frames(path) -> int | None:
    """Frames of an (ext)xyz file, from the atom count heading each frame (no parsing of the rest)."""
    n = 0
    with open(path, "rb") as fh:
        while True:
            line = fh.readline()
            if not line:
                return n
            if not line.strip():
                continue
            try:
                skip = int(line) + 1
            except ValueError:
                return None
            for _ in range(skip):
                fh.readline()
            n += 1
