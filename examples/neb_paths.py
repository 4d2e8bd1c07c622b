"""Barriers with calibrated intervals on the shipped NEB paths (table and figures in docs/neb.md).

H from the shipped equilibrium proxy; energies calibrated (with the energy-difference model) on the 140
high-energy states of the first release's 14 chemistries (``calib.data.prototypes.FIRST_RELEASE``, the set
tests/test_neb.py pins); scalar corrections from `calib softening` on the same frames; then `calib.workflows.neb.band`
on each GPAW-labelled path and the comparison with GPAW.

    OMP_NUM_THREADS=1 python examples/neb_paths.py [--plots docs/figures/neb]
"""

import glob
import json
import os
import sys

import ase.io

from calib import CalibratedPredictor, datasets
from calib.data.prototypes import first_release
from calib.models.chgnet import CHGNetAdapter
from calib.workflows.calibration import calibrate
from calib.workflows.hessian import build_hessian
from calib.workflows.neb import band, plot_band, summary
from calib.workflows.softening import measure_softening, store_corrections


def main(plots=None) -> dict:
    model = CHGNetAdapter()
    art, _ = build_hessian(model, datasets.load("equilibrium-proxy"), progress=False)
    data = first_release(datasets.load("high-energy-states"))
    cal = calibrate(art, model, data, target="energy", with_forces=False, progress=False).artifact
    predictor = CalibratedPredictor(model, store_corrections(cal, measure_softening(model, data, n_bootstrap=1000).results))
    root = os.path.join(datasets.root(), "neb")
    out = {}
    for f in [os.path.join(root, "LiF-vacancy-hop.extxyz")] + sorted(glob.glob(os.path.join(root, "paths", "*hop.extxyz"))):
        name = os.path.basename(f).split("-vacancy")[0]
        images = ase.io.read(f, ":")
        ds = band(predictor, images)
        ref = [a.get_potential_energy() for a in images]
        out[name] = summary(ds, ref)
        if plots:
            os.makedirs(plots, exist_ok=True)
            plot_band(ds, os.path.join(plots, f"{name}.png"), ref, title=f"{name}: {images[0].info.get('path', '')}")
    return out


if __name__ == "__main__":
    folder = sys.argv[sys.argv.index("--plots") + 1] if "--plots" in sys.argv else None
    print(json.dumps(main(folder), indent=1))
