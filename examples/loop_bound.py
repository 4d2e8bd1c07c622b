"""Does the recalibrated force bound fall with the error after fine-tuning? (docs/finetune.md)

On the shipped Si frames (CHGNet's softest chemistry among the first release's), in three parts: four frames to
fine-tune on (as ``calib finetune``: chgnet's Trainer, replay of proxy structures), three to calibrate on (held
out from the fine-tuning, so their errors are the tuned model's real ones) and three targets. The base model and
the tuned model are each calibrated the same way: H over a proxy sample and the calibration frames, calibrated on
those frames and a sample of the other shipped labels, Si then judged by its own force scale (calibrate's
``chemistry_scale``). Printed for both: the force MAE on the targets (eV/Å), the median calibrated bound U on
their largest force error (eV/Å), how many targets the bound holds, and the decision ``calib decide`` takes for
Si with the calibration frames as labels and the targets.

    OMP_NUM_THREADS=1 python examples/loop_bound.py [--out loop_bound.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

import numpy as np


def judge(model, artifact, labels, targets) -> dict:
    from calib import CalibratedPredictor
    from calib.data.structures import get_forces
    from calib.workflows.decisions import decide

    ds = CalibratedPredictor(model, artifact, correction=False).predict(targets, forces=True, progress=False)
    owner = ds["structure_index"].values
    err = [np.abs(ds["forces"].values[owner == k] - get_forces(a)) for k, a in enumerate(targets)]
    worst = np.array([e.max() for e in err])
    bound = ds["force_error_bound"].values
    (d,), _ = decide(artifact, model, labels, targets, progress=False)
    return {"force_mae": float(np.mean(np.concatenate([e.ravel() for e in err]))),
            "median_bound": float(np.median(bound)), "median_largest_error": float(np.median(worst)),
            "bound_holds": f"{int(np.sum(worst <= bound))}/{len(targets)}", "decision": d.decision,
            "reasons": d.reasons}


def main(out: str) -> dict:
    from calib import datasets
    from calib.models import load_model
    from calib.workflows.calibration import calibrate
    from calib.workflows.finetune import finetune
    from calib.workflows.hessian import build_hessian
    from calib.workflows.loop import LoopSettings, shipped_sample

    frames = datasets.load("high-energy-states", chemsys="Si")
    train, labels, targets = frames[0::3], frames[1::3], frames[2::3]
    settings = LoopSettings()
    rng = np.random.default_rng(settings.seed)
    proxy = datasets.load("equilibrium-proxy")
    sample = [proxy[int(i)] for i in rng.choice(len(proxy), settings.proxy_sample, replace=False)]
    extra = shipped_sample(settings.shipped_sample, rng, exclude=["Si"])

    def calibration(model):
        hess, _ = build_hessian(model, sample + list(labels), progress=False)
        return calibrate(hess, model, list(labels) + extra, progress=False).artifact

    base = load_model("chgnet")
    res = {"n_train": len(train), "n_labels": len(labels), "n_targets": len(targets)}
    res["base"] = judge(base, calibration(base), labels, targets)
    with tempfile.TemporaryDirectory() as tmp:
        tuned_path = os.path.join(tmp, "tuned.pt")
        finetune(base, train, tuned_path, epochs=settings.epochs, replay=settings.replay, lr=settings.lr,
                 seed=settings.seed, progress=False)
        tuned = load_model(tuned_path)
        res["tuned"] = judge(tuned, calibration(tuned), labels, targets)
    ratio = res["tuned"]["force_mae"] / res["base"]["force_mae"]
    res["mae_ratio"] = ratio
    res["bound_ratio"] = res["tuned"]["median_bound"] / res["base"]["median_bound"]
    res["bound_within_1.2_x_mae_ratio"] = bool(res["bound_ratio"] <= 1.2 * ratio)
    res["bound_within_mae_ratio_plus_0.2"] = bool(res["bound_ratio"] <= ratio + 0.2)
    with open(out, "w") as fh:
        json.dump(res, fh, indent=1)
    return res


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="loop_bound.json")
    a = p.parse_args()
    print(json.dumps(main(a.out), indent=1))
