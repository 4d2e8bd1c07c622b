"""Decisions per chemistry (accept, scale, label) from labelled and target structures, and the label
requests they write."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ase import Atoms

from calib.artifact import Artifact
from calib.models.base import ModelAdapter
from calib.predictor import CalibratedPredictor
from calib.softening.decide import Action
from calib.softening.scale import SOFTENING
from calib.workflows.labelled import predict_labelled
from calib.workflows.softening import _softening_run


def decide(artifact: Artifact, model: ModelAdapter, labelled: Sequence[Atoms],
           targets: Sequence[Atoms] | None = None, *, rules=None, force_mode: str = "none",
           batch_size: int = 16, n_bootstrap: int = SOFTENING.n_bootstrap, seed: int = 0,
           progress: bool = True, policy=None) -> tuple[list, list]:
    """Decide per chemistry (calib.softening.decide's rules): every chemistry of ``targets`` when they are given
    (those without labelled structures are decided "label"), else every chemistry of ``labelled``. Targets
    (default: the labelled structures) are judged by the predictor's trust verdict and, when given, for their
    Q score against the model's domain (the artifact's one detector); ``rules`` (a calib.softening.decide.DecisionRules) sets the rules'
    tolerances, ``policy`` (a calib.uq.trust.TrustPolicy)
    sets what the targets' verdict checks. Returns (decisions, skipped issues)."""
    from calib.softening.decide import DecisionRules, decide_chemistry, unmeasured

    t = rules or DecisionRules()
    # the model's own predictions: the softening (and the correction to store) is measured on them, and the
    # verdict of the targets is that of the prediction the decision is about
    predictor = CalibratedPredictor(model, artifact, trust=policy).raw()
    use_labelled = targets is None
    lp = predict_labelled(predictor, labelled, forces=True, force_mode=force_mode if use_labelled else "none",
                          batch_size=batch_size, descriptors=True, progress=progress)
    if not lp.structures:
        from calib.errors import InputError

        raise InputError("no valid labelled structure to decide from: " + "; ".join(str(i) for i in lp.issues[:5]))
    run = _softening_run(lp, n_bootstrap=n_bootstrap, confidence=t.ci_level, seed=seed)
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
    verdict = {"target_score": tds["trust_score"].values, "target_trusted": tds["trusted"].values.astype(bool)}
    if "forces_sigma" in tds and artifact.error_models is not None:  # each target's expected force MAE, eV/Å
        owner = np.searchsorted(tds["structure"].values, tds["structure_index"].values)
        sig = tds["forces_sigma"].values.mean(axis=1)
        verdict["target_mae"] = np.sqrt(2 / np.pi) * np.bincount(owner, weights=sig, minlength=len(t_index)) / \
            np.maximum(np.bincount(owner, minlength=len(t_index)), 1)
    q = tds["domain_score"].values if "domain_score" in tds else tds["q_score"].values if "q_score" in tds else None
    decisions = []
    chems = set(tds["chemsys"].values.tolist())  # with targets: the chemistries the user wants to simulate
    if use_labelled:
        chems |= set(soft) | set(run.failures)
    for chem in sorted(chems):
        rows = np.flatnonzero(tds["chemsys"].values == chem)
        common = dict(target_features=tds["features"].values[rows] if len(rows) else None,
                      target_indices=[int(t_index[r]) for r in rows], **{k: v[rows] for k, v in verdict.items()})
        if chem not in soft:  # not measurable: label, with requests among its targets
            failed = run.failures.get(chem)
            why = (f"softening not measured: {failed.reason}" if failed is not None
                   else "no labelled structure of this chemistry: the model's error here is unknown")
            decisions.append(unmeasured(chem, why, t, n_structures=failed.n_structures if failed is not None else 0,
                                        **common))
            continue
        # the labelled structures are the correction's own domain: only real targets are tested against it
        ood = q[rows] if (q is not None and not use_labelled) else None
        decisions.append(decide_chemistry(soft[chem], t, target_ood=ood, **common))
    return decisions, issues


def decision_corrections(decisions):
    """The :class:`~calib.softening.correction.ScalarCorrection` of the chemistries decided "scale"."""
    from calib.softening.correction import ScalarCorrection

    scaled = [d for d in decisions if d.decision == Action.SCALE]
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
