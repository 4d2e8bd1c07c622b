"""The error contract, third round (docs/cli.md): each case is a hostile but fair input or invocation, with
the exit code, the kind and words of the error, what must survive (the other structures' results), and the
SHA-256 of every file before and after (no input touched, no output left by a refused command).

Items of the "hardening, third round" issue: 1 (memory of a far-out atom, the atom limit), 2 (a file calib
wrote is read back), 3 (a fake old artifact), 5 (a loop resumed over other settings), 6 (parameters first),
7 and 8 (one skip rule; partial occupancy), 9 (units of training labels), 10 (one version), 11 (the API and
the calculator), 12 (interrupts and leftovers), 14 (held-out that is not held out), 15 (provenance).
"""

import gzip
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator
from typer.testing import CliRunner

from calib import datasets
from calib.cli.main import app

DATA = Path(__file__).parent / "data"

runner = CliRunner()
HERE = Path(__file__).parent

CUAU_CIF = """data_CuAu
_symmetry_space_group_name_H-M   'F m -3 m'
_cell_length_a   3.75
_cell_length_b   3.75
_cell_length_c   3.75
_cell_angle_alpha   90
_cell_angle_beta    90
_cell_angle_gamma   90
loop_
_symmetry_equiv_pos_as_xyz
  'x, y, z'
  'x, y+1/2, z+1/2'
  'x+1/2, y, z+1/2'
  'x+1/2, y+1/2, z'
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
_atom_site_occupancy
Cu1 Cu 0 0 0 0.5
Au1 Au 0 0 0 0.5
"""


def run(*args, env=None):
    return runner.invoke(app, [str(a) for a in args], env=env)


