"""Close the loop on one shipped chemistry: decide, label what is requested (real GPAW), refit, decide again.

Start from the paper's extreme case, ONE labelled LiF structure; the other nine LiF frames of the
shipped high-energy states are the targets (their labels are stripped and recomputed with GPAW only
when requested). The calibration artifact is fitted on other chemistries (Al, Mg, NaCl, LiCl), as a
user's general-purpose calibration would be. Each round prints the decision with its reasons; the
loop stops when the decision is no longer "label" and has been confirmed once more, or after 5 rounds.

    OMP_NUM_THREADS=1 python examples/closing_loop.py [--chemsys Li-F] [--out closing-loop]
"""

import json
import os
import sys

import ase.io

from calib import datasets
from calib.data.labelers import GPAWFactory, label, structure_key
from calib.models.chgnet import CHGNetAdapter
from calib.softening.decide import DecisionRules
from calib.workflows.calibration import calibrate
from calib.workflows.decisions import decide
from calib.workflows.hessian import build_hessian


def strip(atoms):
    a = atoms.copy()
    a.calc = None
    return a


def main(chemsys: str = "Li-F", out: str = "closing-loop", max_rounds: int = 5) -> list[dict]:
    os.makedirs(out, exist_ok=True)
    model = CHGNetAdapter()
    art, _ = build_hessian(model, datasets.load("equilibrium-proxy"), progress=False)
    others = [a for c in ("Al", "Mg", "Na-Cl", "Li-Cl") for a in datasets.load("high-energy-states", chemsys=c)]
    cal = calibrate(art, model, others, alpha=0.1, progress=False).artifact
    frames = datasets.load("high-energy-states", chemsys=chemsys)
    labelled = [frames[0]]
    targets = [strip(a) for a in frames[1:]]
    rules = DecisionRules(mae_tol_ev_per_a=0.1, n_requests=2)
    rounds, settled = [], 0
    for rnd in range(1, max_rounds + 1):
        (d,), _ = decide(cal, model, labelled, targets, rules=rules)
        rec = d.as_dict()
        rec["round"] = rnd
        rec["n_labelled"] = len(labelled)
        rounds.append(rec)
        print(f"round {rnd}: {len(labelled)} labelled -> {d.decision}  (s = {rec['softening_scale']:.3f}, "
              f"CI {[round(x, 3) for x in rec['softening_ci']]}, cMAE_loo {rec['cmae_loo']})", flush=True)
        for reason in d.reasons:
            print(f"    - {reason}", flush=True)
        if d.decision != "label":
            settled += 1
            if settled == 2 or not targets:
                break
            continue
        settled = 0
        request = [targets[i] for i in d.label_requests]
        if not request:
            print("    nothing left to label", flush=True)
            break
        print(f"    labelling {len(request)} requested structure(s) with GPAW ...", flush=True)
        rep = label(request, os.path.join(out, "labelled.extxyz"),
                    GPAWFactory(cutoff=450.0, kdensity=2.0), progress=False)
        new = ase.io.read(os.path.join(out, "labelled.extxyz"), ":")
        done = {a.info["calib_key"] for a in new}
        labelled = [frames[0]] + new
        targets = [a for a in targets if structure_key(a) not in done]
        print(f"    {rep.n_labelled} labelled in {rep.seconds:.0f} s; {len(targets)} targets left", flush=True)
    with open(os.path.join(out, "rounds.json"), "w") as fh:
        json.dump(rounds, fh, indent=1)
    return rounds


if __name__ == "__main__":
    args = sys.argv[1:]
    chem = args[args.index("--chemsys") + 1] if "--chemsys" in args else "Li-F"
    folder = args[args.index("--out") + 1] if "--out" in args else "closing-loop"
    main(chem, folder)
