"""MACE backend: a small ScaleShiftMACE built in code (as mace's own tests do), against mace's calculator."""

import copy

import numpy as np
import pytest

mace = pytest.importorskip("mace")  # before e3nn

ELEMENTS = [3, 9, 14]  # Li, F, Si
E0 = np.array([-1.9, -0.7, -5.4])
SHIFT, SCALE = 0.13, 1.7


def build_model(seed=0):
    import torch
    from e3nn import o3
    from mace import modules

    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # so that E0, scale and shift are stored exactly as given
    try:
        return _build(modules, o3, torch)
    finally:
        torch.set_default_dtype(previous)


def _build(modules, o3, torch):
    return modules.ScaleShiftMACE(
        r_max=5.0, num_bessel=8, num_polynomial_cutoff=6, max_ell=2,
        interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        interaction_cls_first=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        num_interactions=2, num_elements=len(ELEMENTS), hidden_irreps=o3.Irreps("8x0e + 8x1o"),
        MLP_irreps=o3.Irreps("16x0e"), gate=torch.nn.functional.silu, atomic_energies=E0,
        avg_num_neighbors=8.0, atomic_numbers=ELEMENTS, correlation=2, radial_type="bessel",
        atomic_inter_scale=SCALE, atomic_inter_shift=SHIFT,
    )


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    import torch

    path = tmp_path_factory.mktemp("mace") / "small.model"
    torch.save(build_model(), path)
    return path


@pytest.fixture(scope="module")
def adapter(model_file):
    from calib.models import load_model

    return load_model(str(model_file))


def structures(n=4, seed=0):
    from ase.build import bulk

    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        a = (bulk("LiF", "rocksalt", 4.03) if k % 2 == 0 else bulk("Si", "diamond", 5.43)).repeat((1, 1, 2))
        a.positions += rng.normal(0, 0.1, a.positions.shape)
        out.append(a)
    return out


def test_energies_and_forces_equal_mace_calculator(adapter, model_file):
    from mace.calculators import MACECalculator

    calc = MACECalculator(model_paths=str(model_file), device="cpu", default_dtype="float64")
    structs = structures()
    pred = adapter.predict(structs, forces=True, stress=True)
    for k, a in enumerate(structs):
        b = a.copy()
        b.calc = calc
        assert abs(pred.energy[k] - b.get_potential_energy()) / len(a) < 1e-6
        np.testing.assert_allclose(pred.forces_of(k), b.get_forces(), atol=1e-5)
        np.testing.assert_allclose(pred.stress[k], b.get_stress(voigt=False), atol=1e-6)


def test_energy_is_linear_in_the_features(adapter):
    """E = w · Σ_a φ_a + Σ_a E0(Z_a) + N·shift, with w, φ from calib and E0, shift from the model's build."""
    structs = structures()
    pred = adapter.predict(structs, forces=False)
    w, b = adapter.readout
    assert b == 0.0 and adapter.energy_convention == "total"
    assert adapter.n_features == 8 + 16  # scalar channels of the linear readout + hidden MLP of the last
    e0 = np.array([sum(E0[ELEMENTS.index(z)] for z in a.numbers) for a in structs])
    rebuilt = pred.features @ w + e0 + SHIFT * pred.n_atoms
    np.testing.assert_allclose(rebuilt, pred.energy, rtol=0, atol=1e-9)
    # per-atom features sum to the pooled ones
    np.testing.assert_allclose(np.add.reduceat(pred.atom_descriptors, np.r_[0, np.cumsum(pred.n_atoms)[:-1]]),
                               pred.features, atol=1e-12)


def test_exact_force_sigma_equals_per_feature_loop(adapter):
    from calib.models.gradients import force_variance
    from calib.uq.llpr import LLPR
    from calib.workflows.accumulate import accumulate_hessian
    from calib.workflows.bench import mace_style_force_variance

    H = accumulate_hessian(adapter, structures(8, seed=1), batch_size=4, progress=False)
    L = LLPR(energy_convention="total").fit(H.hessian, H.n_structures)
    L.alpha2_ = L.force_alpha2_ = 0.3
    L.sigma2_ = L.force_sigma2_ = 1e-3 * L.eigenvalues_[-1]
    probe = structures(3, seed=2)
    exact = force_variance(adapter, probe, L, mode="exact", batch_size=2)
    loop = mace_style_force_variance(adapter, probe, L, batch_size=2)
    for a, b in zip(exact, loop):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-14)


