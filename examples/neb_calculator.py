"""An NEB run with CalibratedCalculator, and the barrier with its calibrated interval.

An Al vacancy hop in a 7-atom cell: end points relaxed, 3 images, climbing-image NEB with ase.mep.NEB
(every image's calculator shares one CHGNet and one artifact), then calib.workflows.neb.band on the relaxed path.
Needs a calibrated artifact, e.g. from `calib demo` (calib-demo/calibration.nc):

    OMP_NUM_THREADS=1 python examples/neb_calculator.py calib-demo/calibration.nc
"""

import sys

from ase.build import bulk
from ase.mep import NEB
from ase.optimize import FIRE

from calib import CalibratedCalculator
from calib.workflows.neb import band, summary, vacancy_hop


def main(calibration: str) -> dict:
    initial, final = vacancy_hop(bulk("Al", "fcc", 4.04, cubic=True) * (2, 1, 1))
    calc = lambda: CalibratedCalculator("chgnet", calibration, uncertainties=False)  # noqa: E731
    for end in (initial, final):
        end.calc = calc()
        FIRE(end, logfile=None).run(fmax=0.02, steps=200)
    images = [initial] + [initial.copy() for _ in range(3)] + [final]
    for im in images[1:4]:
        im.calc = calc()
    neb = NEB(images, climb=True)
    neb.interpolate(mic=True)
    FIRE(neb, logfile=None).run(fmax=0.05, steps=400)
    rec = summary(band(images[0].calc.predictor, images))
    lo, hi = rec["barrier_forward_interval"]
    print(f"Al vacancy hop: barrier {rec['barrier_forward']:.3f} eV, 90 % interval [{lo:.3f}, {hi:.3f}] eV",
          file=sys.stderr)
    return rec


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "calib-demo/calibration.nc")
