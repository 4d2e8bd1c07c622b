"""Commands on energy landscapes: ``neb`` (barriers with intervals) and ``eos`` (bulk moduli)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

import calib.cli.report as report
from calib.cli.app import (
    CalibrationOpt,
    ModelOpt,
    OverwriteOpt,
    app,
    calibration_or_default,
    echo,
    emit_json,
    load_model_for,
    model_and_artifact,
    option,
    policy_option,
    read_inputs,
    say_calibration,
)
from calib.cli.options import GROUPED, ModelRun, Output, Trust, grouped
from calib.errors import check_outputs, named_as
from calib.workflows.settings import EOSSettings


@app.command("neb")
@grouped()
def neb_cmd(
    images: List[Path] = typer.Argument(..., help="NEB images in path order (extxyz, ASE trajectory); "
                                        "'-': extxyz on stdin"),
    calibration: Optional[Path] = CalibrationOpt,
    reference: Optional[Path] = typer.Option(None, "--reference",
                                             help="labelled images (same order) to compare with, e.g. DFT"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="write the profile with 1σ/2σ bands (PNG)"),
    barrier_tol: float = policy_option("barrier_tol"),
    trust: Trust = GROUPED,
    run: ModelRun = GROUPED,
    overwrite: bool = OverwriteOpt,
    output: Output = GROUPED,
):
    """Image energies relative to image 0 (eV) with their covariance; forward, reverse and KRA barriers with
    calibrated intervals, raw and with the stored scalar correction."""
    device = run.checked()
    policy = trust.policy(barrier_tol=barrier_tol)
    calibration, cal_rec = calibration_or_default(calibration, run.model)
    check_outputs({"--plot": plot}, inputs=[*images, calibration, reference], overwrite=overwrite)
    structs = read_inputs(images)
    ref = None
    if reference is not None:
        from calib.workflows.labelled import reference_energies

        with named_as(reference="--reference"):
            ref = reference_energies(structs, read_inputs([reference]))
    from calib.predictor import CalibratedPredictor
    from calib.workflows.neb import band, plot_band, summary

    m, art = model_and_artifact(run.model, device, calibration)
    ds = band(CalibratedPredictor(m, art, trust=policy), structs, batch_size=run.batch_size)
    rec = {**summary(ds, ref), "calibration": cal_rec}
    if plot is not None:
        plot_band(ds, plot, ref)
        rec["plot"] = str(plot)
    if output.as_json:
        emit_json(rec)
        return
    say_calibration(cal_rec)
    echo(report.neb(rec, len(structs), ds.attrs.get("alpha"), ref is not None))
    if plot is not None:
        typer.echo(f"profile written to {plot}")


@app.command("eos")
@grouped(model=ModelOpt, batch_size=option(EOSSettings, "batch_size"))
def eos_cmd(
    run: ModelRun = GROUPED,
    elements: Optional[List[str]] = typer.Option(None, "--element", help="only these elements (repeatable)"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="write B_model/B_WIEN2k vs Z to this image"),
    overwrite: bool = OverwriteOpt,
    output: Output = GROUPED,
):
    """Bulk moduli (GPa) of ASE's dcdft crystals: Birch–Murnaghan fits of the model vs WIEN2k PBE."""
    device = run.checked()
    check_outputs({"--plot": plot}, overwrite=overwrite)
    from calib.workflows.eos import check_elements, plot_eos, run_eos

    with named_as(elements="--element"):
        check_elements(elements)
    m = load_model_for(run.model, device)
    records, summary = run_eos(m, elements, batch_size=run.batch_size, progress=output.progress)
    if plot is not None:
        plot_eos(records, plot, title=f"{m.name} {m.version}: bulk modulus vs WIEN2k PBE (dcdft)")
        summary["plot"] = str(plot)
    if output.as_json:
        emit_json({"records": [r.as_dict() for r in records], "summary": summary})
        return
    echo(report.eos(records, summary))
