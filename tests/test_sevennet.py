"""SevenNet-0 backend, checked against sevenn's own ASE calculator and against autograd through sevenn's
force module (two code paths calib does not share); the shipped default calibration of SevenNet-0 through
the commands. Runs wherever the ``sevennet`` extra is installed: beside mace (sevenn 0.10.4) and in CI's second
environment (the newest sevenn)."""

import json

import numpy as np
import pytest

pytestmark = pytest.mark.sevennet
sevenn = pytest.importorskip("sevenn")


@pytest.fixture(scope="module")
def sevennet():
    from calib.models import load_model

    return load_model("sevennet")


@pytest.fixture(scope="module")
def cells():
    from ase.build import bulk

    si = bulk("Si", "diamond", 5.43, cubic=True)
    si.rattle(0.1, seed=1)
    nacl = bulk("NaCl", "rocksalt", 5.6) * (2, 1, 1)
    nacl.rattle(0.1, seed=2)
    cu = bulk("Cu", "fcc", 3.6) * (2, 2, 2)
    cu.rattle(0.05, seed=3)
    return [si, nacl, cu]


def test_energy_forces_stress_equal_sevenns_calculator(sevennet, cells):
    """calib's batched pass equals sevenn's own calculator, one structure at a time (float32 model)."""
    from sevenn.calculator import SevenNetCalculator

    from calib.models.sevennet import pretrained_path

    pred = sevennet.predict(cells, forces=True, stress=True)
    calc = SevenNetCalculator(pretrained_path(), device="cpu")
    for i, atoms in enumerate(cells):
        a = atoms.copy()
        a.calc = calc
        assert pred.energy[i] == pytest.approx(a.get_potential_energy(), abs=2e-5 * len(a))
        np.testing.assert_allclose(pred.forces_of(i), a.get_forces(), atol=5e-5)
        np.testing.assert_allclose(pred.stress[i], a.get_stress(voigt=False), atol=1e-6)


def test_energy_is_linear_in_the_readout(sevennet, cells):
    """E = w·f + offset with f = Σ_a s(Z_a) h_a, to float32 tolerance (the LLPR premise)."""
    pred = sevennet.predict(cells, forces=False)
    w, b = sevennet.readout
    assert b == 0.0 and pred.energy_convention == "total" and pred.features.shape == (3, 64)
    np.testing.assert_allclose(pred.features @ w + pred.energy_offset, pred.energy, atol=1e-5 * pred.n_atoms.max())
    # the offset is the species-wise shift alone (SevenNet-0 has no readout bias): Σ_a t(Z_a)
    shift = sevennet.model._modules["rescale_atomic_energy"].shift.detach().double().numpy()
    for i, atoms in enumerate(cells):
        want = sum(shift[sevennet.type_map[int(z)]] for z in atoms.numbers)
        assert pred.energy_offset[i] == pytest.approx(want, rel=1e-10)


def test_feature_gradients_give_sevenns_forces(sevennet, cells):
    """−∂(w·f)/∂r through calib's feature graph (positions → edge vectors → features) equals the forces
    sevenn takes by its own route (∂E/∂edge vectors), so the force σ differentiates the right features."""
    import torch

    g = sevennet.feature_graph(cells)
    w = torch.as_tensor(sevennet.readout[0])
    forces = sevennet.predict(cells, forces=True)
    for i in range(len(cells)):
        (grad,) = torch.autograd.grad(g.features[i].double() @ w, g.positions[i], retain_graph=True)
        np.testing.assert_allclose(-grad.numpy(), forces.forces_of(i), atol=2e-5)


def test_resolver_names_files_and_provenance(sevennet, tmp_path):
    import shutil

    from calib.models import check_model_name, load_model, sniff_model_file, spec_from_provenance
    from calib.models.sevennet import pretrained_path

    info = sevennet.describe()
    assert info["model_name"] == "sevennet" and info["model_version"] == "SevenNet_0__11Jul2024"
    assert spec_from_provenance(info).name == "sevennet:SevenNet_0__11Jul2024"
    check_model_name("sevennet:SevenNet_0__11Jul2024")
    # a checkpoint file is routed by its content, and its weights are SevenNet-0's
    path = tmp_path / "my-potential.pth"
    shutil.copy(pretrained_path(), path)
    assert sniff_model_file(str(path))[0] == "sevennet"
    from_file = load_model(str(path))
    assert from_file.fingerprint() == sevennet.fingerprint()
    assert from_file.spec.name == str(path)
    with pytest.raises(ValueError, match="does not load a model file that an artifact names"):
        spec_from_provenance(from_file.describe())
    with pytest.raises(ValueError, match="unknown SevenNet potential"):
        load_model("sevennet:SevenNet_9")


