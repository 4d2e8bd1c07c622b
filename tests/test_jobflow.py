"""calib in jobflow and atomate2 (the ``atomate2`` extra): the flow relax → calibrated static → label requests,
run by jobflow's ``run_locally`` with a real in-memory store, its outputs checked against ``calib predict``."""

import json

import numpy as np
import pytest
from ase.build import bulk

jobflow = pytest.importorskip("jobflow", reason="the atomate2 extra (jobflow, atomate2) is not installed")
pytest.importorskip("atomate2", reason="the atomate2 extra (jobflow, atomate2) is not installed")


def test_relax_and_judge_flow_stores_what_calib_predict_says(tmp_path, monkeypatch):
    import ase.io
    from jobflow import JobStore, run_locally
    from maggma.stores import MemoryStore
    from pymatgen.io.ase import AseAtomsAdaptor
    from typer.testing import CliRunner

    from calib.cli.main import app
    from calib.workflows.jobflow import relax_and_judge

    monkeypatch.chdir(tmp_path)
    si = bulk("Si", "diamond", 5.43, cubic=True)
    si.positions += np.random.default_rng(0).normal(0, 0.1, si.positions.shape)
    squeezed = bulk("Si", "diamond", 0.72 * 5.43, cubic=True)  # far out of the model's domain: a label request
    structures = [AseAtomsAdaptor.get_structure(a) for a in (si, squeezed)]
    flow = relax_and_judge(structures, request_path=str(tmp_path / "req.extxyz"))
    store = JobStore(MemoryStore(), additional_stores={"data": MemoryStore()})  # atomate2 keeps trajectories there
    responses = run_locally(flow, store=store, create_folders=False, ensure_success=True)
    assert len(responses) == 5  # two relaxations, the gather, the static, the requests

    out = {k: ref.resolve(store) for k, ref in flow.output.items()}
    records, requests = out["records"], out["requests"]
    relaxed = [store.query_one({"name": f"relax {k}"}, load=True)["output"]["structure"] for k in range(2)]
    from pymatgen.core import Structure

    atoms = [AseAtomsAdaptor.get_atoms(Structure.from_dict(s)) for s in relaxed]
    assert np.abs(atoms[0].positions - si.positions).max() > 1e-3  # the relaxation moved the rattled atoms
    ase.io.write(tmp_path / "relaxed.extxyz", atoms)
    r = CliRunner().invoke(app, ["predict", str(tmp_path / "relaxed.extxyz"), "--forces", "-q", "--json"])
    assert r.exit_code == 0, r.output
    expect = json.loads(r.stdout)["records"]
    assert len(records) == len(expect) == 2
    for got, want in zip(records, expect):
        for key in ("energy", "energy_sigma", "force_error_bound", "max_force", "trust_score"):
            assert got[key] == pytest.approx(want[key], rel=1e-6, abs=1e-8), key
        assert got["trusted"] == want["trusted"] and got["trust_reason"] == want["trust_reason"]
    bad = [k for k, w in enumerate(expect) if not w["trusted"]]
    assert requests["indices"] == bad and 1 in bad
    if bad:
        written = ase.io.read(requests["path"], ":")
        assert [a.info["trust_reason"] for a in written] == [expect[k]["trust_reason"] for k in bad]
