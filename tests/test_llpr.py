"""LLPR against brute force, a linear-Gaussian toy with a known posterior, and finite differences."""

import numpy as np
import pytest
from conftest import rattled_si

from calib.models.gradients import feature_gradients, force_variance
from calib.uq.hessian import HessianAccumulator
from calib.uq.llpr import LLPR
from calib.workflows.accumulate import accumulate_hessian


def brute_sigma(F, s2):
    H = F.T @ F
    return np.linalg.inv(H + s2 * np.eye(H.shape[0]))


def test_energy_variance_covariance_difference_vs_numpy():
    rng = np.random.default_rng(0)
    d = 12
    F = rng.normal(size=(40, d)) * rng.uniform(0.1, 3, d)
    s2, a2 = 0.3, 2.5
    L = LLPR(energy_convention="per_atom", sigma2=s2, alpha2=a2).fit(F.T @ F, 40)
    Sig = brute_sigma(F, s2)
    X = rng.normal(size=(7, d))
    n = rng.integers(1, 20, size=7)
    Xt = n[:, None] * X  # total-energy features
    C = a2 * Xt @ Sig @ Xt.T
    np.testing.assert_allclose(L.energy_covariance(X, n), C, rtol=1e-10)
    np.testing.assert_allclose(L.energy_variance(X, n), np.diag(C), rtol=1e-10)
    np.testing.assert_allclose(L.energy_sigma(X, n), np.sqrt(np.diag(C)), rtol=1e-10)
    i, j = np.array([0, 2, 5]), np.array([1, 3, 6])
    want = np.sqrt(C[i, i] + C[j, j] - 2 * C[i, j])
    np.testing.assert_allclose(L.energy_difference_sigma(X[i], n[i], X[j], n[j]), want, rtol=1e-8)
    # total convention: no N scaling
    Lt = LLPR(energy_convention="total", sigma2=s2, alpha2=a2).fit(F.T @ F)
    np.testing.assert_allclose(Lt.energy_variance(X, n), a2 * np.einsum("id,de,ie->i", X, Sig, X), rtol=1e-10)


def test_linear_gaussian_posterior_is_exact_and_covers():
    """Bayesian linear regression: prior w~N(0, τ² I), noise σ_n². Posterior cov = σ_n² (FᵀF + σ_n²/τ² I)⁻¹."""
    rng = np.random.default_rng(1)
    d, n_train, tau2, noise2 = 6, 15, 1.0, 0.25
    F = rng.normal(size=(n_train, d))
    Xnew = rng.normal(size=(50, d))
    L = LLPR(energy_convention="total", sigma2=noise2 / tau2, alpha2=noise2).fit(F.T @ F, n_train)
    post = noise2 * np.linalg.inv(F.T @ F + noise2 / tau2 * np.eye(d))
    sig = L.energy_sigma(Xnew, np.ones(50))
    np.testing.assert_allclose(sig**2, np.einsum("id,de,ie->i", Xnew, post, Xnew), rtol=1e-10)
    inside = []
    for _ in range(400):
        w = rng.normal(0, np.sqrt(tau2), d)
        y = F @ w + rng.normal(0, np.sqrt(noise2), n_train)
        w_mean = np.linalg.solve(F.T @ F + noise2 / tau2 * np.eye(d), F.T @ y)
        inside.append(np.abs(Xnew @ (w_mean - w)) <= sig)
    cover = np.mean(inside)
    assert abs(cover - 0.6827) < 0.02, cover


def test_calibration_closed_form_alpha_and_recovers_truth():
    rng = np.random.default_rng(2)
    d = 10
    F = rng.normal(size=(200, d)) * np.geomspace(1e-3, 10, d)
    L = LLPR(energy_convention="total").fit(F.T @ F, 200)
    true_s2, true_a2 = 0.05 * L.eigenvalues_[-1], 3.0
    X = rng.normal(size=(4000, d)) * np.geomspace(1e-3, 10, d)
    rows = L.energy_rows(X, np.ones(len(X)))
    v = true_a2 * rows @ (1 / (L.eigenvalues_ + true_s2))
    r = rng.normal(0, np.sqrt(v))
    L.calibrate(rows, r)
    assert L.alpha2_ == pytest.approx(true_a2, rel=0.15)
    assert np.log10(L.sigma2_) == pytest.approx(np.log10(true_s2), abs=0.5)
    # for fixed sigma2 the fitted alpha2 is mean(r²/v)
    fixed = LLPR(energy_convention="total", sigma2=true_s2).fit(F.T @ F)
    fixed.calibrate(rows, r)
    v1 = rows @ (1 / (fixed.eigenvalues_ + true_s2))
    assert fixed.alpha2_ == pytest.approx(np.mean(r**2 / v1), rel=1e-12)


