"""Softening scale, the one-scalar correction and the per-chemistry decision rules."""
