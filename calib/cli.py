"""The ``calib`` command. Every command takes ``--json`` for pipelines.

One contract for every command (docs/cli.md, calib.errors):

- parameters and output paths are checked before any model loads or any
  structure is read;
- exit 0 when every valid structure was processed (skipped ones reported), 1
  when the run failed or nothing could be processed, 2 for a usage error;
- under ``--json`` stdout carries exactly one JSON document in every case,
  ``{"error": ..., "kind": ...}`` on failure, and ``warnings: [...]`` (calib's
  own conditions, each once); without it, results on stdout and errors,
  warnings and progress on stderr; no traceback for a user error
  (``CALIB_DEBUG=1`` shows one for an internal error);
- an output never overwrites an input, nor an existing file without
  ``--overwrite``, and is written only when the command succeeds.
"""

from __future__ import annotations

import json
import math
import os
import sys
import warnings
from pathlib import Path
from typing import List, Optional

import typer
from typer.core import TyperGroup

from .errors import (CalibError, CalibWarning, InputError, UsageError, check_device, check_outputs,
                     check_plot_folder, finite, fraction, non_negative_int, positive_int)

_RUN: dict = {"warnings": None}


def _warning_messages() -> list[str]:
    out = []
    for w in _RUN["warnings"] or []:
        msg = str(w.message)
        if msg not in out:
            out.append(msg)
    return out


def _classify(exc: BaseException) -> tuple[str, int, str]:
    """(kind, exit code, message) of an exception that ends a command."""
    from .ncio import ArtifactError
    from .structures import StructureError

    if isinstance(exc, CalibError):
        return exc.kind, exc.exit_code, str(exc)
    if _is_click_error(exc):  # a parse error (typer vendors its own click: tested by shape)
        return ("usage" if exc.exit_code == 2 else "error"), exc.exit_code, exc.format_message()
    if isinstance(exc, (KeyboardInterrupt, typer.Abort)):
        return "interrupted", 130, "interrupted"
    if isinstance(exc, ArtifactError):
        return "artifact", 1, str(exc)
    if isinstance(exc, StructureError):
        return "input", 1, str(exc)
    if isinstance(exc, FileExistsError):
        return "output", 2, str(exc)
    if isinstance(exc, FileNotFoundError):
        return "input", 1, str(exc)
    if isinstance(exc, MemoryError):
        return "resources", 1, "out of memory: lower --batch-size or split the input"
    if isinstance(exc, OSError):
        return "io", 1, f"{type(exc).__name__}: {exc}"
    if isinstance(exc, ValueError):
        return "data", 1, str(exc)
    return "internal", 1, (f"internal error ({type(exc).__name__}: {exc}); this is a bug in calib; rerun with "
                           "CALIB_DEBUG=1 for the traceback")


def _is_click_error(exc: BaseException) -> bool:
    return all(hasattr(exc, a) for a in ("format_message", "exit_code", "show"))


class CalibGroup(TyperGroup):
    """The top-level group: runs a command under the error contract above."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        argv = list(sys.argv[1:] if args is None else args)
        as_json = "--json" in argv
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("ignore")  # third-party notices (pymatgen, torch, e3nn) stay out of the output
            warnings.simplefilter("always", CalibWarning)
            _RUN["warnings"] = caught
            try:
                code = super().main(args=argv, prog_name=prog_name, complete_var=complete_var,
                                    standalone_mode=False, **extra)
                code = code if isinstance(code, int) else 0
            except BaseException as exc:  # noqa: BLE001 - every ending goes through the contract
                if isinstance(exc, SystemExit):
                    raise
                kind, code, msg = _classify(exc)
                if kind == "internal" and os.environ.get("CALIB_DEBUG"):
                    raise
                if as_json:
                    emit_json({"error": msg, "kind": kind})
                elif _is_click_error(exc):
                    exc.show()
                else:
                    typer.echo(f"error: {msg}", err=True)
            finally:
                messages = _warning_messages()
                _RUN["warnings"] = None
        if not as_json:
            for msg in messages:
                typer.echo(f"warning: {msg}", err=True)
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(cls=CalibGroup, add_completion=False, no_args_is_help=True,
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
    """Print ``obj`` as the command's one JSON document (with ``warnings`` when it is a dict)."""
    if isinstance(obj, dict) and _RUN["warnings"] is not None:
        obj = {**obj, "warnings": _warning_messages()}
    typer.echo(json.dumps(_jsonable(obj), indent=1))


def _fail(msg: str, kind: str = "input") -> None:
    """End the command with an error of this kind (usage errors exit 2, the others 1)."""
    raise (UsageError(msg) if kind == "usage" else CalibError(msg, kind=kind))


def _model(spec: Optional[str], device: str, artifact=None):
    """The model ``--model`` names; when it is not given, the one ``artifact`` (a loaded
    :class:`~calib.artifact.Artifact`) was fitted with, CHGNet 0.3.0 without an artifact."""
    from .models import load_model, model_spec

    feature_set = "last"
    if spec is None and artifact is not None:
        spec, feature_set = model_spec(artifact.model_info), artifact.model_info.get("feature_set", "last")
    spec = spec or "chgnet"
    try:
        return load_model(spec, device=device, feature_set=feature_set)
    except (ValueError, FileNotFoundError) as exc:
        raise UsageError(f"--model {spec}: {exc}") from None