def test_separate_scales_for_energies_and_forces():
    """Two observables with different true (α², ς²): each gets its own pair, and each predicted
    variance matches its truth (α² and ς² alone are partly degenerate; the variance is what counts)."""
    rng = np.random.default_rng(12)
    d = 8
    scale = np.geomspace(1e-2, 10, d)
    F = rng.normal(size=(100, d)) * scale
    L = LLPR(energy_convention="total").fit(F.T @ F, 100)
    lam = L.eigenvalues_
    truth = {0: (0.5, 0.05 * lam[-1]), 1: (400.0, 1e-3 * lam[-1])}
    rows = {k: L.energy_rows(rng.normal(size=(n, d)) * scale, np.ones(n)) for k, n in ((0, 400), (1, 4000))}
    v_true = {k: truth[k][0] * rows[k] @ (1 / (lam + truth[k][1])) for k in (0, 1)}
    res = {k: rng.normal(0, np.sqrt(v_true[k])) for k in (0, 1)}
    groups = np.r_[np.zeros(400, int), np.ones(4000, int)]
    L.calibrate(np.vstack([rows[0], rows[1]]), np.r_[res[0], res[1]], target="both", groups=groups)
    v_fit = {0: L.alpha2_ * rows[0] @ (1 / (lam + L.sigma2_)),
             1: L.force_alpha2_ * rows[1] @ (1 / (lam + L.force_sigma2_))}
    for k in (0, 1):
        ratio = v_fit[k] / v_true[k]
        assert np.median(ratio) == pytest.approx(1.0, abs=0.15), (k, np.median(ratio))
        assert np.percentile(ratio, 90) / np.percentile(ratio, 10) < 1.5
    assert L.force_alpha2_ / L.alpha2_ > 50  # the scales really are separate
    # a single pair fitted on both cannot match both (what the groups are for)
    one = LLPR(energy_convention="total").fit(F.T @ F, 100)
    one.calibrate(np.vstack([rows[0], rows[1]]), np.r_[res[0], res[1]])
    assert np.median(one.alpha2_ * rows[0] @ (1 / (lam + one.sigma2_)) / v_true[0]) > 5
    # the force NLL uses (α²_F, ς²_F)
    np.testing.assert_allclose(L.nll(rows[1], res[1], observable="forces"),
                               np.mean(0.5 * np.log(2 * np.pi * v_fit[1]) + 0.5 * res[1] ** 2 / v_fit[1]))


def test_singular_hessian_is_regularised_not_fatal():
    rng = np.random.default_rng(3)
    F = rng.normal(size=(3, 20))  # fewer structures than features
    L = LLPR().fit(F.T @ F, 3)
    assert L.rank_ == 3
    assert L.sigma2_ > 0 and "rank 3/20" in L.regularisation_note_
    sig = L.energy_sigma(rng.normal(size=(5, 20)), np.full(5, 4))
    assert np.all(np.isfinite(sig)) and np.all(sig > 0)
    L0 = LLPR().fit(np.zeros((5, 5)))
    assert np.all(np.isfinite(L0.energy_sigma(np.ones((2, 5)), [1, 1])))


def test_streaming_accumulator_equals_batch_sum():
    import torch

    rng = np.random.default_rng(4)
    F = rng.normal(size=(37, 8))
    acc = HessianAccumulator(8)
    for i in range(0, 37, 5):
        acc.update(torch.tensor(F[i:i + 5], dtype=torch.float32))
    np.testing.assert_allclose(acc.hessian(), F.astype(np.float32).astype(float).T @ F.astype(np.float32), rtol=1e-12)
    assert acc.n_structures == 37


def test_accumulate_matches_features(chgnet, prototypes):
    res = accumulate_hessian(chgnet, prototypes, batch_size=5, progress=False)
    F = chgnet.features(prototypes)
    np.testing.assert_allclose(res.hessian, F.T @ F, rtol=1e-6, atol=1e-9)
    assert res.n_structures == len(prototypes)


def test_feature_gradients_vs_finite_differences(chgnet):
    atoms = rattled_si(seed=5)  # 2 atoms
    J = feature_gradients(chgnet, [atoms], np.eye(64))[0]  # (64, 2, 3)
    h = 1e-3
    for a in range(2):
        for x in range(3):
            p, m = atoms.copy(), atoms.copy()
            p.positions[a, x] += h
            m.positions[a, x] -= h
            fd = (chgnet.features([p])[0] - chgnet.features([m])[0]) / (2 * h)
            np.testing.assert_allclose(J[:, a, x], fd, atol=2e-3 + 0.02 * np.abs(fd).max())


