"""Commands on energy landscapes: ``neb`` (barriers with intervals) and ``eos`` (bulk moduli)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from calib.cli.app import (ArtModelOpt, BatchOpt, DeviceOpt, JsonOpt, ModelOpt,
                           OverwriteOpt, QuietOpt, app, common_options, emit_json, fail,
                           load_model_for, model_and_artifact, read_inputs)
from calib.errors import (check_outputs)


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
    from calib.workflows.neb import band, plot_band, summary
    from calib.predictor import CalibratedPredictor
    from calib.data.structures import get_energy

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
    alpha = ds.attrs.get("alpha")
    typer.echo(f"{rec['chemsys']}: {len(structs)} images, highest model image {rec['highest_image']}; "
               f"intervals at α = {alpha} (eV, relative to image 0)")
    head = f"{'image':>5} {'E - E0':>8} {'σ':>7}" + (f" {'corrected':>9} {'σ':>7}" if "energies_corrected" in rec else "")
    head += f" {'reference':>9}" if ref is not None else ""
    typer.echo(head)
    for k, e in enumerate(rec["energies"]):
        line = f"{k:>5} {e:>8.3f} {rec['energy_sigmas'][k]:>7.3f}"
        if "energies_corrected" in rec:
            line += f" {rec['energies_corrected'][k]:>9.3f} {rec['energy_sigmas_corrected'][k]:>7.3f}"
        if ref is not None:
            line += f" {rec['reference_energies'][k]:>9.3f}"
        typer.echo(line)
    for suffix in ("", "_corrected"):
        if f"barrier_forward{suffix}" not in rec:
            continue
        for name in ("forward", "reverse", "kra"):
            key = f"barrier_{name}{suffix}"
            lo, hi = rec[f"{key}_interval"]
            extra = ""
            if ref is not None:
                extra = f"   reference {rec[f'reference_barrier_{name}']:.3f} " + (
                    "inside" if rec[f"{key}_covers_reference"] else "OUTSIDE")
            typer.echo(f"{key:<27} {rec[key]:.3f} ± {rec[f'{key}_sigma']:.3f} eV   [{lo:.3f}, {hi:.3f}]{extra}")
    if ref is not None:
        typer.echo(f"reference energies inside the raw band: {rec['n_inside']}/{rec['n_images_compared']}"
                   + (f", corrected: {rec['n_inside_corrected']}/{rec['n_images_compared']}"
                      if "n_inside_corrected" in rec else ""))
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
    typer.echo(f"{'el':<3} {'Z':>3} {'B_model':>8} {'B_WIEN2k':>8} {'ratio':>6} {'V0_model':>8} {'V0_ref':>7}  (GPa, Å³/atom)")
    for r in records:
        if r.error:
            typer.echo(f"{r.element:<3} {r.z:>3}  skipped: {r.error}")
            continue
        typer.echo(f"{r.element:<3} {r.z:>3} {r.b_model:>8.1f} {r.b_reference:>8.1f} {r.ratio:>6.2f} "
                   f"{r.v0_model:>8.2f} {r.v0_reference:>7.2f}{'  (re-centred)' if r.recentred else ''}")
    typer.echo(f"{summary['n_elements']} elements: median B ratio {summary['median_ratio']:.3f}, "
               f"{100 * summary['fraction_below_1']:.0f} % below 1; {summary['n_failed']} skipped")