def _model_and_artifact(spec: Optional[str], device: str, path: Optional[Path]):
    """(model, artifact): the artifact at ``path`` read once (None without a path), before the model loads,
    and the model ``--model`` names or that artifact was fitted with. The model is not checked against the
    artifact here: :func:`_calibrated`, ``check_model`` or the predictor do it."""
    from .artifact import Artifact

    art = Artifact.load(path) if path is not None else None
    return _model(spec, device, art), art


def _read(paths: List[Path], subset: Optional[dict] = None):
    """The structures of these files (InputError naming the file otherwise), subset by --every/--limit/
    --shuffle/--seed when given."""
    from .structures import read_structures, take_subset

    try:
        structs = read_structures([str(p) for p in paths])
    except (FileNotFoundError, ValueError) as exc:
        raise InputError(str(exc)) from None
    return take_subset(structs, **subset) if subset else structs


def _subset(every: int, limit: Optional[int], shuffle: bool, seed: int) -> dict:
    """Check the subset options (before any model loads)."""
    positive_int("--every", every)
    if limit is not None:
        positive_int("--limit", limit)
    non_negative_int("--seed", seed)
    return {"every": every, "limit": limit, "shuffle": shuffle, "seed": seed}


def _calibrated(art, path: Path, model):
    """``art`` (read from ``path``) when it is calibrated and was fitted with ``model`` (ArtifactError
    otherwise)."""
    from .artifact import ArtifactError

    art.check_model(model)
    if not art.calibrated:
        raise ArtifactError(f"{path} holds a Hessian only; run `calib calibrate` first")
    return art


def _stage(writers) -> None:
    """Write several outputs all or none: each ``(path, write(tmp_path))`` goes to a temporary file
    next to its path, and only when every one succeeded are they renamed into place."""
    staged = []
    try:
        for path, write in writers:
            tmp = f"{os.fspath(path)}.partial-{os.getpid()}"
            staged.append((tmp, path))
            write(tmp)
        for tmp, path in staged:
            os.replace(tmp, path)
    finally:
        for tmp, _ in staged:
            if os.path.exists(tmp):
                os.remove(tmp)


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
        raise UsageError(str(exc)) from None


def _check_workers(workers: Optional[int], scheduler: Optional[str]) -> None:
    if workers is not None and scheduler:
        _fail("give --workers or --scheduler, not both", "usage")
    if workers is not None:
        positive_int("--workers", workers)


def _client(workers: Optional[int], scheduler: Optional[str]):
    """A dask Client for --workers / --scheduler, or None."""
    if workers is None and not scheduler:
        return None
    _check_workers(workers, scheduler)
    try:
        from .distributed import start_client

        return start_client(workers=workers, scheduler=scheduler)
    except ImportError:
        _fail("--workers/--scheduler need dask.distributed: pip install 'dask[distributed]'", "usage")
    except OSError as exc:
        _fail(f"could not reach the dask scheduler {scheduler}: {exc}", "io")


def _common(batch_size: Optional[int] = None, device: Optional[str] = None) -> Optional[str]:
    """Check the options most commands share; returns the normalised device."""
    if batch_size is not None:
        positive_int("--batch-size", batch_size)
    return check_device(device) if device is not None else None


def Flag(default: bool, *names: str, help: str):  # noqa: N802 - reads like typer.Option
    """A boolean option shown as a flag in --help (no value after it)."""
    return typer.Option(default, *names, help=help, metavar="")


WorkersOpt = typer.Option(None, "--workers", help="run batches on a new dask LocalCluster of N worker processes")
SchedulerOpt = typer.Option(None, "--scheduler", help="run batches on the dask cluster at this address "
                            "(e.g. tcp://host:8786, from dask-jobqueue)")
ModelOpt = typer.Option("chgnet", "--model", help="'chgnet' (CHGNet 0.3.0, shipped), 'chgnet:VERSION', "
                        "'mace-small' (shipped, for tests) or a MACE .model file (MACE-MP-0, fine-tuned)")
DeviceOpt = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N or mps (checked before the model loads)")
BatchOpt = typer.Option(16, "--batch-size", help="structures per model call and per progress step; on CPU "
                        "forces and gradients run in chunks of at most 24 atoms whatever the batch, so memory "
                        "grows with it only for energies and features")
ArtModelOpt = typer.Option(None, "--model", help="default: the model the given artifact was fitted with (CHGNet "
                           "0.3.0 without one); or 'chgnet', 'chgnet:VERSION', 'mace-small' or a MACE .model file")
JsonOpt = Flag(False, "--json", help="print exactly one JSON document on stdout (errors too)")
QuietOpt = Flag(False, "--quiet", "-q", help="no progress bars on stderr")
OverwriteOpt = Flag(False, "--overwrite", help="replace existing output files")
EveryOpt = typer.Option(1, "--every", help="take every N-th structure of the input (after reading all files in "
                        "order)")
LimitOpt = typer.Option(None, "--limit", help="take at most N structures (after --every and --shuffle)")
ShuffleOpt = Flag(False, "--shuffle", help="shuffle the structures (with --seed) before --limit")
SeedOpt = typer.Option(0, "--seed", help="seed of --shuffle")


