"""The ``calib`` application, its error contract and the options and helpers its commands share.

Every command takes ``--json`` for pipelines.

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

from calib.errors import (
    CalibError,
    CalibWarning,
    InputError,
    UsageError,
    check_device,
    non_negative_int,
    positive_int,
)

_RUN: dict = {"warnings": None, "signal": None, "emitted": False}
_SIGNALS = {"SIGINT": 130, "SIGTERM": 143}  # exit code 128 + the signal's number, as a shell reports it


def _on_signal(signum, frame):
    """SIGINT / SIGTERM: remember which, and unwind as KeyboardInterrupt, so that every ``finally`` runs
    (temporary folders, locks) and the command ends through the contract with kind ``interrupted``."""
    _RUN["signal"] = signum
    raise KeyboardInterrupt


def _install_signals() -> dict:
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}
    old = {}
    for name in _SIGNALS:
        sig = getattr(signal, name)
        old[sig] = signal.signal(sig, _on_signal)
    return old


def _interrupted_code() -> int:
    import signal

    return 128 + int(_RUN["signal"] or signal.SIGINT)


def versions() -> dict:
    """calib's version and those of the packages that change its numbers (no import of them: metadata only)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import calib

    out = {"calib": calib.__version__, "python": platform.python_version()}
    for pkg in ("chgnet", "torch", "ase", "pymatgen", "mace-torch"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def _version_asked(argv: list) -> bool:
    """``calib --version`` (with or without ``--json``, before any command)."""
    head = []
    for a in argv:
        if not a.startswith("-"):
            break
        head.append(a)
    return "--version" in head and set(head) <= {"--version", "--json"}


def _warning_messages() -> list[str]:
    out = []
    for w in _RUN["warnings"] or []:
        msg = str(w.message)
        if msg not in out:
            out.append(msg)
    return out


def _classify(exc: BaseException) -> tuple[str, int, str]:
    """(kind, exit code, message) of an exception that ends a command."""
    from calib.data.ncio import ArtifactError
    from calib.data.structures import StructureError

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
        if _version_asked(argv):
            import calib

            typer.echo(json.dumps({**versions(), "warnings": []}, indent=1) if as_json else f"calib {calib.__version__}")
            if standalone_mode:
                sys.exit(0)
            return 0
        _RUN.update(signal=None, emitted=False)
        old_handlers = _install_signals()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("ignore")  # third-party notices (pymatgen, torch, e3nn) stay out of the output
            warnings.simplefilter("always", CalibWarning)
            _RUN["warnings"] = caught
            try:
                code = super().main(args=argv, prog_name=prog_name, complete_var=complete_var,
                                    standalone_mode=False, **extra)
                code = code if isinstance(code, int) else 0
                if _RUN["signal"] is not None or code == 130:  # typer turns KeyboardInterrupt into exit 130
                    raise KeyboardInterrupt
            except BaseException as exc:  # noqa: BLE001 - every ending goes through the contract
                if isinstance(exc, SystemExit):
                    raise
                kind, code, msg = _classify(exc)
                if kind == "interrupted":
                    import signal

                    code = _interrupted_code()
                    msg = (f"interrupted by {signal.Signals(code - 128).name}: outputs are written only when a "
                           "command finishes (resumable commands continue from their last committed step)")
                if kind == "internal" and os.environ.get("CALIB_DEBUG"):
                    raise
                if as_json:
                    if not _RUN["emitted"]:  # a signal after the result was printed: still one document
                        emit_json({"error": msg, "kind": kind})
                elif _is_click_error(exc):
                    exc.show()
                else:
                    typer.echo(f"error: {msg}", err=True)
            finally:
                messages = _warning_messages()
                _RUN["warnings"] = None
                import signal

                for sig, handler in old_handlers.items():
                    signal.signal(sig, handler)
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


def echo(lines) -> None:
    """Print the lines of a report (calib.cli.report) on stdout."""
    for line in lines:
        typer.echo(line)


def emit_json(obj) -> None:
    """Print ``obj`` as the command's one JSON document (with ``warnings`` when it is a dict)."""
    if isinstance(obj, dict) and _RUN["warnings"] is not None:
        obj = {**obj, "warnings": _warning_messages()}
    text = json.dumps(_jsonable(obj), indent=1)
    _RUN["emitted"] = True
    typer.echo(text)


def fail(msg: str, kind: str = "input") -> None:
    """End the command with an error of this kind (usage errors exit 2, the others 1)."""
    raise (UsageError(msg) if kind == "usage" else CalibError(msg, kind=kind))


def check_model(spec: Optional[str]) -> None:
    """Refuse (UsageError) a ``--model`` that names no model calib could load, before anything loads."""
    from calib.models.registry import check_model_name

    try:
        check_model_name(spec)
    except ValueError as exc:
        raise UsageError(f"--model {spec}: {exc}") from None


def model_record(model) -> dict:
    """The ``model`` record a command reports: name, version and how calib read it (a file: by its content)."""
    return {"name": model.name, "version": model.version, "read_as": getattr(model, "read_as", "") or model.name}


def load_model_for(spec: Optional[str], device: str, artifact=None):
    """The model ``--model`` names; when it is not given, the one ``artifact`` (a loaded
    :class:`~calib.artifact.Artifact`) was fitted with, CHGNet 0.3.0 without an artifact."""
    from calib.models import resolve_model

    try:
        return resolve_model(spec, artifact=artifact, device=device)
    except (ValueError, FileNotFoundError) as exc:
        raise UsageError(f"--model {spec}: {exc}" if spec is not None else str(exc)) from None


def model_and_artifact(spec: Optional[str], device: str, path: Optional[Path]):
    """(model, artifact): the artifact at ``path`` read once (None without a path), before the model loads,
    and the model ``--model`` names or that artifact was fitted with. The model is not checked against the
    artifact here: :func:`calibrated`, ``check_model`` or the predictor do it."""
    from calib.artifact import Artifact

    art = Artifact.load(path) if path is not None else None
    return load_model_for(spec, device, art), art


def read_inputs(paths: List[Path], subset: Optional[dict] = None):
    """The structures of these files under the skip rule (calib.data.readers): a named file that does not
    exist is an InputError before anything runs; whatever cannot be read inside a file or folder becomes a
    placeholder that validation skips and reports with its file and frame. Subset by --every/--limit/
    --shuffle/--seed when given."""
    from calib.data.readers import read_skipping
    from calib.data.structures import take_subset

    try:
        structs = read_skipping([str(p) for p in paths])
    except (FileNotFoundError, ValueError) as exc:
        raise InputError(str(exc)) from None
    return take_subset(structs, **subset) if subset else structs


def unreadable(structs) -> list:
    """The :class:`~calib.data.structures.StructureIssue` of every placeholder in ``structs`` (what could not be
    read), for commands that hand structures to code that does not validate them."""
    from calib.data.structures import StructureIssue

    return [StructureIssue(k, str(a.info.get("name", "")), str(a.info["read_error"]), str(a.info.get("source", "")))
            for k, a in enumerate(structs) if a.info.get("read_error")]


def read_readable(paths: List[Path], what: str) -> tuple[list, list]:
    """(the structures of ``paths`` that could be read, the issues of those that could not: :func:`unreadable`), for
    commands that hand structures to code that does not validate them; an input error naming ``what`` ("structure
    to label") when none could be read."""
    structs = read_inputs(paths)
    skipped = unreadable(structs)
    structs = [a for a in structs if not a.info.get("read_error")]
    if not structs:
        fail(f"no valid {what}: " + "; ".join(map(str, skipped[:5])))
    return structs, skipped


def subset_options(every: int, limit: Optional[int], shuffle: bool, seed: int) -> dict:
    """Check the subset options (before any model loads)."""
    positive_int("--every", every)
    if limit is not None:
        positive_int("--limit", limit)
    non_negative_int("--seed", seed)
    return {"every": every, "limit": limit, "shuffle": shuffle, "seed": seed}


def calibrated(art, path: Path, model):
    """``art`` (read from ``path``) when it is calibrated and was fitted with ``model`` (ArtifactError
    otherwise)."""
    from calib.artifact import ArtifactError

    art.check_model(model)
    if not art.calibrated:
        raise ArtifactError(f"{path} holds a Hessian only; run `calib calibrate` first")
    return art


def stage_outputs(writers) -> None:
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


def report_issues(issues, as_json: bool) -> None:
    if issues and not as_json:
        typer.echo(f"skipped {len(issues)} structure(s):", err=True)
        for issue in issues:
            typer.echo(f"  {issue}", err=True)


def _print_version(value: bool) -> None:
    if value:
        import calib

        typer.echo(f"calib {calib.__version__}")
        raise typer.Exit()


@app.callback()
def _configure(
    threads: Optional[int] = typer.Option(
        None, "--threads", help="torch CPU threads. Default: $CALIB_THREADS, else $OMP_NUM_THREADS, else the "
        "usable CPUs minus those other processes keep busy now (docs/scaling.md)"),
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version, metavar="",
                                 help="print calib's version and exit (with --json: calib's and its dependencies' "
                                      "versions as one JSON document)"),
):
    """Calibrated uncertainties and softening diagnostics for universal interatomic potentials."""
    from calib.models.threads import request_threads

    try:
        request_threads(threads)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def check_workers(workers: Optional[int], scheduler: Optional[str]) -> None:
    if workers is not None and scheduler:
        fail("give --workers or --scheduler, not both", "usage")
    if workers is not None:
        positive_int("--workers", workers)


