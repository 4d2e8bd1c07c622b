"""calib screen: streaming rows, trust rules, bad input, resume after SIGKILL, and Dask (a real LocalCluster)."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest


@pytest.fixture(scope="module")
def cal_file(tmp_path_factory, si_lif_calibration):
    path = tmp_path_factory.mktemp("screen") / "cal.nc"
    si_lif_calibration[2].artifact.save(path)
    return path


@pytest.fixture(scope="module")
def stream_file(tmp_path_factory):
    """Prototypes, then bad frames among them: NaN position, overlapping atoms, unknown element, empty."""
    import ase.io
    from ase import Atoms

    from calib.data.prototypes import perturbed_set

    good = perturbed_set(n_variants=1, rattle=0.05, strain=0.02, seed=11)[:14]
    nan = good[0].copy()
    nan.positions[1, 0] = np.nan
    close = good[1].copy()
    close.positions[1] = close.positions[0] + 0.1
    unknown = good[2].copy()
    unknown.numbers[0] = 100  # Fm: outside CHGNet's elements
    frames = good[:5] + [nan] + good[5:9] + [close, Atoms(cell=np.eye(3) * 5, pbc=True)] + good[9:] + [unknown]
    for k, a in enumerate(frames):
        a.info["name"] = f"frame{k}"
    path = tmp_path_factory.mktemp("stream") / "stream.extxyz"
    ase.io.write(path, frames)
    return path, len(frames), {5: "non-finite position", 10: "closer than", 11: "has no atoms",
                               len(frames) - 1: "elements the model does not support"}


def test_rows_reasons_and_trust_rule(cal_file, stream_file, tmp_path, chgnet):
    """One row per frame in order; bad frames are failed rows naming the problem; the trust column
    follows from the other columns by the documented rule; numbers equal the predictor's."""
    from calib import CalibratedPredictor
    from calib.data.readers import read_structures
    from calib.uq.trust import TrustPolicy
    from calib.workflows.screen import read_results, screen

    path, n, bad = stream_file
    out = tmp_path / "r.nc"
    s = screen([path], cal_file, out, model=chgnet, forces=True, force_tol=0.5, batch_size=4, progress=False)
    ds = read_results(out)
    assert list(ds["structure"].values) == list(range(n))
    assert s["n_total"] == n and s["n_failed"] == len(bad)
    assert s["n_trusted"] + s["n_untrusted"] + s["n_failed"] == n
    for k, text in bad.items():
        assert ds["status"].values[k] == "failed" and text in ds["error"].values[k], (k, ds["error"].values[k])
    ok = ds["status"].values != "failed"
    # the verdict of calib.uq.trust: domain, force-error bound ≤ force_tol (0.5 here), energy half-width per
    # atom ≤ 0.1 eV/atom; a missing energy offset is not a reason
    per_atom = ds["energy_halfwidth"].values / np.maximum(ds["n_atoms"].values, 1)
    expect = ok & (ds["q_score"].values <= 1) & (ds["force_error_bound"].values <= 0.5) & (per_atom <= 0.1)
    assert np.array_equal(ds["trusted"].values == 1, expect)
    assert set(ds["status"].values[ok]) <= {"trusted", "untrusted"}
    assert all(r == "" for r in ds["trust_reason"].values[expect])
    # independent path: the predictor on the good frames alone
    frames = read_structures([path])
    good = [k for k in range(n) if k not in bad]
    ref = CalibratedPredictor.from_file(cal_file, model=chgnet, trust=TrustPolicy(force_tol=0.5)).predict(
        [frames[k] for k in good], forces=True, force_mode="approx")
    for var in ("energy", "energy_sigma", "energy_low", "q_score", "max_force", "max_force_halfwidth",
                "force_error_bound", "trust_score"):
        np.testing.assert_allclose(ds[var].values[good], ref[var].values, rtol=1e-10, atol=1e-12)
    assert ds["energy"].attrs["units"] == "eV" and ds["max_force_sigma"].attrs["units"] == "eV/Å"


def test_folder_with_unreadable_file(cal_file, tmp_path, chgnet):
    import ase.io

    from calib.data.prototypes import perturbed_set
    from calib.workflows.screen import read_results, screen

    folder = tmp_path / "cifs"
    folder.mkdir()
    for k, a in enumerate(perturbed_set(n_variants=1, seed=2)[:3]):
        ase.io.write(folder / f"s{k}.cif", a)
    (folder / "s1b.cif").write_text("data_broken\n_cell_length_a 3\n")
    screen([folder], cal_file, tmp_path / "f.nc", model=chgnet, progress=False)
    ds = read_results(tmp_path / "f.nc")
    assert len(ds["structure"]) == 4
    assert ds["status"].values[2] == "failed" and "s1b.cif" in ds["error"].values[2]
    assert (ds["status"].values[[0, 1, 3]] != "failed").all()


