"""The ``calib`` command. Every command takes ``--json`` for pipelines.

Human-readable output goes to stdout, progress bars to stderr; with ``--json``
stdout carries exactly one JSON document.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Calibrated uncertainties and softening diagnostics for universal interatomic potentials.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks that print ratios measured in one run.")
app.add_typer(bench_app, name="bench")


def _jsonable(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):
        return _jsonable(obj.item())
    return obj


def emit_json(obj) -> None:
    typer.echo(json.dumps(_jsonable(obj), indent=1))


def _fail(msg: str, as_json: bool) -> None:
    if as_json:
        emit_json({"error": msg})
    else:
        typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code=1)


def _model(spec: str, device: str, as_json: bool = False):
    from .models import load_model

    try:
        return load_model(spec, device=device)
    except ValueError as exc:
        _fail(str(exc), as_json)


def _read(paths: List[Path], as_json: bool):
    from .structures import read_structures

    try:
        return read_structures([str(p) for p in paths])
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc), as_json)


def _calibrated(path: Path, model):
    """The calibrated artifact at ``path`` for ``model`` (ArtifactError otherwise)."""
    from .artifact import Artifact, ArtifactError

    art = Artifact.load(path, model=model)
    if not art.calibrated:
        raise ArtifactError(f"{path} holds a Hessian only; run `calib calibrate` first")
    return art


def _store_corrections(calibration: Optional[Path], out: Optional[Path], model, corrections, as_json: bool) -> None:
    """Write ``calibration`` to ``out`` with these scalar corrections added (replacing same chemsys)."""
    from .artifact import ArtifactError

    if (calibration is None) != (out is None):
        _fail("give both --calibration and -o to store the corrections in an artifact", as_json)
    if out is None:
        return
    try:
        art = _calibrated(calibration, model)
    except ArtifactError as exc:
        _fail(str(exc), as_json)
    art.with_corrections(corrections).save(out)


def _report_issues(issues, as_json: bool) -> None:
    if issues and not as_json:
        typer.echo(f"skipped {len(issues)} structure(s):", err=True)
        for issue in issues:
            typer.echo(f"  {issue}", err=True)


@app.callback()
def _configure(
    threads: Optional[int] = typer.Option(
        None, "--threads", help="torch CPU threads. Default: $CALIB_THREADS, else $OMP_NUM_THREADS, else the "
        "usable CPUs minus those other processes keep busy now (docs/scaling.md)"),
):
    """Calibrated uncertainties and softening diagnostics for universal interatomic potentials."""
    from .threads import configure_threads

    try:
        configure_threads(threads)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None


def _client(workers: Optional[int], scheduler: Optional[str], as_json: bool):
    """A dask Client for --workers / --scheduler, or None."""
    if workers is None and not scheduler:
        return None
    if workers is not None and scheduler:
        _fail("give --workers or --scheduler, not both", as_json)
    if workers is not None and workers < 1:
        _fail(f"--workers must be >= 1, got {workers}", as_json)
    try:
        from .distributed import start_client

        return start_client(workers=workers, scheduler=scheduler)
    except ImportError:
        _fail("--workers/--scheduler need dask.distributed: pip install 'dask[distributed]'", as_json)
    except OSError as exc:
        _fail(f"could not reach the dask scheduler {scheduler}: {exc}", as_json)


WorkersOpt = typer.Option(None, "--workers", help="run batches on a new dask LocalCluster of N worker processes")
SchedulerOpt = typer.Option(None, "--scheduler", help="run batches on the dask cluster at this address "
                            "(e.g. tcp://host:8786, from dask-jobqueue)")
ModelOpt = typer.Option("chgnet", "--model", help="'chgnet' (CHGNet 0.3.0, shipped), 'chgnet:VERSION', "
                        "'mace-small' (shipped, for tests) or a MACE .model file (MACE-MP-0, fine-tuned)")
DeviceOpt = typer.Option("cpu", "--device", help="cpu or cuda")
JsonOpt = typer.Option(False, "--json", help="print one JSON document on stdout")


@app.command()
def hessian(
    structures: List[Path] = typer.Argument(..., help="unlabelled structure files (extxyz, CIF, POSCAR, ASE db)"),
    out: Path = typer.Option(..., "-o", "--out", help="artifact to write (netCDF)"),
    model: str = ModelOpt,
    batch_size: int = typer.Option(16, "--batch-size"),
    device: str = DeviceOpt,
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="resume file, saved every K batches"),
    checkpoint_every: int = typer.Option(10, "--checkpoint-every"),
    force_weight: float = typer.Option(0.0, "--force-weight", help="add force rows Σ JᵀJ with this weight"),
    workers: Optional[int] = WorkersOpt,
    scheduler: Optional[str] = SchedulerOpt,
    as_json: bool = JsonOpt,
):
    """Accumulate the LLPR pseudo-Hessian H = Σ f fᵀ over unlabelled structures."""
    from .pipeline import build_hessian

    if (workers is not None or scheduler) and checkpoint is not None:
        _fail("--checkpoint is for serial runs; drop it with --workers/--scheduler", as_json)
    structs = _read(structures, as_json)
    m = _model(model, device, as_json)
    client = _client(workers, scheduler, as_json)
    try:
        art, issues = build_hessian(m, structs, batch_size=batch_size, force_weight=force_weight,
                                    checkpoint=checkpoint, checkpoint_every=checkpoint_every,
                                    progress=not as_json, source=",".join(map(str, structures)), client=client)
    except ValueError as exc:
        _fail(str(exc), as_json)
    finally:
        if client is not None:
            from .distributed import close_client

            close_client(client)
    art.save(out)
    L = art.llpr
    summary = {"out": str(out), "n_structures": L.n_structures_, "n_features": L.n_features, "rank": L.rank_,
               "largest_eigenvalue": float(L.eigenvalues_[-1]), "seconds": art.attrs["hessian_seconds"],
               "skipped": [i.as_dict() for i in issues]}
    if as_json:
        emit_json(summary)
    else:
        _report_issues(issues, as_json)
        typer.echo(f"H from {L.n_structures_} structures: rank {L.rank_}/{L.n_features} "
                   f"(eigenvalues > 1e-6 of the largest); written to {out}")


@app.command("calibrate")
def calibrate_cmd(
    labelled: List[Path] = typer.Argument(..., help="labelled structures (extxyz/ASE db: energy eV, forces eV/Å)"),
    hessian_path: Path = typer.Option(..., "--hessian", help="artifact from `calib hessian`"),
    out: Path = typer.Option(..., "-o", "--out", help="calibrated artifact to write (netCDF)"),
    model: str = ModelOpt,
    target: str = typer.Option("both", "--target",
                               help="residuals for the NLL: both ((α², ς²) per observable), energy or forces"),
    alpha: float = typer.Option(0.1, "--alpha", help="conformal miscoverage level (intervals aim at 1 − α)"),
    classes: str = typer.Option("none", "--classes",
                                help="Mondrian classes: K (mixture of ≤K environment classes), element, chemsys "
                                     "or none"),
    min_class_size: int = typer.Option(30, "--min-class-size", help="smaller classes use the global quantile"),
    energy_folds: int = typer.Option(5, "--energy-folds",
                                     help="cross-fit the element reference over K folds of structures for the "
                                          "energy scores (0: in-sample, as calib 0.1.0)"),
    batch_size: int = typer.Option(16, "--batch-size"),
    device: str = DeviceOpt,
    as_json: bool = JsonOpt,
):
    """Fit α², ς² (Gaussian NLL), the per-element energy reference and conformal quantiles on labelled data."""
    from .artifact import Artifact, ArtifactError
    from .pipeline import calibrate

    structs = _read(labelled, as_json)
    m = _model(model, device, as_json)
    try:
        art = Artifact.load(hessian_path, model=m)
        res = calibrate(art, m, structs, target=target, batch_size=batch_size, progress=not as_json,
                        alpha=alpha, classes=_parse_classes(classes, as_json), min_class_size=min_class_size,
                        energy_folds=energy_folds or None)
    except (ArtifactError, ValueError) as exc:
        _fail(str(exc), as_json)
    res.artifact.save(out)
    summary = {"out": str(out), **res.summary, "skipped": [i.as_dict() for i in res.issues]}
    if as_json:
        emit_json(summary)
    else:
        _report_issues(res.issues, as_json)
        s = res.summary
        typer.echo(f"calibrated on {s['n_structures']} structures ({target}): {s['regularisation_note']}")
        typer.echo(f"  energy: RMSE {1000 * s['energy_rmse_per_atom']:.1f} meV/atom after element reference, "
                   f"NLL {s['energy_nll']:.3f}, Spearman(σ, |err|) {s['energy_spearman']:.2f}")
        if "force_nll" in s:
            typer.echo(f"  forces: MAE {s['force_mae']:.3f} eV/Å, NLL {s['force_nll']:.3f}, "
                       f"Spearman(σ, |err|) {s['force_spearman']:.2f}")
        for name, q in s["conformal_quantile"].items():
            fb = s["conformal_fallback"].get(name) or {}
            note = f" ({len(fb)} class(es) on the global quantile)" if fb else ""
            typer.echo(f"  conformal {name:<17} q = {q:.3f} at α = {alpha}{note}")
        typer.echo(f"written to {out}")


def _parse_classes(classes: str, as_json: bool):
    c = classes.strip().lower()
    if c in ("none", "0", ""):
        return None
    if c.isdigit():
        return int(c)
    if c in ("element", "chemsys"):
        return c
    _fail(f"--classes must be an integer, 'element', 'chemsys' or 'none', got {classes!r}", as_json)


@app.command("evaluate")
def evaluate_cmd(
    labelled: List[Path] = typer.Argument(..., help="held-out labelled structures (energy eV, forces eV/Å)"),
    calibration: Path = typer.Option(..., "--calibration", help="calibrated artifact from `calib calibrate`"),
    model: str = ModelOpt,
    forces: bool = typer.Option(True, "--forces/--no-forces", help="force targets (exact force σ: slower)"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="folder for calibration plots (PNG)"),
    batch_size: int = typer.Option(16, "--batch-size"),
    device: str = DeviceOpt,
    as_json: bool = JsonOpt,
):
    """Coverage, width, NLL, ENCE, miscalibration area and Spearman of σ on held-out labelled data."""
    from .artifact import ArtifactError
    from .metrics import format_report
    from .pipeline import evaluate

    structs = _read(labelled, as_json)
    m = _model(model, device, as_json)
    try:
        art = _calibrated(calibration, m)
        res = evaluate(art, m, structs, batch_size=batch_size, forces=forces, progress=not as_json,
                       return_points=plot is not None)
    except (ArtifactError, ValueError) as exc:
        _fail(str(exc), as_json)
    points = res.pop("points", None)
    if plot is not None:
        from .plots import evaluation_plots

        res["plots"] = evaluation_plots(points, plot, alpha=res["alpha"])
    if as_json:
        emit_json(res)
        return
    for s in res["skipped"]:
        typer.echo(f"skipped #{s['index']} {s['name']}: {s['problem']}", err=True)
    typer.echo(f"{res['n_structures']} held-out structures; intervals at α = {res['alpha']} "
               "(energies total eV, forces eV/Å)")
    typer.echo(format_report(res, res["alpha"] if res["alpha"] is not None else 0.0))
    if plot is not None:
        typer.echo("plots: " + ", ".join(res["plots"]))


@app.command("predict")
def predict_cmd(
    structures: List[Path] = typer.Argument(..., help="structure files"),
    calibration: Path = typer.Option(..., "--calibration", help="calibrated artifact"),
    model: str = ModelOpt,
    forces: bool = typer.Option(False, "--forces", help="also per-component force σ (eV/Å)"),
    force_mode: str = typer.Option("exact", "--force-mode", help="exact or approx"),
    batch_size: int = typer.Option(16, "--batch-size"),
    device: str = DeviceOpt,
    as_json: bool = JsonOpt,
):
    """Energies (total eV) with σ (eV); with --forces the largest force σ (eV/Å) per structure."""
    from .artifact import Artifact, ArtifactError
    from .predictor import CalibratedPredictor, to_records

    structs = _read(structures, as_json)
    m = _model(model, device, as_json)
    try:
        predictor = CalibratedPredictor(m, Artifact.load(calibration))
        ds = predictor.predict(structs, forces=forces, force_mode=force_mode, batch_size=batch_size,
                               progress=not as_json)
    except (ArtifactError, ValueError) as exc:
        _fail(str(exc), as_json)
    # one record per input structure, in input order; a skipped one carries `error` instead of numbers
    all_records = to_records(ds, structs)
    if as_json:
        emit_json(all_records)
        return
    records = [r for r in all_records if "error" not in r]
    skipped = [r for r in all_records if "error" in r]
    if skipped:
        typer.echo(f"skipped {len(skipped)} structure(s):", err=True)
        for r in skipped:
            typer.echo(f"  structure {r['index']} ({r['name']}): {r['error']}", err=True)
    extra = None
    if records and "energy_interval" in records[0]:
        extra = [("E interval (eV)", 25, lambda r: "none (see below)" if r["energy_interval"] is None
                  else f"[{r['energy_interval'][0]:.3f}, {r['energy_interval'][1]:.3f}]")]
    _print_table(records, forces, extra)
    for r in records:
        if r.get("energy_interval_reason"):
            typer.echo(f"structure {r['index']} ({r['name']}): {r['energy_interval_reason']}")


def _print_table(records, forces: bool, extra=None) -> None:
    head = f"{'#':>4} {'name':<14} {'chemsys':<10} {'N':>3} {'E (eV)':>12} {'σ_E (eV)':>9} {'σ_E/N (meV)':>11}"
    if forces:
        head += f" {'max|F|':>7} {'max σ_F':>8}"
    if extra:
        head += "".join(f" {h:>{w}}" for h, w, _ in extra)
    typer.echo(head)
    typer.echo("-" * len(head))
    for r in records:
        line = (f"{r['index']:>4} {r['name'][:14]:<14} {r['chemsys'][:10]:<10} {r['n_atoms']:>3} "
                f"{r['energy']:>12.4f} {r['energy_sigma']:>9.4f} {1000 * r['energy_sigma'] / r['n_atoms']:>11.2f}")
        if forces:
            line += f" {r['max_force']:>7.3f} {r['max_force_sigma']:>8.4f}"
        if extra:
            line += "".join(f" {fmt(r):>{w}}" for _, w, fmt in extra)
        typer.echo(line)


@app.command("label")
def label_cmd(
    structures: List[Path] = typer.Argument(..., help="structures to label (extxyz, CIF, POSCAR, ASE db)"),
    out: Path = typer.Option(..., "-o", "--out", help="labelled extxyz, appended to as each structure finishes"),
    cutoff: float = typer.Option(450.0, "--cutoff", help="plane-wave cutoff (eV)"),
    kdensity: float = typer.Option(3.0, "--kdensity", help="k-point density (points per Å⁻¹)"),
    xc: str = typer.Option("PBE", "--xc", help="exchange-correlation functional"),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="retry structures in OUT.errors.jsonl"),
    as_json: bool = JsonOpt,
):
    """Reference energies (eV), forces (eV/Å) and stress (eV/Å³) with GPAW PAW (plane waves).

    Rerunning with the same OUT skips finished structures; failures go to
    OUT.errors.jsonl and the run goes on.
    """
    from .labelers import GPAWFactory, label

    try:
        import gpaw  # noqa: F401
    except ImportError:
        _fail("GPAW is not installed: CC=g++ pip install 'calib[dft]' (or pass an ASE calculator "
              "to calib.labelers.label from Python)", as_json)
    structs = _read(structures, as_json)
    report = label(structs, out, GPAWFactory(cutoff=cutoff, kdensity=kdensity, xc=xc),
                   progress=not as_json, retry_failed=retry_failed)
    if as_json:
        emit_json(report.as_dict())
        return
    typer.echo(f"{report.n_labelled} labelled, {report.n_done_before} already done, "
               f"{len(report.failures)} failed in {report.seconds:.0f} s; written to {out}")
    for f in report.failures:
        typer.echo(f"  failed #{f['index']} {f['name']}: {f['error']}", err=True)
    if report.failures:
        raise typer.Exit(code=1)


@app.command("eos")
def eos_cmd(
    model: str = ModelOpt,
    elements: Optional[List[str]] = typer.Option(None, "--element", help="only these elements (repeatable)"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="write B_model/B_WIEN2k vs Z to this image"),
    batch_size: int = typer.Option(32, "--batch-size"),
    device: str = DeviceOpt,
    as_json: bool = JsonOpt,
):
    """Bulk moduli (GPa) of ASE's dcdft crystals: Birch–Murnaghan fits of the model vs WIEN2k PBE."""
    from .eos import plot_eos, run_eos

    m = _model(model, device, as_json)
    try:
        records, summary = run_eos(m, elements, batch_size=batch_size, progress=not as_json)
    except ValueError as exc:
        _fail(str(exc), as_json)
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


