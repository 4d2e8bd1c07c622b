import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator

from calib.data.readers import read_structures
from calib.data.structures import StructureError, check_structure, chemsys, validate


def labelled(atoms, energy=-1.0, forces=None):
    atoms = atoms.copy()
    forces = np.zeros((len(atoms), 3)) if forces is None else forces
    atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
    return atoms


def bad_cases():
    good = bulk("NaCl", "rocksalt", 5.64)
    nan_pos = good.copy()
    nan_pos.positions[1, 0] = np.nan
    flat = good.copy()
    flat.set_cell([[1, 0, 0], [2, 0, 0], [0, 0, 1]], scale_atoms=False)
    close = good.copy()
    close.positions[1] = close.positions[0] + [0.3, 0, 0]
    alien = Atoms("NaAm", positions=[[0, 0, 0], [2.8, 0, 0]], cell=[5.6] * 3, pbc=True)
    lonely = Atoms("NaClNa", positions=[[0, 0, 0], [2.8, 0, 0], [15, 15, 15]], cell=[30] * 3, pbc=True)
    molecule = Atoms("NaCl", positions=[[0, 0, 0], [2.8, 0, 0]], cell=[10] * 3, pbc=False)
    return {
        "non-finite position": (nan_pos, {}),
        "cell volume": (flat, {}),
        "closer than 0.5": (close, {}),
        "does not support: Am": (alien, {"supported_elements": range(1, 95)}),
        "no neighbour within the model cutoff": (lonely, {"cutoff": 6.0}),
        "not periodic": (molecule, {}),
        "forces have shape": (labelled(good, forces=np.zeros((3, 3))), {}),
        "energy is not finite": (labelled(good, energy=np.inf), {}),
        "forces contain non-finite": (labelled(good, forces=np.full((2, 3), np.nan)), {}),
        "has no reference energy": (good, {"require_labels": True}),
    }


@pytest.mark.parametrize("problem", list(bad_cases()))
def test_each_bad_input_gets_its_named_error(problem):
    atoms, kw = bad_cases()[problem]
    with pytest.raises(StructureError) as err:
        check_structure(atoms, index=3, **kw)
    msg = str(err.value)
    assert problem.split(":")[0] in msg
    assert msg.startswith("structure 3")
    if ":" in problem:
        assert problem.split(": ")[1] in msg


def test_batch_validation_skips_and_reports_keeps_rest():
    good = bulk("NaCl", "rocksalt", 5.64)
    cases = bad_cases()
    batch = [good, cases["closer than 0.5"][0], good.copy(), cases["non-finite position"][0], good.copy()]
    ok, issues = validate(batch, cutoff=6.0)
    assert ok == [0, 2, 4]
    assert [i.index for i in issues] == [1, 3]
    assert "closer than 0.5" in issues[0].problem and issues[0].name == "ClNa"


def test_chemsys_order_and_override():
    assert chemsys(bulk("LiCl", "rocksalt", 5.1)) == "Li-Cl"
    srtio3 = Atoms("SrTiO3", cell=[4] * 3, pbc=True, scaled_positions=np.random.rand(5, 3))
    assert chemsys(srtio3) == "Sr-Ti-O"
    assert chemsys(bulk("SiC", "zincblende", 4.36)) == "Si-C"
    a = bulk("Si")
    a.info["chemsys"] = "custom"  # calib < 0.5 used any tag verbatim; a system is now its element set
    with pytest.warns(UserWarning, match="'custom' contradicts"):
        assert chemsys(a) == "Si"


@pytest.mark.parametrize("fmt,ext", [("extxyz", "xyz"), ("cif", "cif"), ("vasp", "POSCAR"), ("db", "db")])
def test_read_formats(tmp_path, fmt, ext):
    import ase.io
    from pymatgen.core import Lattice, Structure

    frames = [bulk("Si", "diamond", 5.43), bulk("NaCl", "rocksalt", 5.64)]
    path = tmp_path / f"s.{ext}"
    if fmt == "vasp":
        ase.io.write(path, frames[1], format=fmt)
        frames = frames[1:]
    else:
        ase.io.write(path, frames, format=fmt)
    got = read_structures([path, Structure(Lattice.cubic(4.2), ["Mg", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])])
    assert len(got) == len(frames) + 1
    for a, b in zip(got, frames):
        assert a.get_chemical_formula() == b.get_chemical_formula()
        np.testing.assert_allclose(a.cell.volume, b.cell.volume, rtol=1e-5)
    assert got[-1].get_chemical_formula() == "MgO"