def test_unknown_elements_are_skipped_and_named(adapter):
    from ase.build import bulk

    structs = structures(2) + [bulk("Cu", "fcc", 3.6).repeat(2)]
    pred = adapter.predict(structs, forces=False)
    assert list(pred.indices) == [0, 1]
    assert len(pred.issues) == 1 and pred.issues[0].index == 2 and "Cu" in pred.issues[0].problem


def test_artifact_refuses_other_weights(adapter):
    import torch

    from calib.artifact import ArtifactError
    from calib.models.mace import MACEAdapter
    from calib.workflows.hessian import build_hessian

    art, _ = build_hessian(adapter, structures(4), progress=False)
    other = copy.deepcopy(adapter.model)
    with torch.no_grad():
        next(other.readouts[0].parameters()).view(-1)[0] += 1e-3
    with pytest.raises(ArtifactError, match="refit"):
        art.check_model(MACEAdapter(other))
    art.check_model(adapter)


def test_calibrate_and_predict_through_the_predictor(adapter, model_file, tmp_path):
    """The whole path with a total-energy model: H, calibration on GPAW labels, predictor from the file."""
    from calib import datasets
    from calib.models import load_model, model_hint
    from calib.predictor import CalibratedPredictor
    from calib.workflows.calibration import calibrate
    from calib.workflows.hessian import build_hessian

    art, _ = build_hessian(adapter, structures(8, seed=3), progress=False)
    lab = [a for c in ("Si", "Li-F") for a in datasets.load("high-energy-states", chemsys=c)[::2]]
    res = calibrate(art, adapter, lab, alpha=0.2, progress=False, difference_model=False)
    assert res.artifact.model_info["energy_convention"] == "total"
    res.artifact.save(tmp_path / "cal.nc")
    # the artifact names the model file; passing that file gives the same weights, but the artifact alone never
    # makes calib load (unpickle) it
    assert load_model(model_hint(res.artifact.model_info)).fingerprint() == adapter.fingerprint()
    with pytest.raises(ValueError, match="does not load a model file that an artifact names"):
        CalibratedPredictor.from_file(tmp_path / "cal.nc")
    probe = [a for c in ("Si", "Li-F") for a in datasets.load("high-energy-states", chemsys=c)[1::4]]
    ds = CalibratedPredictor.from_file(tmp_path / "cal.nc", model=str(model_file)).predict(probe, forces=True)
    assert (ds["error"].values == "").all()
    assert np.all(np.isfinite(ds["energy_sigma"].values)) and np.all(ds["energy_sigma"].values > 0)
    assert np.all(ds["energy_low"].values < ds["energy_high"].values)
    assert np.all(ds["forces_sigma"].values >= 0) and np.all(np.isfinite(ds["forces_high"].values))
    # total convention: σ_E from the pooled (summed) features without the per-atom factor
    L = res.artifact.llpr
    f = adapter.predict(probe, forces=False).features
    np.testing.assert_allclose(ds["energy_sigma_llpr"].values,
                               np.sqrt(L.alpha2_ * np.einsum("sd,de,se->s", f, L.covariance(), f)), rtol=1e-8)


class PairPotential:
    """A toy torch potential for the generic adapter: per-atom features from radial sums, an MLP, a Linear."""

    @staticmethod
    def build(seed=0):
        import torch

        torch.manual_seed(seed)

        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.embed = torch.nn.Embedding(20, 6)
                self.mlp = torch.nn.Sequential(torch.nn.Linear(6 + 4, 12), torch.nn.SiLU())
                self.out = torch.nn.Linear(12, 1)

            def forward(self, numbers, positions, i, j, shifts, batch, n_structures):
                d = (positions[j] + shifts - positions[i]).norm(dim=1)
                rbf = torch.exp(-((d[:, None] - torch.tensor([1.5, 2.0, 2.5, 3.0], dtype=d.dtype)) ** 2))
                env = torch.zeros(len(numbers), 4, dtype=d.dtype).index_add(0, i, rbf * torch.cos(d / 8)[:, None])
                h = self.mlp(torch.cat([self.embed(numbers).to(d.dtype), env], dim=1))
                e = self.out(h).squeeze(1)
                return torch.zeros(n_structures, dtype=d.dtype).index_add(0, batch, e)

        return Net().double()

    @staticmethod
    def collate(structures, device, dtype):
        import torch
        from ase.neighborlist import neighbor_list

        pos, nums, ii, jj, sh, batch, start = [], [], [], [], [], [], 0
        for k, a in enumerate(structures):
            i, j, S = neighbor_list("ijS", a, 4.0)
            pos.append(a.positions)
            nums.append(a.numbers)
            ii.append(i + start)
            jj.append(j + start)
            sh.append(S @ a.cell[:])
            batch.append(np.full(len(a), k))
            start += len(a)
        positions = torch.tensor(np.concatenate(pos), dtype=dtype, device=device, requires_grad=True)
        inputs = dict(numbers=torch.tensor(np.concatenate(nums)), positions=positions,
                      i=torch.tensor(np.concatenate(ii)), j=torch.tensor(np.concatenate(jj)),
                      shifts=torch.tensor(np.concatenate(sh), dtype=dtype), batch=torch.tensor(np.concatenate(batch)),
                      n_structures=len(structures))
        return inputs, positions, inputs["batch"]