@app.command("softening")
def softening_cmd(
    labelled: List[Path] = typer.Argument(..., help="labelled structures (energy eV, forces eV/Å)"),
    model: str = ModelOpt,
    n_bootstrap: int = typer.Option(2000, "--n-bootstrap", help="bootstrap resamples of structures"),
    confidence: float = typer.Option(0.95, "--confidence", help="level of the confidence intervals"),
    seed: int = typer.Option(0, "--seed"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="folder for force parity plots (PNG)"),
    calibration: Optional[Path] = typer.Option(None, "--calibration",
                                               help="artifact to which the corrections are added (with -o)"),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="write CALIBRATION with every correction"),
    batch_size: int = typer.Option(16, "--batch-size"),
    device: str = DeviceOpt,
    as_json: bool = JsonOpt,
):
    """Softening scale s (slope of model vs reference forces) with a bootstrap CI, correction c, MAE, cMAE."""
    from .pipeline import measure_softening
    from .softening import ScalarCorrection

    structs = _read(labelled, as_json)
    m = _model(model, device, as_json)
    run_ = measure_softening(m, structs, batch_size=batch_size, n_bootstrap=n_bootstrap, confidence=confidence,
                             seed=seed, progress=not as_json)
    results, issues = run_.results, run_.issues
    if not results:
        _fail("no valid labelled structures: " + "; ".join(str(i) for i in issues[:5]), as_json)
    plots = run_.parity_plots(plot) if plot is not None else []
    _store_corrections(calibration, out, m, ScalarCorrection.from_results(results), as_json)
    records = [r.as_dict() for r in results.values()]
    if as_json:
        emit_json({"records": records, "skipped": [i.as_dict() for i in issues], "plots": plots,
                   "out": str(out or "")})
        return
    _report_issues(issues, as_json)
    head = (f"{'chemsys':<10} {'N':>3} {'s':>6} {'CI of s':>15} {'c':>6} {'R²':>5} {'MAE':>6} {'cMAE':>6} "
            f"{'cMAE_loo':>8}  (forces, eV/Å)")
    typer.echo(head)
    typer.echo("-" * len(head))
    for r in results.values():
        loo = f"{r.cmae_loo:>8.3f}" if r.cmae_loo is not None else f"{'-':>8}"
        typer.echo(f"{r.chemsys:<10} {r.n_structures:>3} {r.softening_scale:>6.3f} "
                   f"[{r.softening_ci[0]:.3f}, {r.softening_ci[1]:.3f}] {r.correction:>6.3f} {r.r2:>5.2f} "
                   f"{r.mae:>6.3f} {r.cmae:>6.3f} {loo}")
    if plots:
        typer.echo(f"parity plots in {plot}")


