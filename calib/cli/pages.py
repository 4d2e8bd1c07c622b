"""The ``report`` command: one self-contained HTML page about a calibration (calib.cli.htmlreport)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from calib.cli.app import (
    CalibrationOpt,
    OverwriteOpt,
    app,
    calibrated,
    calibration_or_default,
    emit_json,
    fail,
    model_and_artifact,
    read_inputs,
    say_calibration,
)
from calib.cli.options import GROUPED, ModelRun, Output, Subset, grouped
from calib.errors import check_outputs


@app.command("report")
@grouped()
def report_cmd(
    out: Path = typer.Option(..., "-o", "--out", help="the HTML page to write (self-contained: figures embedded)"),
    calibration: Optional[Path] = CalibrationOpt,
    labelled: Optional[List[Path]] = typer.Option(None, "--labelled", help="labelled structures (energy eV, forces "
                                                  "eV/Å; repeatable), best held out: adds coverage, widths, the "
                                                  "softening table and the verdict's quality"),
    screen: Optional[Path] = typer.Option(None, "--screen", help="a results file of `calib screen`: adds its counts"),
    subset: Subset = GROUPED,
    run: ModelRun = GROUPED,
    overwrite: bool = OverwriteOpt,
    output: Output = GROUPED,
):
    """One HTML page: coverage of the calibration, its quantiles and corrections; with --labelled, held-out
    coverage, widths, softening and the verdict; with --screen, a screen's counts."""
    device = run.checked()
    if out.suffix.lower() not in (".html", ".htm"):
        fail(f"-o must name an .html file, got {str(out)!r}", "usage")
    if screen is not None and not screen.is_file():
        fail(f"--screen: no such results file: {screen}")
    calibration, cal_rec = calibration_or_default(calibration, run.model)
    check_outputs({"-o": out}, inputs=[*(labelled or []), calibration, *([screen] if screen else [])],
                  overwrite=overwrite)
    structs = read_inputs(labelled, subset.checked()) if labelled else None
    from calib.cli import htmlreport

    m, art = model_and_artifact(run.model, device, calibration)
    art = calibrated(art, calibration, m)
    ctx = htmlreport.build(art, model=m, labelled=structs, screen=screen, progress=output.progress)
    htmlreport.render(ctx, out)
    sections = ["provenance", "coverage", "quantiles", "corrections"] + [k for k in ("heldout", "screen")
                                                                         if ctx[k] is not None]
    if output.as_json:
        emit_json({"out": str(out), "sections": sections, "calibration": cal_rec})
        return
    say_calibration(cal_rec)
    typer.echo(f"report ({', '.join(sections)}) written to {out}")
