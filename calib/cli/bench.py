"""``calib bench llpr``: cost ratios measured in one run on the same structures and batch size.

Baselines are CHGNet's own public path (``CHGNet.predict_structure``) for
inference, and, for force σ, the per-feature autograd loop of MACE's LLPR
branch (one backward pass per feature, per batch, then Jᵀ Σ J). Every time is
the best of ``repeats`` runs; the first run of each also warms caches.
"""

from __future__ import annotations

import time

import numpy as np
import torch


def _best(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best, out


def mace_style_force_variance(model, structures, llpr, batch_size: int) -> list[np.ndarray]:
    """Reference mechanism: J = ∂f/∂r by one backward pass per *feature*, then diag(Jᵀ Σ J)·α² s²."""
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


def bench_llpr(device: str = "cpu", n_structures: int = 32, batch_size: int = 8, repeats: int = 3,
               progress: bool = False) -> dict:
    from pymatgen.io.ase import AseAtomsAdaptor

    from calib.data.prototypes import PROTOTYPES, perturbed_set
    from calib.models.chgnet import CHGNetAdapter
    from calib.models.gradients import feature_gradients, force_variance
    from calib.uq.llpr import LLPR
    from calib.workflows.accumulate import accumulate_hessian

    model = CHGNetAdapter(device=device)
    n_var = max(1, -(-n_structures // len(PROTOTYPES)))
    structs = perturbed_set(n_variants=n_var, rattle=0.05, seed=2)[:n_structures]
    probe = perturbed_set(n_variants=1, rattle=0.05, seed=1)
    pmg = [AseAtomsAdaptor.get_structure(a) for a in structs]
    chg = model.model

    def plain_energy():
        return chg.predict_structure(pmg, task="e", batch_size=batch_size)

    def plain_energy_forces():
        return chg.predict_structure(pmg, task="ef", batch_size=batch_size)

    def accumulate():
        return accumulate_hessian(model, structs, batch_size=batch_size, progress=False)

    t_e, _ = _best(plain_energy, repeats)
    t_ef, _ = _best(plain_energy_forces, repeats)
    t_acc, res = _best(accumulate, repeats)

    llpr = LLPR(energy_convention=model.energy_convention).fit(res.hessian, res.n_structures)
    # truncation measured on a separate probe set, never on the benchmark structures
    grads = []
    U = llpr.eigenvectors_.T
    for i in range(0, len(probe), batch_size):
        grads.extend(feature_gradients(model, probe[i:i + batch_size], U))
    llpr.fit_force_truncation(grads, [len(a) for a in probe])

    def calib_energy():
        return model.predict(structs, forces=False, batch_size=batch_size)

    def energy_sigma():
        pred = model.predict(structs, forces=False, batch_size=batch_size)
        return llpr.energy_sigma(pred.features, pred.n_atoms)

    def force_sigma(mode, mechanism="loop"):
        return lambda: force_variance(model, structs, llpr, mode=mode, batch_size=batch_size, mechanism=mechanism)

    t_calib_e, _ = _best(calib_energy, repeats)
    t_esig, _ = _best(energy_sigma, repeats)
    t_exact, var_exact = _best(force_sigma("exact"), repeats)
    t_batched, var_batched = _best(force_sigma("exact", "batched"), repeats)
    t_loop, var_loop = _best(lambda: mace_style_force_variance(model, structs, llpr, batch_size), repeats)
    t_approx, var_approx = _best(force_sigma("approx"), repeats)

    ex = np.sqrt(np.concatenate([v.ravel() for v in var_exact]))
    ap = np.sqrt(np.concatenate([v.ravel() for v in var_approx]))
    lp = np.sqrt(np.concatenate([v.ravel() for v in var_loop]))
    bt = np.sqrt(np.concatenate([v.ravel() for v in var_batched]))
    mask = ex > 1e-12 * ex.max()
    return {
        "device": str(model.device),
        "n_structures": len(structs),
        "batch_size": batch_size,
        "n_features": model.n_features,
        # throughput ratios against CHGNet's public predict_structure(task="e")
        "accumulate_vs_inference": t_e / t_acc,
        "energy_sigma_time_vs_chgnet_energy": t_esig / t_e,
        # the same against calib's own energy-only forward (validation, graphs, no_grad): the cost of σ itself
        "accumulate_vs_calib_inference": t_calib_e / t_acc,
        "energy_sigma_overhead": t_esig / t_calib_e - 1.0,
        "exact_force_sigma_time_vs_loop": t_exact / t_loop,
        "exact_force_sigma_cost_vs_forces": t_exact / t_ef,
        "batched_vjp_time_vs_loop": t_batched / t_loop,
        "exact_vs_loop_max_rel_diff": float(np.max(np.abs(ex[mask] - lp[mask]) / lp[mask])),
        "batched_vs_loop_max_rel_diff": float(np.max(np.abs(bt[mask] - lp[mask]) / lp[mask])),
        "approx_force_sigma_rel_error": float(np.median(np.abs(ap[mask] - ex[mask]) / ex[mask])),
        "approx_force_sigma_cost_vs_forces": t_approx / t_ef,
        "approx_force_directions": int(len(llpr.force_directions_)),
        "seconds_plain_energy": t_e,
        "seconds_plain_energy_forces": t_ef,
        "seconds_calib_energy": t_calib_e,
        "seconds_accumulate": t_acc,
        "seconds_exact_force_sigma": t_exact,
        "seconds_mace_style_loop": t_loop,
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


def bench_screen(device: str = "cpu", n_structures: int = 64, batch_size: int = 16, repeats: int = 2) -> dict:
    """``screen_vs_inference``: throughput of ``calib screen`` (default mode: energies, σ, intervals, Q score,
    model forces, rows written to netCDF) ÷ that of CHGNet's own batched energies + forces
    (``predict_structure(task="ef")``) on the same structures."""
    import os
    import tempfile
    import warnings

    from pymatgen.io.ase import AseAtomsAdaptor

    from calib.data.prototypes import PROTOTYPES, perturbed_set
    from calib.models.chgnet import CHGNetAdapter
    from calib.workflows.screen import screen

    model = CHGNetAdapter(device=device)
    structs = perturbed_set(n_variants=max(1, -(-n_structures // len(PROTOTYPES))), rattle=0.05,
                            seed=2)[:n_structures]
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


def bench_conformal(n_scores: int = 1_000_000, n_classes: int = 16, repeats: int = 3, seed: int = 0) -> dict:
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


def bench_dask(n_structures: int = 96, batch_size: int = 8, device: str = "cpu") -> dict:
    """The same Hessian work on a LocalCluster of 1 and of 2 worker processes (one thread each): wall
    seconds after the workers have loaded the model, and the speed-up."""
    import time

    from calib.data.prototypes import PROTOTYPES, perturbed_set
    from calib.workflows.distributed import close_client, distributed_hessian, start_client

    structs = perturbed_set(n_variants=max(1, -(-n_structures // len(PROTOTYPES))), seed=2)[:n_structures]
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


# --------------------------------------------------------------------------- every command on the shipped data


#: the files ``bench_commands`` writes into its work folder (beside a ``.calib-bench`` marker)
BENCH_FILES = ("H.nc", "CAL.nc", "SOFT.nc", "req.extxyz", "screen.nc")


def command_lines(workdir: str) -> list[tuple[str, list[str]]]:
    """(name, argv) of every ``calib`` command on the shipped data, in an order where each finds its inputs:
    the 140 GPAW-labelled high-energy states (14 chemistries), the 2530-structure equilibrium proxy, the
    LiF vacancy-hop NEB path."""
    import glob
    import os

    from calib.data.datasets import root

    data = str(root())
    lab = sorted(glob.glob(os.path.join(data, "high-energy-states", "*.extxyz")))
    neb = os.path.join(data, "neb", "LiF-vacancy-hop.extxyz")
    w = workdir.rstrip("/")
    return [
        ("hessian", ["hessian", os.path.join(data, "equilibrium-proxy", "proxy.extxyz.gz"), "-o", f"{w}/H.nc"]),
        ("calibrate", ["calibrate", *lab, "--hessian", f"{w}/H.nc", "-o", f"{w}/CAL.nc"]),
        ("evaluate", ["evaluate", *lab, "--calibration", f"{w}/CAL.nc"]),
        ("predict", ["predict", *lab, "--calibration", f"{w}/CAL.nc"]),
        ("predict --forces", ["predict", *lab, "--calibration", f"{w}/CAL.nc", "--forces"]),
        ("softening", ["softening", *lab, "--calibration", f"{w}/CAL.nc", "-o", f"{w}/SOFT.nc"]),
        ("decide", ["decide", *lab, "--calibration", f"{w}/CAL.nc", "--request-out", f"{w}/req.extxyz"]),
        ("neb", ["neb", neb, "--calibration", f"{w}/CAL.nc", "--reference", neb]),
        ("screen", ["screen", *lab, "--calibration", f"{w}/CAL.nc", "-o", f"{w}/screen.nc", "--forces"]),
        ("eos", ["eos"]),
    ]


def bench_commands(only=None, workdir: str | None = None, progress: bool = True) -> dict:
    """Wall time (s) and peak resident memory (MB) of every command on the shipped data, each run in its own
    process (``os.wait4`` gives that process's own peak), with the threads this machine gives calib."""
    import os
    import subprocess
    import sys
    import tempfile

    from tqdm.auto import tqdm

    workdir = workdir or tempfile.mkdtemp(prefix="calib-bench-")
    lines = command_lines(workdir)
    if only:
        unknown = set(only) - {n for n, _ in lines}
        if unknown:
            from calib.errors import UsageError

            raise UsageError(f"unknown command(s) {sorted(unknown)}; choose from {[n for n, _ in lines]}")
    out = {"workdir": workdir}
    needs_cal = bool(only) and bool(set(only) - {"hessian", "eos"}) and not os.path.exists(f"{workdir}/CAL.nc")
    for name, argv in tqdm(lines, desc="commands", unit="command", disable=not progress):
        if only and name not in only and not (needs_cal and name in ("hessian", "calibrate")):
            continue  # the artifact-building steps run when a later command needs them
        cmd = [sys.executable, "-m", "calib.cli.main", *argv, "--json", "--quiet", "--overwrite"] \
            if name in ("hessian", "calibrate", "softening", "decide", "eos") else \
            [sys.executable, "-m", "calib.cli.main", *argv, "--json", "--quiet"]
        if name == "screen":
            cmd.append("--overwrite")
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        err = proc.stderr.read().decode(errors="replace")[-300:]
        proc.stderr.close()
        out[f"{name}: seconds"] = round(seconds, 1)
        out[f"{name}: peak_rss_mb"] = round(usage.ru_maxrss / 1024, 0)
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            out[f"{name}: exit_code"] = code
            out[f"{name}: stderr"] = err
    return out
