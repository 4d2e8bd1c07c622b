import os

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

# property tests: the same examples on every CI run (CI=1 in .ci/run), new random ones on a developer's machine
from hypothesis import settings  # noqa: E402

settings.register_profile("ci", derandomize=True)
settings.load_profile("ci" if os.environ.get("CI") else "default")


@pytest.fixture(scope="session")
def chgnet():
    from calib.models.chgnet import CHGNetAdapter

    return CHGNetAdapter(device="cpu")


@pytest.fixture(scope="session")
def prototypes():
    """One rattled copy of every built-in prototype (8-12 atoms)."""
    from calib.data.prototypes import perturbed_set

    return perturbed_set(n_variants=1, rattle=0.05, strain=0.02, seed=7)


@pytest.fixture(scope="session")
def small_llpr(chgnet, prototypes):
    """LLPR fitted on near-equilibrium variants (seeded, independent of `prototypes`)."""
    from calib.data.prototypes import perturbed_set
    from calib.uq.llpr import LLPR
    from calib.workflows.accumulate import accumulate_hessian

    res = accumulate_hessian(chgnet, perturbed_set(n_variants=2, seed=3), batch_size=8, progress=False)
    llpr = LLPR(energy_convention="per_atom").fit(res.hessian, res.n_structures)
    llpr.alpha2_ = llpr.force_alpha2_ = 1e-4
    llpr.sigma2_ = llpr.force_sigma2_ = 1e-6 * llpr.eigenvalues_[-1]
    return llpr


def rattled_si(n_cells=1, seed=0, amp=0.08):
    from ase.build import bulk

    atoms = bulk("Si", "diamond", 5.43) * (n_cells, 1, 1)
    rng = np.random.default_rng(seed)
    atoms.positions += rng.normal(0, amp, atoms.positions.shape)
    return atoms


@pytest.fixture(scope="session")
def si_lif_calibration(chgnet):
    """(Hessian artifact before, calibration result): H from near-equilibrium prototypes, calibrated with
    α = 0.2 and element classes on every other shipped Si and LiF high-energy state (shared, since the
    force gradients of a calibration are the costly part of several test modules)."""
    from calib import datasets
    from calib.data.prototypes import perturbed_set
    from calib.workflows.calibration import calibrate
    from calib.workflows.hessian import build_hessian

    hess, _ = build_hessian(chgnet, perturbed_set(n_variants=1, seed=4), progress=False)
    lab = [a for c in ("Si", "Li-F") for a in datasets.load("high-energy-states", chemsys=c)[::2]]
    before = hess.to_dataset()
    res = calibrate(hess, chgnet, lab, alpha=0.2, classes="element", min_class_size=20, progress=False)
    return hess, before, res


def expected_decision(record: dict, force_tol: float = 0.1, min_labels: int = 3, max_untrusted: float = 0.1) -> str:
    """The decision the documented rules (calib.softening.decide, docs/decisions.md) give for one chemistry's
    measured numbers, restated here from those numbers alone: a check that calib applied its rules to what it
    measured, not that its answer is one of three words."""
    if record.get("softening_scale") is None or record["n_structures"] < min_labels:
        return "label"
    lo, hi = record["softening_ci"]
    untrusted = record.get("fraction_untrusted") or 0.0
    ood = record.get("fraction_out_of_distribution") or 0.0
    if lo <= 1.0 <= hi:
        return "accept" if record["mae"] <= force_tol and untrusted <= max_untrusted else "label"
    loo = record["cmae_loo"] if record.get("cmae_loo") is not None else float("inf")
    return "scale" if loo <= force_tol and ood <= max_untrusted else "label"