@app.command()
def hessian(
    structures: List[Path] = typer.Argument(..., help="unlabelled structure files (extxyz, CIF, POSCAR, ASE db), "
                                            "e.g. near-equilibrium structures like the model's training set; "
                                            "'-': extxyz on stdin"),
    out: Path = typer.Option(..., "-o", "--out", help="artifact to write (netCDF)"),
    every: int = EveryOpt,
    limit: Optional[int] = LimitOpt,
    shuffle: bool = ShuffleOpt,
    seed: int = SeedOpt,
    model: str = ModelOpt,
    batch_size: int = BatchOpt,
    device: str = DeviceOpt,
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="resume file (netCDF), saved every "
                                              "--checkpoint-every batches; rerun with it to continue"),
    checkpoint_every: int = typer.Option(10, "--checkpoint-every", help="batches between checkpoint saves"),
    force_weight: float = typer.Option(0.0, "--force-weight", help="≥ 0: add force rows Σ JᵀJ with this weight "
                                       "(d backward passes per batch: several times slower)"),
    workers: Optional[int] = WorkersOpt,
    scheduler: Optional[str] = SchedulerOpt,
    overwrite: bool = OverwriteOpt,
    quiet: bool = QuietOpt,
    as_json: bool = JsonOpt,
):
    """Accumulate the LLPR pseudo-Hessian H = Σ f fᵀ over unlabelled structures.

    Run time: about 20 structures of 10 atoms per second per core (energies only)."""
    from .pipeline import build_hessian

    device = _common(batch_size, device)
    positive_int("--checkpoint-every", checkpoint_every)
    finite("--force-weight", force_weight, minimum=0.0)
    _check_workers(workers, scheduler)
    if (workers is not None or scheduler) and checkpoint is not None:
        _fail("--checkpoint is for serial runs; drop it with --workers/--scheduler", "usage")
    check_outputs({"-o": out, "--checkpoint": checkpoint}, inputs=structures, overwrite=overwrite,
                  resumable=("--checkpoint",))
    structs = _read(structures, _subset(every, limit, shuffle, seed))
    m = _model(model, device)
    client = _client(workers, scheduler)
    try:
        art, issues = build_hessian(m, structs, batch_size=batch_size, force_weight=force_weight,
                                    checkpoint=checkpoint, checkpoint_every=checkpoint_every,
                                    progress=not quiet, source=",".join(map(str, structures)), client=client)
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
        typer.echo(f"H from {L.n_structures_} structures: rank {L.rank_}/{L.n_features} (eigenvalues above 1e-6 "
                   f"of the largest: the directions these structures determine); written to {out}")


@app.command("calibrate")
def calibrate_cmd(
    labelled: List[Path] = typer.Argument(..., help="labelled structures (extxyz/ASE db: energy eV, forces eV/Å); "
                                          "'-': extxyz on stdin"),
    hessian_path: Path = typer.Option(..., "--hessian", help="artifact from `calib hessian`"),
    out: Path = typer.Option(..., "-o", "--out", help="calibrated artifact to write (netCDF)"),
    every: int = EveryOpt,
    limit: Optional[int] = LimitOpt,
    shuffle: bool = ShuffleOpt,
    seed: int = SeedOpt,
    model: Optional[str] = ArtModelOpt,
    target: str = typer.Option("both", "--target",
                               help="residuals for the NLL: both ((α², ς²) per observable), energy or forces"),
    alpha: float = typer.Option(0.1, "--alpha", help="conformal miscoverage level in (0, 1): intervals aim at "
                                "1 − α coverage"),
    classes: str = typer.Option("none", "--classes",
                                help="Mondrian classes: K (mixture of ≤K environment classes), element, chemsys "
                                     "or none"),
    min_class_size: int = typer.Option(30, "--min-class-size", help="≥ 1: smaller classes use the global "
                                       "quantile"),
    energy_folds: int = typer.Option(5, "--energy-folds",
                                     help="cross-fit the element reference over K ≥ 2 folds of structures for the "
                                          "energy scores (0: in-sample, as calib 0.1.0)"),
    batch_size: int = BatchOpt,
    device: str = DeviceOpt,
    overwrite: bool = OverwriteOpt,
    quiet: bool = QuietOpt,
    as_json: bool = JsonOpt,
):
    """Fit α², ς² (Gaussian NLL), the per-element energy reference and conformal quantiles on labelled data.

    Run time: about 1 min per 100 structures of 10 atoms on 2 cores (the exact force gradients dominate)."""
    from .pipeline import calibrate

    device = _common(batch_size, device)
    if target not in ("both", "energy", "forces"):
        _fail(f"--target must be both, energy or forces, got {target!r}", "usage")
    fraction("--alpha", alpha)
    positive_int("--min-class-size", min_class_size)
    if non_negative_int("--energy-folds", energy_folds) == 1:
        _fail("--energy-folds must be 0 (in-sample) or ≥ 2", "usage")
    parsed_classes = _parse_classes(classes)
    check_outputs({"-o": out}, inputs=[*labelled, hessian_path], overwrite=overwrite)
    structs = _read(labelled, _subset(every, limit, shuffle, seed))
    m, art = _model_and_artifact(model, device, hessian_path)
    art.check_model(m)
    res = calibrate(art, m, structs, target=target, batch_size=batch_size, progress=not quiet,
                    alpha=alpha, classes=parsed_classes, min_class_size=min_class_size,
                    energy_folds=energy_folds or None)
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
        if s.get("force_components_zero_sigma"):
            typer.echo(f"  {s['force_components_zero_sigma']} force component(s) with σ = 0 by symmetry left out "
                       "of the NLL and the conformal scores")
        for name, q in s["conformal_quantile"].items():
            fb = s["conformal_fallback"].get(name) or {}
            note = f" ({len(fb)} class(es) on the global quantile)" if fb else ""
            typer.echo(f"  conformal {name:<17} q = {q:.3f} at α = {alpha}{note}")
        typer.echo(f"written to {out}")