def client_for(workers: Optional[int], scheduler: Optional[str]):
    """A dask Client for --workers / --scheduler, or None."""
    if workers is None and not scheduler:
        return None
    check_workers(workers, scheduler)
    try:
        from calib.workflows.distributed import start_client

        return start_client(workers=workers, scheduler=scheduler)
    except ImportError:
        fail("--workers/--scheduler need dask.distributed: pip install 'dask[distributed]'", "usage")
    except OSError as exc:
        fail(f"could not reach the dask scheduler {scheduler}: {exc}", "io")


def common_options(batch_size: Optional[int] = None, device: Optional[str] = None, *,
                   model: Optional[str] = None) -> Optional[str]:
    """Check the options most commands share (``--batch-size``, ``--model``, ``--device``); returns the
    normalised device."""
    if batch_size is not None:
        positive_int("--batch-size", batch_size)
    check_model(model)
    return check_device(device) if device is not None else None


def Flag(default: bool, *names: str, help: str):  # noqa: N802 - reads like typer.Option
    """A boolean option shown as a flag in --help (no value after it)."""
    return typer.Option(default, *names, help=help, metavar="")


def print_bench(result: dict, as_json: bool) -> None:
    """A bench result: one JSON document, or one line per measured quantity."""
    from calib.cli.report import bench

    if as_json:
        emit_json(result)
    else:
        echo(bench(result))


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
CalibrationOpt = typer.Option(None, "--calibration", help="calibrated artifact (calib calibrate); default: the "
                              "one calib ships for CHGNet 0.3.0 (GPAW PAW-PBE labels; the output says so)")
