"""netCDF files through xarray: atomic writes and reads that fail with a clear error.

:func:`replace_atomically` is the one whole-or-nothing write of any file calib makes (the loop's report and
frames, a fine-tuned model, the labeller's error list use it too).

Every file calib saves (artifacts, Hessian checkpoints, screening results) goes
through :func:`write_atomic`, so a crash mid-write never leaves a half file
under the final name, and is read back through :func:`read`, which turns
"missing", "truncated" and "not netCDF" into one :class:`ArtifactError`.
"""

from __future__ import annotations

import os


class ArtifactError(ValueError):
    """A saved file that cannot be used: unreadable, wrong schema, or another model's."""


def replace_atomically(path, write) -> None:
    """Write a file whole or not at all: ``write(tmp)`` fills a temporary path beside ``path``, which is then
    renamed into place (readers see the old file or the new one, never a part); the temporary file is removed
    when ``write`` fails."""
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_atomic(ds, path) -> None:
    """Write ``ds`` to ``path`` (netCDF4) via a temporary file and an atomic rename."""
    replace_atomically(path, lambda tmp: ds.to_netcdf(tmp, engine="netcdf4"))


def read(path, what: str):
    """Load the whole netCDF file at ``path`` into memory (``what`` names it in errors)."""
    import xarray as xr

    path = os.fspath(path)
    if not os.path.exists(path):
        raise ArtifactError(f"{what} {path} does not exist")
    try:
        return xr.load_dataset(path, engine="netcdf4")
    except Exception as exc:
        raise ArtifactError(
            f"{what} {path} could not be read as netCDF (truncated or corrupt?): {type(exc).__name__}: {exc}"
        ) from exc
