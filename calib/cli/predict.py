"""Commands that predict: ``predict``, ``evaluate`` and ``screen``."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

import calib.cli.report as report
from calib.cli.app import (
    CalibrationOpt,
    DeviceOpt,
    Flag,
    SchedulerOpt,
    WorkersOpt,
    app,
    calibrated,
    calibration_or_default,
    check_workers,
    client_for,
    common_options,
    echo,
    emit_json,
    fail,
    model_and_artifact,
    model_record,
    option,
    read_inputs,
    say_calibration,
)
from calib.cli.options import GROUPED, ModelRun, Output, Subset, Trust, grouped
from calib.errors import check_outputs, check_plot_folder, named_as
from calib.workflows.settings import ScreenSettings


@app.command("evaluate")
@grouped()
def evaluate_cmd(
    labelled: List[Path] = typer.Argument(..., help="held-out labelled structures (energy eV, forces eV/Å); "
                                          "'-': extxyz on stdin"),
    calibration: Optional[Path] = CalibrationOpt,
    subset: Subset = GROUPED,
    run: ModelRun = GROUPED,
    forces: bool = typer.Option(True, "--forces/--no-forces", help="force targets (exact force σ: slower)"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="folder for calibration plots (PNG; files in it "
                                        "with the same names are replaced)"),
    output: Output = GROUPED,
):
    """Coverage, width, NLL, ENCE, miscalibration area and Spearman of σ on held-out labelled data."""
    device = run.checked()
    check_plot_folder("--plot", plot)
    chosen = subset.checked()
    calibration, cal_rec = calibration_or_default(calibration, run.model)
    structs = read_inputs(labelled, chosen)
    from calib.workflows.evaluation import evaluate

    m, art = model_and_artifact(run.model, device, calibration)
    art = calibrated(art, calibration, m)
    ev = evaluate(art, m, structs, batch_size=run.batch_size, forces=forces, progress=output.progress,
                  return_points=plot is not None)
    doc = {**ev.as_dict(), "calibration": cal_rec}
    if plot is not None:
        from calib.cli.plots import evaluation_plots

        doc["plots"] = evaluation_plots(ev.points, plot, alpha=ev.alpha)
    if output.as_json:
        emit_json(doc)
        return
    for s in ev.skipped:
        typer.echo(f"skipped {s}", err=True)
    say_calibration(cal_rec)
    echo(report.evaluation(ev))
    if plot is not None:
        typer.echo("plots: " + ", ".join(doc["plots"]))


@app.command("predict")
@grouped()
def predict_cmd(
    structures: List[Path] = typer.Argument(..., help="structure files; '-': extxyz on stdin"),
    calibration: Optional[Path] = CalibrationOpt,
    subset: Subset = GROUPED,
    run: ModelRun = GROUPED,
    forces: bool = Flag(False, "--forces", help="also per-component force σ and intervals (eV/Å), from the force "
                        "error model: no cost beyond the model's forces"),
    force_mode: str = typer.Option("none", "--force-mode", help="also the LLPR force σ (forces_sigma_llpr): "
                                   "exact (every eigen-direction, d backward passes per batch), approx (the "
                                   "directions carrying 95 % of the variance, a few passes) or none"),
    raw: bool = Flag(False, "--raw", help="report the model's own prediction where a stored scalar correction "
                     "would apply (default: the corrected prediction, judged by its own error model)"),
    trust: Trust = GROUPED,
    output: Output = GROUPED,
):
    """Energies (total eV) with σ (eV) and the conformal interval of the reference-code energy, per structure.

    The interval bounds E + shift, the energy the reference code (e.g. DFT) would give, where the shift comes
    from the artifact's per-element reference; the table prints that centre next to its interval. With
    --forces also the largest force σ (eV/Å)."""
    device = run.checked()
    if force_mode not in ("exact", "approx", "none"):
        fail(f"--force-mode must be exact, approx or none, got {force_mode!r}", "usage")
    policy = trust.policy()
    chosen = subset.checked()
    calibration, cal_rec = calibration_or_default(calibration, run.model)
    structs = read_inputs(structures, chosen)
    from calib.data.records import to_records
    from calib.predictor import CalibratedPredictor

    m, art = model_and_artifact(run.model, device, calibration)
    predictor = CalibratedPredictor(m, art, trust=policy, correction=not raw)
    ds = predictor.predict(structs, forces=forces, force_mode=force_mode, batch_size=run.batch_size,
                           progress=output.progress)
    # one record per input structure, in input order; a skipped one carries `error` instead of numbers
    all_records = to_records(ds, structs)
    records = [r for r in all_records if "error" not in r]
    skipped = [r for r in all_records if "error" in r]
    doc = {"records": all_records, "n_predicted": len(records), "n_skipped": len(skipped),
           "calibration": cal_rec, "model": model_record(m)}
    if not records:  # nothing predicted: the records say why, and the document is an input error too
        doc.update(error="no valid structure: " + "; ".join(f"structure {r['index']} ({r['name']}): {r['error']}"
                                                           for r in skipped[:5]), kind="input")
    if output.as_json:
        emit_json(doc)
    else:
        if skipped:
            typer.echo(f"skipped {len(skipped)} structure(s):", err=True)
            for r in skipped:
                typer.echo(f"  structure {r['index']} ({r['name']}): {r['error']}", err=True)
        say_calibration(cal_rec)
        echo(report.predictions(records, forces))
    if not records:
        raise typer.Exit(code=1)


@app.command("screen")
@grouped()
def screen_cmd(
    structures: List[Path] = typer.Argument(..., help="structure files (extxyz, ASE .db, any ASE format) or "
                                            "folders of CIF/POSCAR/... files; streamed, never held whole"),
    calibration: Optional[Path] = CalibrationOpt,
    out: Path = typer.Option(..., "-o", "--out", help="results (netCDF, one row per structure, grows per batch)"),
    csv: Optional[Path] = typer.Option(None, "--csv", help="also write the rows as CSV at the end"),
    forces: bool = Flag(False, "--forces", help="also the LLPR force σ and conformal half-widths (approximate "
                                "mode, ≈ 2–3× the cost of energies and forces alone); the verdict needs only forces"),
    trust: Trust = GROUPED,
    batch_size: int = option(ScreenSettings, "batch_size"),
    resume: bool = Flag(False, "--resume", help="continue an interrupted run into the same -o"),
    overwrite: bool = Flag(False, "--overwrite", help="replace an existing -o (and --csv)"),
    workers: Optional[int] = WorkersOpt,
    scheduler: Optional[str] = SchedulerOpt,
    model: Optional[str] = typer.Option(None, "--model", help="default: the model named in the artifact"),
    device: str = DeviceOpt,
    output: Output = GROUPED,
):
    """Screen structures: energy, σ, interval, Q score, (force σ), trusted or not and why, per structure.

    Run time: about the model's own energies and forces; --forces 2–3× slower."""
    device = common_options(batch_size, device, model=model)
    policy = trust.policy()  # before a cluster starts or a model loads
    check_workers(workers, scheduler)
    calibration, cal_rec = calibration_or_default(calibration, model)
    if not calibration.is_file():
        fail(f"calibration artifact {calibration} does not exist")
    check_outputs({"-o": out, "--csv": csv}, inputs=[*structures, calibration], overwrite=overwrite,
                  resumable=("-o",) if resume else ())
    if out.exists() and not (resume or overwrite):
        fail(f"-o {out} exists; pass --resume to continue it or --overwrite to replace it", "output")
    from calib.workflows.screen import screen

    client = client_for(workers, scheduler)
    try:
        with named_as(resume="--resume", overwrite="--overwrite"):
            summary = screen([str(p) for p in structures], calibration, out, model=model, device=device,
                             forces=forces, policy=policy, batch_size=batch_size,
                             resume=resume, overwrite=overwrite, client=client, progress=output.progress)
    finally:
        if client is not None:
            from calib.workflows.distributed import close_client

            close_client(client)
    if csv is not None:
        from calib.workflows.screen import read_results

        read_results(out).to_dataframe().to_csv(csv)
        summary["csv"] = str(csv)
    summary["calibration"] = cal_rec
    if output.as_json:
        emit_json(summary)
    else:
        say_calibration(cal_rec)
        echo(report.screening(summary, out, csv))
    if summary["n_total"] and summary["n_failed"] == summary["n_total"]:
        raise typer.Exit(code=1)
