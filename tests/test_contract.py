"""The error contract of every `calib` command (docs/cli.md), case by case, through the CLI.

Each case states what a hostile but fair user does and what must come back: the exit code (0 done,
1 failed or nothing processed, 2 usage), one JSON document under --json (``{"error", "kind"}`` on
failure), a message naming the problem, no traceback, and which files survive unchanged.
"""

import json
import os
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator
from conftest import expected_decision
from typer.testing import CliRunner

from calib import datasets
from calib.cli.main import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def doc_of(r) -> dict:
    """The one JSON document of a --json run (fails if stdout holds anything else)."""
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def d(tmp_path_factory, chgnet):
    """Files every case can use: equilibrium structures, labels, H.nc and a calibrated CAL.nc."""
    from calib.data.prototypes import perturbed_set
    from calib.workflows.calibration import calibrate
    from calib.workflows.hessian import build_hessian

    d = tmp_path_factory.mktemp("contract")
    eq = perturbed_set(n_variants=1, seed=5)
    ase.io.write(d / "eq.extxyz", eq, format="extxyz")
    si = datasets.load("high-energy-states", chemsys="Si")[:6]
    lif = datasets.load("high-energy-states", chemsys="Li-F")[:5]
    ase.io.write(d / "lab.extxyz", si + lif, format="extxyz")
    art, _ = build_hessian(chgnet, eq, progress=False)
    art.save(d / "H.nc")
    calibrate(art, chgnet, si + lif, progress=False, energy_folds=None).artifact.save(d / "CAL.nc")
    return d


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model is an error: for cases that must be refused before any model loads."""
    import calib.models

    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the parameters were checked")

    monkeypatch.setattr(calib.models, "load_model", refuse)


def _labelled(atoms, energy, forces, name):
    a = atoms.copy()
    a.calc = SinglePointCalculator(a, energy=energy, forces=np.asarray(forces, dtype=float))
    a.info["name"] = name
    return a


# ------------------------------------------------------------------ parameters refused before a model loads

USAGE = [  # (command line after the files, the words the message must contain)
    (["softening", "{lab}", "--batch-size", "0"], "--batch-size"),
    (["softening", "{lab}", "--n-bootstrap", "0"], "--n-bootstrap"),
    (["softening", "{lab}", "--confidence", "1.5"], "--confidence"),
    (["softening", "{lab}", "--confidence", "nan"], "--confidence"),
    (["softening", "{lab}", "--plot", "{lab}"], "is a file"),
    (["softening", "{lab}", "--calibration", "{cal}"], "both --calibration and -o"),
    (["hessian", "{eq}", "-o", "{tmp}/H2.nc", "--checkpoint-every", "0"], "--checkpoint-every"),
    (["hessian", "{eq}", "-o", "{tmp}/H2.nc", "--force-weight", "-1"], "--force-weight"),
    (["hessian", "{eq}", "-o", "{tmp}/H2.nc", "--force-weight", "nan"], "--force-weight"),
    (["hessian", "{eq}", "-o", "{tmp}/H2.nc", "--device", "banana"], "--device"),
    (["hessian", "{eq}", "-o", "{tmp}/H2.nc", "--device", "cuda:7"], "cuda"),
    (["hessian", "{eq}", "-o", "{tmp}/missing/H.nc"], "does not exist"),
    (["hessian", "{eq}", "-o", "{tmp}"], "is a folder"),
    (["hessian", "{eq}", "-o", "{eq}"], "is also an input"),
    (["hessian", "{eq}", "-o", "{cal}"], "--overwrite"),
    (["calibrate", "{lab}", "--hessian", "{h}", "-o", "{tmp}/c.nc", "--alpha", "1.5"], "--alpha"),
    (["calibrate", "{lab}", "--hessian", "{h}", "-o", "{tmp}/c.nc", "--min-class-size", "-5"], "--min-class-size"),
    (["calibrate", "{lab}", "--hessian", "{h}", "-o", "{tmp}/c.nc", "--classes", "banana"], "--classes"),
    (["calibrate", "{lab}", "--hessian", "{h}", "-o", "{tmp}/c.nc", "--target", "stress"], "--target"),
    (["calibrate", "{lab}", "--hessian", "{h}", "-o", "{h}"], "is also an input"),
    (["decide", "{lab}", "--calibration", "{cal}", "--confidence", "0"], "--confidence"),
    (["decide", "{lab}", "--calibration", "{cal}", "--n-requests", "-2"], "--n-requests"),
    (["decide", "{lab}", "--calibration", "{cal}", "--max-untrusted", "-1"], "--max-untrusted"),
    (["decide", "{lab}", "--calibration", "{cal}", "--force-tol", "nan"], "--force-tol"),
    (["decide", "{lab}", "--calibration", "{cal}", "--min-labels", "0"], "--min-labels"),
    (["decide", "{lab}", "--calibration", "{cal}", "--request-out", "{lab}"], "is also an input"),
    (["decide", "{lab}", "--calibration", "{cal}", "-o", "{tmp}/s.nc", "--request-out", "{tmp}/s.nc"], "both name"),
    (["label", "{eq}", "-o", "{eq}"], "is also an input"),
    (["label", "{eq}", "-o", "{tmp}/l.extxyz", "--cutoff", "-450"], "--cutoff"),
    (["predict", "{eq}", "--calibration", "{cal}", "--force-mode", "fast"], "--force-mode"),
    (["predict", "{eq}", "--calibration", "{cal}", "--bogus"], "--bogus"),
    (["predict", "{eq}", "--calibration", "{cal}", "--trust-confidence", "1"], "--trust-confidence"),
    (["screen", "{eq}", "--calibration", "{cal}", "-o", "{tmp}/r.nc", "--trust-confidence", "nan"],
     "--trust-confidence"),
    (["predict", "--calibration", "{cal}"], "Missing argument"),
    (["neb", "{eq}", "--calibration", "{cal}", "--plot", "{lab}"], "--overwrite"),
    (["screen", "{eq}", "--calibration", "{cal}", "-o", "{tmp}/r.nc", "--workers", "0"], "--workers"),
    (["screen", "{eq}", "--calibration", "{cal}", "-o", "{tmp}/r.nc", "--batch-size", "0"], "batch"),
    (["eos", "--plot", "{lab}"], "--overwrite"),
    (["bench", "conformal", "--n-scores", "0"], "--n-scores"),
]


@pytest.mark.parametrize("argv,words", USAGE, ids=[" ".join(a[:1] + a[2:])[:60] for a, _ in USAGE])
def test_usage_errors_exit_2_before_any_model_loads(d, no_model, argv, words):
    files = {"lab": d / "lab.extxyz", "eq": d / "eq.extxyz", "cal": d / "CAL.nc", "h": d / "H.nc", "tmp": d}
    before = {p: p.read_bytes() for p in d.iterdir() if p.is_file()}
    args = [a.format(**files) for a in argv]
    r = run(*args, "--json")
    assert r.exit_code == 2, r.output
    doc = doc_of(r)
    assert doc["kind"] in ("usage", "output") and words in doc["error"], doc
    assert "Traceback" not in r.output
    r = run(*args)  # the same without --json: one line on stderr, nothing on stdout
    assert r.exit_code == 2 and r.stdout == "" and words in r.stderr and "Traceback" not in r.stderr
    after = {p: p.read_bytes() for p in d.iterdir() if p.is_file()}
    assert after == before  # no input touched, no output or temporary file left


def test_no_gpu_is_a_usage_error(d, no_model):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    r = run("predict", d / "eq.extxyz", "--calibration", d / "CAL.nc", "--device", "cuda", "--json")
    assert r.exit_code == 2 and "no CUDA GPU" in doc_of(r)["error"]


# ------------------------------------------------------------------ data errors: exit 1, named, JSON


def test_unreadable_inputs_are_named(d, tmp_path):
    (tmp_path / "x.bin").write_bytes(os.urandom(300))
    r = run("predict", tmp_path / "x.bin", "--calibration", d / "CAL.nc", "--json")
    assert r.exit_code == 1 and doc_of(r)["kind"] == "input"
    assert "x.bin" in doc_of(r)["error"] and "cannot tell the format" in doc_of(r)["error"]
    text = (d / "eq.extxyz").read_text()
    frames = ase.io.read(d / "eq.extxyz", ":")
    cut = text[: text.index(frames[3].info["name"]) + 200]  # inside frame 3
    (tmp_path / "cut.extxyz").write_text(cut)
    r = run("predict", tmp_path / "cut.extxyz", "--calibration", d / "CAL.nc", "--json")
    # the skip rule: the three intact frames are predicted, the torn one is reported with its file and frame
    doc = doc_of(r)
    assert r.exit_code == 0 and doc["n_predicted"] == 3 and doc["n_skipped"] == 1, doc
    assert [x["name"] for x in doc["records"][:3]] == [a.info["name"] for a in frames[:3]]
    assert "frame 3" in doc["records"][3]["error"] and "cut.extxyz" in doc["records"][3]["error"]


def test_netcdf_with_calib_names_but_no_attributes(d, tmp_path):
    import xarray as xr

    ds = xr.load_dataset(d / "CAL.nc")
    ds.attrs = {}
    for v in ds.variables.values():
        v.attrs = {}
    ds.to_netcdf(tmp_path / "bare.nc")
    r = run("predict", d / "eq.extxyz", "--calibration", tmp_path / "bare.nc", "--json")
    assert r.exit_code == 1 and doc_of(r)["kind"] == "artifact" and "not a calib artifact" in doc_of(r)["error"]


def test_changed_bytes_in_an_artifact_are_caught(d, tmp_path):
    import shutil

    import netCDF4

    bad = tmp_path / "CAL.nc"
    shutil.copy(d / "CAL.nc", bad)
    with netCDF4.Dataset(bad, "r+") as nc:  # 8 bytes: one float64 of the stored energy quantile
        nc["cp_energy_quantile"][...] = nc["cp_energy_quantile"][...] * 100
    r = run("predict", d / "eq.extxyz", "--calibration", bad, "--json")
    assert r.exit_code == 1 and doc_of(r)["kind"] == "artifact" and "corrupt" in doc_of(r)["error"]
    r = run("predict", d / "eq.extxyz", "--calibration", d / "CAL.nc", "--json")  # the original still reads
    assert r.exit_code == 0, r.output


def test_predict_exit_1_when_every_structure_is_rejected(d, tmp_path):
    a = bulk("Si", "diamond", 5.43)
    a.positions[1] = a.positions[0] + [0.1, 0, 0]
    ase.io.write(tmp_path / "bad.extxyz", [a, a], format="extxyz")
    r = run("predict", tmp_path / "bad.extxyz", "--calibration", d / "CAL.nc", "--json")
    assert r.exit_code == 1
    doc = doc_of(r)
    assert doc["n_predicted"] == 0 and all("closer than" in x["error"] for x in doc["records"])


def test_decide_and_softening_exit_1_on_all_invalid_input(d, tmp_path):
    a = bulk("Si", "diamond", 5.43)
    a.positions[1] = a.positions[0] + [0.1, 0, 0]
    ase.io.write(tmp_path / "bad.extxyz", [_labelled(a, -10.0, np.zeros((2, 3)), "squashed")], format="extxyz")
    for argv in (["decide", tmp_path / "bad.extxyz", "--calibration", d / "CAL.nc"],
                 ["softening", tmp_path / "bad.extxyz", "--n-bootstrap", "10"]):
        r = run(*argv, "--json")
        assert r.exit_code == 1 and "squashed" in doc_of(r)["error"], r.output


# ------------------------------------------------------------------ per-chemistry failures stay per chemistry


def test_zero_force_chemistry_is_reported_and_the_others_stand(d, tmp_path, chgnet):
    diamond = [bulk("C", "diamond", a0) for a0 in (3.55, 3.57, 3.59)]  # perfect cells: every force is 0
    zero = [_labelled(a, float(e), np.zeros((2, 3)), f"C-{k}")
            for k, (a, e) in enumerate(zip(diamond, chgnet.predict(diamond, forces=False).energy))]
    ase.io.write(tmp_path / "mix.extxyz", ase.io.read(d / "lab.extxyz", ":6") + zero, format="extxyz")
    r = run("softening", tmp_path / "mix.extxyz", "--n-bootstrap", "50", "--json")
    assert r.exit_code == 0, r.output
    recs = {x["chemsys"]: x for x in doc_of(r)["records"]}
    assert recs["C"]["n_structures"] == 3 and "force components are zero" in recs["C"]["reason"]
    assert recs["Si"]["softening_scale"] > 0 and "reason" not in recs["Si"]
    r = run("decide", tmp_path / "mix.extxyz", "--calibration", d / "CAL.nc", "--json")
    assert r.exit_code == 0, r.output
    recs = {x["chemsys"]: x for x in doc_of(r)["records"]}
    assert recs["C"]["decision"] == "label" and "softening not measured" in recs["C"]["reasons"][0]
    assert recs["Si"]["softening_scale"] > 0 and recs["Si"]["decision"] == expected_decision(recs["Si"])


def test_target_chemistries_without_labels_get_label_and_requests(d, tmp_path):
    targets = (datasets.load("high-energy-states", chemsys="Na-Cl")[:10]
               + datasets.load("high-energy-states", chemsys="Zn-S")[:10])
    for a in targets:
        a.calc = None
    ase.io.write(tmp_path / "targets.extxyz", targets, format="extxyz")
    req = tmp_path / "req.extxyz"
    r = run("decide", d / "lab.extxyz", "--calibration", d / "CAL.nc", "--targets", tmp_path / "targets.extxyz",
            "--request-out", req, "--n-requests", "3", "--json")
    assert r.exit_code == 0, r.output
    recs = {x["chemsys"]: x for x in doc_of(r)["records"]}
    for chem, rows in (("Na-Cl", range(0, 10)), ("Zn-S", range(10, 20))):
        assert recs[chem]["decision"] == "label" and "no labelled structure" in recs[chem]["reasons"][0]
        assert len(recs[chem]["label_requests"]) == 3 and set(recs[chem]["label_requests"]) <= set(rows)
    written = ase.io.read(req, ":")
    wanted = [i for x in doc_of(r)["records"] for i in x["label_requests"]]
    assert [a.info["calib_request_index"] for a in written] == wanted and len(wanted) >= 6


@pytest.mark.slow
def test_symmetric_structure_is_calibrated_with_zero_sigma_components_left_out(d, tmp_path, chgnet):
    dimer = Atoms("Si2", positions=[[0, 0, 0], [2.3, 0, 0]], cell=[10, 10, 10], pbc=True)
    p = chgnet.predict([dimer], forces=True)
    f = 1.2 * p.forces  # a "reference" 20 % stiffer, along x only, as symmetry demands
    assert np.all(f[:, 1:] == 0)
    lab = ase.io.read(d / "lab.extxyz", ":") + [_labelled(dimer, float(p.energy[0]) - 1.0, f, "dimer")]
    ase.io.write(tmp_path / "lab.extxyz", lab, format="extxyz")
    r = run("calibrate", tmp_path / "lab.extxyz", "--hessian", d / "H.nc", "-o", tmp_path / "c.nc",
            "--energy-folds", "0", "--json")
    assert r.exit_code == 0, r.output
    doc = doc_of(r)
    assert doc["force_components_zero_sigma"] == 4  # y and z of both atoms
    assert np.isfinite(doc["force_nll"]) and doc["conformal_quantile"]["forces"] > 0
    r = run("evaluate", tmp_path / "lab.extxyz", "--calibration", tmp_path / "c.nc", "--json")
    assert r.exit_code == 0, r.output
    doc = doc_of(r)
    # evaluate judges the error model's σ, which has a floor: the dimer's symmetric zeros (error exactly 0) are
    # ordinary components there, none is left out, and the NLL is finite
    assert doc["force_components_zero_sigma"] == 0 and np.isfinite(doc["forces"]["nll"])
    n_components = sum(3 * len(a) for a in lab)
    assert doc["forces"]["n"] == n_components


def test_one_structure_per_chemistry_is_refused(d, tmp_path):
    one_each = [datasets.load("high-energy-states", chemsys=c)[0] for c in ("Si", "Li-F", "Na-Cl", "Mg")]
    ase.io.write(tmp_path / "one.extxyz", one_each, format="extxyz")
    r = run("calibrate", tmp_path / "one.extxyz", "--hessian", d / "H.nc", "-o", tmp_path / "c.nc",
            "--energy-folds", "0", "--json")
    assert r.exit_code == 1, r.output
    assert "cannot be determined" in doc_of(r)["error"] and "--target forces" in doc_of(r)["error"]
    assert not (tmp_path / "c.nc").exists()


# ------------------------------------------------------------------ outputs: never clobbered, all or none


def test_existing_outputs_need_overwrite_and_inputs_never_change(d, tmp_path):
    import shutil

    lab = tmp_path / "lab.extxyz"
    shutil.copy(d / "lab.extxyz", lab)
    cal = tmp_path / "CAL.nc"
    shutil.copy(d / "CAL.nc", cal)
    before = lab.read_bytes(), cal.read_bytes()
    r = run("decide", lab, "--calibration", cal, "--request-out", lab, "--json")
    assert r.exit_code == 2 and "is also an input" in doc_of(r)["error"]
    r = run("hessian", lab, "-o", cal, "--json")
    assert r.exit_code == 2 and "--overwrite" in doc_of(r)["error"]
    assert (lab.read_bytes(), cal.read_bytes()) == before
    r = run("hessian", d / "eq.extxyz", "-o", cal, "--overwrite", "--json")  # replaced only when asked
    assert r.exit_code == 0, r.output
    from calib.artifact import Artifact

    assert not Artifact.load(cal).calibrated


def test_outputs_are_written_all_or_none(tmp_path):
    from calib.cli.app import stage_outputs as _stage

    def boom(path):
        raise OSError("disk full")

    with pytest.raises(OSError):
        _stage([(tmp_path / "a.txt", lambda p: Path(p).write_text("a")), (tmp_path / "b.txt", boom)])
    assert list(tmp_path.iterdir()) == []  # neither output, no temporary file
    _stage([(tmp_path / "a.txt", lambda p: Path(p).write_text("a")), (tmp_path / "b.txt",
                                                                      lambda p: Path(p).write_text("b"))])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]


# ------------------------------------------------------------------ labelling: torn frames, failures


def test_label_resume_repairs_a_torn_last_frame(tmp_path):
    from ase.calculators.emt import EMT

    from calib.data.labelers import label

    structs = [bulk("Cu", "fcc", a0, cubic=True) for a0 in (3.55, 3.60, 3.65, 3.70)]
    for k, a in enumerate(structs):
        a.info["name"] = f"Cu-{k}"
    out = tmp_path / "lab.extxyz"
    assert label(structs[:3], out, EMT(), progress=False).n_labelled == 3
    full = out.read_bytes()
    out.write_bytes(full[: len(full) - 57])  # killed while writing the third frame
    rep = label(structs, out, EMT(), progress=False)
    assert "torn last frame" in rep.repaired and rep.n_done_before == 2 and rep.n_labelled == 2
    back = ase.io.read(out, ":")
    assert [a.info["name"] for a in back] == ["Cu-0", "Cu-1", "Cu-2", "Cu-3"]
    ref = [EMT().get_potential_energy(a) for a in structs]
    assert np.allclose([a.get_potential_energy() for a in back], ref)


def test_retry_failed_keeps_one_line_per_failure(tmp_path):
    from ase.calculators.emt import EMT

    from calib.data.labelers import label

    structs = [bulk("Cu", "fcc", 3.6, cubic=True), bulk("Si", "diamond", 5.43)]  # EMT has no Si
    out = tmp_path / "lab.extxyz"
    errors = tmp_path / "lab.extxyz.errors.jsonl"
    assert len(label(structs, out, EMT(), progress=False).failures) == 1
    for _ in range(2):
        rep = label(structs, out, EMT(), progress=False, retry_failed=True)
        assert len(rep.failures) == 1
        assert len(errors.read_text().splitlines()) == 1


def test_no_third_party_warnings_on_stderr(d, tmp_path):
    a = bulk("Ne", "fcc", 4.4)  # pymatgen has no Pauling electronegativity for Ne: it warns
    ase.io.write(tmp_path / "ne.extxyz", [a], format="extxyz")
    r = run("predict", tmp_path / "ne.extxyz", "--calibration", d / "CAL.nc", "-q")
    assert "electronegativity" not in r.stderr and "Warning" not in r.stderr, r.stderr


class _Payload:
    """A pickle that creates a file when it is loaded: what a model file named by a hostile artifact could do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_an_artifact_never_makes_calib_unpickle_a_file(d, tmp_path, chgnet):
    """An artifact whose provenance names a model file (with a valid checksum: anyone can compute one) is
    refused on every route that resolves a model from it; the pickle is never loaded. The user can still
    pass that model explicitly."""
    import torch

    from calib import CalibratedPredictor
    from calib.artifact import Artifact

    marker, evil = tmp_path / "pwned", tmp_path / "evil.model"
    torch.save(_Payload(marker), evil)
    art = Artifact.load(d / "CAL.nc")
    art.replace(model_info={**art.model_info, "model_name": "mace", "model_version": str(evil)}).save(
        tmp_path / "A.nc")
    with pytest.raises(ValueError, match="does not load a model file that an artifact names"):
        CalibratedPredictor.from_file(tmp_path / "A.nc")
    r = run("predict", d / "eq.extxyz", "--calibration", tmp_path / "A.nc", "--json")
    assert r.exit_code == 2 and doc_of(r)["kind"] == "usage" and "--model" in doc_of(r)["error"]
    assert "--model None" not in doc_of(r)["error"]  # not blamed on an option the user never passed
    assert not marker.exists()