def test_feature_gradients_mechanisms_agree(chgnet, prototypes):
    U = np.random.default_rng(6).normal(size=(5, 64))
    a = feature_gradients(chgnet, prototypes[:3], U, mechanism="loop")
    b = feature_gradients(chgnet, prototypes[:3], U, mechanism="batched")
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)


def test_exact_force_variance_vs_brute_force(chgnet, small_llpr, prototypes):
    """Batched eigen-direction passes vs per-structure, per-feature Jacobians and an explicit inverse."""
    structs = [rattled_si(seed=1), prototypes[0], rattled_si(2, seed=2)]  # 2, 8-12 and 4 atoms in one batch
    got = force_variance(chgnet, structs, small_llpr, mode="exact", batch_size=3)
    Sig = np.linalg.inv(small_llpr.hessian_ + small_llpr.sigma2_ * np.eye(64))
    for atoms, var in zip(structs, got):
        J = feature_gradients(chgnet, [atoms], np.eye(64))[0].reshape(64, -1)
        want = small_llpr.alpha2_ * len(atoms) ** 2 * np.einsum("da,de,ea->a", J, Sig, J)
        # CHGNet runs in float32 and cond(H + ς²I) ~ 1e6 here: float32 rounding of the gradients,
        # amplified by Σ, allows ~1e-4 relative differences; a wrong formula is off by O(1)
        np.testing.assert_allclose(var.reshape(-1), want, rtol=2e-3, atol=1e-9 * want.max())


@pytest.mark.slow
def test_approx_force_variance_error_is_measured(chgnet, small_llpr, prototypes):
    """Truncation chosen on one set, error measured on another (same chemistries, other perturbations,
    as when the calibration set is the user's chemistry); full coverage is exact."""
    from calib.data.prototypes import perturbed_set

    L = small_llpr
    probe = perturbed_set(n_variants=1, rattle=0.05, seed=11)
    grads = feature_gradients(chgnet, probe, L.eigenvectors_.T)
    L.fit_force_truncation(grads, [len(a) for a in probe], coverage=0.95)
    test = prototypes[1::3]
    exact = np.sqrt(np.concatenate([v.ravel() for v in force_variance(chgnet, test, L, mode="exact")]))
    approx = np.sqrt(np.concatenate([v.ravel() for v in force_variance(chgnet, test, L, mode="approx")]))
    rel = np.abs(approx - exact) / exact
    assert len(L.force_directions_) < 64
    assert np.median(rel) < 0.10, (np.median(rel), len(L.force_directions_))
    L.fit_force_truncation(grads, [len(a) for a in probe], coverage=1.0 + 1e-12)
    full = np.sqrt(np.concatenate([v.ravel() for v in force_variance(chgnet, test[:2], L, mode="approx")]))
    np.testing.assert_allclose(full, exact[: len(full)], rtol=1e-6)


def test_force_rows_in_hessian(chgnet, prototypes):
    structs = [rattled_si(seed=3), rattled_si(2, seed=4)]  # 2 and 4 atoms in one batch
    e_only = accumulate_hessian(chgnet, structs, batch_size=3, progress=False).hessian
    with_f = accumulate_hessian(chgnet, structs, batch_size=3, force_weight=0.5, progress=False).hessian
    extra = np.zeros((64, 64))
    for atoms in structs:
        J = feature_gradients(chgnet, [atoms], np.eye(64))[0].reshape(64, -1)
        extra += 0.5 * len(atoms) ** 2 / J.shape[1] * J @ J.T
    # float32 features: the difference of two Hessians keeps ~1e-6 of the largest entry; a wrong weight
    # (s², 1/3N, force_weight) is off by a factor of 2 or more
    np.testing.assert_allclose(with_f - e_only, extra, rtol=1e-5, atol=1e-5 * np.abs(extra).max())


def test_checkpoint_resume_is_bitwise_identical(chgnet, tmp_path):
    from calib.data.prototypes import perturbed_set
    from calib.uq.hessian import Interrupted

    structs = perturbed_set(n_variants=1, seed=9)[:10]
    full = accumulate_hessian(chgnet, structs, batch_size=2, progress=False).hessian
    ck = tmp_path / "ck.nc"
    with pytest.raises(Interrupted):
        accumulate_hessian(chgnet, structs, batch_size=2, checkpoint=ck, checkpoint_every=1, stop_after=3,
                           progress=False)
    assert HessianAccumulator.load(ck)[0].n_batches == 3
    resumed = accumulate_hessian(chgnet, structs, batch_size=2, checkpoint=ck, checkpoint_every=1, progress=False)
    assert np.array_equal(resumed.hessian, full)
    assert resumed.n_structures == 10
    with pytest.raises(ValueError, match="input structures differ"):
        accumulate_hessian(chgnet, structs[:8], batch_size=2, checkpoint=ck, progress=False)


