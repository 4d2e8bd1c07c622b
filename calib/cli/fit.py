"""Commands that fit: ``hessian``, ``calibrate`` and the reference labeller ``label``."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

import calib.cli.report as report
from calib.cli.app import (
    Flag,
    ModelOpt,
    OverwriteOpt,
    SchedulerOpt,
    WorkersOpt,
    app,
    check_workers,
    client_for,
    echo,
    emit_json,
    fail,
    load_model_for,
    model_and_artifact,
    option,
    read_inputs,
    read_readable,
    report_issues,
)
from calib.cli.options import GROUPED, ModelRun, Output, Subset, grouped
from calib.data.dft import GPAWSettings
from calib.errors import OutputError, check_outputs, named_as
from calib.settings import from_flags
from calib.workflows.settings import CalibrationSettings, HessianSettings


@app.command()
@grouped(model=ModelOpt)
def hessian(
    structures: List[Path] = typer.Argument(..., help="unlabelled structure files (extxyz, CIF, POSCAR, ASE db), "
                                            "e.g. near-equilibrium structures like the model's training set; "
                                            "'-': extxyz on stdin"),
    out: Path = typer.Option(..., "-o", "--out", help="artifact to write (netCDF)"),
    subset: Subset = GROUPED,
    run: ModelRun = GROUPED,
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="resume file (netCDF), saved every "
                                              "--checkpoint-every batches; rerun with it to continue"),
    checkpoint_every: int = option(HessianSettings, "checkpoint_every"),
    force_weight: float = option(HessianSettings, "force_weight"),
    workers: Optional[int] = WorkersOpt,
    scheduler: Optional[str] = SchedulerOpt,
    overwrite: bool = OverwriteOpt,
    output: Output = GROUPED,
):
    """Accumulate the LLPR pseudo-Hessian H = Σ f fᵀ over unlabelled structures.

    Run time: about 20 structures of 10 atoms per second per core (energies only)."""
    device = run.checked()
    from_flags(HessianSettings, checkpoint_every=checkpoint_every, force_weight=force_weight)
    check_workers(workers, scheduler)
    if (workers is not None or scheduler) and checkpoint is not None:
        fail("--checkpoint is for serial runs; drop it with --workers/--scheduler", "usage")
    check_outputs({"-o": out, "--checkpoint": checkpoint}, inputs=structures, overwrite=overwrite,
                  resumable=("--checkpoint",))
    structs = read_inputs(structures, subset.checked())
    from calib.workflows.hessian import build_hessian

    m = load_model_for(run.model, device)
    client = client_for(workers, scheduler)
    try:
        art, issues = build_hessian(m, structs, batch_size=run.batch_size, force_weight=force_weight,
                                    checkpoint=checkpoint, checkpoint_every=checkpoint_every,
                                    progress=output.progress, source=",".join(map(str, structures)), client=client)
    finally:
        if client is not None:
            from calib.workflows.distributed import close_client

            close_client(client)
    art.save(out)
    L = art.llpr
    summary = {"out": str(out), "n_structures": L.n_structures_, "n_features": L.n_features, "rank": L.rank_,
               "largest_eigenvalue": float(L.eigenvalues_[-1]), "seconds": art.attrs["hessian_seconds"],
               "skipped": [i.as_dict() for i in issues]}
    if output.as_json:
        emit_json(summary)
    else:
        report_issues(issues, output.as_json)
        echo(report.hessian(L, out))


@app.command("calibrate")
@grouped()
def calibrate_cmd(
    labelled: List[Path] = typer.Argument(..., help="labelled structures (extxyz/ASE db: energy eV, forces eV/Å); "
                                          "'-': extxyz on stdin"),
    hessian_path: Path = typer.Option(..., "--hessian", help="artifact from `calib hessian`"),
    out: Path = typer.Option(..., "-o", "--out", help="calibrated artifact to write (netCDF)"),
    subset: Subset = GROUPED,
    run: ModelRun = GROUPED,
    target: str = option(CalibrationSettings, "target"),
    alpha: float = option(CalibrationSettings, "alpha"),
    classes: str = typer.Option("none", "--classes",
                                help="Mondrian classes: K (mixture of ≤K environment classes), element, chemsys "
                                     "or none"),
    min_class_size: int = option(CalibrationSettings, "min_class_size"),
    energy_folds: int = option(CalibrationSettings, "energy_folds"),
    committee: Optional[str] = option(CalibrationSettings, "committee"),
    overwrite: bool = OverwriteOpt,
    output: Output = GROUPED,
):
    """Fit α², ς² (Gaussian NLL), the per-element energy reference and conformal quantiles on labelled data.

    Run time: about 1 min per 100 structures of 10 atoms on 2 cores (the exact force gradients dominate)."""
    device = run.checked()
    settings = from_flags(CalibrationSettings, target=target, alpha=alpha, classes=_parse_classes(classes),
                          min_class_size=min_class_size, energy_folds=energy_folds, committee=committee)
    check_outputs({"-o": out}, inputs=[*labelled, hessian_path], overwrite=overwrite)
    structs = read_inputs(labelled, subset.checked())
    from calib.workflows.calibration import calibrate

    m, art = model_and_artifact(run.model, device, hessian_path)
    art.check_model(m)
    with named_as(target="--target"):
        res = calibrate(art, m, structs, settings, batch_size=run.batch_size, progress=output.progress)
    res.artifact.save(out)
    summary = {"out": str(out), **res.summary.as_dict(), "skipped": [i.as_dict() for i in res.issues]}
    if output.as_json:
        emit_json(summary)
    else:
        report_issues(res.issues, output.as_json)
        echo(report.calibration(res.summary, alpha, out))


def _parse_classes(classes: str):
    c = classes.strip().lower()
    if c in ("none", "0", ""):
        return None
    if c.isdigit():
        return int(c)
    if c in ("element", "chemsys"):
        return c
    fail(f"--classes must be an integer, 'element', 'chemsys' or 'none', got {classes!r}", "usage")


@app.command("label")
@grouped()
def label_cmd(
    structures: List[Path] = typer.Argument(..., help="structures to label (extxyz, CIF, POSCAR, ASE db); "
                                            "'-': extxyz on stdin"),
    out: Path = typer.Option(..., "-o", "--out", help="labelled extxyz, appended to as each structure finishes; "
                             "rerun with the same -o to resume"),
    cutoff: float = option(GPAWSettings, "cutoff"),
    kdensity: float = option(GPAWSettings, "kdensity"),
    xc: str = option(GPAWSettings, "xc"),
    retry_failed: bool = Flag(False, "--retry-failed", help="retry structures in OUT.errors.jsonl"),
    overwrite: bool = Flag(False, "--overwrite", help="replace OUT instead of resuming it (an OUT that calib "
                           "label did not write is never resumed)"),
    output: Output = GROUPED,
):
    """Reference energies (eV), forces (eV/Å) and stress (eV/Å³) with GPAW PAW (plane waves).

    Run time: minutes per structure of 10–20 atoms on one core. Rerunning with the same OUT skips finished
    structures (a torn last frame is dropped and reported); an OUT that calib label did not write is refused,
    never truncated. Failures go to OUT.errors.jsonl and the run goes on.
    """
    from_flags(GPAWSettings, cutoff=cutoff, kdensity=kdensity, xc=xc)
    check_outputs({"-o": out}, inputs=structures, resumable=("-o",))
    if out.exists() and not overwrite:
        from calib.data.labelers import check_own_output

        try:
            with named_as(overwrite="--overwrite"):
                check_own_output(str(out))
        except FileExistsError as exc:
            raise OutputError(str(exc)) from None
    try:
        import gpaw  # noqa: F401
    except ImportError:
        fail("GPAW is not installed: CC=g++ pip install -e '.[dft]' (or pass an ASE calculator "
              "to calib.data.labelers.label from Python)", "usage")
    structs, skipped = read_readable(structures, "structure to label")
    from calib.data.labelers import GPAWFactory, label

    report = label(structs, out, GPAWFactory(cutoff=cutoff, kdensity=kdensity, xc=xc),
                   progress=output.progress, retry_failed=retry_failed, overwrite=overwrite)
    if output.as_json:
        emit_json({**report.as_dict(), "skipped": [i.as_dict() for i in skipped]})
    else:
        report_issues(skipped, output.as_json)
        typer.echo(f"{report.n_labelled} labelled, {report.n_done_before} already done, "
                   f"{len(report.failures)} failed in {report.seconds:.0f} s; written to {out}")
        if getattr(report, "repaired", None):
            typer.echo(f"  {report.repaired}", err=True)
        for f in report.failures:
            typer.echo(f"  failed #{f['index']} {f['name']}: {f['error']}", err=True)
    if report.failures:  # a valid structure that could not be labelled: the run did not finish its work
        raise typer.Exit(code=1)