def _sha_tree(root: Path) -> dict:
    """SHA-256 of every file below ``root`` (relative names)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _labelled(a, energy, forces, name):
    a = a.copy()
    a.calc = SinglePointCalculator(a, energy=float(energy), forces=np.asarray(forces, dtype=float))
    a.info["name"] = name
    return a


@pytest.fixture(scope="module")
def t3(tmp_path_factory, chgnet):
    """Every file the cases need, in one folder (its SHA-256 tree is compared before and after each case)."""
    import torch

    from calib.artifact import Artifact
    from calib.data.datasets import default_calibration
    from calib.data.labelers import GPAWFactory
    from calib.data.prototypes import perturbed_set
    from calib.models.chgnet import FINETUNED_FORMAT
    from calib.workflows.calibration import calibrate
    from calib.workflows.hessian import build_hessian
    from calib.workflows.loop import LoopSettings, run_record

    t = tmp_path_factory.mktemp("third")
    eq = perturbed_set(n_variants=1, seed=5)
    ase.io.write(t / "eq.extxyz", eq[:4], format="extxyz")
    si = datasets.load("high-energy-states", chemsys="Si")
    lif = datasets.load("high-energy-states", chemsys="Li-F")
    ase.io.write(t / "lab.extxyz", si[:6] + lif[:5], format="extxyz")  # the calibration set of CAL.nc
    ase.io.write(t / "held.extxyz", si[6:9] + lif[5:8], format="extxyz")  # not in it
    art, _ = build_hessian(chgnet, eq, progress=False)
    art.save(t / "H.nc")
    calibrate(art, chgnet, si[:6] + lif[:5], progress=False, energy_folds=None).artifact.save(t / "CAL.nc")
    # item 1: an atom 1e7 Å outside its periodic cell, among three ordinary crystals
    from calib.cli.bench_limits import far_atom_file

    far_atom_file(str(t / "four.extxyz"))
    big = bulk("Si", "diamond", 5.43, cubic=True) * (2, 2, 2)  # 64 atoms: above CALIB_MAX_ATOMS=50 below
    big.info["name"] = "Si64"
    ase.io.write(t / "big.extxyz", [eq[0], big, eq[1]], format="extxyz")
    # items 7, 8: a folder with a README, a broken CIF, a disordered CIF, a cut .gz and good files
    (t / "folder").mkdir()
    (t / "folder" / "README.md").write_text("# candidate structures\n")
    (t / "folder" / "broken.cif").write_text("data_broken\n_cell_length_a 3\n")
    (t / "folder" / "cuau.cif").write_text(CUAU_CIF)
    for k in range(2):
        ase.io.write(t / "folder" / f"good{k}.cif", eq[k])
    text = (t / "eq.extxyz").read_text()
    cut = text[: text.index(eq[2].info["name"]) + 200]  # two frames whole, the third cut
    (t / "folder" / "cut.extxyz.gz").write_bytes(gzip.compress(cut.encode()))
    (t / "labfolder").mkdir()
    (t / "labfolder" / "README.md").write_text("labels\n")
    ase.io.write(t / "labfolder" / "held.extxyz", si[6:9] + lif[5:8], format="extxyz")
    (t / "labfolder" / "broken.cif").write_text("data_broken\n_cell_length_a 3\n")
    # item 2: a CHGNet in the format calib finetune writes, under a MACE-looking suffix
    torch.save({"model": chgnet.model.as_dict(), "calib": {"format": FINETUNED_FORMAT}}, t / "ft.model")
    # item 3: the default artifact with the force quantile halved, its checksum deleted, "schema 1"
    import xarray as xr

    fake = xr.load_dataset(default_calibration("chgnet"))
    fake["cp_forces_quantile"] = fake["cp_forces_quantile"] * 0.5
    del fake.attrs["data_sha256"]
    fake.attrs["schema_version"] = 1
    fake.to_netcdf(t / "fake_old.nc")
    shutil.copy(HERE / "data" / "legacy_v1.nc", t / "legacy_v1.nc")
    shutil.copy(HERE / "data" / "legacy_v1_probe.extxyz", t / "probe.extxyz")
    # item 9: labels whose forces are 1000× too large (meV/Å written as eV/Å)
    ase.io.write(t / "lab1000.extxyz", [_labelled(a, a.get_potential_energy(), a.get_forces() * 1000,
                                                  f"Si-meV-{k}") for k, a in enumerate(si[:3])], format="extxyz")
    # item 5: a loop folder whose report records kdensity 2.0 and one start structure
    start = bulk("Si", "diamond", 5.43, cubic=True)
    start.info["name"] = "Si8"
    ase.io.write(t / "start.extxyz", [start], format="extxyz")
    other = start.copy()
    other.rattle(0.01, seed=1)
    ase.io.write(t / "other_start.extxyz", [other], format="extxyz")
    (t / "loop").mkdir()
    record = run_record(ase.io.read(t / "start.extxyz", ":"), LoopSettings(),
                        GPAWFactory(cutoff=450.0, kdensity=2.0, spinpol=False), "chgnet", default_calibration())
    (t / "loop" / "report.json").write_text(json.dumps({"chemsys": "Si", "run": record, "rounds": []}))
    (t / "oldloop").mkdir()
    (t / "oldloop" / "report.json").write_text(json.dumps({"chemsys": "Si", "rounds": []}))
    assert Artifact.load(t / "CAL.nc").calibration_keys is not None
    return t


def _records(doc):
    return {r["name"]: r for r in doc["records"]}


def _all_predicted_but(skipped: dict):
    """A check: the records named in ``skipped`` carry an error with those words, every other one is predicted."""
    def check(doc, t):
        for r in doc["records"]:
            words = next((w for name, w in skipped.items() if name in r["name"] or name in r.get("error", "")),
                         None)
            if words is None:
                assert "error" not in r and np.isfinite(r["energy"]), r
            else:
                assert words in r["error"], r
        assert doc["n_skipped"] == len(skipped) and doc["n_predicted"] == len(doc["records"]) - len(skipped)
    return check


def _held_out(n, k):
    def check(doc, t):
        h = doc["held_out"]
        assert h["n_structures"] == n and h["n_in_calibration"] == k, h
        assert (k is None and "cannot tell" in h["note"]) or (k is not None and h["n_held_out"] == n - k)
    return check


def _no_file(name):
    def check(doc, t):
        assert not (t / name).exists()
    return check


UNWRITABLE = "/proc/sys" if not os.access("/proc/sys", os.W_OK) else None

THIRD = [  # (id, argv, env, exit code, kind (None: success), words in the error, check(doc, folder) or None)
    # 1: the model gets wrapped positions; an atom limit for differentiated passes, named
    ("far-atom", ["predict", "{t}/four.extxyz"], None, 0, None, "", _all_predicted_but({})),
    ("atom-limit", ["predict", "{t}/big.extxyz"], {"CALIB_MAX_ATOMS": "50"}, 0, None, "",
     _all_predicted_but({"Si64": "has 64 atoms, more than the 50"})),
    # 2: a file calib wrote is read back, by its content, whatever its suffix; the output says how
    ("ft.model", ["predict", "{t}/eq.extxyz", "--calibration", "{t}/CAL.nc", "--model", "{t}/ft.model"], None, 0,
     None, "", lambda doc, t: (_all_predicted_but({})(doc, t),
                               "calib's format tag" in doc["model"]["read_as"] or pytest.fail(doc["model"]))),
    # 3: a fake old label does not skip the checksum; a genuine calib 0.1 file warns that it is unverified
    ("fake-old", ["predict", "{t}/eq.extxyz", "--calibration", "{t}/fake_old.nc", "--forces"], None, 1,
     "artifact", "has no checksum (data_sha256) although it records checksum scheme 2", None),
    ("legacy", ["predict", "{t}/probe.extxyz", "--calibration", "{t}/legacy_v1.nc"], None, 0, None, "",
     lambda doc, t: any("unverified" in w for w in doc["warnings"]) or pytest.fail(doc["warnings"])),
    # 5: a loop resumed over another start or other settings is refused, before GPAW or a model
    ("loop-kdensity", ["loop", "{t}/start.extxyz", "-o", "{t}/loop", "--kdensity", "3.0"], None, 1, "input",
     "kdensity (2.0 recorded, 3.0 now)", None),
    ("loop-start", ["loop", "{t}/other_start.extxyz", "-o", "{t}/loop"], None, 1, "input", "the start structures",
     None),
    ("loop-unrecorded", ["loop", "{t}/start.extxyz", "-o", "{t}/oldloop"], None, 1, "input", "records no start",
     None),
    # 6: parameters checked first, with one message per rule
    ("kdensity-0-label", ["label", "{t}/eq.extxyz", "-o", "{t}/l.extxyz", "--kdensity", "0"], None, 2, "usage",
     "--kdensity must be a finite number > 0", _no_file("l.extxyz")),
    ("kdensity-0-loop", ["loop", "{t}/start.extxyz", "-o", "{t}/newloop", "--kdensity", "0"], None, 2, "usage",
     "--kdensity must be a finite number > 0", _no_file("newloop")),
    ("temperature-0", ["loop", "{t}/start.extxyz", "-o", "{t}/newloop", "--temperature", "0"], None, 2, "usage",
     "--temperature must be a finite number > 0 K", _no_file("newloop")),
    ("loop-missing-parent", ["loop", "{t}/start.extxyz", "-o", "{t}/missing/dir"], None, 2, "output",
     "does not exist", _no_file("missing")),
    ("loop-mace", ["loop", "{t}/start.extxyz", "-o", "{t}/newloop", "--model", "mace-small"], None, 2, "usage",
     "calib loop runs CHGNet and SevenNet models", _no_file("newloop")),
    ("finetune-mace-epochs", ["finetune", "{t}/lab.extxyz", "-o", "{t}/m.model", "--model", "mace-small", "--epochs",
                              "0"], None, 2, "usage", "--epochs", _no_file("m.model")),
    ("model-bogus", ["predict", "{t}/eq.extxyz", "--model", "bogus"], None, 2, "usage", "unknown model 'bogus'",
     None),
    ("lr-negative", ["finetune", "{t}/lab.extxyz", "-o", "{t}/m.pt", "--lr", "-1e-3"], None, 2, "usage",
     "--lr must be a finite number > 0", _no_file("m.pt")),
    ("lr-zero", ["finetune", "{t}/lab.extxyz", "-o", "{t}/m.pt", "--lr", "0"], None, 2, "usage",
     "--lr must be a finite number > 0", _no_file("m.pt")),
    # 7, 8: one skip rule: predict and evaluate keep the good structures of a folder with bad files in it
    ("folder-predict", ["predict", "{t}/folder"], None, 0, None, "",
     _all_predicted_but({"README.md": "holds no structures", "broken.cif": "broken.cif",
                         "cut.extxyz.gz": "frame 2", "cuau": "partial occupancy: order the structure first "
                                                             "(pymatgen's OrderDisorderedStructureTransformation)"})),
    ("folder-evaluate", ["evaluate", "{t}/labfolder", "--calibration", "{t}/CAL.nc", "--no-forces"], None, 0,
     None, "", lambda doc, t: (len(doc["skipped"]) == 2 and doc["n_structures"] == 6) or pytest.fail(doc)),
    # 9: labels in the wrong units are refused, naming the structure; nothing is written
    ("units", ["finetune", "{t}/lab1000.extxyz", "-o", "{t}/ft1000.pt", "--epochs", "1", "--replay", "0"], None,
     1, "input", "structure 0 (Si-meV-0, lab1000.extxyz:0): a reference force component of", _no_file("ft1000.pt")),
    # 14: evaluate says how many of its inputs the artifact was calibrated on
    ("in-sample", ["evaluate", "{t}/lab.extxyz", "--calibration", "{t}/CAL.nc", "--no-forces"], None, 0, None, "",
     _held_out(11, 11)),
    ("held-out", ["evaluate", "{t}/held.extxyz", "--calibration", "{t}/CAL.nc", "--no-forces"], None, 0, None, "",
     _held_out(6, 0)),
    # the default calibration (built by calib 0.6) knows its 512 labels: these shipped frames are among them
    ("in-default", ["evaluate", "{t}/held.extxyz", "--no-forces"], None, 0, None, "", _held_out(6, 6)),
    # an artifact calibrated before calib 0.6 (the shipped calib 0.1 one) stored no fingerprints: cannot tell
    ("cannot-tell", ["evaluate", "{t}/held.extxyz", "--calibration", str(DATA / "legacy_v1.nc"), "--no-forces"],
     None, 0, None, "", _held_out(6, None)),
]
if UNWRITABLE:
    THIRD.append(("loop-unwritable", ["loop", "{t}/start.extxyz", "-o", f"{UNWRITABLE}/calib-loop"], None, 2,
                  "output", "is not writable", None))


@pytest.mark.parametrize("case", THIRD, ids=[c[0] for c in THIRD])
def test_third_round(t3, case):
    name, argv, env, code, kind, words, check = case
    args = [a.format(t=t3) for a in argv]
    before = _sha_tree(t3)
    r = run(*args, "--json", "-q", env=env)
    doc = json.loads(r.stdout)  # exactly one JSON document on stdout
    assert r.exit_code == code, (r.exit_code, doc)
    assert "Traceback" not in r.output
    if kind is not None:
        assert doc["kind"] == kind and words in doc["error"], doc
    if check is not None:
        check(doc, t3)
    after = _sha_tree(t3)
    for path, digest in before.items():  # no file that existed was changed
        assert after.get(path) == digest, path
    if kind is not None:
        assert set(after) == set(before), set(after) ^ set(before)  # a refused command leaves nothing


def test_parameter_errors_import_no_torch(t3):
    """Rule 1, measured without a clock: every parameter error of the table ends before torch is imported (the
    seconds are `calib bench limits`)."""
    cases = [[a.format(t=t3) for a in argv] for _, argv, _, code, kind, _, _ in THIRD if code == 2]
    script = ("import json, sys\nfrom typer.testing import CliRunner\nfrom calib.cli.main import app\n"
              "out = []\nfor argv in json.loads(sys.argv[1]):\n"
              "    r = CliRunner().invoke(app, argv + ['--json'])\n"
              "    out.append([r.exit_code, 'torch' in sys.modules])\nprint(json.dumps(out))\n")
    res = subprocess.run([sys.executable, "-c", script, json.dumps(cases)], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    for argv, (code, torch_loaded) in zip(cases, json.loads(res.stdout)):
        assert code == 2 and not torch_loaded, argv


# ------------------------------------------------------------------ 1: memory, in a capped process


def test_far_atom_predict_survives_a_4_gb_address_space_cap(t3):
    """The whole `calib predict` on the four-structure file, in a process capped at 4 GB of address space
    (calib 0.5 peaked at 18.9 GB RSS on it): alive, every structure predicted, the far one as the crystal it
    is (its energy equals the wrapped structure's, computed separately)."""
    cap = 4 * 2**30

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    proc = subprocess.Popen([sys.executable, "-m", "calib.cli.main", "predict", str(t3 / "four.extxyz"), "--json",
                             "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=limit,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    doc = json.loads(out)
    assert doc["n_predicted"] == 4 and doc["n_skipped"] == 0
    frames = ase.io.read(t3 / "four.extxyz", ":")
    wrapped = frames[1].copy()
    wrapped.wrap()
    from calib.models import load_model

    e = load_model("chgnet").predict([wrapped], forces=False).energy[0]
    rec = doc["records"][1]  # the model's own energy (the default calibration may report a corrected one)
    assert rec.get("energy_model", rec["energy"]) == pytest.approx(e, abs=1e-4)  # float32 CHGNet, eV


# ------------------------------------------------------------------ 7, 8, 11: the same rule from Python


def test_predictor_skips_what_is_not_a_structure(chgnet):
    """CalibratedPredictor.predict on a list with a disordered pymatgen Structure, a Molecule and an int among
    good structures: each bad one is a named row, the good ones are predicted as alone."""
    from pymatgen.core import Lattice, Molecule, Structure

    from calib import CalibratedPredictor

    good = [bulk("Si", "diamond", 5.43), bulk("NaCl", "rocksalt", 5.64)]
    disordered = Structure(Lattice.cubic(3.75), [{"Cu": 0.5, "Au": 0.5}], [[0, 0, 0]])
    molecule = Molecule(["H", "H"], [[0, 0, 0], [0, 0, 0.74]])
    p = CalibratedPredictor.from_file(None, model=chgnet)
    ds = p.predict([good[0], disordered, molecule, good[1], 42], progress=False)
    errors = list(ds["error"].values)
    assert errors[0] == errors[3] == ""
    assert "partial occupancy: order the structure first" in errors[1]
    assert "Molecule" in errors[2] and "periodic" in errors[2] and "int" in errors[4]
    alone = p.predict(good, progress=False)
    np.testing.assert_array_equal(ds["energy"].values[[0, 3]], alone["energy"].values)


def test_the_default_predictor_from_python_is_the_cli_default(t3, chgnet):
    """from_file(None) and .default() load calib's default calibration, as `calib predict` does without
    --calibration; the Dataset records which calibration and says its energies are total eV."""
    import calib
    from calib import CalibratedPredictor, TrustPolicy, default_calibration

    assert default_calibration() == calib.data.datasets.default_calibration("chgnet")
    structs = ase.io.read(t3 / "eq.extxyz", ":2")
    ds = CalibratedPredictor.from_file(None, model=chgnet, trust=TrustPolicy()).predict(structs, progress=False)
    assert ds.attrs["calibration"] == "default" and ds.attrs["energies"].startswith("total eV")
    assert ds.attrs["model_energy_convention"] == "per_atom" and "energy_convention" not in ds.attrs
    assert CalibratedPredictor.default(chgnet).calibration == "default"
    doc = json.loads(run("predict", t3 / "eq.extxyz", "--limit", "2", "--json", "-q").stdout)
    np.testing.assert_allclose([r["energy_sigma"] for r in doc["records"]], ds["energy_sigma"].values, rtol=1e-12)
    path = CalibratedPredictor.from_file(t3 / "CAL.nc", model=chgnet).predict(structs, progress=False)
    assert path.attrs["calibration"] == str(t3 / "CAL.nc")
    with pytest.raises(ValueError, match="default calibrations for CHGNet 0.3.0 and SevenNet-0 only"):
        CalibratedPredictor.default("mace-small")


def test_calculator_without_a_calibration_says_so(t3):
    """CalibratedCalculator on a model file calib has no default calibration for: a CalibWarning, trusted None
    and the reason (it ran uncalibrated in silence); with the default model the verdict is there."""
    from calib import CalibratedCalculator
    from calib.errors import CalibWarning

    atoms = ase.io.read(t3 / "eq.extxyz", 0)
    with pytest.warns(CalibWarning, match="no calibration"):
        calc = CalibratedCalculator(str(t3 / "ft.model"))
    atoms.calc = calc
    atoms.get_potential_energy()
    assert calc.results["trusted"] is None and "no calibration" in calc.results["trust_reason"]
    assert "energy_uncertainty" not in calc.results
    atoms.calc = CalibratedCalculator("chgnet")
    atoms.get_potential_energy()
    assert isinstance(atoms.calc.results["trusted"], bool)


# ------------------------------------------------------------------ 3: the checksum from Python


def test_schema_cannot_switch_the_checksum_off(t3):
    from calib.artifact import Artifact, ArtifactError
    from calib.errors import CalibWarning

    with pytest.raises(ArtifactError, match=r"although it records checksum scheme 2"):
        Artifact.load(t3 / "fake_old.nc")
    import xarray as xr

    ds = xr.load_dataset(t3 / "fake_old.nc")
    del ds.attrs["checksum_scheme"]  # now it looks like calib 0.1, but holds what 0.1 never wrote
    ds.to_netcdf(t3.parent / "fake_older.nc")
    with pytest.raises(ArtifactError, match="never wrote"):
        Artifact.load(t3.parent / "fake_older.nc")
    with pytest.warns(CalibWarning, match="unverified"):
        assert Artifact.load(t3 / "legacy_v1.nc").calibrated


# ------------------------------------------------------------------ 5: resume with the same settings


def test_loop_resume_check_passes_for_the_recorded_run(t3):
    from calib.data.datasets import default_calibration
    from calib.data.labelers import GPAWFactory
    from calib.errors import InputError
    from calib.workflows.loop import LoopSettings, check_resume, run_record

    start = ase.io.read(t3 / "start.extxyz", ":")
    factory = GPAWFactory(cutoff=450.0, kdensity=2.0, spinpol=False)
    check_resume(t3 / "loop", run_record(start, LoopSettings(rounds=7), factory, "chgnet", default_calibration()))
    with pytest.raises(InputError, match="epochs"):
        check_resume(t3 / "loop", run_record(start, LoopSettings(epochs=3), factory, "chgnet", default_calibration()))
    with pytest.raises(InputError, match="the calibration"):
        check_resume(t3 / "loop", run_record(start, LoopSettings(), factory, "chgnet", str(t3 / "CAL.nc")))


# ------------------------------------------------------------------ 10: one version


def test_one_version_everywhere(t3, tmp_path):
    import calib
    from calib.artifact import Artifact

    root = HERE.parent
    from setuptools.config.pyprojecttoml import read_configuration

    conf = read_configuration(root / "pyproject.toml", expand=True, ignore_option_errors=False)
    assert conf["project"]["version"] == calib.__version__
    heading = next(line for line in (root / "CHANGELOG.md").read_text().splitlines() if line.startswith("## "))
    assert heading.split()[1] == calib.__version__, heading
    r = run("--version")
    assert r.exit_code == 0 and r.stdout.strip() == f"calib {calib.__version__}"
    doc = json.loads(run("--version", "--json").stdout)
    assert doc["calib"] == calib.__version__ and doc["torch"] and doc["chgnet"]
    Artifact.load(t3 / "H.nc").save(tmp_path / "H.nc")
    import xarray as xr

    assert xr.load_dataset(tmp_path / "H.nc").attrs["calib_version"] == calib.__version__
    from importlib.metadata import distribution

    dist = distribution("calib")
    direct = json.loads(dist.read_text("direct_url.json") or "{}").get("url", "")
    if direct.endswith(str(root)):  # pip's metadata of this very checkout
        assert dist.version == calib.__version__


# ------------------------------------------------------------------ 12: interrupts, leftovers


def _until(stream, words, found: threading.Event):
    buf = ""
    while True:
        chunk = stream.read(1)
        if not chunk:
            return
        buf += chunk
        if words in buf:
            found.set()


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_command_prints_one_json_error(tmp_path, sig, code):
    """The signal is sent once the prediction has started (its progress bar is on stderr): stdout then holds
    one JSON error of kind interrupted, and the exit code is 128 + the signal."""
    cell = bulk("Si", "diamond", 5.43, cubic=True) * (3, 3, 3)
    ase.io.write(tmp_path / "big.extxyz", [cell] * 6, format="extxyz")
    proc = subprocess.Popen([sys.executable, "-m", "calib.cli.main", "predict", str(tmp_path / "big.extxyz"),
                             "--json", "--batch-size", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    started = threading.Event()
    reader = threading.Thread(target=_until, args=(proc.stderr, "predict:", started), daemon=True)
    reader.start()
    assert started.wait(300), "the prediction never started"
    proc.send_signal(sig)
    out = proc.stdout.read()
    proc.wait(timeout=120)
    assert proc.returncode == code
    doc = json.loads(out)
    assert doc["kind"] == "interrupted" and signal.Signals(sig).name in doc["error"]


def test_a_killed_finetune_leaves_no_temporary_folder(tmp_path):
    """SIGTERM while chgnet's Trainer runs: exit 143 with one JSON error, the trainer's folder removed, no model
    written; a folder left by a fine-tuning killed outright (a pid that is gone) is removed by the next one."""
    from calib.workflows import finetune as ft

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    ase.io.write(tmp_path / "l.extxyz", datasets.load("high-energy-states", chemsys="Si")[:2], format="extxyz")
    proc = subprocess.Popen([sys.executable, "-m", "calib.cli.main", "finetune", str(tmp_path / "l.extxyz"), "-o",
                             str(tmp_path / "m.pt"), "--epochs", "500", "--replay", "0", "--json", "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp)})
    import time

    t0 = time.time()
    while not list(tmp.glob("calib-finetune-*")) and proc.poll() is None and time.time() - t0 < 300:
        time.sleep(0.05)
    assert list(tmp.glob("calib-finetune-*")), "training never started"
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143 and json.loads(out)["kind"] == "interrupted"
    assert not list(tmp.glob("calib-finetune-*")) and not (tmp_path / "m.pt").exists()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp / f"calib-finetune-{dead.pid}-x"
    stale.mkdir()
    old = ft.tempfile.tempdir
    ft.tempfile.tempdir = str(tmp)
    try:
        ft._remove_stale_workdirs()
    finally:
        ft.tempfile.tempdir = old
    assert not stale.exists()
