"""The demo and the benchmarks: ``demo`` and ``bench llpr | screen | conformal | dask | commands``."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from calib.cli import report
from calib.cli.app import (
    DeviceOpt,
    JsonOpt,
    ModelOpt,
    OverwriteOpt,
    app,
    bench_app,
    common_options,
    echo,
    emit_json,
    print_bench,
)
from calib.cli.options import GROUPED, Output, grouped
from calib.errors import OutputError, check_plot_folder, positive_int
from calib.workflows.bench import CONFORMAL, DASK, LLPR, SCREEN


@app.command()
@grouped()
def demo(
    out: Path = typer.Option(Path("calib-demo"), "--out", help="folder for the artifact and records"),
    model: str = ModelOpt,
    device: str = DeviceOpt,
    output: Output = GROUPED,
):
    """The main job on the embedded default: CHGNet 0.3.0 + the shipped data (or another --model).

    Run time: about 2 min on 2 cores. The --out folder is the demo's own: its files are replaced on every run."""
    device = common_options(None, device, model=model)
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file; the demo writes a folder")
    from calib.workflows.demo import run_demo

    run = run_demo(out, device=device, progress=output.progress, log=None if output.as_json else typer.echo,
                   model=model)
    if output.as_json:
        emit_json(run.as_dict())
    else:
        echo(report.demo(run))


def _checked_size(device: str, n_structures: int, batch_size: int, repeats: int = 1) -> str:
    """Check a benchmark's size options before any model loads; returns the normalised device."""
    device = common_options(batch_size, device)
    positive_int("--n-structures", n_structures)
    positive_int("--repeats", repeats)
    return device


@bench_app.command("llpr")
def bench_llpr(
    device: str = DeviceOpt,
    n_structures: int = typer.Option(LLPR.n_structures, "--n-structures", help="structures timed (perturbed "
                                     "prototypes)"),
    batch_size: int = typer.Option(LLPR.batch_size, "--batch-size", help="structures per model call"),
    repeats: int = typer.Option(LLPR.repeats, "--repeats", help="timings are the best of this many runs"),
    as_json: bool = JsonOpt,
):
    """Cost ratios of LLPR accumulation and σ against plain CHGNet inference, measured now."""
    from calib.workflows.bench import bench_llpr as run

    device = _checked_size(device, n_structures, batch_size, repeats)
    print_bench(run(device=device, n_structures=n_structures, batch_size=batch_size, repeats=repeats,
                     progress=not as_json), as_json)


@bench_app.command("screen")
def bench_screen_cmd(
    device: str = DeviceOpt,
    n_structures: int = typer.Option(SCREEN.n_structures, "--n-structures", help="perturbed prototypes screened"),
    batch_size: int = typer.Option(SCREEN.batch_size, "--batch-size", help="structures per model call"),
    repeats: int = typer.Option(SCREEN.repeats, "--repeats", help="timings are the best of this many runs"),
    as_json: bool = JsonOpt,
):
    """Throughput of calib screen ÷ CHGNet's own batched energies + forces (target ≥ 0.8), measured now."""
    from calib.workflows.bench import bench_screen

    device = _checked_size(device, n_structures, batch_size, repeats)
    print_bench(bench_screen(device=device, n_structures=n_structures, batch_size=batch_size,
                              repeats=repeats), as_json)


@bench_app.command("conformal")
def bench_conformal_cmd(
    n_scores: int = typer.Option(CONFORMAL.n_scores, "--n-scores", help="conformal scores fitted and intervals "
                                 "given"),
    n_classes: int = typer.Option(CONFORMAL.n_classes, "--n-classes", help="Mondrian classes"),
    as_json: bool = JsonOpt,
):
    """Seconds to fit split and Mondrian conformal on N scores and give N intervals (target ≤ 1 s)."""
    from calib.workflows.bench import bench_conformal

    positive_int("--n-scores", n_scores)
    positive_int("--n-classes", n_classes)
    print_bench(bench_conformal(n_scores=n_scores, n_classes=n_classes), as_json)


@bench_app.command("dask")
def bench_dask_cmd(
    device: str = DeviceOpt,
    n_structures: int = typer.Option(DASK.n_structures, "--n-structures", help="structures whose Hessian is "
                                     "accumulated"),
    batch_size: int = typer.Option(DASK.batch_size, "--batch-size", help="structures per model call"),
    as_json: bool = JsonOpt,
):
    """The same Hessian work on 1 and 2 dask workers: seconds and speed-up, measured now."""
    from calib.workflows.bench import bench_dask

    device = _checked_size(device, n_structures, batch_size)
    print_bench(bench_dask(n_structures=n_structures, batch_size=batch_size, device=device), as_json)


@bench_app.command("limits")
def bench_limits_cmd(
    repeats: int = typer.Option(3, "--repeats", help="parameter-error timings are the best of this many processes"),
    as_json: bool = JsonOpt,
):
    """What the error contract costs now: seconds of parameter errors (target < 1 s), of degenerate-structure
    validation, and peak MB of predict on a structure with an atom 1e7 Å outside its cell (target < 2000)."""
    positive_int("--repeats", repeats)
    from calib.cli.bench_limits import bench_limits

    print_bench(bench_limits(repeats=repeats), as_json)


@bench_app.command("commands")
@grouped()
def bench_commands_cmd(
    only: Optional[List[str]] = typer.Option(None, "--only", help="only this command (repeatable), e.g. "
                                             "'softening'; the artifact it needs is built first"),
    workdir: Optional[Path] = typer.Option(None, "--workdir", help="folder for the artifacts the commands write "
                                           "(created if absent; default: a new temporary folder); files in it "
                                           "that an earlier bench did not write are never replaced"),
    overwrite: bool = OverwriteOpt,
    output: Output = GROUPED,
):
    """Wall time (s) and peak memory (MB) of every command on the shipped data, each in its own process."""
    from calib.cli.bench import BENCH_FILES, bench_commands

    check_plot_folder("--workdir", workdir)
    if workdir is not None:
        marker = workdir / ".calib-bench"
        clash = [f for f in BENCH_FILES if (workdir / f).exists()]
        if clash and not marker.exists() and not overwrite:
            raise OutputError(f"--workdir {workdir} holds {', '.join(clash)}, which calib bench did not write; "
                              "pass another folder, or --overwrite to replace them")
        workdir.mkdir(exist_ok=True)
        marker.touch()
    print_bench(bench_commands(only=only, workdir=str(workdir) if workdir else None, progress=output.progress),
                output.as_json)