# ------------------------------------------------------------------ second round: files never clobbered, artifacts
# verified, inputs named (each case: exit code, kind, the words of the message, sha256 of every file unchanged)


def _sha(folder) -> dict:
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in Path(folder).iterdir() if p.is_file()}


def _hostile_files(d, tmp):
    """The files the cases below need, in ``tmp``."""
    import shutil

    import torch
    import xarray as xr

    from calib.artifact import Artifact

    shutil.copy(d / "CAL.nc", tmp / "foreign.nc")  # a netCDF file calib label did not write
    frames = ase.io.read(d / "lab.extxyz", ":10")
    for a in frames:  # written by another tool: no calib_key
        a.info.pop("calib_key", None)
    ase.io.write(tmp / "other.extxyz", [_labelled(a, 0.0, np.zeros((len(a), 3)), f"o{k}") for k, a in
                                        enumerate(frames)], format="extxyz")
    (tmp / "other.extxyz").write_bytes((tmp / "other.extxyz").read_bytes().rstrip(b"\n"))  # no final newline
    ds = xr.load_dataset(d / "CAL.nc")
    edited = ds.copy()
    edited.attrs["energy_convention"] = "total"  # a σ 8× smaller, if accepted
    edited.to_netcdf(tmp / "edited.nc")
    bare = ds.copy()
    del bare.attrs["data_sha256"]
    bare.to_netcdf(tmp / "nosum.nc")
    art = Artifact.load(d / "CAL.nc")
    art.replace(model_info={**art.model_info, "model_name": "nonsense"}).save(tmp / "renamed.nc")
    (tmp / "bench").mkdir()
    (tmp / "bench" / "H.nc").write_bytes(b"a user's Hessian")
    torch.save({"weights": torch.zeros(3)}, tmp / "notmace.model")
    (tmp / "afile").write_text("x")
    nacl = datasets.load("high-energy-states", chemsys="Na-Cl")[:3]
    ase.io.write(tmp / "nacl_path.extxyz", nacl, format="extxyz")
    lif = datasets.load("high-energy-states", chemsys="Li-F")[:3]
    ase.io.write(tmp / "lif_ref.extxyz", lif, format="extxyz")
    noe = [a.copy() for a in datasets.load("high-energy-states", chemsys="Si")[:4]]
    for a, src in zip(noe, datasets.load("high-energy-states", chemsys="Si")[:4]):
        a.calc = None
        a.arrays["forces"] = src.get_forces()
    ase.io.write(tmp / "forces_only.extxyz", noe, format="extxyz")
    nof = [a.copy() for a in datasets.load("high-energy-states", chemsys="Si")[:4]]
    for a, src in zip(nof, datasets.load("high-energy-states", chemsys="Si")[:4]):
        a.calc = None
        a.info["energy"] = src.get_potential_energy()
    ase.io.write(tmp / "energy_only.extxyz", nof, format="extxyz")
    bad = [Atoms("Si2", positions=[[0, 0, 0], [0.1, 0, 0]], cell=[5, 5, 5], pbc=True)] * 3
    ase.io.write(tmp / "allbad.extxyz", bad, format="extxyz")