def test_default_calibration_through_the_commands(tmp_path):
    """``--model sevennet`` without ``--calibration`` uses the shipped SevenNet-0 artifact (predict, screen, neb;
    decide with it named), on shipped data; predict's raw energies are SevenNet's."""
    import ase.io
    from typer.testing import CliRunner

    from calib import datasets
    from calib.cli.main import app
    from calib.data.datasets import default_calibration
    from calib.models import load_model

    assert default_calibration("sevennet") is not None
    structs = datasets.load("near-equilibrium")[:3]
    probe = tmp_path / "probe.extxyz"
    ase.io.write(probe, structs, format="extxyz")
    run = CliRunner()
    r = run.invoke(app, ["predict", str(probe), "--model", "sevennet", "--forces", "--json", "-q"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    raw = load_model("sevennet").predict(structs, forces=False).energy
    kinds = [rec["prediction"] for rec in doc["records"]]
    assert "raw" in kinds, kinds  # a chemistry without a stored correction reports SevenNet's own energy
    for rec, e in zip(doc["records"], raw):
        if rec["prediction"] == "raw":
            assert rec["energy"] == pytest.approx(e, rel=1e-6)
    assert all(np.isfinite(rec["force_error_bound"]) for rec in doc["records"])
    r = run.invoke(app, ["screen", str(probe), "-o", str(tmp_path / "s.nc"), "--model", "sevennet", "--json", "-q"])
    assert r.exit_code == 0, r.output
    neb = tmp_path / "neb.extxyz"
    ase.io.write(neb, datasets.load("neb")[:5], format="extxyz")
    r = run.invoke(app, ["neb", str(neb), "--model", "sevennet", "--json", "-q"])
    assert r.exit_code == 0, r.output
    hot = tmp_path / "hot.extxyz"
    ase.io.write(hot, datasets.load("high-energy-states", chemsys="Si"), format="extxyz")
    r = run.invoke(app, ["decide", str(hot), "--calibration", default_calibration("sevennet"), "--model", "sevennet",
                         "--json", "-q"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["records"][0]["chemsys"] == "Si"


def test_default_chgnet_calibration_reads_sevennet_as_committee(tmp_path):
    """Where sevenn is installed, CHGNet's default calibration is the one with SevenNet-0 as committee: `predict`
    says so, and on a chemistry it was not calibrated on (KBr) its force σ are the stored force model's on
    CHGNet's and SevenNet-0's forces, computed here."""
    import ase.io
    from ase.build import bulk
    from typer.testing import CliRunner

    from calib.artifact import Artifact
    from calib.cli.main import app
    from calib.data.datasets import default_calibration
    from calib.models import load_model
    from calib.predictor import CalibratedPredictor
    from calib.uq.errormodel import AtomInputs

    path = default_calibration("chgnet")
    assert path.endswith("chgnet-0.3.0+sevennet-0.nc") and default_calibration("chgnet", committee=None) != path
    chgnet = load_model("chgnet")
    art = Artifact.load(path, model=chgnet)
    assert art.attrs["committee_model"] == "sevennet" and "committee" in art.error_models.forces.terms
    structs = []
    for seed in (0, 1):
        a = bulk("KBr", "rocksalt", 6.6, cubic=True)
        a.positions += np.random.default_rng(seed).normal(0, 0.15, a.positions.shape)
        structs.append(a)
    ds = CalibratedPredictor(chgnet, art).predict(structs, forces=True, progress=False)
    mine = chgnet.predict(structs, forces=True)
    second = load_model("sevennet").predict(structs, forces=True)
    sigma = art.error_models.forces.sigma(AtomInputs(mine.numbers, mine.forces, mine.atom_structure,
                                                     second_forces=second.forces))
    np.testing.assert_allclose(ds["forces_sigma"].values, sigma, rtol=1e-5)
    probe = tmp_path / "probe.extxyz"
    ase.io.write(probe, structs, format="extxyz")
    r = CliRunner().invoke(app, ["predict", str(probe), "--forces", "--json", "-q"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["calibration"]["path"] == path and "SevenNet-0's forces" in doc["calibration"]["note"]


def _trainer_api() -> bool:
    """Whether the installed sevenn has the Trainer API calib fine-tunes through (≥ 0.11; 0.10 beside mace)."""
    import sevenn.util

    return hasattr(sevenn.util, "load_checkpoint")


def test_sevenn_010_beside_mace_refuses_finetuning_clearly(tmp_path):
    """Beside mace-torch pip installs sevenn 0.10 (e3nn 0.4.4): it predicts, and calib finetune says what it
    needs instead of failing inside sevenn."""
    if _trainer_api():
        pytest.skip("this environment's sevenn has the Trainer API (the fine-tuning test runs instead)")
    import ase.io
    from typer.testing import CliRunner

    from calib import datasets
    from calib.cli.main import app

    ase.io.write(tmp_path / "si.extxyz", datasets.load("high-energy-states", chemsys="Si")[:2], format="extxyz")
    r = CliRunner().invoke(app, ["finetune", str(tmp_path / "si.extxyz"), "-o", str(tmp_path / "o.pth"),
                                 "--model", "sevennet", "--epochs", "1", "--json", "-q"])
    assert r.exit_code != 0 and "sevenn >= 0.11" in r.stdout and "Traceback" not in r.output
    assert not (tmp_path / "o.pth").exists()


@pytest.mark.slow
def test_finetune_through_sevenns_trainer(sevennet, tmp_path):
    """calib finetune --model sevennet: sevenn's Trainer lowers the training error; the checkpoint it writes
    loads with --model FILE, and its forces against the labels give the recorded error (a second computation)."""
    if not _trainer_api():
        pytest.skip("sevenn 0.10 (installed beside mace-torch) has another Trainer API; CI fine-tunes in the "
                    "sevennet environment")
    import ase.io
    from typer.testing import CliRunner

    from calib import datasets
    from calib.cli.main import app
    from calib.data.structures import get_forces
    from calib.models import load_model, sniff_model_file

    si = datasets.load("high-energy-states", chemsys="Si")[:3]
    ase.io.write(tmp_path / "si.extxyz", si, format="extxyz")
    before = sevennet.fingerprint()
    out = tmp_path / "si-sevennet.pth"
    r = CliRunner().invoke(app, ["finetune", str(tmp_path / "si.extxyz"), "-o", str(out), "--model", "sevennet",
                                 "--epochs", "6", "--replay", "2", "--lr", "1e-3", "--json", "-q"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["after"]["force_mae"] < doc["before"]["force_mae"], doc
    assert sevennet.fingerprint() == before  # the base model is not trained in place
    assert sniff_model_file(str(out))[0] == "sevennet"
    tuned = load_model(str(out))
    assert tuned.name == "sevennet" and tuned.version == str(out) and tuned.fingerprint() != before
    pred = tuned.predict(si, forces=True)
    mae = np.mean(np.concatenate([np.abs(pred.forces_of(k) - get_forces(a)).ravel() for k, a in enumerate(si)]))
    assert mae == pytest.approx(doc["after"]["force_mae"], rel=1e-5)
    r = CliRunner().invoke(app, ["softening", str(tmp_path / "si.extxyz"), "--model", str(out), "--json", "-q"])
    assert r.exit_code == 0, r.output


def test_stress_label_in_sevenns_order():
    """sevenn trains on −σ in the order xx yy zz xy yz zx (its calculator maps that order back to ASE's
    xx yy zz yz xz xy); a full 3×3 stress with distinct entries checks every component lands in its slot."""
    from calib.workflows.finetune_sevennet import sevenn_stress

    s = np.array([[1.0, 6.0, 5.0], [6.0, 2.0, 4.0], [5.0, 4.0, 3.0]])  # xy 6, yz 4, zx 5
    np.testing.assert_array_equal(sevenn_stress(s), -np.array([1.0, 2.0, 3.0, 6.0, 4.0, 5.0]))
