"""The labeller: streaming, resume, failures recorded; GPAW PAW-PBE on a 2-atom cell."""

import json

import ase.io
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from calib.data.dft import materials_project_settings
from calib.data.labelers import GPAWFactory, label
from calib.data.structures import get_energy, get_forces


def test_streams_resumes_and_records_failures(tmp_path):
    # EMT knows Cu and Al but not Si: a real calculator error, not a mock
    cu = bulk("Cu", "fcc", 3.6, cubic=True)
    cu.rattle(0.05, seed=1)
    al = bulk("Al", "fcc", 4.05, cubic=True)
    al.rattle(0.05, seed=2)
    si = bulk("Si", "diamond", 5.43)
    out = tmp_path / "lab.extxyz"
    rep = label([cu, si, al], out, EMT(), progress=False)
    assert rep.n_labelled == 2 and len(rep.failures) == 1
    assert rep.failures[0]["index"] == 1 and "Si" in rep.failures[0]["error"]
    errors = [json.loads(x) for x in open(str(out) + ".errors.jsonl")]
    assert errors[0]["name"] == "Si2"
    got = ase.io.read(out, ":")
    assert [a.get_chemical_formula() for a in got] == ["Cu4", "Al4"]
    ref = cu.copy()
    ref.calc = EMT()
    assert get_energy(got[0]) == pytest.approx(ref.get_potential_energy(), abs=1e-6)
    np.testing.assert_allclose(get_forces(got[0]), ref.get_forces(), atol=1e-6)
    # rerun: nothing recomputed
    again = label([cu, si, al], out, EMT(), progress=False)
    assert again.n_labelled == 0 and again.n_done_before == 3
    assert len(ase.io.read(out, ":")) == 2



def test_resumes_a_file_whatever_its_suffix(tmp_path):
    # the dataset scripts label into <name>.extxyz.partial until a system is complete: a suffix ASE cannot guess
    cu = bulk("Cu", "fcc", 3.6, cubic=True)
    al = bulk("Al", "fcc", 4.05, cubic=True)
    out = tmp_path / "Cu.extxyz.partial"
    assert label([cu], out, EMT(), progress=False).n_labelled == 1
    again = label([cu, al], out, EMT(), progress=False)
    assert (again.n_labelled, again.n_done_before) == (1, 1)
    assert len(ase.io.read(out, ":", format="extxyz")) == 2


def test_resume_recognises_a_structure_read_back_from_text(tmp_path):
    # the first run labels the structure in memory; a resumed run reads it from an extxyz (8 decimals), where
    # this coordinate rounds to another 1e-6 Å key: it is the same structure and must not be labelled twice
    cu = bulk("Cu", "fcc", 3.6, cubic=True)
    cu.positions[1, 0] = 1.00000149999
    out = tmp_path / "lab.extxyz"
    assert label([cu], out, EMT(), progress=False).n_labelled == 1
    ase.io.write(tmp_path / "frames.extxyz", cu)
    back = ase.io.read(tmp_path / "frames.extxyz")
    again = label([back], out, EMT(), progress=False)
    assert (again.n_labelled, again.n_done_before) == (0, 1)
    assert len(ase.io.read(out, ":")) == 1

@pytest.mark.dft
def test_gpaw_two_atom_cell(tmp_path):
    pytest.importorskip("gpaw")
    si = bulk("Si", "diamond", 5.43)
    si.positions[1] += [0.1, 0.0, -0.05]
    out = tmp_path / "si.extxyz"
    rep = label([si], out, GPAWFactory(cutoff=250, kdensity=1.5), progress=False)
    assert rep.n_labelled == 1, rep.failures
    (atoms,) = ase.io.read(out, ":")
    info = atoms.info
    assert info["calculator"].startswith("gpaw ") and info["xc"] == "PBE" and info["cutoff_eV"] == 250.0
    want = np.ceil(2 * np.pi * 1.5 * np.linalg.norm(si.cell.reciprocal(), axis=1)).astype(int)
    assert list(info["kpts"]) == list(want) and not info["spinpol"]
    f = get_forces(atoms)
    assert np.abs(f.sum(axis=0)).max() < 0.02  # momentum conservation, eV/Å
    assert f[1, 0] < -0.5  # displaced atom is pushed back
    e = get_energy(atoms)
    assert -12.5 < e < -9.5  # PBE Si2 total energy scale in GPAW's reference, eV