HOSTILE = [  # (argv, exit code, kind or None for success, words in the error)
    (["label", "{lab}", "-o", "{t}/foreign.nc"], 2, "output", "was not written by calib label"),
    (["label", "{lab}", "-o", "{t}/other.extxyz"], 2, "output", "was not written by calib label"),
    (["predict", "{eq}", "--calibration", "{t}/edited.nc"], 1, "artifact", "edited.nc is corrupt"),
    (["predict", "{eq}", "--calibration", "{t}/nosum.nc"], 1, "artifact", "nosum.nc has no checksum"),
    (["predict", "{eq}", "--calibration", "{t}/renamed.nc"], 2, "usage", "calib cannot load by name"),
    (["predict", "{eq}", "--calibration", "{h}"], 1, "artifact", "holds a Hessian only"),
    (["predict", "{eq}", "--calibration", "{cal}", "--model", "{t}/notmace.model"], 2, "usage",
     "is not a MACE model"),
    (["bench", "commands", "--workdir", "{t}/bench", "--only", "eos"], 2, "output", "which calib bench did not write"),
    (["neb", "{t}/nacl_path.extxyz", "--calibration", "{cal}", "--reference", "{t}/lif_ref.extxyz"], 1, "input",
     "is not image 0 of the path"),
    (["screen", "{t}/missing.extxyz", "--calibration", "{cal}", "-o", "{t}/s.nc"], 1, "input", "not found"),
    (["demo", "--out", "{t}/afile"], 2, "output", "is a file"),
    (["eos", "--element", "Xx"], 2, "usage", "--element Xx"),
    (["hessian", "{t}/allbad.extxyz", "-o", "{t}/Hbad.nc"], 1, "input", "no valid structure"),
    (["softening", "{t}/forces_only.extxyz"], 0, None, ""),
    (["evaluate", "{t}/energy_only.extxyz", "--calibration", "{cal}", "--no-forces"], 0, None, ""),
    (["calibrate", "{t}/forces_only.extxyz", "--hessian", "{h}", "--target", "forces", "-o", "{t}/cf.nc"], 0, None,
     ""),
]