def test_local_energy_sigma_against_brute_force(chgnet, prototypes, small_llpr):
    """Per-atom σ = sqrt(α² φ_aᵀ (H + ς² I)⁻¹ φ_a) by an explicit inverse; and the per-atom features pool
    to the structure's: α² (Σ_a φ_a)ᵀ Σ (Σ_a φ_a) is the total-energy variance."""
    L = small_llpr
    pred = chgnet.predict(prototypes[:4], forces=False)
    local = L.local_energy_sigma(pred.atom_descriptors)
    cov = np.linalg.inv(L.hessian_ + L.sigma2_ * np.eye(L.n_features))
    phi = pred.atom_descriptors
    np.testing.assert_allclose(local, np.sqrt(L.alpha2_ * np.einsum("ad,de,ae->a", phi, cov, phi)), rtol=1e-6)
    summed = np.stack([phi[pred.atom_structure == i].sum(axis=0) for i in range(4)])
    np.testing.assert_allclose(L.energy_sigma(pred.features, pred.n_atoms),
                               np.sqrt(L.alpha2_ * np.einsum("sd,de,se->s", summed, cov, summed)), rtol=1e-6)


def test_fit_residuals_against_brute_force():
    """LLPR.fit_residuals fits both observables from arrays: its σ are α² fᵀ(H + ς²I)⁻¹f by an explicit
    inverse, its NLLs scipy's normal log-density, and a force component with σ = 0 by symmetry is left out."""
    from scipy.stats import norm, spearmanr

    rng = np.random.default_rng(5)
    d, S = 6, 40
    F = rng.normal(size=(200, d))
    L = LLPR(energy_convention="per_atom").fit(F.T @ F, 200)
    feats, n = rng.normal(size=(S, d)), rng.integers(2, 5, S)
    grads = [rng.normal(size=(d, k, 3)) for k in n]
    grads[0][:, 0, 2] = 0.0  # one component no eigen-direction moves: σ = 0
    e_res = rng.normal(0, 0.05, S) * n
    e_res[3] = np.nan  # left out of the energy fit
    f_res = rng.normal(0, 0.1, (int(n.sum()), 3))
    fit = L.fit_residuals(features=feats, n_atoms=n, energy_residuals=e_res, gradients=grads, force_n_atoms=n,
                          force_residuals=f_res, target="both", approx_coverage=0.9)
    inv_e = np.linalg.inv(L.hessian_ + L.sigma2_ * np.eye(d))
    sig_e = np.sqrt(L.alpha2_ * np.einsum("sd,de,se->s", n[:, None] * feats, inv_e, n[:, None] * feats))
    np.testing.assert_allclose(fit.energy_sigma, sig_e, rtol=1e-10)
    ok = np.isfinite(e_res)
    assert fit.energy_excluded == 1
    assert fit.energy_nll == pytest.approx(np.mean(-norm.logpdf(e_res[ok], scale=sig_e[ok])), rel=1e-10)
    assert fit.energy_spearman == pytest.approx(spearmanr(sig_e[ok], np.abs(e_res[ok])).statistic)
    inv_f = np.linalg.inv(L.hessian_ + L.force_sigma2_ * np.eye(d))
    U = L.eigenvectors_  # the gradients are along u_k: g_k = u_kᵀ ∂f/∂r, so ∂f/∂r = U g
    J = np.concatenate([(U @ (k * g).reshape(d, -1)).T for g, k in zip(grads, n)])  # rows s ∂f/∂r_ax
    sig_f = np.sqrt(L.force_alpha2_ * np.einsum("pd,de,pe->p", J, inv_f, J))
    np.testing.assert_allclose(fit.force_sigma, sig_f, rtol=1e-10, atol=1e-300)
    live = sig_f > 0
    assert fit.force_components_zero_sigma == 1 and not fit.force_live[2]
    r = f_res.ravel()
    assert fit.force_nll == pytest.approx(np.mean(-norm.logpdf(r[live], scale=sig_f[live])), rel=1e-10)
    assert fit.force_mae == pytest.approx(np.mean(np.abs(r)))
    assert 1 <= fit.approx_force_directions <= d
    with pytest.raises(ValueError, match="needs the residuals"):
        L.fit_residuals(features=feats, n_atoms=n, energy_residuals=e_res, target="both")
