"""Workflows over the layers below: Hessian, calibration, evaluation, softening, decisions,
screening, NEB, EOS, distribution."""