@pytest.fixture(scope="module")
def hostile(d, tmp_path_factory):
    t = tmp_path_factory.mktemp("hostile")
    _hostile_files(d, t)
    return t


@pytest.mark.parametrize("argv,code,kind,words", HOSTILE, ids=[" ".join(a[:2])[:40] + f"-{i}"
                                                              for i, (a, *_) in enumerate(HOSTILE)])
def test_hostile_but_fair(d, hostile, argv, code, kind, words):
    files = {"lab": d / "lab.extxyz", "eq": d / "eq.extxyz", "cal": d / "CAL.nc", "h": d / "H.nc", "t": hostile}
    args = [a.format(**files) for a in argv]
    before = {**_sha(d), **{f"t/{k}": v for k, v in _sha(hostile).items()},
              **{f"bench/{k}": v for k, v in _sha(hostile / "bench").items()}}
    r = run(*args, "--json")
    doc = doc_of(r)
    assert r.exit_code == code, (r.exit_code, doc)
    assert "Traceback" not in r.output
    if kind is not None:
        assert doc["kind"] == kind and words in doc["error"], doc
        assert "--model None" not in doc["error"]
    after = {**_sha(d), **{f"t/{k}": v for k, v in _sha(hostile).items()},
             **{f"bench/{k}": v for k, v in _sha(hostile / "bench").items()}}
    for name, digest in before.items():  # no file that existed was changed
        assert after.get(name) == digest, name