def _parse_classes(classes: str):
    c = classes.strip().lower()
    if c in ("none", "0", ""):
        return None
    if c.isdigit():
        return int(c)
    if c in ("element", "chemsys"):
        return c
    _fail(f"--classes must be an integer, 'element', 'chemsys' or 'none', got {classes!r}", "usage")


@app.command("evaluate")
def evaluate_cmd(
    labelled: List[Path] = typer.Argument(..., help="held-out labelled structures (energy eV, forces eV/Å); "
                                          "'-': extxyz on stdin"),
    calibration: Path = typer.Option(..., "--calibration", help="calibrated artifact from `calib calibrate`"),
    every: int = EveryOpt,
    limit: Optional[int] = LimitOpt,
    shuffle: bool = ShuffleOpt,
    seed: int = SeedOpt,
    model: Optional[str] = ArtModelOpt,
    forces: bool = typer.Option(True, "--forces/--no-forces", help="force targets (exact force σ: slower)"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="folder for calibration plots (PNG; files in it "
                                        "with the same names are replaced)"),
    batch_size: int = BatchOpt,
    device: str = DeviceOpt,
    quiet: bool = QuietOpt,
    as_json: bool = JsonOpt,
):
    """Coverage, width, NLL, ENCE, miscalibration area and Spearman of σ on held-out labelled data."""
    from .metrics import format_report
    from .pipeline import evaluate

    device = _common(batch_size, device)
    check_plot_folder("--plot", plot)
    structs = _read(labelled, _subset(every, limit, shuffle, seed))
    m, art = _model_and_artifact(model, device, calibration)
    art = _calibrated(art, calibration, m)
    res = evaluate(art, m, structs, batch_size=batch_size, forces=forces, progress=not quiet,
                   return_points=plot is not None)
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
    if res.get("force_components_zero_sigma"):
        typer.echo(f"{res['force_components_zero_sigma']} force component(s) with σ = 0 by symmetry left out")
    typer.echo(format_report(res, res["alpha"] if res["alpha"] is not None else 0.0))
    if plot is not None:
        typer.echo("plots: " + ", ".join(res["plots"]))


@app.command("predict")
def predict_cmd(
    structures: List[Path] = typer.Argument(..., help="structure files; '-': extxyz on stdin"),
    calibration: Path = typer.Option(..., "--calibration", help="calibrated artifact"),
    every: int = EveryOpt,
    limit: Optional[int] = LimitOpt,
    shuffle: bool = ShuffleOpt,
    seed: int = SeedOpt,
    model: Optional[str] = ArtModelOpt,
    forces: bool = Flag(False, "--forces", help="also per-component force σ (eV/Å); with the default "
                        "--force-mode exact this costs d backward passes per batch"),
    force_mode: str = typer.Option("exact", "--force-mode", help="exact: every eigen-direction (d backward "
                                   "passes, σ exact); approx: the directions that carry 95 % of the variance "
                                   "on the calibration set (a few passes, σ within a few %)"),
    batch_size: int = BatchOpt,
    device: str = DeviceOpt,
    quiet: bool = QuietOpt,
    as_json: bool = JsonOpt,
):
    """Energies (total eV) with σ (eV) and the conformal interval of the reference-code energy, per structure.

    The interval bounds E + shift, the energy the reference code (e.g. DFT) would give, where the shift comes
    from the artifact's per-element reference; the table prints that centre next to its interval. With
    --forces also the largest force σ (eV/Å)."""
    from .predictor import CalibratedPredictor, to_records

    device = _common(batch_size, device)
    if force_mode not in ("exact", "approx"):
        _fail(f"--force-mode must be exact or approx, got {force_mode!r}", "usage")
    structs = _read(structures, _subset(every, limit, shuffle, seed))
    m, art = _model_and_artifact(model, device, calibration)
    predictor = CalibratedPredictor(m, art)
    ds = predictor.predict(structs, forces=forces, force_mode=force_mode, batch_size=batch_size,
                           progress=not quiet)
    # one record per input structure, in input order; a skipped one carries `error` instead of numbers
    all_records = to_records(ds, structs)
    records = [r for r in all_records if "error" not in r]
    skipped = [r for r in all_records if "error" in r]
    if as_json:
        emit_json({"records": all_records, "n_predicted": len(records), "n_skipped": len(skipped)})
    else:
        if skipped:
            typer.echo(f"skipped {len(skipped)} structure(s):", err=True)
            for r in skipped:
                typer.echo(f"  structure {r['index']} ({r['name']}): {r['error']}", err=True)
        _print_predictions(records, forces)
    if not records:
        raise typer.Exit(code=1)


