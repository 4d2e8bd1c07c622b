"""Decisions per chemistry (accept, scale, label) from labelled and target structures, and the label
requests they write."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ase import Atoms

from calib.artifact import Artifact
from calib.models.base import ModelAdapter
from calib.predictor import CalibratedPredictor
from calib.workflows.labelled import predict_labelled
from calib.workflows.softening import _softening_run


def decide(artifact: Artifact, model: ModelAdapter, labelled: Sequence[Atoms],
           targets: Sequence[Atoms] | None = None, *, thresholds=None, force_mode: str = "approx",
           batch_size: int = 16, n_bootstrap: int = 2000, seed: int = 0,
           progress: bool = True) -> tuple[list, list]:
    """Decide per chemistry (calib.softening.decide's rules): every chemistry of ``targets`` when they are given
    (those without labelled structures are decided "label"), else every chemistry of ``labelled``. Targets
    (default: the labelled structures) are judged for calibrated uncertainty and, when given, for
    distribution shift against the labelled structures (Q residual). Returns (decisions, skipped issues)."""
    from calib.softening.decide import Thresholds, decide_chemistry, unmeasured
    from calib.uq.ood import QResidualDetector

    t = thresholds or Thresholds()
    predictor = CalibratedPredictor(model, artifact)
    use_labelled = targets is None
    lp = predict_labelled(predictor, labelled, forces=True, force_mode=force_mode if use_labelled else "none",
                          batch_size=batch_size, descriptors=True, progress=progress)
    if not lp.structures:
        from calib.errors import InputError

        raise InputError("no valid labelled structure to decide from: " + "; ".join(str(i) for i in lp.issues[:5]))
    run = _softening_run(lp, n_bootstrap=n_bootstrap, confidence=t.confidence, seed=seed)
    soft = run.results
    issues = list(lp.issues)
    lab = lp.ok
    if use_labelled:  # the labelled structures are the targets: reuse their prediction
        tds = lab
    else:
        full = predictor.predict(list(targets), forces=True, force_mode=force_mode, batch_size=batch_size,
                                 descriptors=True, progress=progress)
        from calib.data.structures import StructureIssue

        err = full["error"].values
        issues += [StructureIssue(int(full["structure"].values[k]), str(full["name"].values[k]), str(err[k]),
                                  str(full["source"].values[k]))
                   for k in np.flatnonzero(err != "")]
        tds = full.isel(structure=np.flatnonzero(err == ""))
    t_index = tds["structure"].values
    t_owner = tds["structure_index"].values
    sig2 = tds["forces_sigma"].values ** 2
    sigma_rms = np.array([np.sqrt(sig2[t_owner == i].mean()) for i in t_index])
    lab_chem_atom = dict(zip(lab["structure"].values.tolist(), lab["chemsys"].values.tolist()))
    lab_atom_chem = np.array([lab_chem_atom[int(i)] for i in lab["structure_index"].values])
    decisions = []
    chems = set(tds["chemsys"].values.tolist())  # with targets: the chemistries the user wants to simulate
    if use_labelled:
        chems |= set(soft) | set(run.failures)
    for chem in sorted(chems):
        rows = np.flatnonzero(tds["chemsys"].values == chem)
        if chem not in soft:  # not measurable: label, with requests among its targets
            why = (f"softening not measured: {run.failures[chem]['reason']}" if chem in run.failures
                   else "no labelled structure of this chemistry: the model's error here is unknown")
            decisions.append(unmeasured(
                chem, why, t, n_structures=run.failures.get(chem, {}).get("n_structures", 0),
                target_features=tds["features"].values[rows] if len(rows) else None,
                target_sigma_rms=sigma_rms[rows], target_indices=[int(t_index[r]) for r in rows]))
            continue
        s = soft[chem]
        lab_atoms = lab_atom_chem == chem
        ood = None  # the labelled structures are in their own distribution: test only real targets
        if not use_labelled and len(rows) and lab_atoms.sum() >= 3:
            det = QResidualDetector().fit(lab["atom_descriptors"].values[lab_atoms])
            local = {int(t_index[r]): k for k, r in enumerate(rows)}
            atom_mask = np.isin(t_owner, t_index[rows])
            owners = np.array([local[int(o)] for o in t_owner[atom_mask]])
            ood = det.structure_scores(tds["atom_descriptors"].values[atom_mask], owners, len(rows))
        decisions.append(decide_chemistry(
            s, t, target_features=tds["features"].values[rows] if len(rows) else None,
            target_sigma_rms=sigma_rms[rows] if len(rows) else None, target_ood=ood,
            target_indices=[int(t_index[r]) for r in rows]))
    return decisions, issues


def decision_corrections(decisions):
    """The :class:`~calib.softening.correction.ScalarCorrection` of the chemistries decided "scale"."""
    from calib.softening.correction import ScalarCorrection

    scaled = [d for d in decisions if d.decision == "scale"]
    return ScalarCorrection.from_results({d.chemsys: d.softening for d in scaled})


def write_requests(pool: Sequence[Atoms], indices: Sequence[int], path) -> int:
    """Write the requested structures (labels stripped, ``info["calib_request_index"]`` = position in
    ``pool``) to an extxyz file; returns how many."""
    import ase.io

    reqs = []
    for i in indices:
        a = pool[i].copy()
        a.calc = None
        a.info["calib_request_index"] = int(i)
        reqs.append(a)
    ase.io.write(path, reqs, format="extxyz")
    return len(reqs)
