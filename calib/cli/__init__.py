"""The ``calib`` command line (typer): one module per command group, tables in ``report``."""

from calib.cli.main import app, main

__all__ = ["app", "main"]
