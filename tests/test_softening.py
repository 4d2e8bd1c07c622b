"""Softening scale, bootstrap CI, scalar correction: synthetic closed forms and the shipped GPAW data."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from calib import datasets
from calib.softening.correction import ChemistryCorrection, ScalarCorrection, corrected_calculator
from calib.softening.scale import fit_softening


def _synthetic(rng, s_true, n_struct=20, n_atoms=8, noise=0.1):
    ref = [rng.normal(0, 1.5, (n_atoms, 3)) for _ in range(n_struct)]
    # noise correlated within a structure (a per-structure offset pattern) and independent parts
    model = [s_true * g + noise * (rng.normal(size=g.shape) + rng.normal() * np.ones_like(g)) for g in ref]
    return model, ref


def test_slope_and_correction_recovered():
    rng = np.random.default_rng(0)
    model, ref = _synthetic(rng, 0.7, n_struct=200, noise=0.05)
    r = fit_softening(model, ref, chemsys="X", n_bootstrap=500)
    f, g = np.concatenate([m.ravel() for m in model]), np.concatenate([x.ravel() for x in ref])
    assert r.softening_scale == pytest.approx(0.7, abs=0.01)
    # closed forms of the two least-squares problems
    assert r.softening_scale == pytest.approx(f @ g / (g @ g))
    assert r.correction == pytest.approx(f @ g / (f @ f))
    assert r.correction == pytest.approx(1 / 0.7, rel=0.02)
    assert r.mae == pytest.approx(np.mean(np.abs(f - g)))
    assert r.cmae == pytest.approx(np.mean(np.abs(r.correction * f - g)))
    assert r.cmae < 0.3 * r.mae
    # leave-one-structure-out by brute force
    loo = []
    for k in range(len(model)):
        fo = np.concatenate([m.ravel() for j, m in enumerate(model) if j != k])
        go = np.concatenate([x.ravel() for j, x in enumerate(ref) if j != k])
        loo.append(np.abs((fo @ go) / (fo @ fo) * model[k].ravel() - ref[k].ravel()))
    assert r.cmae_loo == pytest.approx(np.mean(np.concatenate(loo)))


def test_the_fit_sets_the_correction_domain():
    """domain_q_max is learned by the fit, per chemistry: the largest domain score of its own structures."""
    from calib.softening.scale import fit_softening_by_chemsys

    rng = np.random.default_rng(3)
    model, ref = _synthetic(rng, 0.8, n_struct=6)
    scores = np.array([0.1, 0.7, 0.2, 0.4, 0.9, 0.3])
    assert fit_softening(model, ref, n_bootstrap=10).domain_q_max is None
    assert fit_softening(model, ref, n_bootstrap=10, domain_scores=scores).domain_q_max == 0.9
    by = fit_softening_by_chemsys(["A", "A", "A", "B", "B", "B"], model, ref, n_bootstrap=10, domain_scores=scores)
    assert by["A"].domain_q_max == 0.7 and by["B"].domain_q_max == 0.9


def test_bootstrap_ci_covers_true_slope_about_95_percent():
    hits, repeats = 0, 300
    for seed in range(repeats):
        rng = np.random.default_rng(1000 + seed)
        model, ref = _synthetic(rng, 0.8, n_struct=30, noise=0.3)
        r = fit_softening(model, ref, n_bootstrap=400, seed=seed)
        hits += r.softening_ci[0] <= 0.8 <= r.softening_ci[1]
    # percentile bootstrap with 30 clusters runs a little narrow; binomial SD at 300 repeats ≈ 1.3 %
    assert 0.88 <= hits / repeats <= 0.99, hits / repeats


def test_correction_scales_energy_differences_like_forces():
    corr = ScalarCorrection({"Si": ChemistryCorrection(1.5, -5.0)})
    e_a, _, _ = corr.apply("Si", 8, energy=-38.0)
    e_b, f, s = corr.apply("Si", 8, energy=-39.0, forces=np.ones((8, 3)), stress=np.ones(6))
    assert e_a - e_b == pytest.approx(1.5 * 1.0)
    assert e_b == pytest.approx(-40.0 + 1.5 * (-39.0 + 40.0))
    assert np.all(f == 1.5) and np.all(s == 1.5)
    assert corr.apply("Ge", 2, energy=-3.0)[0] == -3.0  # no factor: unchanged


def test_ase_calculator_wrapper(chgnet):
    from ase.build import bulk
    from chgnet.model.dynamics import CHGNetCalculator

    base = CHGNetCalculator(model=chgnet.model, use_device="cpu")
    atoms = bulk("Si", "diamond", 5.43, cubic=True)
    atoms.rattle(0.05, seed=1)
    ref = atoms.copy()
    ref.calc = base
    corr = ScalarCorrection({"Si": ChemistryCorrection(1.4, -5.3)})
    atoms.calc = corrected_calculator(base, corr)
    np.testing.assert_allclose(atoms.get_forces(), 1.4 * ref.get_forces(), rtol=1e-6)
    assert atoms.get_potential_energy() == pytest.approx(-5.3 * 8 + 1.4 * (ref.get_potential_energy() + 5.3 * 8))


@pytest.mark.slow
def test_shipped_data_softening_and_one_structure_correction(chgnet):
    """Deng et al.: CHGNet is soft almost everywhere, and one labelled structure removes most of it.

    Measured here, the one-structure correction depends on which structure is labelled; we take
    every structure of a chemistry in turn and look at the median effect on the other nine. It
    lowers the MAE on every one of the first release's 14 chemistries where s is clearly below 1
    (upper CI bound < 0.95). NaCl, s = 0.95 with CI [0.91, 0.97], is the exception the docs discuss:
    the softening there is as small as the scatter of c between single structures, so one label does
    not suffice (docs/softening.md). Over all shipped systems it helps on most of the clearly soft ones
    (InAs and PbS, six frames each with a wide CI, are the exceptions when this was written).
    """
    from calib.data.prototypes import FIRST_RELEASE, prototype
    from calib.data.structures import chemsys, get_forces
    from calib.workflows.softening import measure_softening

    data = datasets.load("high-energy-states")
    run = measure_softening(chgnet, data, n_bootstrap=500)
    results, issues = run.results, run.issues
    assert not issues and len(results) >= 12
    # Deng et al.: s < 1 for more than 90 % of WBM compounds with CHGNet
    assert np.mean([r.softening_scale < 1 for r in results.values()]) >= 0.9
    pred = chgnet.predict(data, forces=True)
    first = {chemsys(prototype(name)) for name in FIRST_RELEASE}
    checked, helped, helped_first, n_first = 0, 0, 0, 0
    for chem, r in results.items():
        if r.softening_ci[1] >= 0.95:
            continue
        idx = [j for j, c in enumerate(pred.chemsys) if c == chem]
        ratios = []
        for k in idx:
            one = fit_softening([pred.forces_of(k)], [get_forces(data[k])], chemsys=chem)
            f_rest = np.concatenate([pred.forces_of(j).ravel() for j in idx if j != k])
            g_rest = np.concatenate([get_forces(data[j]).ravel() for j in idx if j != k])
            ratios.append(np.mean(np.abs(one.correction * f_rest - g_rest)) / np.mean(np.abs(f_rest - g_rest)))
        checked += 1
        helped += np.median(ratios) < 1
        if chem in first:
            n_first += 1
            helped_first += np.median(ratios) < 1
    assert n_first >= 9 and helped_first == n_first
    assert checked >= 9 and helped >= 0.85 * checked


def test_cli_softening_json(tmp_path):
    import ase.io

    structs = datasets.load("high-energy-states", chemsys="Si") + datasets.load("high-energy-states",
                                                                               chemsys="Li-Cl")
    bad = structs[0].copy()  # keeps its labels, but two atoms 0.2 Å apart: skipped and reported
    bad.positions[1] = bad.positions[0] + [0.2, 0, 0]
    bad.calc = structs[0].calc
    bad.info["name"] = "squashed"
    ase.io.write(tmp_path / "lab.extxyz", structs + [bad], format="extxyz")
    r = CliRunner().invoke(__import__("calib.cli.main", fromlist=["app"]).app,
                           ["softening", str(tmp_path / "lab.extxyz"), "--json", "--n-bootstrap", "200",
                            "--plot", str(tmp_path / "plots")])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    recs = {x["chemsys"]: x for x in doc["records"]}
    assert set(recs) == {"Si", "Li-Cl"}
    for rec in recs.values():
        assert {"chemsys", "n_structures", "softening_scale", "softening_ci", "correction", "mae", "cmae",
                "cmae_loo"} <= set(rec)
        lo, hi = rec["softening_ci"]
        assert lo <= rec["softening_scale"] <= hi and rec["n_structures"] == 10
    assert len(doc["plots"]) == 2
    (skip,) = doc["skipped"]
    assert skip["index"] == 20 and skip["name"] == "squashed" and "0.200 Å apart" in skip["problem"]


def test_correction_found_in_either_spelling_and_never_pooled_by_a_wrong_tag(chgnet):
    """A correction stored as 'F-Li' applies to LiF frames (chemsys Li-F) and per_structure finds it; NaCl
    frames tagged 'Li-F' are measured as Na-Cl, not pooled into the LiF fit (whose s is unchanged)."""
    import warnings

    from calib import datasets
    from calib.softening.correction import ChemistryCorrection, ScalarCorrection
    from calib.workflows.softening import measure_softening

    corr = ScalarCorrection({"F-Li": ChemistryCorrection(1.2, -4.0, (1.1, 1.3))})
    assert "Li-F" in corr and corr.factor("Li-F") == (1.2, -4.0)
    c, sc = corr.per_structure(["Li-F", "F-Li", "Na-Cl"])
    assert c[0] == c[1] == 1.2 and np.isnan(c[2]) and sc[0] == sc[1] > 0 and np.isnan(sc[2])
    lif = datasets.load("high-energy-states", chemsys="Li-F")[:4]
    nacl = datasets.load("high-energy-states", chemsys="Na-Cl")[:4]
    for a in nacl:
        a.info["chemsys"] = "Li-F"
    alone = measure_softening(chgnet, lif, n_bootstrap=50, progress=False).results
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        mixed = measure_softening(chgnet, lif + nacl, n_bootstrap=50, progress=False).results
    assert set(mixed) == {"Li-F", "Na-Cl"}
    assert mixed["Li-F"].softening_scale == pytest.approx(alone["Li-F"].softening_scale, rel=1e-12)
