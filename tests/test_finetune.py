"""Fine-tuning through chgnet's Trainer, the model file through --model, and the periodic loop (GPAW)."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import expected_decision
from typer.testing import CliRunner


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, chgnet):
    from calib import datasets
    from calib.workflows.finetune import finetune

    si = datasets.load("high-energy-states", chemsys="Si")[:3]
    path = tmp_path_factory.mktemp("ft") / "si.pt"
    before = chgnet.fingerprint()
    res = finetune(chgnet, si, path, epochs=6, replay=2, seed=1, progress=False)
    assert chgnet.fingerprint() == before  # the base model is not trained in place
    return si, path, res


def test_finetuning_lowers_the_training_error_and_records_its_provenance(tuned, chgnet):
    from calib.data.structures import get_forces

    si, path, res = tuned
    assert res.after["force_mae"] < res.before["force_mae"]
    p = res.provenance
    assert p["n_labels"] == 3 and p["n_replay"] == 2 and p["epochs"] == 6 and p["base_fingerprint"] == chgnet.fingerprint()
    assert len(p["labels_sha256"]) == 64 and p["targets"] == "ef" and "Si" in p["element_reference_removed"]
    # the training error by an independent computation: the saved model's forces against the labels
    from calib.models import load_model

    model = load_model(str(path))
    pred = model.predict(si, forces=True)
    mae = np.mean(np.concatenate([np.abs(pred.forces_of(k) - get_forces(a)).ravel() for k, a in enumerate(si)]))
    assert mae == pytest.approx(res.after["force_mae"], rel=1e-6)


def test_the_model_file_round_trips_through_model(tuned, tmp_path):
    """--model FILE loads the fine-tuned weights in every command; an artifact naming the file does not load it."""
    import ase.io

    from calib.artifact import Artifact
    from calib.cli.main import app
    from calib.data.prototypes import perturbed_set
    from calib.models import load_model
    from calib.workflows.hessian import build_hessian

    si, path, _ = tuned
    model = load_model(str(path))
    assert model.name == "chgnet" and model.version == str(path) and model.provenance["n_labels"] == 3
    ase.io.write(tmp_path / "p.extxyz", si[:2], format="extxyz")
    r = CliRunner().invoke(app, ["softening", str(tmp_path / "p.extxyz"), "--model", str(path), "--json", "-q"])
    assert r.exit_code == 0, r.output
    hess, _ = build_hessian(model, perturbed_set(names=["Si"], n_variants=2, seed=1), progress=False)
    hess.save(tmp_path / "H.nc")
    assert Artifact.load(tmp_path / "H.nc").model_info["model_version"] == str(path)
    r = CliRunner().invoke(app, ["calibrate", str(tmp_path / "p.extxyz"), "--hessian", str(tmp_path / "H.nc"),
                                 "-o", str(tmp_path / "c.nc"), "--json"])
    assert r.exit_code == 2 and "does not load a model file" in json.loads(r.stdout)["error"]


def test_a_fine_tuned_file_is_read_back_whatever_its_suffix(tuned, tmp_path, chgnet):
    """Item 2: the file finetune wrote, saved as ft.model (a MACE suffix), loads as the fine-tuned CHGNet by its
    format tag, without running code (torch.load weights_only), says so, and predicts what the .pt does; a
    model of the wrong kind is not loaded as it. Item 15: its provenance names versions, label files, time."""
    import datetime
    import shutil

    import calib
    from calib.errors import CalibWarning
    from calib.models import load_model, sniff_model_file

    si, path, res = tuned
    ft = tmp_path / "ft.model"
    shutil.copy(path, ft)
    kind, state, how = sniff_model_file(str(ft))
    assert kind == "chgnet" and "calib-finetuned-chgnet" in how and state["calib"]["format"] == "calib-finetuned-chgnet"
    with pytest.warns(CalibWarning, match="read as CHGNet"):
        m = load_model(str(ft))
    assert m.name == "chgnet" and "format tag" in m.read_as and m.fingerprint() == load_model(str(path)).fingerprint()
    assert m.fingerprint() != chgnet.fingerprint()
    np.testing.assert_array_equal(m.predict(si, forces=False).energy, load_model(str(path)).predict(si, forces=False).energy)
    p = res.provenance
    assert p["calib_version"] == calib.__version__ and p["chgnet_version"] and p["torch_version"]
    assert p["label_files"] == ["Si.extxyz"] and p["units_checked"] is True  # the shipped file the labels came from
    assert datetime.datetime.fromisoformat(p["created"]).tzinfo is not None


def test_finetune_cli(tmp_path):
    import ase.io

    from calib import datasets
    from calib.cli.main import app

    ase.io.write(tmp_path / "l.extxyz", datasets.load("high-energy-states", chemsys="Li-F")[:2], format="extxyz")
    r = CliRunner().invoke(app, ["finetune", str(tmp_path / "l.extxyz"), "-o", str(tmp_path / "m.pt"),
                                 "--epochs", "2", "--replay", "1", "--json", "-q"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["model"] == str(tmp_path / "m.pt") and doc["n_labels"] == 2 and "after" in doc
    assert doc["label_files"] == [str(tmp_path / "l.extxyz")]  # the files given on the command line
    r = CliRunner().invoke(app, ["finetune", str(tmp_path / "l.extxyz"), "-o", str(tmp_path / "m.pt"), "--json"])
    assert r.exit_code == 2 and "--overwrite" in json.loads(r.stdout)["error"]  # never replaced silently


LOOP = """
import sys
from ase.build import bulk
from calib.data.labelers import GPAWFactory
from calib.workflows.loop import LoopSettings, run_loop
si = bulk("Si", "diamond", 5.43, cubic=True)
si.info["name"] = "Si8"
run_loop([si], sys.argv[1], settings=LoopSettings(rounds=1, frames=2, md_steps=40, epochs=2, replay=2,
         proxy_sample=30, shipped_sample=10), labeller=GPAWFactory(cutoff=250, kdensity=1.0, spinpol=False),
         progress=False)
