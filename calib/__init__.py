"""calib: calibrated uncertainties and softening corrections for universal interatomic potentials.

The public API, imported lazily so that ``import calib`` does not pull in torch:

- :func:`load_model`, :class:`~calib.models.base.Prediction` (models)
- :func:`build_hessian`, :func:`calibrate`, :func:`predict`, :func:`evaluate` (pipeline)
- :class:`LLPR`, :func:`accumulate_hessian` (uncertainties)
- :class:`Artifact`, :class:`ArtifactError` (the saved state)
- :func:`read_structures`, :func:`validate`, :func:`chemsys` (input)
- :class:`ConformalCalibrator`, :class:`ClassConformalCalibrator` (conformal intervals)
- :func:`measure_softening`, :func:`fit_softening`, :class:`ScalarCorrection` (softening)
- :func:`decide`, :class:`Thresholds`, :class:`QResidualDetector` (decisions)
- :func:`run_eos` (dcdft curvature benchmark)
- :mod:`calib.datasets` (shipped reference data), :func:`label` (reference labels)
"""

from importlib import import_module

__version__ = "0.1.0"

_API = {
    "load_model": "calib.models",
    "Prediction": "calib.models.base",
    "build_hessian": "calib.pipeline",
    "calibrate": "calib.pipeline",
    "predict": "calib.pipeline",
    "evaluate": "calib.pipeline",
    "LLPR": "calib.llpr",
    "accumulate_hessian": "calib.llpr",
    "Artifact": "calib.io",
    "ArtifactError": "calib.io",
    "read_structures": "calib.structures",
    "validate": "calib.structures",
    "chemsys": "calib.structures",
    "StructureError": "calib.structures",
    "label": "calib.labelers",
    "ConformalCalibrator": "calib.conformal",
    "ClassConformalCalibrator": "calib.conformal",
    "measure_softening": "calib.softening",
    "fit_softening": "calib.softening",
    "ScalarCorrection": "calib.softening",
    "decide": "calib.decide",
    "Thresholds": "calib.decide",
    "QResidualDetector": "calib.ood",
    "run_eos": "calib.eos",
    "datasets": "calib.datasets",
}

__all__ = ["__version__", *_API]


def __getattr__(name):
    if name not in _API:
        raise AttributeError(f"module 'calib' has no attribute {name!r}")
    module = import_module(_API[name])
    return module if name == "datasets" else getattr(module, name)