def option(cls, name: str, *flags: str):
    """The typer option of setting ``name`` of the settings dataclass ``cls`` (calib.settings): its default,
    flag and help (with unit) as the dataclass declares them, typed there once."""
    from calib import settings

    s = settings.spec(cls, name)
    return typer.Option(settings.default(cls, name), *(flags or (s.flag,)), help=s.describe())


def policy_option(name: str):
    from calib.uq.trust import TrustPolicy

    return option(TrustPolicy, name)


ForceTolOpt = policy_option("force_tol")
EnergyTolOpt = policy_option("energy_tol")
TrustConfidenceOpt = policy_option("confidence")


def calibration_or_default(calibration: Optional[Path], model: Optional[str]) -> tuple[Path, dict]:
    """The ``--calibration`` given or, without one, calib's default artifact for the model (CHGNet 0.3.0, or
    SevenNet-0 with ``--model sevennet``): (path, the ``calibration`` record every such command reports: path
    and whether it is the default)."""
    check_model(model)
    if calibration is not None:
        return calibration, {"path": str(calibration), "default": False}
    from calib.data.datasets import default_calibration

    path = default_calibration(model or "chgnet")
    if path is None:
        raise UsageError(f"--calibration is required with --model {model}: calib ships default calibrations "
                         "for CHGNet 0.3.0 (--model chgnet) and SevenNet-0 (--model sevennet) only (calibrate your "
                         "own with `calib hessian` and `calib calibrate`)")
    which = "SevenNet-0" if os.path.basename(path).startswith("sevennet") else "CHGNet 0.3.0"
    if "+sevennet" in os.path.basename(path):
        which += ", with SevenNet-0's forces and energies in its error models (the sevenn package is installed)"
    return Path(path), {"path": path, "default": True,
                        "note": f"calib's default calibration for {which} (GPAW PAW-PBE labels shipped in "
                                "datasets/; calib/data/artifacts/README.md): energy intervals are for GPAW's "
                                "PAW-PBE energies; calibrate your own for other DFT settings"}


def say_calibration(record: dict) -> None:
    """The line a command prints first when it uses the default calibration."""
    if record.get("default"):
        typer.echo(f"calibration: {record['note']}")