def test_standard_input_once(d):
    r = runner.invoke(app, ["predict", "-", "-", "--calibration", str(d / "CAL.nc"), "--json"],
                      input=(d / "eq.extxyz").read_text())
    assert r.exit_code == 1 and "given more than once" in doc_of(r)["error"]


def test_a_second_screen_on_the_same_output_is_refused(d, tmp_path):
    import fcntl

    out = tmp_path / "r.nc"
    with open(f"{out}.lock", "a") as held:  # as a running screen holds it
        fcntl.flock(held, fcntl.LOCK_EX)
        r = run("screen", d / "eq.extxyz", "--calibration", d / "CAL.nc", "-o", out, "--json")
    assert r.exit_code == 2 and "another calib screen is writing" in doc_of(r)["error"]
    assert not out.exists()
    r = run("screen", d / "eq.extxyz", "--calibration", d / "CAL.nc", "-o", out, "--json", "-q")
    assert r.exit_code == 0 and not Path(f"{out}.lock").exists()


def test_unverified_artifact_loads_only_when_asked(d, hostile):
    from calib.artifact import Artifact, ArtifactError

    with pytest.raises(ArtifactError, match="unverified=True"):
        Artifact.load(hostile / "nosum.nc")
    art = Artifact.load(hostile / "nosum.nc", unverified=True)
    assert art.calibrated