def test_read_missing_and_garbage(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        read_structures(tmp_path / "nope.xyz")
    junk = tmp_path / "junk.xyz"
    junk.write_text("this is not\nan xyz file\n")
    with pytest.raises(ValueError, match="could not read .*junk.xyz"):
        read_structures(junk)


def test_model_predict_skips_bad_structures_and_keeps_others(chgnet):
    good = [bulk("NaCl", "rocksalt", 5.64), bulk("Si", "diamond", 5.43)]
    close = bad_cases()["closer than 0.5"][0]
    pred = chgnet.predict([good[0], close, good[1]], forces=True)
    assert list(pred.indices) == [0, 2]
    assert len(pred.issues) == 1 and pred.issues[0].index == 1
    alone = chgnet.predict([good[1]], forces=True)
    np.testing.assert_allclose(pred.energy[1], alone.energy[0], atol=1e-5)


def test_neighbor_search_matches_ase():
    """The compiled search used by validation returns the same pairs as ASE's neighbor_list."""
    from ase.neighborlist import neighbor_list

    from calib.data.prototypes import perturbed_set
    from calib.data.structures import _neighbors

    for atoms in perturbed_set(names=["Mg", "TiO2", "Li3N"], n_variants=1, rattle=0.1, seed=4):
        mine = sorted(zip(*(np.round(x, 6) for x in _neighbors(atoms, 4.0))))
        ref = sorted(zip(*(np.round(x, 6) for x in neighbor_list("ijd", atoms, 4.0))))
        assert len(mine) == len(ref) > 0
        np.testing.assert_allclose(np.array(mine), np.array(ref), atol=1e-5)


def test_chemsys_is_an_element_set():
    """A tag in pymatgen's order names the same system (one canonical spelling); a tag that contradicts the
    structure's elements is never used: a warning names the file and the computed system is returned."""
    import warnings

    from ase.build import bulk

    from calib.data.structures import canonical_chemsys, chemsys
    from calib.errors import CalibWarning

    a = bulk("NaF", "rocksalt", 4.6)
    assert chemsys(a) == "Na-F"
    a.info["chemsys"] = "F-Na"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert chemsys(a) == "Na-F"
    a.info.update(chemsys="Li-F", source="frames.extxyz:3")
    with pytest.warns(CalibWarning, match=r"frames.extxyz: the chemsys tag 'Li-F' contradicts .*\(Na-F\)"):
        assert chemsys(a) == "Na-F"
    assert canonical_chemsys("O-Ti-Sr") == "Sr-Ti-O"
    with pytest.raises(ValueError, match="not a chemical system"):
        canonical_chemsys("LiF-surface")


def test_one_reader_rules(tmp_path, monkeypatch):
    """Folders are read file by file (hidden and excluded files left out); a cut .gz gives its intact frames
    first and names the frame it stopped at; '-' twice is refused; single-structure files are named after
    the file and database rows after their source."""
    import gzip
    import io

    import ase.io
    from ase.db import connect

    from calib.data.readers import iter_structures, read_structures
    from calib.data.structures import StructureReadError

    frames = [bulk("Si", "diamond", 5.43 + 0.01 * k) for k in range(5)]
    for k, a in enumerate(frames):
        a.info["name"] = f"f{k}"
    folder = tmp_path / "in"
    folder.mkdir()
    ase.io.write(folder / "b.cif", bulk("NaCl", "rocksalt", 5.64))
    ase.io.write(folder / "a.extxyz", frames[:2], format="extxyz")
    (folder / ".hidden.xyz").write_text("garbage")
    (folder / "skip.xyz").write_text("garbage")
    got = read_structures(folder, exclude=[folder / "skip.xyz"])
    assert [a.info["name"] for a in got] == ["f0", "f1", "b"]
    assert [a.info["source"] for a in got] == ["a.extxyz:0", "a.extxyz:1", "b.cif:0"]
    with connect(tmp_path / "r.db") as db:
        db.write(bulk("Cu", "fcc", 3.6))
    assert read_structures(tmp_path / "r.db")[0].info["name"] == "r.db:id=1"
    # a .gz cut short: strict names the file and the frame; the stream gives the intact frames first
    buf = io.StringIO()
    ase.io.write(buf, frames, format="extxyz")
    raw = gzip.compress(buf.getvalue().encode())
    (tmp_path / "cut.extxyz.gz").write_bytes(raw[: int(0.8 * len(raw))])
    stream = iter_structures(tmp_path / "cut.extxyz.gz")
    first = [next(stream) for _ in range(2)]
    assert [a.info["name"] for a in first] == ["f0", "f1"]
    with pytest.raises(StructureReadError, match=r"could not read frame \d \(after \d complete .*cut.extxyz.gz"):
        list(stream)
    loose = list(iter_structures(tmp_path / "cut.extxyz.gz", strict=False))
    assert loose[-1].info["read_error"] and len(loose) >= 3
    monkeypatch.setattr("sys.stdin", io.StringIO(buf.getvalue()))
    with pytest.raises(StructureReadError, match="given more than once"):
        read_structures(["-", "-"])