def test_existing_output_is_not_overwritten(cal_file, stream_file, tmp_path, chgnet):
    from calib.workflows.screen import screen

    out = tmp_path / "r.nc"
    out.write_text("precious")
    with pytest.raises(FileExistsError, match="overwrite=True"):  # the library names its keyword
        screen([stream_file[0]], cal_file, out, model=chgnet, progress=False)
    assert out.read_text() == "precious"


def _run_cli(args, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "calib.cli.main", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


KILL_AFTER_COMMIT = """
import os, signal, sys
from calib.workflows.screen import screen
src, cal, out, after = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
def kill(rows):  # right after a committed batch: exactly `after` rows are in the journal
    if rows >= after:
        os.kill(os.getpid(), signal.SIGKILL)
screen([src], cal, out, batch_size=2, progress=False, on_commit=kill)
"""


@pytest.mark.slow
def test_resume_after_sigkill_equals_uninterrupted_run(cal_file, tmp_path):
    """Kill a screen with SIGKILL right after its third committed batch (6 rows, deterministic: the process
    kills itself from the commit hook), resume with `calib screen --resume`: the file equals an uninterrupted
    run's, no gaps."""
    import ase.io

    from calib.data.prototypes import perturbed_set
    from calib.workflows.screen import read_results

    frames = perturbed_set(n_variants=3, rattle=0.05, seed=5)[:40]
    assert len(frames) == 40
    src = tmp_path / "in.extxyz"
    ase.io.write(src, frames)
    args = ["screen", src, "--calibration", cal_file, "--batch-size", "2"]
    full = _run_cli(args + ["-o", tmp_path / "full.nc", "--json"])
    out, err = full.communicate(timeout=600)
    assert full.returncode == 0, err
    assert json.loads(out)["n_total"] == 40

    part = tmp_path / "part.nc"
    journal = tmp_path / "part.nc.resume.json"
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_COMMIT, str(src), str(cal_file), str(part), "6"],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    state = json.loads(journal.read_text())
    assert not state["complete"] and state["rows"] == 6, state
    again = _run_cli(args + ["-o", part, "--resume", "--json"])
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    assert json.loads(out)["n_total"] == 40
    a, b = read_results(tmp_path / "full.nc"), read_results(part)
    assert list(b["structure"].values) == list(range(40))
    for var in a.data_vars:
        x, y = a[var].values, b[var].values
        if x.dtype.kind == "f":  # rows of three processes: float32 forward passes (see F32)
            np.testing.assert_allclose(x, y, err_msg=var, **F32)
        elif x.dtype.kind == "i":
            np.testing.assert_array_equal(x, y, err_msg=var)
        else:
            assert list(x) == list(y), var
    # resuming against a different input is refused
    ase.io.write(src, frames[::-1])
    bad = _run_cli(args + ["-o", part, "--resume", "--json"])
    out, _ = bad.communicate(timeout=600)
    assert bad.returncode == 1 and "input differs" in json.loads(out)["error"]


#: H on another process agrees to the precision the computation has: CHGNet's features are float32 (rounding
#: 6e-8 relative per feature; another process may use other thread counts, hence another reduction order in
#: the forward pass), and H = Σ f fᵀ keeps that relative size: 1e-5 is float32 rounding with room for ~100
#: ulps, still 4 orders below any change of one structure's features
H_REL = 1e-5
#: the same for the rows a worker computes (energies, σ, bounds: float32 forward passes); atol for quantities
#: near zero (forces of nearly relaxed cells, eV/Å)
F32 = {"rtol": 1e-5, "atol": 1e-6}


@pytest.fixture(scope="module")
def client():
    from calib.workflows.distributed import close_client, start_client

    c = start_client(workers=2)
    yield c
    close_client(c)


def test_distributed_hessian_equals_serial(client, chgnet):
    from calib.data.prototypes import perturbed_set
    from calib.workflows.accumulate import accumulate_hessian
    from calib.workflows.distributed import distributed_hessian

    structs = perturbed_set(n_variants=1, seed=9)[:30]
    serial = accumulate_hessian(chgnet, structs, batch_size=4, progress=False)
    dist = distributed_hessian(client, "chgnet", structs, batch_size=4, n_shards=5, progress=False)
    assert dist.n_structures == serial.n_structures == len(structs)
    rel = np.abs(dist.hessian - serial.hessian).max() / np.abs(serial.hessian).max()
    assert rel < H_REL, rel
    assert len(client.scheduler_info()["workers"]) == 2


def test_distributed_screen_equals_serial(client, cal_file, stream_file, tmp_path, chgnet):
    from calib.workflows.screen import read_results, screen

    path = stream_file[0]
    screen([path], cal_file, tmp_path / "s.nc", model=chgnet, batch_size=3, progress=False)
    summary = screen([path], cal_file, tmp_path / "d.nc", batch_size=3, client=client, progress=False)
    a, b = read_results(tmp_path / "s.nc"), read_results(tmp_path / "d.nc")
    assert summary["n_total"] == stream_file[1]
    for var in a.data_vars:
        x, y = a[var].values, b[var].values
        if x.dtype.kind == "f":
            np.testing.assert_allclose(x, y, err_msg=var, **F32)
        else:
            assert list(x) == list(y), var