"""


@pytest.mark.dft
@pytest.mark.slow
def test_one_loop_round_survives_a_kill_and_writes_its_report(tmp_path):
    """A loop killed (SIGKILL) while labelling resumes: the finished labels are kept, the round completes, the
    report names a model that loads and a calibration that fits it."""
    pytest.importorskip("gpaw")
    from calib.artifact import Artifact
    from calib.data.readers import read_structures
    from calib.models import load_model

    out = tmp_path / "loop"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", LOOP, str(out)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    labels = out / "round-0" / "labels.extxyz"
    t0 = time.time()
    while time.time() - t0 < 600 and not (labels.exists() and labels.stat().st_size > 0):
        time.sleep(1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert labels.exists() and len(read_structures(labels)) >= 1, "killed before the first label"
    first = read_structures(labels)[0].info["calib_key"]
    run = subprocess.run([sys.executable, "-c", LOOP, str(out)], env=env, capture_output=True, text=True,
                         timeout=1200)
    assert run.returncode == 0, run.stderr[-2000:]
    rep = json.loads((out / "report.json").read_text())
    (entry,) = rep["rounds"]
    assert entry["n_labels"] == 2
    assert read_structures(labels)[0].info["calib_key"] == first  # kept, not labelled again
    model = load_model(rep["final_model"])
    art = Artifact.load(rep["final_calibration"], model=model)  # fitted with this model
    assert (out / "report.png").exists()
    # the decision recorded is the rules applied to the numbers measured now on the round's files
    from calib.workflows.decisions import decide

    decisions, _ = decide(art, model, read_structures(labels), read_structures(entry["files"]["md"]),
                          progress=False)
    mine = next(d for d in decisions if d.chemsys == rep["chemsys"])
    assert entry["decision"] == mine.decision == expected_decision(mine.as_dict())