def _print_predictions(records, forces: bool) -> None:
    """The predict table: the model energy with its σ, then the conformal interval next to the energy it bounds
    (the reference-code energy E + shift, shift from the artifact's element reference)."""
    width = max([4] + [len(r["name"]) for r in records])
    cols = [("#", 4, lambda r: f"{r['index']}"), ("name", -width, lambda r: r["name"]),
            ("chemsys", -10, lambda r: r["chemsys"]), ("N", 3, lambda r: f"{r['n_atoms']}"),
            ("E model (eV)", 12, lambda r: f"{r['energy']:.4f}"), ("σ_E (eV)", 9, lambda r: f"{r['energy_sigma']:.4f}"),
            ("σ_E/N (meV)", 11, lambda r: f"{1000 * r['energy_sigma'] / r['n_atoms']:.2f}")]
    if forces:
        cols += [("max|F|", 7, lambda r: f"{r['max_force']:.3f}"), ("max σ_F", 8, lambda r: f"{r['max_force_sigma']:.4f}")]
    if records and "energy_interval" in records[0]:
        def centre(r):
            return "-" if r["energy_interval"] is None else f"{r['energy'] + r['energy_shift']:.4f}"

        def interval(r):
            iv = r["energy_interval"]
            return "none (see below)" if iv is None else f"[{iv[0]:.3f}, {iv[1]:.3f}]"

        cols += [("E ref-code (eV)", 15, centre), ("its interval (eV)", 25, interval)]
    head = " ".join(f"{h:>{w}}" if w > 0 else f"{h:<{-w}}" for h, w, _ in cols)
    typer.echo(head)
    typer.echo("-" * len(head))
    for r in records:
        typer.echo(" ".join(f"{f(r):>{w}}" if w > 0 else f"{f(r):<{-w}}" for _, w, f in cols))
    if records and "energy_interval" in records[0]:
        typer.echo("E ref-code = E model + the element-reference shift: the reference code's (e.g. DFT) energy "
                   "the conformal interval is for")
    for r in records:
        if r.get("energy_interval_reason"):
            typer.echo(f"structure {r['index']} ({r['name']}): {r['energy_interval_reason']}")


@app.command("label")
def label_cmd(
    structures: List[Path] = typer.Argument(..., help="structures to label (extxyz, CIF, POSCAR, ASE db); "
                                            "'-': extxyz on stdin"),
    out: Path = typer.Option(..., "-o", "--out", help="labelled extxyz, appended to as each structure finishes; "
                             "rerun with the same -o to resume"),
    cutoff: float = typer.Option(450.0, "--cutoff", help="plane-wave cutoff (eV)"),
    kdensity: float = typer.Option(3.0, "--kdensity", help="k-point density (points per Å⁻¹)"),
    xc: str = typer.Option("PBE", "--xc", help="exchange-correlation functional"),
    retry_failed: bool = Flag(False, "--retry-failed", help="retry structures in OUT.errors.jsonl"),
    quiet: bool = QuietOpt,
    as_json: bool = JsonOpt,
):
    """Reference energies (eV), forces (eV/Å) and stress (eV/Å³) with GPAW PAW (plane waves).

    Run time: minutes per structure of 10–20 atoms on one core. Rerunning with the same OUT skips finished structures (a torn last frame is dropped and reported);
    failures go to OUT.errors.jsonl and the run goes on.
    """
    from .labelers import GPAWFactory, label

    finite("--cutoff", cutoff, minimum=50.0, unit="eV")
    finite("--kdensity", kdensity, minimum=0.0, unit="Å⁻¹")
    check_outputs({"-o": out}, inputs=structures, resumable=("-o",))
    try:
        import gpaw  # noqa: F401
    except ImportError:
        _fail("GPAW is not installed: CC=g++ pip install -e '.[dft]' (or pass an ASE calculator "
              "to calib.labelers.label from Python)", "usage")
    structs = _read(structures)
    report = label(structs, out, GPAWFactory(cutoff=cutoff, kdensity=kdensity, xc=xc),
                   progress=not quiet, retry_failed=retry_failed)
    if as_json:
        emit_json(report.as_dict())
    else:
        typer.echo(f"{report.n_labelled} labelled, {report.n_done_before} already done, "
                   f"{len(report.failures)} failed in {report.seconds:.0f} s; written to {out}")
        if getattr(report, "repaired", None):
            typer.echo(f"  {report.repaired}", err=True)
        for f in report.failures:
            typer.echo(f"  failed #{f['index']} {f['name']}: {f['error']}", err=True)
    if report.failures:  # a valid structure that could not be labelled: the run did not finish its work
        raise typer.Exit(code=1)


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
    from .eos import plot_eos, run_eos

    device = _common(batch_size, device)
    check_outputs({"--plot": plot}, overwrite=overwrite)
    m = _model(model, device)
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


def _check_corrections_out(calibration: Optional[Path], out: Optional[Path]) -> None:
    if (calibration is None) != (out is None):
        _fail("give both --calibration and -o to store the corrections in an artifact", "usage")


def _with_corrections(art, calibration: Path, model, corrections):
    """The artifact ``art`` (read from ``calibration``) with these scalar corrections added (replacing the
    same chemsys)."""
    return _calibrated(art, calibration, model).with_corrections(corrections)