@pytest.mark.slow
def test_last2_artifact_through_a_local_cluster(client, tmp_path):
    """The feature set travels with the model on every route: a CHGNet 'last2' (4224-feature) Hessian built on
    the cluster equals the serial one, and a 'last2' artifact screens on the cluster as it does serially
    (calib 0.4 sent the workers the name alone: a 64-feature H, then an artifact error)."""
    from calib import datasets
    from calib.data.prototypes import perturbed_set
    from calib.models import load_model
    from calib.workflows.calibration import calibrate
    from calib.workflows.hessian import build_hessian
    from calib.workflows.screen import read_results, screen

    m = load_model("chgnet", feature_set="last2")
    structs = perturbed_set(n_variants=1, seed=3)[:8]
    serial, _ = build_hessian(m, structs, batch_size=4, progress=False)
    dist, _ = build_hessian(m, structs, batch_size=4, progress=False, client=client)
    assert dist.llpr.n_features == serial.llpr.n_features == 4224
    assert dist.model_info["feature_set"] == "last2"
    rel = np.abs(dist.llpr.hessian_ - serial.llpr.hessian_).max() / np.abs(serial.llpr.hessian_).max()
    assert rel < H_REL, rel
    lab = [a for c in ("Si", "Li-F") for a in datasets.load("high-energy-states", chemsys=c)[::2]]
    cal = calibrate(serial, m, lab, target="energy", with_forces=False, alpha=0.2, progress=False).artifact
    cal.save(tmp_path / "last2.nc")
    screen(structs, tmp_path / "last2.nc", tmp_path / "s.nc", batch_size=4, progress=False)
    screen(structs, tmp_path / "last2.nc", tmp_path / "d.nc", batch_size=4, client=client, progress=False)
    a, b = read_results(tmp_path / "s.nc"), read_results(tmp_path / "d.nc")
    assert (a["status"].values != "failed").all()
    np.testing.assert_allclose(a["energy_sigma"].values, b["energy_sigma"].values, **F32)
    assert list(a["trust_reason"].values) == list(b["trust_reason"].values)


def test_thread_choice_precedence(monkeypatch):
    from calib.models.threads import choose_threads

    monkeypatch.setenv("CALIB_THREADS", "3")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert choose_threads(5) == (5, "--threads")
    assert choose_threads() == (3, "CALIB_THREADS")
    monkeypatch.delenv("CALIB_THREADS")
    assert choose_threads() == (2, "OMP_NUM_THREADS")
    monkeypatch.delenv("OMP_NUM_THREADS")
    n, why = choose_threads()
    assert 1 <= n <= os.cpu_count() and "usable" in why
    monkeypatch.setenv("CALIB_THREADS", "zero")
    with pytest.raises(ValueError, match="CALIB_THREADS"):
        choose_threads()


@pytest.mark.slow
def test_cli_hessian_and_screen_with_workers(cal_file, tmp_path, chgnet):
    """`calib hessian --workers 2` gives the serial H; `calib screen --workers 2` the serial rows."""
    import ase.io

    from calib.artifact import Artifact
    from calib.data.prototypes import perturbed_set
    from calib.workflows.accumulate import accumulate_hessian
    from calib.workflows.screen import read_results, screen

    structs = perturbed_set(n_variants=1, seed=12)[:20]
    src = tmp_path / "h.extxyz"
    ase.io.write(src, structs)
    p = _run_cli(["hessian", src, "-o", tmp_path / "H.nc", "--workers", "2", "--batch-size", "4", "--json"])
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    H = Artifact.load(tmp_path / "H.nc").llpr.hessian_
    ref = accumulate_hessian(chgnet, ase.io.read(src, ":"), batch_size=4, progress=False).hessian
    assert np.abs(H - ref).max() / np.abs(ref).max() < H_REL
    p = _run_cli(["screen", src, "--calibration", cal_file, "-o", tmp_path / "w.nc", "--workers", "2", "--json"])
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    assert json.loads(out)["n_total"] == len(structs)
    screen([src], cal_file, tmp_path / "s.nc", model=chgnet, progress=False)
    a, b = read_results(tmp_path / "s.nc"), read_results(tmp_path / "w.nc")
    np.testing.assert_allclose(a["energy_sigma"].values, b["energy_sigma"].values, **F32)
    assert list(a["status"].values) == list(b["status"].values)


def test_screen_does_not_read_its_own_output(cal_file, tmp_path, chgnet):
    """`screen DIR -o DIR/out.nc`: the results file and its resume journal are not candidates."""
    import ase.io

    from calib.data.prototypes import perturbed_set
    from calib.workflows.screen import screen

    folder = tmp_path / "cands"
    folder.mkdir()
    for k, a in enumerate(perturbed_set(n_variants=1, seed=2)[:3]):
        ase.io.write(folder / f"s{k}.cif", a)
    summary = screen([folder], cal_file, folder / "out.nc", model=chgnet, progress=False)
    assert summary["n_total"] == 3 and summary["n_failed"] == 0
