"""``calib demo``: the whole LLPR path on the embedded default model and the shipped data.

1. H from the near-equilibrium set (the shipped equilibrium proxy when present,
   else the built-in perturbed prototypes of :mod:`calib.data.prototypes`);
2. α², ς² and the element reference from the even-numbered frames of each of the
   14 first chemistries of the shipped GPAW high-energy states (the shipped default
   artifact is calibrated on all of them);
3. energies with σ, and force σ, on the odd-numbered frames, next to their
   real DFT errors.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable

import numpy as np


def split_by_chemsys(structures, every: int = 2):
    """Alternate frames within each chemistry: (calibration, test) lists."""
    from calib.data.structures import group_by_chemsys

    cal, test = [], []
    for idx in group_by_chemsys(structures).values():
        for k, i in enumerate(idx):
            (cal if k % every == 0 else test).append(structures[i])
    return cal, test


#: demo wall seconds ÷ seconds of one probe forward batch (16 proxy structures), measured on the
#: 2-core development machine with 1 and 2 torch threads (docs/scaling.md); scales the up-front estimate
SECONDS_PER_PROBE = {1: 275.0, 2: 350.0}


def _probe(model, structures) -> float:
    """Seconds of one forward batch of 16 structures (after a warm-up batch)."""
    model.forward_batch(structures[:16], forces=False, stress=False)
    t0 = time.perf_counter()
    model.forward_batch(structures[16:32], forces=False, stress=False)
    return time.perf_counter() - t0


def run_demo(out, device: str = "cpu", progress: bool = True, echo: Callable | None = print,
             target: str = "energy", model="chgnet") -> dict:
    from calib.data import datasets
    from calib.data.prototypes import perturbed_set
    from calib.data.records import to_records
    from calib.models import load_model
    from calib.predictor import CalibratedPredictor
    from calib.workflows.calibration import calibrate
    from calib.workflows.hessian import build_hessian
    from calib.workflows.labelled import predict_labelled

    say = echo or (lambda *a, **k: None)
    os.makedirs(out, exist_ok=True)
    model = load_model(model, device=device)
    label = f"{model.name} {model.version}"
    available = datasets.names()
    if "equilibrium-proxy" in available:
        h_structs, h_source = datasets.load("equilibrium-proxy"), "shipped equilibrium proxy"
    else:
        h_structs, h_source = perturbed_set(n_variants=4, seed=0), "built-in perturbed prototypes"
    import torch

    t_start = time.perf_counter()
    threads = torch.get_num_threads()
    probe = _probe(model, h_structs)
    estimate = SECONDS_PER_PROBE[1 if threads == 1 else 2] * probe
    say(f"model: {label} ({model.n_features} last-layer features), device {device}, "
        f"{threads} torch thread(s)")
    say(f"plan: (1) LLPR Hessian over {len(h_structs)} structures ({h_source}); (2) calibrate on every other "
        "GPAW-labelled high-energy structure of 14 chemistries (energies, forces, conformal, Q residual); "
        f"(3) predict the other half with force σ and compare with DFT. Roughly {estimate / 60:.1f} min here "
        f"(from a timed batch of 16: {probe:.2f} s).")
    art, issues = build_hessian(model, h_structs, progress=progress, source=h_source)
    L = art.llpr
    say(f"H from {L.n_structures_} structures ({h_source}): rank {L.rank_}/{L.n_features} (feature directions "
        "these structures span, eigenvalues above 1e-6 of the largest; σ grows along the others)")
    result: dict = {"model": art.model_info, "hessian_source": h_source, "hessian_structures": L.n_structures_,
                    "rank": L.rank_}
    if "high-energy-states" not in available:
        say("no shipped labels found: σ below are uncalibrated (alpha2 = 1, default sigma2)")
        ds = CalibratedPredictor(model, art, require_calibrated=False).predict(h_structs[::4], progress=progress)
        records = to_records(ds)
        result.update(calibrated=False, records=records)
        _table(say, records, forces=False)
        return result

    # the 14 chemistries of the first release (140 frames): the demo stays within ~2 minutes as the shipped data
    # grow; the artifact calib ships (datasets/default-calibration) is calibrated on all of them
    from calib.data.prototypes import first_release

    labelled = first_release(datasets.load("high-energy-states"))
    cal, test = split_by_chemsys(labelled)
    # the intervals and the verdict come from the error models, which need no feature gradients: the LLPR fit
    # of the forces (target "both") is what costs minutes, so the demo fits the energies' (docs/errormodel.md)
    res = calibrate(art, model, cal, target=target, with_forces=target != "energy", progress=progress)
    art = res.artifact
    s = res.summary
    say(f"calibrated on {s.n_structures} GPAW-labelled high-energy structures ({target}): "
        f"energies alpha2 = {s.alpha2:.3g}, sigma2 = {s.sigma2:.3g}; "
        f"forces alpha2 = {s.force_alpha2 or s.alpha2:.3g}, sigma2 = {s.force_sigma2 or s.sigma2:.3g}")
    art.save(os.path.join(out, "calibration.nc"))

    # force σ from the force error model (docs/errormodel.md): no feature gradients at prediction
    lp = predict_labelled(CalibratedPredictor(model, art), test, forces=True, force_mode="none",
                          progress=progress)
    ok = lp.ok
    records = to_records(ok)
    owner = ok["structure_index"].values
    for k, r in enumerate(records):
        err = lp.energy_errors[k] - r["energy_shift"]
        r["energy_error"] = float(err)
        r["energy_z"] = float(err / r["energy_sigma"]) if r["energy_sigma"] > 0 else float("inf")
        r["max_force_error"] = float(np.abs(lp.force_errors[owner == r["index"]]).max())
    _table(say, records, forces=True)
    z = np.array([r["energy_z"] for r in records])
    cover = {k: float(np.mean(np.abs(z) <= k)) for k in (1, 2, 3)}
    say(f"\nheld-out energies within 1σ / 2σ / 3σ: {cover[1]:.0%} / {cover[2]:.0%} / {cover[3]:.0%} "
        f"(Gaussian: 68% / 95% / 99.7%) over {len(z)} structures")
    # conformal intervals at the calibrated α: energies (reference-code total energy) and force components
    alpha = ok.attrs.get("alpha")
    e_ref = lp.energy_errors + ok["energy"].values
    has = np.isfinite(ok["energy_low"].values)
    e_cov = float(np.mean((ok["energy_low"].values[has] <= e_ref[has]) & (e_ref[has] <= ok["energy_high"].values[has])))
    f_ref = lp.force_errors + ok["forces"].values
    f_cov = float(np.mean((ok["forces_low"].values <= f_ref) & (f_ref <= ok["forces_high"].values)))
    say(f"held-out conformal coverage at α = {alpha} (nominal {1 - alpha:.0%}): energies {e_cov:.0%} "
        f"({int(has.sum())} structures, {int((~has).sum())} without an interval), force components {f_cov:.0%} "
        f"({f_ref.size})")
    cal_path = os.path.join(out, "calibration.nc")
    wall = time.perf_counter() - t_start
    say(f"\nsummary: {label} calibrated on {s.n_structures} GPAW-labelled structures "
        f"({len(set(a.info.get('chemsys', '') for a in cal)) or 'several'} chemistries) in {wall / 60:.1f} min; "
        f"held-out conformal coverage {e_cov:.0%} (energies) and {f_cov:.0%} (force components) at nominal "
        f"{1 - alpha:.0%}.\nartifact: {cal_path}\nnext: calib predict YOUR.extxyz --calibration {cal_path} "
        f"--forces | calib screen CANDIDATES.extxyz --calibration {cal_path} -o screen.nc")
    result.update(seconds=wall, threads=threads, probe_seconds=probe, estimated_seconds=estimate)
    result.update(calibrated=True, calibration=s.as_dict(), records=records, heldout_coverage=cover,
                  heldout_interval_coverage={"alpha": alpha, "energy": e_cov, "forces": f_cov},
                  skipped=[i.as_dict() for i in lp.issues])
    with open(os.path.join(out, "records.json"), "w") as fh:
        json.dump(records, fh, indent=1)
    return result


def _table(say, records, forces: bool) -> None:
    head = f"{'name':<14} {'chemsys':<9} {'N':>3} {'E/N (eV)':>9} {'σ_E/N (meV)':>11}"
    if records and "energy_error" in records[0]:
        head += f" {'err/N (meV)':>11} {'z':>6}"
    if forces:
        head += f" {'max σ_F':>8} {'max|ΔF|':>8}"
    say(head)
    say("-" * len(head))
    for r in records:
        line = (f"{r['name'][:14]:<14} {r['chemsys'][:9]:<9} {r['n_atoms']:>3} {r['energy_per_atom']:>9.4f} "
                f"{1000 * r['energy_sigma'] / r['n_atoms']:>11.2f}")
        if "energy_error" in r:
            line += f" {1000 * r['energy_error'] / r['n_atoms']:>11.2f} {r['energy_z']:>6.2f}"
        if forces:
            line += f" {r['max_force_sigma']:>8.4f} {r.get('max_force_error', float('nan')):>8.4f}"
        say(line)
