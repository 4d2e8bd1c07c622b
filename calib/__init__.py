"""calib: calibrated uncertainties and softening corrections for universal interatomic potentials.

The public API, imported lazily so that ``import calib`` does not pull in torch:

- :class:`CalibratedPredictor` — structures → xarray.Dataset of energies, forces, σ,
  conformal intervals and corrections (the one prediction path)
- :class:`CalibratedCalculator` — the same as an ASE calculator (σ and intervals in ``results``)
- :func:`load_model`, :class:`~calib.models.base.Prediction` (models)
- :func:`build_hessian`, :func:`calibrate`, :func:`evaluate`, :func:`measure_softening`,
  :func:`decide` (recipes, :mod:`calib.workflows`)
- :class:`LLPR` (posterior), :class:`HessianAccumulator`, :func:`accumulate_hessian` (streaming H)
- :class:`Artifact`, :class:`ArtifactError` (the saved state)
- :func:`read_structures`, :func:`validate`, :func:`chemsys` (input)
- :class:`ConformalCalibrator`, :class:`LabelClasses`, :class:`MixtureClasses` (conformal intervals)
- :func:`fit_softening`, :class:`ScalarCorrection` (softening)
- :class:`DecisionRules`, :class:`QResidualDetector` (decisions)
- :func:`run_eos` (dcdft curvature benchmark)
- :mod:`calib.data.datasets` (shipped reference data), :func:`default_calibration` (the path of calib's
  default calibration for CHGNet 0.3.0), :func:`label` (reference labels)
- :class:`TrustPolicy` (the tolerances of the trust verdict)
"""

from importlib import import_module

#: the one source of calib's version: pyproject.toml reads it (``[tool.setuptools.dynamic]``), pip's metadata,
#: ``calib --version`` and every artifact's ``calib_version`` come from it; tests/test_version.py keeps the
#: CHANGELOG's newest section equal to it
__version__ = "0.6.0.dev0"

_API = {
    "CalibratedPredictor": "calib.predictor",
    "CalibratedCalculator": "calib.calculator",
    "load_model": "calib.models",
    "Prediction": "calib.models.base",
    "build_hessian": "calib.workflows.hessian",
    "calibrate": "calib.workflows.calibration",
    "evaluate": "calib.workflows.evaluation",
    "measure_softening": "calib.workflows.softening",
    "decide": "calib.workflows.decisions",
    "LLPR": "calib.uq.llpr",
    "HessianAccumulator": "calib.uq.hessian",
    "accumulate_hessian": "calib.workflows.accumulate",
    "Artifact": "calib.artifact",
    "ArtifactError": "calib.artifact",
    "read_structures": "calib.data.readers",
    "validate": "calib.data.structures",
    "chemsys": "calib.data.structures",
    "StructureError": "calib.data.structures",
    "label": "calib.data.labelers",
    "ConformalCalibrator": "calib.uq.conformal",
    "LabelClasses": "calib.uq.conformal",
    "MixtureClasses": "calib.uq.conformal",
    "fit_softening": "calib.softening.scale",
    "ScalarCorrection": "calib.softening.correction",
    "DecisionRules": "calib.softening.decide",
    "Thresholds": "calib.softening.decide",
    "QResidualDetector": "calib.uq.ood",
    "run_eos": "calib.workflows.eos",
    "datasets": "calib.data.datasets",
    "default_calibration": "calib.data.datasets",
    "TrustPolicy": "calib.uq.trust",
}

__all__ = ["__version__", *_API]


def __getattr__(name):
    if name not in _API:
        raise AttributeError(f"module 'calib' has no attribute {name!r}")
    module = import_module(_API[name])
    return module if name == "datasets" else getattr(module, name)