@app.command("softening")
def softening_cmd(
    labelled: List[Path] = typer.Argument(..., help="labelled structures (energy eV, forces eV/Å); "
                                          "'-': extxyz on stdin"),
    every: int = EveryOpt,
    limit: Optional[int] = LimitOpt,
    shuffle: bool = ShuffleOpt,
    model: Optional[str] = ArtModelOpt,
    n_bootstrap: int = typer.Option(2000, "--n-bootstrap", help="≥ 1 bootstrap resamples of structures"),
    confidence: float = typer.Option(0.95, "--confidence", help="level of the confidence intervals, in (0, 1)"),
    seed: int = typer.Option(0, "--seed", help="seed of the bootstrap and of --shuffle (≥ 0)"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="folder for force parity plots (PNG; files in it "
                                        "with the same names are replaced)"),
    calibration: Optional[Path] = typer.Option(None, "--calibration",
                                               help="artifact to which the corrections are added (with -o)"),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="write CALIBRATION with every correction"),
    batch_size: int = BatchOpt,
    device: str = DeviceOpt,
    overwrite: bool = OverwriteOpt,
    quiet: bool = QuietOpt,
    as_json: bool = JsonOpt,
):
    """Softening scale s (slope of model vs reference forces) with a bootstrap CI, correction c, MAE, cMAE.

    One row per chemical system; a chemistry whose scale cannot be measured is reported with the reason."""
    from .pipeline import measure_softening
    from .softening import ScalarCorrection

    device = _common(batch_size, device)
    positive_int("--n-bootstrap", n_bootstrap)
    fraction("--confidence", confidence)
    non_negative_int("--seed", seed)
    check_plot_folder("--plot", plot)
    _check_corrections_out(calibration, out)
    check_outputs({"-o": out}, inputs=[*labelled, calibration], overwrite=overwrite)
    structs = _read(labelled, _subset(every, limit, shuffle, seed))
    m, art = _model_and_artifact(model, device, calibration)
    run_ = measure_softening(m, structs, batch_size=batch_size, n_bootstrap=n_bootstrap, confidence=confidence,
                             seed=seed, progress=not quiet)
    results, issues, failed = run_.results, run_.issues, run_.failures
    if not results:
        why = [f"{c}: {f['reason']}" for c, f in failed.items()] or [str(i) for i in issues[:5]]
        _fail("no chemistry could be measured: " + "; ".join(why), "input")
    art = _with_corrections(art, calibration, m, ScalarCorrection.from_results(results)) if out is not None \
        else None
    plots = run_.parity_plots(plot) if plot is not None else []
    if art is not None:
        art.save(out)
    records = [r.as_dict() for r in results.values()] + [{"chemsys": c, **f} for c, f in failed.items()]
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
    for c, f in failed.items():
        typer.echo(f"{c:<10} {f['n_structures']:>3}  not measured: {f['reason']}")
    if plots:
        typer.echo(f"parity plots in {plot}")
    if out is not None:
        typer.echo(f"{len(results)} correction(s) written with {calibration} to {out}")