def test_materials_project_settings_are_mprelaxsets():
    # MPRelaxSet's U (eV) on oxides and fluorides of the 3d metals, none on a metal or a sulfide; FM moments (μB)
    assert materials_project_settings(["Fe", "O"]) == {"magmoms": {"Fe": 5.0, "O": 0.6}, "hubbard_u": {"Fe": 5.3}}
    assert materials_project_settings(["Li", "Co", "O", "O"])["hubbard_u"] == {"Co": 3.32}
    assert materials_project_settings(["Ni", "F", "F"])["hubbard_u"] == {"Ni": 6.2}
    assert materials_project_settings(["Mn", "Li", "O"])["hubbard_u"] == {"Mn": 3.9}
    assert materials_project_settings(["Fe"]) == {"magmoms": {"Fe": 5.0}, "hubbard_u": None}
    assert materials_project_settings(["Fe", "S"])["hubbard_u"] is None  # S is the most electronegative
    assert materials_project_settings(["K", "Mg", "F"])["hubbard_u"] is None  # a fluoride without a U element


@pytest.mark.dft
def test_unconverged_scf_is_retried_with_careful_mixing_never_kept(tmp_path):
    pytest.importorskip("gpaw")
    feo = bulk("FeO", "rocksalt", 4.33)  # spin-polarised GGA+U, as Materials Project labels it
    feo.positions[1] += [0.05, 0.0, 0.0]
    # 4 SCF iterations cannot converge: GPAW raises, and the careful mixer (1000 iterations) converges
    factory = GPAWFactory(cutoff=300, kdensity=1.5, spinpol=True, maxiter=4,
                          **materials_project_settings(feo.get_chemical_symbols()))
    out = tmp_path / "feo.extxyz"
    rep = label([feo], out, factory, progress=False)
    assert rep.n_labelled == 1 and not rep.failures
    (atoms,) = ase.io.read(out, ":")
    assert "ConvergenceError" in atoms.info["label_retried"] and "maxiter 4" in atoms.info["label_retried"]
    assert json.loads(atoms.info["mixer"])["beta"] == 0.02 and atoms.info["maxiter"] == 1000
    assert json.loads(atoms.info["hubbard_u"]) == {"Fe": 5.3}
    moments = atoms.arrays["final_magmoms"]  # μB per atom; Fe²⁺ d⁶ high spin under U: ≈ 3.7 μB on Fe
    assert 3.0 < moments[0] < 4.2 and abs(moments[1]) < 0.5
    assert atoms.info["magmom_total"] == pytest.approx(moments.sum(), abs=0.5)  # the rest is interstitial
    # a structure that cannot converge at all is left out, with every attempt named
    hopeless = GPAWFactory(cutoff=300, kdensity=1.5, spinpol=True, maxiter=1, mixer={"backend": "pulay", "beta": 0.5})
    rep = label([feo], tmp_path / "never.extxyz", hopeless, progress=False)
    assert rep.n_labelled == 0 and len(rep.failures) == 1 and rep.failures[0]["attempts"]
    assert not (tmp_path / "never.extxyz").exists() or not ase.io.read(tmp_path / "never.extxyz", ":")