@app.command("decide")
def decide_cmd(
    labelled: Path = typer.Argument(..., help="labelled structures (energy eV, forces eV/Å)"),
    targets: Optional[Path] = typer.Argument(None, help="structures you want to simulate (default: LABELLED)"),
    calibration: Path = typer.Option(..., "--calibration", help="calibrated artifact from `calib calibrate`"),
    force_tol: float = typer.Option(0.1, "--force-tol", help="tolerated force error (eV/Å): MAE, cMAE_loo, σ"),
    min_labels: int = typer.Option(3, "--min-labels", help="labelled structures needed per chemistry"),
    max_untrusted: float = typer.Option(0.1, "--max-untrusted", help="tolerated fraction of untrusted targets"),
    confidence: float = typer.Option(0.95, "--confidence", help="level of the CI of the softening scale"),
    n_requests: int = typer.Option(5, "--n-requests", help="structures to request per 'label' chemistry"),
    request_out: Optional[Path] = typer.Option(None, "--request-out", help="write requested structures (extxyz)"),
    out: Optional[Path] = typer.Option(None, "-o", "--out",
                                       help="write CALIBRATION with the corrections of the 'scale' chemistries"),
    model: str = ModelOpt,
    batch_size: int = typer.Option(16, "--batch-size"),
    device: str = DeviceOpt,
    as_json: bool = JsonOpt,
):
    """Per chemistry: accept, scale (one scalar on forces, stress and energy differences) or label."""
    from .artifact import ArtifactError
    from .decide import Thresholds
    from .pipeline import decide, decision_corrections, write_requests

    lab = _read([labelled], as_json)
    tgt = _read([targets], as_json) if targets is not None else None
    m = _model(model, device, as_json)
    th = Thresholds(force_tol=force_tol, confidence=confidence, min_labels=min_labels,
                    max_untrusted=max_untrusted, n_requests=n_requests)
    try:
        art = _calibrated(calibration, m)
        decisions, issues = decide(art, m, lab, tgt, thresholds=th, batch_size=batch_size, progress=not as_json)
    except (ArtifactError, ValueError) as exc:
        _fail(str(exc), as_json)
    if out is not None:
        _store_corrections(calibration, out, m, decision_corrections(decisions), as_json)
    requested = [i for d in decisions for i in d.label_requests]
    if request_out is not None:
        write_requests(tgt if tgt is not None else lab, requested, request_out)
    records = [d.as_dict() for d in decisions]
    if as_json:
        emit_json({"records": records, "thresholds": th.__dict__, "request_out": str(request_out or ""),
                   "requests_index_into": "TARGETS" if tgt is not None else "LABELLED",
                   "skipped": [i.as_dict() for i in issues]})
        return
    _report_issues(issues, as_json)
    head = f"{'chemsys':<10} {'N':>3} {'s':>6} {'CI of s':>15} {'c':>6} {'MAE':>6} {'cMAE_loo':>8} {'decision':>8}"
    typer.echo(head + "   (forces, eV/Å; tolerance " + f"{force_tol} eV/Å)")
    typer.echo("-" * len(head))
    for d in decisions:
        r = d.as_dict()
        loo = f"{r['cmae_loo']:>8.3f}" if r["cmae_loo"] is not None else f"{'-':>8}"
        typer.echo(f"{r['chemsys']:<10} {r['n_structures']:>3} {r['softening_scale']:>6.3f} "
                   f"[{r['softening_ci'][0]:.3f}, {r['softening_ci'][1]:.3f}] {r['correction']:>6.3f} "
                   f"{r['mae']:>6.3f} {loo} {d.decision:>8}")
        for reason in d.reasons:
            typer.echo(f"    - {reason}")
        if d.label_requests:
            typer.echo(f"    label next: {d.label_requests}")
    if request_out is not None:
        typer.echo(f"{len(requested)} requested structure(s) written to {request_out}")