def test_generic_linear_readout_adapter():
    """Energy rebuilt from features and weights; forces by finite differences; exact force σ = per-feature loop."""
    from calib.models.generic import LinearReadoutAdapter
    from calib.models.gradients import force_variance
    from calib.uq.llpr import LLPR
    from calib.workflows.accumulate import accumulate_hessian
    from calib.workflows.bench import mace_style_force_variance

    net = PairPotential.build()
    m = LinearReadoutAdapter(net, net.out, PairPotential.collate, lambda out: out, elements=ELEMENTS, cutoff=4.0)
    structs = structures(4)
    pred = m.predict(structs, forces=True)
    w, b = m.readout
    np.testing.assert_allclose(pred.features @ w + pred.n_atoms * b, pred.energy, atol=1e-10)  # bias per atom
    a = structs[0].copy()
    h, k = 1e-5, 3
    e = []
    for s in (+1, -1):
        b_ = a.copy()
        b_.positions[k, 1] += s * h
        e.append(m.predict([b_], forces=False).energy[0])
    assert abs(-(e[0] - e[1]) / (2 * h) - pred.forces_of(0)[k, 1]) < 1e-6
    H = accumulate_hessian(m, structures(8, seed=1), batch_size=4, progress=False)
    L = LLPR(energy_convention="total").fit(H.hessian, H.n_structures)
    L.alpha2_ = L.force_alpha2_ = 0.5
    L.sigma2_ = L.force_sigma2_ = 1e-3 * L.eigenvalues_[-1]
    exact = force_variance(m, structs, L, mode="exact", batch_size=3)
    loop = mace_style_force_variance(m, structs, L, batch_size=3)
    assert [v.shape for v in exact] == [(len(s), 3) for s in structs]
    for x, y in zip(exact, loop):
        np.testing.assert_allclose(x, y, rtol=1e-8, atol=1e-14)


def test_shipped_small_mace_equals_mace_calculator():
    """`--model mace-small` resolves to the shipped file, and calib's numbers are mace's own (float64)."""
    import os

    from mace.calculators import MACECalculator

    from calib import datasets
    from calib.models import load_model, shipped_mace_path

    if not os.path.exists(shipped_mace_path()):
        pytest.skip("shipped MACE model missing")
    m = load_model("mace-small")
    calc = MACECalculator(model_paths=shipped_mace_path(), device="cpu", default_dtype="float64")
    structs = [a for c in ("Si", "Li-F", "Zn-S") for a in datasets.load("high-energy-states", chemsys=c)[:2]]
    pred = m.predict(structs, forces=True)
    for k, a in enumerate(structs):
        b = a.copy()
        b.calc = calc
        assert abs(pred.energy[k] - b.get_potential_energy()) / len(a) < 1e-6
        np.testing.assert_allclose(pred.forces_of(k), b.get_forces(), atol=1e-5)
    w, _ = m.readout
    assert m.n_features == 32 and np.all(np.isfinite(w))


def test_importing_mace_leaves_torch_load_as_it_was(monkeypatch):
    """mace sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 for the whole process when imported; calib's import puts the
    variable back, so no other torch.load in the process unpickles by default."""
    import os

    from calib.models import mace

    monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", raising=False)
    mace._import_mace()
    assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in os.environ
