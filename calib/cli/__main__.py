"""``python -m calib.cli`` runs the ``calib`` command (as it did when the CLI was one module)."""

from calib.cli import main

main()
