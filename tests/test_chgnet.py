"""CHGNet backend: features, readout, batching, and agreement with CHGNet's own calculator."""

import numpy as np
import pytest
from conftest import rattled_si


def test_readout_reproduces_energy(chgnet, prototypes):
    pred = chgnet.predict(prototypes, forces=False)
    assert len(pred) == len(prototypes) == 17
    per_atom_err = (pred.readout_energy() - pred.energy) / pred.n_atoms
    assert np.max(np.abs(per_atom_err)) < 1e-5  # eV/atom
    assert pred.features.shape == (17, 64)
    assert pred.atom_descriptors.shape == (pred.n_atoms.sum(), 64)
    # pooled feature is the mean of the per-atom descriptors
    for i, sl in enumerate(pred.atom_slices()):
        np.testing.assert_allclose(pred.features[i], pred.atom_descriptors[sl].mean(0), atol=1e-6)


def test_batched_equals_one_at_a_time(chgnet, prototypes):
    chgnet.gradient_atoms = None  # the whole batch in one differentiated pass
    try:
        batch = chgnet.predict(prototypes[:6], forces=True, stress=True, batch_size=6)
    finally:
        chgnet.gradient_atoms = "auto"
    for i, atoms in enumerate(prototypes[:6]):
        one = chgnet.predict([atoms], forces=True, stress=True, batch_size=1)
        np.testing.assert_allclose(one.energy[0], batch.energy[i], atol=2e-5 * len(atoms))
        np.testing.assert_allclose(one.features[0], batch.features[i], atol=1e-5)
        np.testing.assert_allclose(one.forces, batch.forces_of(i), atol=1e-5)
        np.testing.assert_allclose(one.stress[0], batch.stress[i], atol=1e-6)


def test_atom_chunks_bound_the_differentiated_passes(chgnet, prototypes):
    """Forces, stress and feature gradients in chunks of at most 24 atoms equal one pass over the batch."""
    from calib.models.base import GRADIENT_ATOMS, atom_chunks
    from calib.models.gradients import feature_gradients

    structs = prototypes[:7]
    chunks = atom_chunks(structs, GRADIENT_ATOMS)
    assert [a for c in chunks for a in c] == structs and len(chunks) > 1
    assert all(sum(map(len, c)) <= GRADIENT_ATOMS or len(c) == 1 for c in chunks)
    assert atom_chunks(structs, None) == [structs] and atom_chunks([], 5) == []
    assert chgnet.gradient_atoms == GRADIENT_ATOMS  # the default on CPU
    U = np.random.default_rng(0).normal(size=(5, 64))
    chunked = chgnet.predict(structs, forces=True, stress=True, batch_size=7)
    g_chunked = feature_gradients(chgnet, structs, U)
    chgnet.gradient_atoms = None
    try:
        whole = chgnet.predict(structs, forces=True, stress=True, batch_size=7)
        g_whole = feature_gradients(chgnet, structs, U)
    finally:
        chgnet.gradient_atoms = "auto"
    np.testing.assert_allclose(chunked.energy, whole.energy, rtol=1e-6)
    np.testing.assert_allclose(chunked.forces, whole.forces, atol=1e-5)
    np.testing.assert_allclose(chunked.stress, whole.stress, atol=1e-6)
    for a, b in zip(g_chunked, g_whole):
        np.testing.assert_allclose(a, b, atol=1e-5 * np.abs(b).max())


def test_matches_chgnet_calculator(chgnet, prototypes):
    """Independent path: chgnet's own ASE calculator (eV, eV/Å, eV/Å³)."""
    from chgnet.model.dynamics import CHGNetCalculator

    calc = CHGNetCalculator(model=chgnet.model, use_device="cpu")
    pred = chgnet.predict(prototypes[:4], forces=True, stress=True)
    for i, atoms in enumerate(prototypes[:4]):
        a = atoms.copy()
        a.calc = calc
        assert a.get_potential_energy() == pytest.approx(pred.energy[i], abs=1e-4)
        np.testing.assert_allclose(a.get_forces(), pred.forces_of(i), atol=1e-4)
        np.testing.assert_allclose(a.get_stress(voigt=False), pred.stress[i], atol=1e-5)


def test_forces_are_minus_energy_gradient(chgnet):
    atoms = rattled_si(seed=1)
    f = chgnet.predict([atoms], forces=True).forces
    h = 1e-3
    for a, x in [(0, 0), (1, 2)]:
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[a, x] += h
        minus.positions[a, x] -= h
        e = chgnet.predict([plus, minus], forces=False).energy
        assert -(e[0] - e[1]) / (2 * h) == pytest.approx(f[a, x], abs=5e-3)


def test_fingerprint_changes_with_weights(chgnet):
    import copy

    import torch

    from calib.models.chgnet import CHGNetAdapter

    other = CHGNetAdapter(copy.deepcopy(chgnet.model))
    assert other.fingerprint() == chgnet.fingerprint()
    with torch.no_grad():
        other.model.mlp.layers[-1].weight[0, 0] += 1e-3
    assert other.fingerprint() != chgnet.fingerprint()


def test_last2_features_are_parameter_jacobians(chgnet, prototypes):
    """feature_set='last2' equals autograd's ∂(E/N)/∂(w, b₃, W₃) computed on the model itself."""
    import torch

    from calib.models.chgnet import CHGNetAdapter

    m2 = CHGNetAdapter(chgnet.model, feature_set="last2")
    assert m2.n_features == 64 + 64 + 64 * 64
    pred = m2.predict(prototypes[:3], forces=False)
    np.testing.assert_allclose((pred.readout_energy() - pred.energy) / pred.n_atoms, 0, atol=1e-5)
    pen, last = chgnet.model.mlp.layers[-4], chgnet.model.mlp.layers[-1]
    for i, atoms in enumerate(prototypes[:3]):
        e_per_atom = chgnet.model([chgnet._graphs([atoms])[0]], task="e")["e"].sum()
        gw, gb, gW = torch.autograd.grad(e_per_atom, [last.weight, pen.bias, pen.weight])
        want = np.concatenate([gw.numpy().ravel(), gb.numpy().ravel(), gW.numpy().ravel()])
        np.testing.assert_allclose(pred.features[i], want, atol=2e-6)
