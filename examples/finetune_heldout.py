"""Fine-tuning on half of a chemistry's GPAW frames, tested on the other half (docs/finetune.md).

For each chemistry given (default Si, which `calib decide` sends to "label"): CHGNet 0.3.0 against the GPAW
labels of the held-out frames, as is, with the scalar correction fitted on the training frames, and fine-tuned on
the training frames with and without replay; the force MAE of other shipped chemistries before and after (what
replay saves) and the wall time (what it costs).

    OMP_NUM_THREADS=1 python examples/finetune_heldout.py [--chemsys Si] [--out finetune_heldout.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np

OTHERS = ("Na-Cl", "Li-F", "Al", "Ga-As", "Mg-O")


def stats(model, structs):
    from calib.data.structures import get_forces
    from calib.softening.scale import fit_softening

    p = model.predict(structs, forces=True)
    r = fit_softening([p.forces_of(k) for k in range(len(structs))], [get_forces(a) for a in structs],
                      n_bootstrap=500)
    return {"force_mae": round(r.mae, 4), "softening_scale": round(r.softening_scale, 3),
            "softening_ci": [round(x, 3) for x in r.softening_ci]}


def main(chems, out: str) -> dict:
    from calib import datasets
    from calib.data.structures import get_forces
    from calib.models import load_model
    from calib.softening.scale import fit_softening
    from calib.workflows.finetune import finetune

    base = load_model("chgnet")
    others = {c: datasets.load("high-energy-states", chemsys=c)[1::2] for c in OTHERS}
    res = {"others_base": {c: stats(base, s)["force_mae"] for c, s in others.items()}, "runs": {}}
    work = tempfile.mkdtemp()
    for chem in chems:
        data = datasets.load("high-energy-states", chemsys=chem)
        train, test = data[::2], data[1::2]
        p = base.predict(train, forces=True)
        c = fit_softening([p.forces_of(k) for k in range(len(train))], [get_forces(a) for a in train],
                          n_bootstrap=10).correction
        pt = base.predict(test, forces=True)
        scaled = np.mean(np.concatenate([np.abs(c * pt.forces_of(k) - get_forces(a)).ravel()
                                         for k, a in enumerate(test)]))
        run = {"n_train": len(train), "n_test": len(test), "base": stats(base, test),
               "scalar_correction": {"c": round(c, 4), "force_mae": round(float(scaled), 4)}}
        for replay in (0, 20):
            t0 = time.perf_counter()
            path = os.path.join(work, f"{chem}-{replay}.pt")
            finetune(base, train, path, replay=replay, progress=False)
            tuned = load_model(path)
            run[f"finetuned_replay{replay}"] = {**stats(tuned, test), "seconds": round(time.perf_counter() - t0, 1),
                                               "others": {o: stats(tuned, s)["force_mae"] for o, s in others.items()
                                                          if o != chem}}
        res["runs"][chem] = run
    with open(out, "w") as fh:
        json.dump(res, fh, indent=1)
    return res


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--chemsys", nargs="+", default=["Si"])
    p.add_argument("--out", default="finetune_heldout.json")
    a = p.parse_args()
    print(json.dumps(main(a.chemsys, a.out), indent=1))