@app.command("neb")
def neb_cmd(
    images: List[Path] = typer.Argument(..., help="NEB images in path order (extxyz, ASE trajectory)"),
    calibration: Path = typer.Option(..., "--calibration", help="calibrated artifact from `calib calibrate`"),
    reference: Optional[Path] = typer.Option(None, "--reference",
                                             help="labelled images (same order) to compare with, e.g. DFT"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="write the profile with 1σ/2σ bands (PNG)"),
    model: str = ModelOpt,
    batch_size: int = typer.Option(16, "--batch-size"),
    device: str = DeviceOpt,
    as_json: bool = JsonOpt,
):
    """Image energies relative to image 0 (eV) with their covariance; forward, reverse and KRA barriers with
    calibrated intervals, raw and with the stored scalar correction."""
    from .artifact import Artifact, ArtifactError
    from .neb import band, plot_band, summary
    from .predictor import CalibratedPredictor
    from .structures import get_energy

    structs = _read(images, as_json)
    ref = None
    if reference is not None:
        labelled = _read([reference], as_json)
        ref = [get_energy(a) for a in labelled]
        if len(ref) != len(structs) or any(e is None for e in ref):
            _fail(f"--reference must hold one labelled image per image ({len(structs)}), got {len(ref)} "
                  f"with {sum(e is None for e in ref)} unlabelled", as_json)
    m = _model(model, device, as_json)
    try:
        ds = band(CalibratedPredictor(m, Artifact.load(calibration)), structs, batch_size=batch_size)
    except (ArtifactError, ValueError) as exc:
        _fail(str(exc), as_json)
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