@app.command("decide")
def decide_cmd(
    labelled: List[Path] = typer.Argument(..., help="labelled structures (energy eV, forces eV/Å), one or more "
                                          "files; '-': extxyz on stdin"),
    calibration: Path = typer.Option(..., "--calibration", help="calibrated artifact from `calib calibrate`"),
    targets: Optional[List[Path]] = typer.Option(None, "--targets", help="structures you want to simulate "
                                                 "(repeatable; default: the labelled ones)"),
    force_tol: float = typer.Option(0.1, "--force-tol", help="tolerated force error, eV/Å (> 0): MAE, cMAE_loo, σ"),
    min_labels: int = typer.Option(3, "--min-labels", help="labelled structures needed per chemistry (≥ 1)"),
    max_untrusted: float = typer.Option(0.1, "--max-untrusted", help="tolerated fraction of untrusted targets, "
                                        "in [0, 1]"),
    confidence: float = typer.Option(0.95, "--confidence", help="level of the CI of the softening scale, in (0, 1)"),
    n_requests: int = typer.Option(5, "--n-requests", help="structures to request per 'label' chemistry (≥ 0)"),
    request_out: Optional[Path] = typer.Option(None, "--request-out", help="write requested structures (extxyz)"),
    out: Optional[Path] = typer.Option(None, "-o", "--out",
                                       help="write CALIBRATION with the corrections of the 'scale' chemistries"),
    every: int = EveryOpt,
    limit: Optional[int] = LimitOpt,
    shuffle: bool = ShuffleOpt,
    seed: int = SeedOpt,
    model: Optional[str] = ArtModelOpt,
    batch_size: int = BatchOpt,
    device: str = DeviceOpt,
    overwrite: bool = OverwriteOpt,
    quiet: bool = QuietOpt,
    as_json: bool = JsonOpt,
):
    """Per chemistry: accept, scale (one scalar on forces, stress and energy differences) or label.

    Target chemistries without labelled structures are decided 'label', with requests."""
    from .decide import Thresholds
    from .pipeline import decide, decision_corrections, write_requests

    device = _common(batch_size, device)
    finite("--force-tol", force_tol, minimum=0.0, unit="eV/Å")
    if force_tol == 0:
        _fail("--force-tol must be > 0 eV/Å", "usage")
    positive_int("--min-labels", min_labels)
    fraction("--max-untrusted", max_untrusted, closed=True)
    fraction("--confidence", confidence)
    non_negative_int("--n-requests", n_requests)
    check_outputs({"-o": out, "--request-out": request_out}, inputs=[*labelled, *(targets or []), calibration],
                  overwrite=overwrite)
    sub = _subset(every, limit, shuffle, seed)  # of the targets, or of the labelled structures without them
    lab = _read(labelled, None if targets else sub)
    tgt = _read(targets, sub) if targets else None
    m, art = _model_and_artifact(model, device, calibration)
    th = Thresholds(force_tol=force_tol, confidence=confidence, min_labels=min_labels,
                    max_untrusted=max_untrusted, n_requests=n_requests)
    art = _calibrated(art, calibration, m)
    decisions, issues = decide(art, m, lab, tgt, thresholds=th, batch_size=batch_size, progress=not quiet)
    if not decisions:
        _fail("nothing to decide: no valid labelled or target structure; " + "; ".join(map(str, issues[:5])))
    requested = [i for d in decisions for i in d.label_requests]
    writers = []
    if out is not None:
        corrected = art.with_corrections(decision_corrections(decisions))
        writers.append((out, corrected.save))
    if request_out is not None:
        pool = tgt if tgt is not None else lab
        writers.append((request_out, lambda p: write_requests(pool, requested, p)))
    _stage(writers)  # both outputs or neither
    records = [d.as_dict() for d in decisions]
    into = "--targets" if tgt is not None else "the labelled structures"
    if as_json:
        emit_json({"records": records, "thresholds": th.__dict__, "request_out": str(request_out or ""),
                   "requests_index_into": "TARGETS" if tgt is not None else "LABELLED",
                   "skipped": [i.as_dict() for i in issues]})
        return
    _report_issues(issues, as_json)
    head = f"{'chemsys':<10} {'N':>3} {'s':>6} {'CI of s':>15} {'c':>6} {'MAE':>6} {'cMAE_loo':>8} {'decision':>8}"
    typer.echo(head + "   (forces, eV/Å; tolerance " + f"{force_tol} eV/Å)")
    typer.echo("-" * len(head))

    def num(v, w):
        return f"{'-':>{w}}" if v is None else f"{v:>{w}.3f}"

    for d in decisions:
        r = d.as_dict()
        ci = r["softening_ci"]
        ci_txt = f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "-"
        typer.echo(f"{r['chemsys']:<10} {r['n_structures'] or 0:>3} {num(r['softening_scale'], 6)} {ci_txt:>15} "
                   f"{num(r['correction'], 6)} {num(r['mae'], 6)} {num(r['cmae_loo'], 8)} {d.decision:>8}")
        for reason in d.reasons:
            typer.echo(f"    - {reason}")
        if d.label_requests:
            typer.echo(f"    label next (positions in {into}, from 0): {d.label_requests}")
    if request_out is not None:
        typer.echo(f"{len(requested)} requested structure(s) written to {request_out}")


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
    from .neb import band, plot_band, summary
    from .predictor import CalibratedPredictor
    from .structures import get_energy

    device = _common(batch_size, device)
    check_outputs({"--plot": plot}, inputs=[*images, calibration, reference], overwrite=overwrite)
    structs = _read(images)
    ref = None
    if reference is not None:
        labelled = _read([reference])
        ref = [get_energy(a) for a in labelled]
        if len(ref) != len(structs) or any(e is None for e in ref):
            _fail(f"--reference must hold one labelled image per image ({len(structs)}), got {len(ref)} "
                  f"with {sum(e is None for e in ref)} unlabelled")
    m, art = _model_and_artifact(model, device, calibration)
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


@app.command("screen")
def screen_cmd(
    structures: List[Path] = typer.Argument(..., help="structure files (extxyz, ASE .db, any ASE format) or "
                                            "folders of CIF/POSCAR/... files; streamed, never held whole"),
    calibration: Path = typer.Option(..., "--calibration", help="calibrated artifact (calib calibrate)"),
    out: Path = typer.Option(..., "-o", "--out", help="results (netCDF, one row per structure, grows per batch)"),
    csv: Optional[Path] = typer.Option(None, "--csv", help="also write the rows as CSV at the end"),
    forces: bool = Flag(False, "--forces", help="force σ and conformal half-widths (approximate mode, "
                                "≈ 2–3× the cost of energies and forces alone) and the --force-tol check"),
    force_tol: float = typer.Option(0.1, "--force-tol", help="largest conformal force half-width trusted, eV/Å "
                                    "(with --forces)"),
    energy_tol: Optional[float] = typer.Option(None, "--energy-tol", help="largest energy half-width trusted, "
                                               "eV/atom (default: no energy tolerance)"),
    batch_size: int = typer.Option(16, "--batch-size", help="structures per batch; each batch is committed to "
                                   "the results file"),
    resume: bool = Flag(False, "--resume", help="continue an interrupted run into the same -o"),
    overwrite: bool = Flag(False, "--overwrite", help="replace an existing -o (and --csv)"),
    workers: Optional[int] = WorkersOpt,
    scheduler: Optional[str] = SchedulerOpt,
    model: Optional[str] = typer.Option(None, "--model", help="default: the model named in the artifact"),
    device: str = DeviceOpt,
    quiet: bool = QuietOpt,
    as_json: bool = JsonOpt,
):
    """Screen structures: energy, σ, interval, Q score, (force σ), trusted or not and why, per structure.

    Run time: about the model's own energies and forces; --forces 2–3× slower."""
    from .screen import check_options, screen

    check_options(batch_size, force_tol, energy_tol)  # before a cluster starts or a model loads
    device = _common(None, device)
    _check_workers(workers, scheduler)
    if not calibration.is_file():
        _fail(f"calibration artifact {calibration} does not exist")
    check_outputs({"-o": out, "--csv": csv}, inputs=[*structures, calibration], overwrite=overwrite,
                  resumable=("-o",) if resume else ())
    if out.exists() and not (resume or overwrite):
        _fail(f"-o {out} exists; pass --resume to continue it or --overwrite to replace it", "output")
    client = _client(workers, scheduler)
    try:
        summary = screen([str(p) for p in structures], calibration, out, model=model, device=device,
                         forces=forces, force_tol=force_tol, energy_tol=energy_tol, batch_size=batch_size,
                         resume=resume, overwrite=overwrite, client=client, progress=not quiet)
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
    else:
        _screen_report(summary, out, csv)
    if summary["n_total"] and summary["n_failed"] == summary["n_total"]:
        raise typer.Exit(code=1)


