"""Commands that act on a "label" decision: ``finetune`` (the model's own trainer, with replay) and ``loop`` (the
periodic fine-tuning loop: MD with the current model, select, label, fine-tune, recalibrate, decide)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

import calib.cli.report as report
from calib.cli.app import (
    DeviceOpt,
    Flag,
    ModelOpt,
    OverwriteOpt,
    app,
    common_options,
    echo,
    emit_json,
    fail,
    load_model_for,
    option,
    read_inputs,
    read_readable,
)
from calib.cli.options import GROUPED, Output, grouped
from calib.data.dft import GPAWSettings
from calib.errors import check_output_folder, check_outputs, named_as
from calib.settings import from_flags
from calib.workflows.settings import LOOP_GPAW, FinetuneSettings, LoopSettings


@app.command("finetune")
@grouped()
def finetune_cmd(
    labelled: List[Path] = typer.Argument(..., help="labelled structures (energy eV, forces eV/Å), e.g. from "
                                          "`calib label`; '-': extxyz on stdin"),
    out: Path = typer.Option(..., "-o", "--out", help="fine-tuned model file (load it with --model FILE)"),
    model: str = ModelOpt,
    epochs: int = option(FinetuneSettings, "epochs"),
    replay: int = option(FinetuneSettings, "replay"),
    lr: float = option(FinetuneSettings, "lr"),
    stress: bool = Flag(False, "--stress", help="also train on the stress (off: soft stresses of strained frames "
                        "dominate chgnet's loss)"),
    seed: int = option(FinetuneSettings, "seed"),
    batch_size: int = option(FinetuneSettings, "batch_size"),
    allow_unphysical: bool = Flag(False, "--allow-unphysical-labels", help="train on labels that fail the unit "
                                  "check (a force above 100 eV/Å, or a force MAE against the base model above 50× "
                                  "its typical error): only when you know the labels are right"),
    device: str = DeviceOpt,
    overwrite: bool = OverwriteOpt,
    output: Output = GROUPED,
):
    """Fine-tune CHGNet, SevenNet or a MACE model on new labels with replay, through the model's own trainer
    (chgnet's Trainer, sevenn's Trainer, mace_run_train --foundation_model); the output loads with --model.

    The DFT code's per-element energy zero is removed from the labels first (only energy differences, forces
    and, with --stress, stresses teach the model). Run time: about 1 min for 5 structures + 20 replay, 30
    epochs, on 2 cores. Labels whose units look wrong are refused (--allow-unphysical-labels)."""
    device = common_options(batch_size, device, model=model)
    from_flags(FinetuneSettings, epochs=epochs, replay=replay, seed=seed, lr=lr)
    check_outputs({"-o": out}, inputs=labelled, overwrite=overwrite)
    structs = read_inputs(labelled)
    from calib.workflows.finetune import finetune

    m = load_model_for(model, device)
    if m.name not in ("chgnet", "sevennet", "mace"):
        fail(f"--model {model} was read as {getattr(m, 'read_as', m.name)}: calib finetune trains CHGNet, SevenNet "
             "and MACE models (their own trainers)", "usage")
    with named_as(check_units="--allow-unphysical-labels"):
        res = finetune(m, structs, out, epochs=epochs, replay=replay, lr=lr, seed=seed, batch_size=batch_size,
                       stress=stress, progress=output.progress, check_units=not allow_unphysical,
                       label_files=[str(p) for p in labelled])
    if output.as_json:
        emit_json(res.as_dict())
        return
    echo(report.finetune(res))


def _chgnet_only(model: Optional[str]) -> None:
    """Refuse, before anything loads, a --model that names a MACE model (the loop runs CHGNet and SevenNet)."""
    name = str(model or "chgnet")
    if name == "mace-small" or name.startswith("mace:"):
        fail(f"--model {name}: calib loop runs CHGNet and SevenNet models; fine-tune a MACE model with calib "
             "finetune --model FILE.model (mace_run_train) and pass the result with --model", "usage")


@app.command("loop")
@grouped()
def loop_cmd(
    start: List[Path] = typer.Argument(..., help="start structure(s) of the MD (extxyz, CIF, POSCAR, ...)"),
    out: Path = typer.Option(..., "-o", "--out", help="folder of the loop: round-N/ (frames, labels, model, "
                             "calibration), report.json, report.png; rerun with the same -o to resume"),
    calibration: Optional[Path] = typer.Option(None, "--calibration", help="artifact of the base model for the "
                                               "first selection (default: calib's own for CHGNet 0.3.0)"),
    model: str = ModelOpt,
    rounds: int = option(LoopSettings, "rounds"),
    frames: int = option(LoopSettings, "frames"),
    temperature: float = option(LoopSettings, "temperature"),
    md_steps: int = option(LoopSettings, "md_steps"),
    labeller: str = typer.Option("gpaw", "--labeller", help="reference code: gpaw (PAW-PBE, the shipped data's "
                                 "settings)"),
    cutoff: float = option(LOOP_GPAW, "cutoff"),
    kdensity: float = option(LOOP_GPAW, "kdensity"),
    epochs: int = option(LoopSettings, "epochs"),
    replay: int = option(LoopSettings, "replay"),
    seed: int = option(LoopSettings, "seed"),
    device: str = DeviceOpt,
    output: Output = GROUPED,
):
    """Periodic fine-tuning (Wong & Yang): MD with the current model, label where it goes, fine-tune, recalibrate,
    decide; until the decision is accept or scale, or the rounds run out. A killed loop resumes with the same -o.

    Run time per round: the MD (~1 min), the DFT labels (minutes), fine-tuning (~1 min), recalibration (~2 min).
    A resumed loop must have the start and settings it was started with (more --rounds may be asked for)."""
    device = common_options(None, device, model=model)
    _chgnet_only(model)
    from calib.workflows.loop import check_run, run_loop

    settings = from_flags(LoopSettings, rounds=rounds, frames=frames, temperature=temperature, md_steps=md_steps,
                          epochs=epochs, replay=replay, seed=seed)
    from_flags(GPAWSettings, cutoff=cutoff, kdensity=kdensity)
    if labeller != "gpaw":
        fail(f"--labeller must be gpaw, got {labeller!r} (from Python, run_loop takes any ASE calculator)", "usage")
    check_output_folder("-o", out, own=lambda p: (p / "report.json").exists() or any(p.glob("round-*")))
    if calibration is not None and not calibration.is_file():
        fail(f"calibration artifact {calibration} does not exist", "artifact")
    from calib.data.labelers import GPAWFactory

    factory = GPAWFactory(cutoff=cutoff, kdensity=kdensity, spinpol=False)
    structs, _ = read_readable(start, "start structure")
    check_run(out, structs, settings, factory, model, calibration)  # before GPAW or a model
    try:
        import gpaw  # noqa: F401
    except ImportError:
        fail("GPAW is not installed: CC=g++ pip install -e '.[dft]'", "usage")
    m = load_model_for(model, device)
    rep = run_loop(structs, out, model=m, calibration=str(calibration) if calibration else None, settings=settings,
                   labeller=factory, progress=output.progress,
                   log=None if (output.quiet or output.as_json) else (lambda msg: typer.echo(msg, err=True)))
    if output.as_json:
        emit_json(rep)
        return
    echo(report.loop(rep, out))
