"""Commands on energy landscapes: ``neb`` (barriers with intervals) and ``eos`` (bulk moduli)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

import calib.cli.report as report
from calib.cli.app import (
    ArtModelOpt,
    BatchOpt,
    DeviceOpt,
    JsonOpt,
    ModelOpt,
    OverwriteOpt,
    QuietOpt,
    app,
    common_options,
    echo,
    emit_json,
    fail,
    load_model_for,
    model_and_artifact,
    read_inputs,
)
from calib.errors import check_outputs


@app.command("neb")
def neb_cmd(
    images: List[Path] = typer.Argument(..., help="NEB images in path order (extxyz, ASE trajectory); "
                                        "'-': extxyz on stdin"),
    calibration: Path = typer.Option(..., "--calibration", help="calibrated artifact from `calib calibrate`"),
    reference: Optional[Path] = typer.Option(None, "--reference",
                                             help="labelled images (same order) to compare with, e.g. DFT"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="write the profile with 1σ/2σ bands (PNG)"),
    model: Optional[str] = ArtModelOpt,
    batch_size: int = BatchOpt,
    device: str = DeviceOpt,
    overwrite: bool = OverwriteOpt,
    quiet: bool = QuietOpt,
    as_json: bool = JsonOpt,
):
    """Image energies relative to image 0 (eV) with their covariance; forward, reverse and KRA barriers with
    calibrated intervals, raw and with the stored scalar correction."""
    from calib.data.structures import get_energy
    from calib.predictor import CalibratedPredictor
    from calib.workflows.neb import band, plot_band, summary

    device = common_options(batch_size, device)
    check_outputs({"--plot": plot}, inputs=[*images, calibration, reference], overwrite=overwrite)
    structs = read_inputs(images)
    ref = None
    if reference is not None:
        labelled = read_inputs([reference])
        ref = [get_energy(a) for a in labelled]
        if len(ref) != len(structs) or any(e is None for e in ref):
            fail(f"--reference must hold one labelled image per image ({len(structs)}), got {len(ref)} "
                  f"with {sum(e is None for e in ref)} unlabelled")
    m, art = model_and_artifact(model, device, calibration)
    ds = band(CalibratedPredictor(m, art), structs, batch_size=batch_size)
    rec = summary(ds, ref)
    if plot is not None:
        plot_band(ds, plot, ref)
        rec["plot"] = str(plot)
    if as_json:
        emit_json(rec)
        return
    echo(report.neb(rec, len(structs), ds.attrs.get("alpha"), ref is not None))
    if plot is not None:
        typer.echo(f"profile written to {plot}")


@app.command("eos")
def eos_cmd(
    model: str = ModelOpt,
    elements: Optional[List[str]] = typer.Option(None, "--element", help="only these elements (repeatable)"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="write B_model/B_WIEN2k vs Z to this image"),
    batch_size: int = typer.Option(32, "--batch-size", help="strained cells per model call"),
    device: str = DeviceOpt,
    overwrite: bool = OverwriteOpt,
    quiet: bool = QuietOpt,
    as_json: bool = JsonOpt,
):
    """Bulk moduli (GPa) of ASE's dcdft crystals: Birch–Murnaghan fits of the model vs WIEN2k PBE."""
    from calib.workflows.eos import plot_eos, run_eos

    device = common_options(batch_size, device)
    check_outputs({"--plot": plot}, overwrite=overwrite)
    m = load_model_for(model, device)
    records, summary = run_eos(m, elements, batch_size=batch_size, progress=not quiet)
    if plot is not None:
        plot_eos(records, plot, title=f"{m.name} {m.version}: bulk modulus vs WIEN2k PBE (dcdft)")
        summary["plot"] = str(plot)
    if as_json:
        emit_json({"records": [r.as_dict() for r in records], "summary": summary})
        return
    echo(report.eos(records, summary))
