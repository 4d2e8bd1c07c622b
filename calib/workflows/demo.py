"""The recipe of ``calib demo``: the whole LLPR path on the embedded default model and the shipped data.

1. H from the near-equilibrium set (the shipped equilibrium proxy when present,
   else the built-in perturbed prototypes of :mod:`calib.data.prototypes`);
2. α², ς² and the element reference from the even-numbered frames of each of the
   14 first chemistries of the shipped GPAW high-energy states (the shipped default
   artifact is calibrated on all of them);
3. energies with σ, and force σ, on the odd-numbered frames, next to their
   real DFT errors.

:func:`run_demo` returns a :class:`DemoRun`; ``calib demo`` prints its ``as_dict()`` under ``--json`` and its
table (:func:`calib.cli.report.demo`) otherwise.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

#: demo wall seconds ÷ seconds of one probe forward batch (16 proxy structures), measured on the
#: 2-core development machine with 1 and 2 torch threads (docs/scaling.md); scales the up-front estimate
SECONDS_PER_PROBE = {1: 275.0, 2: 350.0}


def split_by_chemsys(structures, every: int = 2):
    """Alternate frames within each chemistry: (calibration, test) lists."""
    from calib.data.structures import group_by_chemsys

    cal, test = [], []
    for idx in group_by_chemsys(structures).values():
        for k, i in enumerate(idx):
            (cal if k % every == 0 else test).append(structures[i])
    return cal, test


@dataclass
class Heldout:
    """The calibrated predictor on the test half of the labels: records with their DFT errors (eV, eV/Å), the
    fraction of energies within 1, 2 and 3 σ, and the conformal coverage of energies and force components at α."""

    records: list
    coverage: dict
    alpha: float
    energy_coverage: float
    force_coverage: float
    n_with_interval: int
    n_without_interval: int
    n_force_components: int
    skipped: list = field(default_factory=list)


@dataclass
class DemoRun:
    """What the demo measured: the Hessian's source and rank, and either the held-out checks of its calibration
    (``heldout``, with the calibration summary and the artifact's path) or, without shipped labels, the
    uncalibrated records of a sample of the Hessian's structures. Times in seconds."""

    model_info: dict
    model_label: str
    hessian_source: str
    hessian_structures: int
    rank: int
    records: list
    summary: object = None
    heldout: Heldout | None = None
    artifact_path: str = ""
    n_chemistries: int | str = "several"
    seconds: float = 0.0
    threads: int = 1
    probe_seconds: float = 0.0
    estimated_seconds: float = 0.0

    @property
    def calibrated(self) -> bool:
        return self.heldout is not None

    def as_dict(self) -> dict:
        """The JSON document of ``calib demo --json``."""
        out = {"model": self.model_info, "hessian_source": self.hessian_source,
               "hessian_structures": self.hessian_structures, "rank": self.rank}
        if not self.calibrated:
            return {**out, "calibrated": False, "records": self.records}
        h = self.heldout
        return {**out, "seconds": self.seconds, "threads": self.threads, "probe_seconds": self.probe_seconds,
                "estimated_seconds": self.estimated_seconds, "calibrated": True,
                "calibration": self.summary.as_dict(), "records": self.records, "heldout_coverage": h.coverage,
                "heldout_interval_coverage": {"alpha": h.alpha, "energy": h.energy_coverage,
                                              "forces": h.force_coverage},
                "skipped": h.skipped}


def _probe(model, structures) -> float:
    """Seconds of one forward batch of 16 structures (after a warm-up batch)."""
    model.forward_batch(structures[:16], forces=False, stress=False)
    t0 = time.perf_counter()
    model.forward_batch(structures[16:32], forces=False, stress=False)
    return time.perf_counter() - t0


def _hessian_set(available) -> tuple[list, str]:
    """The structures H is built from, and their source in words."""
    from calib.data import datasets
    from calib.data.prototypes import perturbed_set

    if "equilibrium-proxy" in available:
        return datasets.load("equilibrium-proxy"), "shipped equilibrium proxy"
    return perturbed_set(n_variants=4, seed=0), "built-in perturbed prototypes"


def _heldout(predictor, test, progress: bool) -> Heldout:
    """The calibrated ``predictor`` on the labelled ``test`` structures, against their labels."""
    from calib.data.records import to_records
    from calib.workflows.labelled import predict_labelled

    # force σ from the force error model (docs/errormodel.md): no feature gradients at prediction
    lp = predict_labelled(predictor, test, forces=True, force_mode="none", progress=progress)
    ok = lp.ok
    records = to_records(ok)
    owner = ok["structure_index"].values
    for k, r in enumerate(records):
        err = lp.energy_errors[k] - r["energy_shift"]
        r["energy_error"] = float(err)
        r["energy_z"] = float(err / r["energy_sigma"]) if r["energy_sigma"] > 0 else float("inf")
        r["max_force_error"] = float(np.abs(lp.force_errors[owner == r["index"]]).max())
    z = np.array([r["energy_z"] for r in records])
    # conformal intervals at the calibrated α: energies (reference-code total energy) and force components
    e_ref = lp.energy_errors + ok["energy"].values
    has = np.isfinite(ok["energy_low"].values)
    e_cov = float(np.mean((ok["energy_low"].values[has] <= e_ref[has]) & (e_ref[has] <= ok["energy_high"].values[has])))
    f_ref = lp.force_errors + ok["forces"].values
    f_cov = float(np.mean((ok["forces_low"].values <= f_ref) & (f_ref <= ok["forces_high"].values)))
    return Heldout(records, {k: float(np.mean(np.abs(z) <= k)) for k in (1, 2, 3)}, ok.attrs.get("alpha"), e_cov,
                   f_cov, int(has.sum()), int((~has).sum()), int(f_ref.size), [i.as_dict() for i in lp.issues])


def run_demo(out, device: str = "cpu", progress: bool = True, log: Callable | None = print,
             target: str = "energy", model="chgnet") -> DemoRun:
    """Build H, calibrate on half of the shipped GPAW labels and check the other half (module doc); the artifact
    and the held-out records go to the folder ``out`` (``calibration.nc``, ``records.json``). ``log`` gets the
    plan and each step's result as it finishes (None: silent)."""
    import torch

    from calib.data import datasets
    from calib.data.prototypes import first_release
    from calib.models import load_model
    from calib.predictor import CalibratedPredictor
    from calib.workflows.calibration import calibrate
    from calib.workflows.hessian import build_hessian

    say = log or (lambda *a, **k: None)
    os.makedirs(out, exist_ok=True)
    model = load_model(model, device=device)
    label = f"{model.name} {model.version}"
    available = datasets.names()
    h_structs, h_source = _hessian_set(available)
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
    art, _ = build_hessian(model, h_structs, progress=progress, source=h_source)
    L = art.llpr
    say(f"H from {L.n_structures_} structures ({h_source}): rank {L.rank_}/{L.n_features} (feature directions "
        "these structures span, eigenvalues above 1e-6 of the largest; σ grows along the others)")
    run = DemoRun(art.model_info, label, h_source, L.n_structures_, L.rank_, [])
    if "high-energy-states" not in available:
        from calib.data.records import to_records

        say("no shipped labels found: σ below are uncalibrated (alpha2 = 1, default sigma2)")
        ds = CalibratedPredictor(model, art, require_calibrated=False).predict(h_structs[::4], progress=progress)
        run.records = to_records(ds)
        return run

    # the 14 chemistries of the first release (140 frames): the demo stays within ~2 minutes as the shipped data
    # grow; the artifact calib ships (datasets/default-calibration) is calibrated on all of them
    cal, test = split_by_chemsys(first_release(datasets.load("high-energy-states")))
    # the intervals and the verdict come from the error models, which need no feature gradients: the LLPR fit
    # of the forces (target "both") is what costs minutes, so the demo fits the energies' (docs/errormodel.md)
    res = calibrate(art, model, cal, target=target, with_forces=target != "energy", progress=progress)
    s = res.summary
    say(f"calibrated on {s.n_structures} GPAW-labelled high-energy structures ({target}): "
        f"energies alpha2 = {s.alpha2:.3g}, sigma2 = {s.sigma2:.3g}; "
        f"forces alpha2 = {s.force_alpha2 or s.alpha2:.3g}, sigma2 = {s.force_sigma2 or s.sigma2:.3g}")
    run.artifact_path = os.path.join(out, "calibration.nc")
    res.artifact.save(run.artifact_path)
    run.heldout = _heldout(CalibratedPredictor(model, res.artifact), test, progress)
    run.records, run.summary = run.heldout.records, s
    run.n_chemistries = len({a.info.get("chemsys", "") for a in cal}) or "several"
    run.seconds, run.threads, run.probe_seconds, run.estimated_seconds = (time.perf_counter() - t_start, threads,
                                                                          probe, estimate)
    with open(os.path.join(out, "records.json"), "w") as fh:
        json.dump(run.records, fh, indent=1)
    return run
