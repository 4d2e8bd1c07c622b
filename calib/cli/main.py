"""The ``calib`` console script: the application with every command group registered."""

from __future__ import annotations

import os
import sys

import typer

# importing a group registers its commands on `app`, in this order in --help
# isort: off
import calib.cli.fit  # noqa: F401
import calib.cli.learn  # noqa: F401
import calib.cli.predict  # noqa: F401
import calib.cli.softening  # noqa: F401
import calib.cli.paths  # noqa: F401
import calib.cli.tools  # noqa: F401
import calib.cli.pages  # noqa: F401
# isort: on
from calib.cli.app import app

__all__ = ["app", "main"]


def main() -> None:  # console-script entry point
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    try:
        typer.main.get_command(app)()  # CalibGroup.main: the error contract, not typer's traceback display
    except BrokenPipeError:  # `calib predict ... | head`
        sys.exit(0)


if __name__ == "__main__":
    main()
