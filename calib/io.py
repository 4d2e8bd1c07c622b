"""Kept for code written against calib 0.1.0: the artifact now lives in :mod:`calib.artifact`."""

from calib.artifact import SCHEMA_VERSION, Artifact, ArtifactError  # noqa: F401
