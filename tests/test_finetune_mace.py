"""Fine-tuning a MACE model file through mace's own trainer (mace_run_train --foundation_model), the file it
writes through --model in every command, and its provenance."""

import hashlib
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from calib.models import shipped_mace_path

mace = pytest.importorskip("mace")  # before e3nn

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not __import__("os").path.exists(shipped_mace_path()),
                                 reason="shipped MACE model missing")]


def _sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _force_mae(model, structs):
    """The force MAE (eV/Å) of ``model`` against the labels of ``structs``, computed here (not by finetune)."""
    from calib.data.structures import get_forces

    pred = model.predict(structs, forces=True)
    return float(np.mean(np.concatenate([np.abs(pred.forces_of(k) - get_forces(a)).ravel()
                                         for k, a in enumerate(structs)])))


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """calib finetune --model mace-small.model on 3 shipped Si frames + 2 replay, 6 epochs at lr 1e-3."""
    import ase.io

    from calib import datasets
    from calib.cli.main import app

    tmp = tmp_path_factory.mktemp("ftmace")
    si = datasets.load("high-energy-states", chemsys="Si")[:3]
    ase.io.write(tmp / "si.extxyz", si, format="extxyz")
    base = shipped_mace_path()
    digest = _sha(base)
    out = tmp / "si-mace.model"
    r = CliRunner().invoke(app, ["finetune", str(tmp / "si.extxyz"), "-o", str(out), "--model", base, "--epochs",
                                 "6", "--replay", "2", "--lr", "1e-3", "--seed", "1", "--json", "-q"])
    assert r.exit_code == 0, r.output
    assert _sha(base) == digest  # the base model file is not touched
    return tmp, si, base, out, json.loads(r.stdout)


def test_mace_finetuning_lowers_the_training_force_error(tuned):
    """Before and after, each computed by calib's own prediction of the base and the written file (not from
    mace's log), agree with the record, and the error falls."""
    from calib.models import load_model

    _, si, base, out, doc = tuned
    before, after = _force_mae(load_model(base), si), _force_mae(load_model(str(out)), si)
    assert before == pytest.approx(doc["before"]["force_mae"], rel=1e-6)
    assert after == pytest.approx(doc["after"]["force_mae"], rel=1e-6)
    assert after < before, (before, after)


def test_the_mace_file_records_its_provenance(tuned):
    import calib
    from calib.models import load_model, sniff_model_file

    _, _, base, out, doc = tuned
    kind, _, how = sniff_model_file(str(out))
    assert kind == "mace" and "calib-finetuned-mace" in how
    model, base_model = load_model(str(out)), load_model(base)
    p = model.provenance  # read back from the file, as --model reads it
    assert p["format"] == "calib-finetuned-mace" and p["base_fingerprint"] == base_model.fingerprint()
    assert model.fingerprint() != base_model.fingerprint()
    assert p["n_labels"] == 3 and p["n_replay"] == 2 and p["epochs"] == 6 and p["learning_rate"] == 1e-3
    assert len(p["labels_sha256"]) == 64 and len(p["replay_sha256"]) == 64 and p["targets"] == "ef"
    assert "Si" in p["element_reference_removed"] and p["trainer"].startswith("mace_run_train --foundation_model")
    assert p["mace_version"] and p["calib_version"] == calib.__version__ and p["torch_version"]
    args = p["mace_arguments"]
    assert args[args.index("--E0s") + 1] == "foundation" and args[args.index("--multiheads_finetuning") + 1] == "False"
    assert p["before"] == doc["before"] and p["after"] == doc["after"]
    assert {k: v for k, v in doc.items() if k not in ("model", "before", "after", "warnings")} == \
        {k: v for k, v in p.items() if k not in ("before", "after")}
    # every element of the base model is kept, with its energy zero (E0s) unchanged
    assert model.z_table == base_model.z_table
    np.testing.assert_array_equal(model.model.atomic_energies_fn.atomic_energies.numpy(),
                                  base_model.model.atomic_energies_fn.atomic_energies.numpy())


def test_the_mace_file_round_trips_through_model(tuned):
    """--model FILE in hessian, calibrate and predict; an artifact naming the file does not load it."""
    import ase.io

    from calib import datasets
    from calib.cli.main import app
    from calib.data.prototypes import perturbed_set
    from calib.models import load_model

    tmp, _, _, out, _ = tuned
    ase.io.write(tmp / "proxy.extxyz", perturbed_set(names=["Si"], n_variants=2, seed=1), format="extxyz")
    si = datasets.load("high-energy-states", chemsys="Si")
    ase.io.write(tmp / "lab.extxyz", si, format="extxyz")
    ase.io.write(tmp / "probe.extxyz", si[3:5], format="extxyz")
    for argv in (["hessian", str(tmp / "proxy.extxyz"), "-o", str(tmp / "H.nc")],
                 ["calibrate", str(tmp / "lab.extxyz"), "--hessian", str(tmp / "H.nc"), "-o", str(tmp / "C.nc")]):
        r = CliRunner().invoke(app, [*argv, "--model", str(out), "--json", "-q"])
        assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["predict", str(tmp / "probe.extxyz"), "--calibration", str(tmp / "C.nc"), "--model",
                                 str(out), "--json", "-q"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["model"]["version"] == str(out) and "calib-finetuned-mace" in doc["model"]["read_as"]
    np.testing.assert_allclose([rec["energy"] for rec in doc["records"]],
                               load_model(str(out)).predict(si[3:5], forces=False).energy, rtol=1e-9)
    r = CliRunner().invoke(app, ["predict", str(tmp / "probe.extxyz"), "--calibration", str(tmp / "C.nc"), "--json"])
    assert r.exit_code == 2 and "does not load a model file" in json.loads(r.stdout)["error"]


def test_a_failing_mace_trainer_ends_with_the_tail_of_its_log(tmp_path, monkeypatch):
    """mace_run_train exits non-zero: a TrainerError (kind trainer) quoting its log; nothing written, no folder
    left behind."""
    import tempfile

    from calib import datasets
    from calib.models import load_model
    from calib.workflows import finetune_mace as fm
    from calib.workflows.finetune import finetune

    arguments = fm.mace_arguments
    monkeypatch.setattr(fm, "mace_arguments", lambda *a, **k: [*arguments(*a, **k), "--no_such_option"])
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    si = datasets.load("high-energy-states", chemsys="Si")[:2]
    with pytest.raises(fm.TrainerError, match="unrecognized arguments: --no_such_option") as err:
        finetune(load_model(shipped_mace_path()), si, tmp_path / "x.model", epochs=1, replay=0, progress=False)
    assert err.value.kind == "trainer" and "mace_run_train failed (exit 2)" in str(err.value)
    assert not list(tmp_path.glob("calib-finetune-*")) and not list(tmp_path.glob("x.model*"))
