"""calib: calibrated uncertainties and softening corrections for universal interatomic potentials."""

__version__ = "0.1.0"