@app.command("screen")
def screen_cmd(
    structures: List[Path] = typer.Argument(..., help="structure files (extxyz, ASE .db, any ASE format) or "
                                            "folders of CIF/POSCAR/... files; streamed, never held whole"),
    calibration: Path = typer.Option(..., "--calibration", help="calibrated artifact (calib calibrate)"),
    out: Path = typer.Option(..., "-o", "--out", help="results (netCDF, one row per structure, grows per batch)"),
    csv: Optional[Path] = typer.Option(None, "--csv", help="also write the rows as CSV at the end"),
    forces: bool = typer.Option(False, "--forces", help="force σ and conformal half-widths (approximate mode, "
                                "≈ 2–3× the cost of energies and forces alone) and the --force-tol check"),
    force_tol: float = typer.Option(0.1, "--force-tol", help="largest conformal force half-width trusted, eV/Å "
                                    "(with --forces)"),
    energy_tol: Optional[float] = typer.Option(None, "--energy-tol", help="largest energy half-width trusted, "
                                               "eV/atom (default: no energy tolerance)"),
    batch_size: int = typer.Option(16, "--batch-size", help="structures per batch; each batch is committed to "
                                   "the results file"),
    resume: bool = typer.Option(False, "--resume", help="continue an interrupted run into the same -o"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing -o"),
    workers: Optional[int] = WorkersOpt,
    scheduler: Optional[str] = SchedulerOpt,
    model: Optional[str] = typer.Option(None, "--model", help="default: the model named in the artifact"),
    device: str = DeviceOpt,
    as_json: bool = JsonOpt,
):
    """Screen structures: energy, σ, interval, Q score, (force σ), trusted or not and why, per structure."""
    from .artifact import ArtifactError
    from .screen import check_options, screen

    try:
        check_options(batch_size, force_tol, energy_tol)  # before a cluster starts or a model loads
    except ValueError as exc:
        _fail(str(exc), as_json)
    if not calibration.is_file():
        _fail(f"calibration artifact {calibration} does not exist", as_json)
    inputs = {p.resolve() for p in structures} | {calibration.resolve()}
    for o in filter(None, (out, csv)):
        if o.resolve() in inputs:
            _fail(f"{o} is an input; write the results to another file", as_json)
        if not o.resolve().parent.is_dir():
            _fail(f"the folder of {o} does not exist", as_json)
    if csv is not None and csv.exists() and not overwrite:
        _fail(f"{csv} exists; pass --overwrite to replace it", as_json)
    client = _client(workers, scheduler, as_json)
    try:
        summary = screen([str(p) for p in structures], calibration, out, model=model, device=device,
                         forces=forces, force_tol=force_tol, energy_tol=energy_tol, batch_size=batch_size,
                         resume=resume, overwrite=overwrite, client=client, progress=not as_json)
    except (ValueError, FileExistsError, ArtifactError) as exc:
        _fail(str(exc), as_json)
    finally:
        if client is not None:
            from .distributed import close_client

            close_client(client)
    if csv is not None:
        from .screen import read_results

        read_results(out).to_dataframe().to_csv(csv)
        summary["csv"] = str(csv)
    if as_json:
        emit_json(summary)
        return
    typer.echo(f"{summary['n_total']} structures: {summary['n_trusted']} trusted, {summary['n_untrusted']} "
               f"untrusted, {summary['n_failed']} failed; rows in {out}" + (f" and {csv}" if csv else ""))
    typer.echo(f"{'chemsys':<16} {'trusted':>8} {'untrusted':>10} {'failed':>7}")
    for chem, c in summary["by_chemsys"].items():
        typer.echo(f"{chem:<16} {c['trusted']:>8} {c['untrusted']:>10} {c['failed']:>7}")
    if summary["reasons"]:
        typer.echo("not trusted because: " + "; ".join(f"{k} ({v})" for k, v in summary["reasons"].items()))


@app.command()
def demo(
    out: Path = typer.Option(Path("calib-demo"), "--out", help="folder for the artifact and records"),
    model: str = ModelOpt,
    device: str = DeviceOpt,
    as_json: bool = JsonOpt,
):
    """The main job on the embedded default: CHGNet 0.3.0 + the shipped data (or another --model)."""
    from .demo import run_demo

    result = run_demo(out, device=device, progress=not as_json, echo=None if as_json else typer.echo, model=model)
    if as_json:
        emit_json(result)


@bench_app.command("llpr")
def bench_llpr(
    device: str = DeviceOpt,
    n_structures: int = typer.Option(16, "--n-structures"),
    batch_size: int = typer.Option(8, "--batch-size"),
    repeats: int = typer.Option(2, "--repeats", help="timings are the best of this many runs"),
    as_json: bool = JsonOpt,
):
    """Cost ratios of LLPR accumulation and σ against plain CHGNet inference, measured now."""
    from .bench import bench_llpr as run

    _print_bench(run(device=device, n_structures=n_structures, batch_size=batch_size, repeats=repeats,
                     progress=not as_json), as_json)


def _print_bench(result: dict, as_json: bool) -> None:
    if as_json:
        emit_json(result)
        return
    for key, value in result.items():
        typer.echo(f"{key:<40} {value:.4g}" if isinstance(value, float) else f"{key:<40} {value}")


@bench_app.command("screen")
def bench_screen_cmd(
    device: str = DeviceOpt,
    n_structures: int = typer.Option(64, "--n-structures", help="perturbed prototypes screened"),
    batch_size: int = typer.Option(16, "--batch-size"),
    repeats: int = typer.Option(2, "--repeats", help="timings are the best of this many runs"),
    as_json: bool = JsonOpt,
):
    """Throughput of calib screen ÷ CHGNet's own batched energies + forces (target ≥ 0.8), measured now."""
    from .bench import bench_screen

    _print_bench(bench_screen(device=device, n_structures=n_structures, batch_size=batch_size,
                              repeats=repeats), as_json)


@bench_app.command("conformal")
def bench_conformal_cmd(
    n_scores: int = typer.Option(1_000_000, "--n-scores"),
    n_classes: int = typer.Option(16, "--n-classes", help="Mondrian classes"),
    as_json: bool = JsonOpt,
):
    """Seconds to fit split and Mondrian conformal on N scores and give N intervals (target ≤ 1 s)."""
    from .bench import bench_conformal

    _print_bench(bench_conformal(n_scores=n_scores, n_classes=n_classes), as_json)


@bench_app.command("dask")
def bench_dask_cmd(
    device: str = DeviceOpt,
    n_structures: int = typer.Option(96, "--n-structures"),
    batch_size: int = typer.Option(8, "--batch-size"),
    as_json: bool = JsonOpt,
):
    """The same Hessian work on 1 and 2 dask workers: seconds and speed-up, measured now."""
    from .bench import bench_dask

    _print_bench(bench_dask(n_structures=n_structures, batch_size=batch_size, device=device), as_json)


def main() -> None:  # console-script entry point
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    try:
        app()
    except BrokenPipeError:  # `calib predict ... | head`
        sys.exit(0)


if __name__ == "__main__":
    main()