def _screen_report(summary: dict, out: Path, csv: Optional[Path]) -> None:
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
    quiet: bool = QuietOpt,
    as_json: bool = JsonOpt,
):
    """The main job on the embedded default: CHGNet 0.3.0 + the shipped data (or another --model).

    Run time: about 2 min on 2 cores. The --out folder is the demo's own: its files are replaced on every run."""
    from .demo import run_demo

    device = _common(None, device)
    if out.exists() and not out.is_dir():
        _fail(f"--out {out} is a file; the demo writes a folder", "output")
    result = run_demo(out, device=device, progress=not quiet, echo=None if as_json else typer.echo, model=model)
    if as_json:
        emit_json(result)


@bench_app.command("llpr")
def bench_llpr(
    device: str = DeviceOpt,
    n_structures: int = typer.Option(16, "--n-structures", help="structures timed (perturbed prototypes)"),
    batch_size: int = typer.Option(8, "--batch-size", help="structures per model call"),
    repeats: int = typer.Option(2, "--repeats", help="timings are the best of this many runs"),
    as_json: bool = JsonOpt,
):
    """Cost ratios of LLPR accumulation and σ against plain CHGNet inference, measured now."""
    from .bench import bench_llpr as run

    device = _common(batch_size, device)
    positive_int("--n-structures", n_structures)
    positive_int("--repeats", repeats)
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
    batch_size: int = typer.Option(16, "--batch-size", help="structures per model call"),
    repeats: int = typer.Option(2, "--repeats", help="timings are the best of this many runs"),
    as_json: bool = JsonOpt,
):
    """Throughput of calib screen ÷ CHGNet's own batched energies + forces (target ≥ 0.8), measured now."""
    from .bench import bench_screen

    device = _common(batch_size, device)
    positive_int("--n-structures", n_structures)
    positive_int("--repeats", repeats)
    _print_bench(bench_screen(device=device, n_structures=n_structures, batch_size=batch_size,
                              repeats=repeats), as_json)


@bench_app.command("conformal")
def bench_conformal_cmd(
    n_scores: int = typer.Option(1_000_000, "--n-scores", help="conformal scores fitted and intervals given"),
    n_classes: int = typer.Option(16, "--n-classes", help="Mondrian classes"),
    as_json: bool = JsonOpt,
):
    """Seconds to fit split and Mondrian conformal on N scores and give N intervals (target ≤ 1 s)."""
    from .bench import bench_conformal

    positive_int("--n-scores", n_scores)
    positive_int("--n-classes", n_classes)
    _print_bench(bench_conformal(n_scores=n_scores, n_classes=n_classes), as_json)


@bench_app.command("dask")
def bench_dask_cmd(
    device: str = DeviceOpt,
    n_structures: int = typer.Option(96, "--n-structures", help="structures whose Hessian is accumulated"),
    batch_size: int = typer.Option(8, "--batch-size", help="structures per model call"),
    as_json: bool = JsonOpt,
):
    """The same Hessian work on 1 and 2 dask workers: seconds and speed-up, measured now."""
    from .bench import bench_dask

    device = _common(batch_size, device)
    positive_int("--n-structures", n_structures)
    _print_bench(bench_dask(n_structures=n_structures, batch_size=batch_size, device=device), as_json)


@bench_app.command("commands")
def bench_commands_cmd(
    only: Optional[List[str]] = typer.Option(None, "--only", help="only this command (repeatable), e.g. "
                                             "'softening'; the artifact it needs is built first"),
    workdir: Optional[Path] = typer.Option(None, "--workdir", help="folder for the artifacts the commands write "
                                           "(created if absent; default: a new temporary folder)"),
    quiet: bool = QuietOpt,
    as_json: bool = JsonOpt,
):
    """Wall time (s) and peak memory (MB) of every command on the shipped data, each in its own process."""
    from .bench import bench_commands

    check_plot_folder("--workdir", workdir)
    if workdir is not None:
        workdir.mkdir(exist_ok=True)
    _print_bench(bench_commands(only=only, workdir=str(workdir) if workdir else None, progress=not quiet), as_json)


def main() -> None:  # console-script entry point
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    try:
        typer.main.get_command(app)()  # CalibGroup.main: the error contract, not typer's traceback display
    except BrokenPipeError:  # `calib predict ... | head`
        sys.exit(0)


if __name__ == "__main__":
    main()
