"""Array maths that never runs a model: Hessian, LLPR posterior, conformal, differences, element
reference, out-of-distribution detector, metrics, calibration targets."""