@pytest.mark.dft
def test_label_cli_streams_and_resumes(tmp_path):
    pytest.importorskip("gpaw")
    from typer.testing import CliRunner

    from calib.cli.main import app

    si = bulk("Si", "diamond", 5.43)
    si.positions[1] += [0.05, 0.0, 0.0]
    src = tmp_path / "in.extxyz"
    ase.io.write(src, [si], format="extxyz")
    out = tmp_path / "out.extxyz"
    args = ["label", str(src), "-o", str(out), "--cutoff", "250", "--kdensity", "1.0", "--json"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["n_labelled"] == 1 and rep["n_failed"] == 0
    (atoms,) = ase.io.read(out, ":")
    assert atoms.info["cutoff_eV"] == 250.0 and np.all(np.isfinite(get_forces(atoms)))
    # the same command again recomputes nothing
    r = CliRunner().invoke(app, args)
    assert json.loads(r.stdout)["n_done_before"] == 1 and len(ase.io.read(out, ":")) == 1


@pytest.mark.dft
def test_label_cli_failure_exit_code_and_torn_frame(tmp_path):
    """A structure GPAW cannot label: exit 1 in both output modes, the failure named; a torn last
    frame left by a killed run is cut off, reported and labelled again."""
    pytest.importorskip("gpaw")
    from ase import Atoms
    from typer.testing import CliRunner

    from calib.cli.main import app

    si = bulk("Si", "diamond", 5.43)
    si.info["name"] = "si"
    ghost = Atoms("X2", positions=[[0, 0, 0], [1.5, 0, 0]], cell=[4, 4, 4], pbc=True)  # no PAW setup for X
    ghost.info["name"] = "ghost"
    src = tmp_path / "in.extxyz"
    ase.io.write(src, [si, ghost], format="extxyz")
    out = tmp_path / "out.extxyz"
    args = ["label", str(src), "-o", str(out), "--cutoff", "250", "--kdensity", "1.0"]
    r = CliRunner().invoke(app, [*args, "--json"])
    assert r.exit_code == 1
    rep = json.loads(r.stdout)
    assert rep["n_labelled"] == 1 and rep["n_failed"] == 1 and rep["failures"][0]["name"] == "ghost"
    r = CliRunner().invoke(app, [*args, "--retry-failed"])
    assert r.exit_code == 1 and "ghost" in r.stderr  # the same code without --json
    full = out.read_bytes()
    out.write_bytes(full[:-30])  # a kill while the frame was written
    r = CliRunner().invoke(app, [*args, "--json", "--retry-failed"])
    rep = json.loads(r.stdout)
    assert "torn last frame" in rep["repaired"] and rep["n_labelled"] == 1 and rep["n_failed"] == 1
    (atoms,) = ase.io.read(out, ":")
    assert atoms.info["name"] == "si" and np.all(np.isfinite(get_forces(atoms)))
    assert len((tmp_path / "out.extxyz.errors.jsonl").read_text().splitlines()) == 1


@pytest.mark.dft
def test_a_shipped_label_is_recomputed_from_its_info_alone():
    """Everything that changes a number is in atoms.info: GPAWFactory.from_info rebuilds the calculation of a
    shipped frame (LiH, 8 atoms, ~20 s) and gives its energy and forces back at the precision of the SCF
    criteria it recorded (forces 1e-3 eV/Å)."""
    pytest.importorskip("gpaw")
    from calib import datasets
    from calib.data.labelers import GPAWFactory

    frame = datasets.load("high-energy-states", chemsys="Li-H")[0]
    factory = GPAWFactory.from_info(frame.info)
    assert factory.kdensity == 2.0 and factory.convergence["forces"] == 1e-3 and not factory.spinpol
    atoms = frame.copy()
    atoms.calc = None
    calc, info = factory(atoms)
    assert list(info["kpts"]) == list(frame.info["kpts"])
    atoms.calc = calc
    assert atoms.get_potential_energy() / len(atoms) == pytest.approx(frame.get_potential_energy() / len(atoms),
                                                                        abs=1e-5)
    np.testing.assert_allclose(atoms.get_forces(), frame.get_forces(), atol=3e-3)


def test_old_labels_say_they_cannot_be_recomputed():
    from calib import datasets
    from calib.data.labelers import GPAWFactory

    old = datasets.load("high-energy-states", chemsys="Si")[0]  # labelled by calib 0.3: no complete record
    with pytest.raises(ValueError, match="lacks .*kdensity"):
        GPAWFactory.from_info(old.info)


class _Pushed(EMT):
    """EMT with every atom's force shifted by ``push`` (eV/Å): forces that do not sum to zero, as an SCF that
    did not settle leaves them."""

    def __init__(self, push, **kw):
        super().__init__(**kw)
        self.push = np.asarray(push, dtype=float)

    def calculate(self, atoms=None, properties=("energy",), system_changes=()):
        super().calculate(atoms, properties, system_changes)
        self.results["forces"] = self.results["forces"] + self.push


class _Factory:
    """A calculator factory whose fallback (the retry after a failure) is balanced EMT."""

    def __init__(self, push):
        self.push, self.errors = push, []

    def __call__(self, atoms):
        return _Pushed(self.push) if self.push is not None else EMT()

    def fallback(self, error):
        self.errors.append(error)
        return _Factory(None) if self.push is not None else None


def test_forces_that_do_not_sum_to_zero_are_never_kept(tmp_path):
    from calib.data.structures import NET_FORCE_TOL, UnbalancedForces, net_force_per_atom

    cu = bulk("Cu", "fcc", 3.6, cubic=True)
    cu.rattle(0.05, seed=3)
    ref = cu.copy()
    ref.calc = EMT()
    f = ref.get_forces()
    assert net_force_per_atom(f) < 1e-10  # EMT's forces balance: the check's baseline
    # Σ F = 4 atoms × 0.03 eV/Å in z: 0.03 per atom > NET_FORCE_TOL; a 0.01 push passes
    assert net_force_per_atom(f + [0.0, 0.0, 0.03]) == pytest.approx(0.03, abs=1e-12)
    rep = label([cu], tmp_path / "bad.extxyz", _Pushed([0.0, 0.0, 0.03]), progress=False)
    assert rep.n_labelled == 0 and len(rep.failures) == 1
    assert "UnbalancedForces" in rep.failures[0]["error"] and "0.03 eV/Å per atom" in rep.failures[0]["error"]
    assert not (tmp_path / "bad.extxyz").exists() or not ase.io.read(tmp_path / "bad.extxyz", ":")
    ok = label([cu], tmp_path / "ok.extxyz", _Pushed([0.0, 0.0, 0.01]), progress=False)
    assert ok.n_labelled == 1 and 0.01 < NET_FORCE_TOL
    # a factory's fallback is asked for the retry, and the retried label records why
    factory = _Factory([0.05, 0.0, 0.0])
    rep = label([cu], tmp_path / "retried.extxyz", factory, progress=False)
    assert rep.n_labelled == 1 and isinstance(factory.errors[0], UnbalancedForces)
    (atoms,) = ase.io.read(tmp_path / "retried.extxyz", ":")
    assert "UnbalancedForces" in atoms.info["label_retried"]
    np.testing.assert_allclose(get_forces(atoms), f, atol=1e-6)


def test_gpaw_retries_unbalanced_forces_at_tight_convergence():
    from calib.data.labelers import CAREFUL_MAXITER, DEFAULT_CONVERGENCE, TIGHT_CONVERGENCE
    from calib.data.structures import UnbalancedForces

    first = GPAWFactory()
    retry = first.fallback(UnbalancedForces("net force"))
    assert retry.convergence == TIGHT_CONVERGENCE and retry.maxiter == CAREFUL_MAXITER and retry.mixer
    assert first.convergence == DEFAULT_CONVERGENCE  # the first factory is not changed
    for key in DEFAULT_CONVERGENCE:  # every criterion at least as tight
        assert TIGHT_CONVERGENCE[key] <= DEFAULT_CONVERGENCE[key]
    assert retry.fallback(UnbalancedForces("net force")) is None  # nothing tighter: left out
