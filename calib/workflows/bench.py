"""The benchmarks behind ``calib bench llpr | screen | conformal | dask``: ratios measured in one run.

Every benchmark times calib against a baseline on the same structures and batch size. Baselines are CHGNet's
own public path (``CHGNet.predict_structure``) for inference, and, for force σ, the per-feature autograd loop
of MACE's LLPR branch (one backward pass per feature, per batch, then Jᵀ Σ J). Every time is the best of
``repeats`` runs; the first run of each also warms caches. Times in seconds.

The default size of each benchmark is typed once, here (:data:`LLPR`, :data:`SCREEN`, :data:`DASK`,
:data:`CONFORMAL`): the functions and the ``calib bench`` options read them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BenchSize:
    """How much one benchmark measures: ``n_structures`` (perturbed prototypes), ``batch_size`` (structures per
    model call) and ``repeats`` (each time is the best of this many runs; 1: a single timed run)."""

    n_structures: int
    batch_size: int
    repeats: int = 1


LLPR = BenchSize(n_structures=16, batch_size=8, repeats=2)
SCREEN = BenchSize(n_structures=64, batch_size=16, repeats=2)
DASK = BenchSize(n_structures=96, batch_size=8)  # one timed run on each cluster size


@dataclass(frozen=True)
class ConformalSize:
    """The conformal benchmark's size: ``n_scores`` calibration scores (and as many test predictions),
    ``n_classes`` Mondrian classes, best of ``repeats``."""

    n_scores: int
    n_classes: int
    repeats: int = 3


CONFORMAL = ConformalSize(n_scores=1_000_000, n_classes=16)


def _best(fn, repeats: int) -> tuple[float, object]:
    """(the shortest wall time of ``repeats`` calls of ``fn``, the last call's result)."""
    import torch

    best, out = float("inf"), None
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _prototypes(n: int, rattle: float = 0.05, seed: int = 2) -> list:
    """``n`` perturbed prototype crystals (as many variants of each prototype as it takes)."""
    from calib.data.prototypes import PROTOTYPES, perturbed_set

    return perturbed_set(n_variants=max(1, -(-n // len(PROTOTYPES))), rattle=rattle, seed=seed)[:n]


# --------------------------------------------------------------------------- LLPR


def mace_style_force_variance(model, structures, llpr, batch_size: int) -> list[np.ndarray]:
    """Reference mechanism: J = ∂f/∂r by one backward pass per *feature*, then diag(Jᵀ Σ J)·α² s² (eV²/Å²)."""
    import torch

    from calib.models.base import batches

    Sigma = torch.as_tensor(llpr.covariance(), dtype=torch.float64)
    out = []
    for idx in batches(len(structures), batch_size):
        batch = [structures[i] for i in idx]
        fg = model.feature_graph(batch)
        d = fg.features.shape[1]
        rows = []
        for k in range(d):
            g = torch.autograd.grad(fg.features[:, k].sum(), fg.positions, retain_graph=k < d - 1,
                                    allow_unused=True)
            g = [torch.zeros_like(p) if gi is None else gi for gi, p in zip(g, fg.positions)]
            if len(g) == 1 and len(batch) > 1:  # one positions tensor for the batch (generic adapter)
                g = list(torch.split(g[0], fg.n_atoms.tolist()))
            rows.append(g)
        for i, atoms in enumerate(batch):
            J = torch.stack([rows[k][i] for k in range(d)]).reshape(d, -1).to(torch.float64).cpu()
            s = float(len(atoms)) if llpr.energy_convention == "per_atom" else 1.0
            var = llpr.force_alpha2_ * s**2 * torch.einsum("da,de,ea->a", J, Sigma, J)
            out.append(var.reshape(-1, 3).numpy())
    return out


def _fitted_llpr(model, hessian, batch_size: int):
    """The LLPR posterior of ``hessian``, its force truncation measured on a separate probe set (never on the
    benchmark structures)."""
    from calib.data.prototypes import perturbed_set
    from calib.models.gradients import feature_gradients
    from calib.uq.llpr import LLPR

    llpr = LLPR(energy_convention=model.energy_convention).fit(hessian.hessian, hessian.n_structures)
    probe = perturbed_set(n_variants=1, rattle=0.05, seed=1)
    grads = []
    U = llpr.eigenvectors_.T
    for i in range(0, len(probe), batch_size):
        grads.extend(feature_gradients(model, probe[i:i + batch_size], U))
    llpr.fit_force_truncation(grads, [len(a) for a in probe])
    return llpr


def _time_inference(model, structs, batch_size: int, repeats: int) -> tuple[dict, object]:
    """Seconds of CHGNet's own energies and energies + forces, and of calib's Hessian accumulation (its result)."""
    from pymatgen.io.ase import AseAtomsAdaptor

    from calib.workflows.accumulate import accumulate_hessian

    pmg = [AseAtomsAdaptor.get_structure(a) for a in structs]
    chg = model.model
    t_e, _ = _best(lambda: chg.predict_structure(pmg, task="e", batch_size=batch_size), repeats)
    t_ef, _ = _best(lambda: chg.predict_structure(pmg, task="ef", batch_size=batch_size), repeats)
    t_acc, res = _best(lambda: accumulate_hessian(model, structs, batch_size=batch_size, progress=False), repeats)
    return {"plain_energy": t_e, "plain_energy_forces": t_ef, "accumulate": t_acc}, res


def _time_sigma(model, structs, llpr, batch_size: int, repeats: int) -> tuple[dict, dict]:
    """Seconds of calib's energies, energy σ and force σ (exact, batched VJP, approximate, and the MACE-style
    loop), and the force σ (eV/Å, flattened) of each force mechanism."""
    from calib.models.gradients import force_variance

    def energy_sigma():
        pred = model.predict(structs, forces=False, batch_size=batch_size)
        return llpr.energy_sigma(pred.features, pred.n_atoms)

    def force_sigma(mode, mechanism="loop"):
        return lambda: force_variance(model, structs, llpr, mode=mode, batch_size=batch_size, mechanism=mechanism)

    times, var = {}, {}
    times["calib_energy"], _ = _best(lambda: model.predict(structs, forces=False, batch_size=batch_size), repeats)
    times["energy_sigma"], _ = _best(energy_sigma, repeats)
    times["exact"], var["exact"] = _best(force_sigma("exact"), repeats)
    times["batched"], var["batched"] = _best(force_sigma("exact", "batched"), repeats)
    times["loop"], var["loop"] = _best(lambda: mace_style_force_variance(model, structs, llpr, batch_size), repeats)
    times["approx"], var["approx"] = _best(force_sigma("approx"), repeats)
    return times, {k: np.sqrt(np.concatenate([x.ravel() for x in v])) for k, v in var.items()}


def bench_llpr(device: str = "cpu", n_structures: int = LLPR.n_structures, batch_size: int = LLPR.batch_size,
               repeats: int = LLPR.repeats, progress: bool = False) -> dict:
    """Cost ratios of LLPR accumulation and σ against plain CHGNet inference, and the agreement of the force-σ
    mechanisms (relative differences), on ``n_structures`` perturbed prototypes."""
    from calib.models.chgnet import CHGNetAdapter

    model = CHGNetAdapter(device=device)
    structs = _prototypes(n_structures)
    plain, res = _time_inference(model, structs, batch_size, repeats)
    llpr = _fitted_llpr(model, res, batch_size)
    t, sig = _time_sigma(model, structs, llpr, batch_size, repeats)
    t_e, t_ef = plain["plain_energy"], plain["plain_energy_forces"]
    ex, lp = sig["exact"], sig["loop"]
    mask = ex > 1e-12 * ex.max()
    return {
        "device": str(model.device),
        "n_structures": len(structs),
        "batch_size": batch_size,
        "n_features": model.n_features,
        # throughput ratios against CHGNet's public predict_structure(task="e")
        "accumulate_vs_inference": t_e / plain["accumulate"],
        "energy_sigma_time_vs_chgnet_energy": t["energy_sigma"] / t_e,
        # the same against calib's own energy-only forward (validation, graphs, no_grad): the cost of σ itself
        "accumulate_vs_calib_inference": t["calib_energy"] / plain["accumulate"],
        "energy_sigma_overhead": t["energy_sigma"] / t["calib_energy"] - 1.0,
        "exact_force_sigma_time_vs_loop": t["exact"] / t["loop"],
        "exact_force_sigma_cost_vs_forces": t["exact"] / t_ef,
        "batched_vjp_time_vs_loop": t["batched"] / t["loop"],
        "exact_vs_loop_max_rel_diff": float(np.max(np.abs(ex[mask] - lp[mask]) / lp[mask])),
        "batched_vs_loop_max_rel_diff": float(np.max(np.abs(sig["batched"][mask] - lp[mask]) / lp[mask])),
        "approx_force_sigma_rel_error": float(np.median(np.abs(sig["approx"][mask] - ex[mask]) / ex[mask])),
        "approx_force_sigma_cost_vs_forces": t["approx"] / t_ef,
        "approx_force_directions": len(llpr.force_directions_),
        "seconds_plain_energy": t_e,
        "seconds_plain_energy_forces": t_ef,
        "seconds_calib_energy": t["calib_energy"],
        "seconds_accumulate": plain["accumulate"],
        "seconds_exact_force_sigma": t["exact"],
        "seconds_mace_style_loop": t["loop"],
    }


# --------------------------------------------------------------------------- screening, conformal, dask


def _bench_artifact(model, path) -> None:
    """A small calibrated artifact for the benchmarks: H from perturbed prototypes, calibration on the
    shipped GPAW states of Si and Li-F (every other frame)."""
    from calib.data import datasets
    from calib.data.prototypes import perturbed_set
    from calib.workflows.calibration import calibrate
    from calib.workflows.hessian import build_hessian

    hess, _ = build_hessian(model, perturbed_set(n_variants=1, seed=4), progress=False)
    lab = [a for c in ("Si", "Li-F") for a in datasets.load("high-energy-states", chemsys=c)[::2]]
    calibrate(hess, model, lab, alpha=0.1, progress=False).artifact.save(path)


def bench_screen(device: str = "cpu", n_structures: int = SCREEN.n_structures, batch_size: int = SCREEN.batch_size,
                 repeats: int = SCREEN.repeats) -> dict:
    """``screen_vs_inference``: throughput of ``calib screen`` (default mode: energies, σ, intervals, Q score,
    model forces, rows written to netCDF) ÷ that of CHGNet's own batched energies + forces
    (``predict_structure(task="ef")``) on the same structures."""
    import os
    import tempfile
    import warnings

    from pymatgen.io.ase import AseAtomsAdaptor

    from calib.models.chgnet import CHGNetAdapter
    from calib.workflows.screen import screen

    model = CHGNetAdapter(device=device)
    structs = _prototypes(n_structures)
    pmg = [AseAtomsAdaptor.get_structure(a) for a in structs]
    with tempfile.TemporaryDirectory() as tmp:
        cal = os.path.join(tmp, "cal.nc")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _bench_artifact(model, cal)

        def run(forces):
            def go():
                out = os.path.join(tmp, "r.nc")
                for f in (out, out + ".resume.json"):
                    if os.path.exists(f):
                        os.remove(f)
                return screen(structs, cal, out, model=model, device=device, forces=forces,
                              batch_size=batch_size, progress=False)
            return go

        t_plain, _ = _best(lambda: model.model.predict_structure(pmg, task="ef", batch_size=batch_size), repeats)
        t_screen, summary = _best(run(False), repeats)
        t_forces, _ = _best(run(True), repeats)
    return {
        "device": str(model.device), "n_structures": len(structs), "batch_size": batch_size,
        "screen_vs_inference": t_plain / t_screen,
        "screen_with_force_sigma_vs_inference": t_plain / t_forces,
        "structures_per_second_screen": len(structs) / t_screen,
        "structures_per_second_plain_energy_forces": len(structs) / t_plain,
        "seconds_plain_energy_forces": t_plain, "seconds_screen": t_screen,
        "seconds_screen_with_force_sigma": t_forces, "n_trusted": summary["n_trusted"],
    }


def bench_conformal(n_scores: int = CONFORMAL.n_scores, n_classes: int = CONFORMAL.n_classes,
                    repeats: int = CONFORMAL.repeats, seed: int = 0) -> dict:
    """Fit + intervals of split and Mondrian (``n_classes`` bins) conformal on ``n_scores`` calibration
    scores, then intervals for as many test predictions: seconds (target ≤ 1 s each)."""
    from calib.uq.conformal import ConformalCalibrator

    rng = np.random.default_rng(seed)
    sigma = rng.lognormal(size=n_scores)
    err = sigma * rng.standard_t(5, size=n_scores)
    bins = rng.integers(0, n_classes, size=n_scores)
    pred = rng.normal(size=n_scores)

    def split():
        cal = ConformalCalibrator(0.1).fit(err, sigma)
        return cal.interval(pred, sigma)

    def mondrian():
        cal = ConformalCalibrator(0.1).fit(err, sigma, bins=bins)
        return cal.interval(pred, sigma, bins=bins)

    t_split, (lo, hi) = _best(split, repeats)
    t_mond, _ = _best(mondrian, repeats)
    return {"n_scores": n_scores, "n_classes": n_classes, "seconds_split_fit_and_intervals": t_split,
            "seconds_mondrian_fit_and_intervals": t_mond,
            "in_sample_coverage_split": float(np.mean(np.abs(err) <= (hi - lo) / 2))}


def bench_dask(n_structures: int = DASK.n_structures, batch_size: int = DASK.batch_size, device: str = "cpu") -> dict:
    """The same Hessian work on a LocalCluster of 1 and of 2 worker processes (one thread each): wall
    seconds after the workers have loaded the model, and the speed-up."""
    from calib.workflows.distributed import close_client, distributed_hessian, start_client

    structs = _prototypes(n_structures, rattle=0.03)
    out = {"n_structures": len(structs), "batch_size": batch_size, "device": device}
    H = {}
    for n in (1, 2):
        client = start_client(workers=n)
        try:
            distributed_hessian(client, "chgnet", structs[:n * batch_size], batch_size=batch_size,
                                n_shards=n, device=device, progress=False)  # every worker loads the model
            t0 = time.perf_counter()
            res = distributed_hessian(client, "chgnet", structs, batch_size=batch_size, device=device,
                                      progress=False)
            out[f"seconds_{n}_worker"] = time.perf_counter() - t0
            H[n] = res.hessian
        finally:
            close_client(client)
    out["speedup_2_vs_1"] = out["seconds_1_worker"] / out["seconds_2_worker"]
    out["max_rel_diff_H"] = float(np.abs(H[2] - H[1]).max() / np.abs(H[1]).max())
    return out
