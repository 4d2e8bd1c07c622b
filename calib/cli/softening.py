"""Commands on the softening scale: ``softening`` and ``decide``."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

import calib.cli.report as report
from calib.cli.app import (
    EnergyTolOpt,
    OverwriteOpt,
    TrustConfidenceOpt,
    app,
    calibrated,
    echo,
    emit_json,
    fail,
    model_and_artifact,
    option,
    read_inputs,
    report_issues,
    stage_outputs,
)
from calib.cli.options import GROUPED, ModelRun, Output, Subset, grouped
from calib.errors import check_outputs, check_plot_folder, non_negative_int
from calib.settings import from_flags
from calib.softening.decide import DecisionRules
from calib.softening.scale import SofteningSettings
from calib.uq.trust import TrustPolicy


def _check_corrections_out(calibration: Optional[Path], out: Optional[Path]) -> None:
    if (calibration is None) != (out is None):
        fail("give both --calibration and -o to store the corrections in an artifact", "usage")


def _with_corrections(art, calibration: Path, model, corrections):
    """The artifact ``art`` (read from ``calibration``) with these scalar corrections added (replacing the
    same chemsys)."""
    return calibrated(art, calibration, model).with_corrections(corrections)


@app.command("softening")
@grouped(seed=typer.Option(0, "--seed", help="seed of the bootstrap and of --shuffle (≥ 0)"))
def softening_cmd(
    labelled: List[Path] = typer.Argument(..., help="labelled structures (energy eV, forces eV/Å); "
                                          "'-': extxyz on stdin"),
    subset: Subset = GROUPED,
    run: ModelRun = GROUPED,
    n_bootstrap: int = option(SofteningSettings, "n_bootstrap"),
    confidence: float = option(SofteningSettings, "confidence"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="folder for force parity plots (PNG; files in it "
                                        "with the same names are replaced)"),
    calibration: Optional[Path] = typer.Option(None, "--calibration",
                                               help="artifact to which the corrections are added (with -o)"),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="write CALIBRATION with every correction"),
    overwrite: bool = OverwriteOpt,
    output: Output = GROUPED,
):
    """Softening scale s (slope of model vs reference forces) with a bootstrap CI, correction c, MAE, cMAE.

    One row per chemical system; a chemistry whose scale cannot be measured is reported with the reason."""
    device = run.checked()
    from_flags(SofteningSettings, n_bootstrap=n_bootstrap, confidence=confidence)
    non_negative_int("--seed", subset.seed)
    check_plot_folder("--plot", plot)
    _check_corrections_out(calibration, out)
    check_outputs({"-o": out}, inputs=[*labelled, calibration], overwrite=overwrite)
    structs = read_inputs(labelled, subset.checked())
    from calib.predictor import CalibratedPredictor
    from calib.softening.correction import ScalarCorrection
    from calib.workflows.softening import measure_softening

    m, art = model_and_artifact(run.model, device, calibration)

    # with an artifact, through its predictor: the corrections then record their domain (the structures' Q)
    predictor = CalibratedPredictor(m, calibrated(art, calibration, m)) if art is not None else None
    run_ = measure_softening(m, structs, batch_size=run.batch_size, n_bootstrap=n_bootstrap, confidence=confidence,
                             seed=subset.seed, progress=output.progress, predictor=predictor)
    results, issues, failed = run_.results, run_.issues, run_.failures
    if not results:
        why = [f"{c}: {f.reason}" for c, f in failed.items()] or [str(i) for i in issues[:5]]
        fail("no chemistry could be measured: " + "; ".join(why), "input")
    art = _with_corrections(art, calibration, m, ScalarCorrection.from_results(results)) if out is not None \
        else None
    plots = run_.parity_plots(plot) if plot is not None else []
    if art is not None:
        art.save(out)
    records = [r.as_dict() for r in results.values()] + [f.as_dict() for f in failed.values()]
    if output.as_json:
        emit_json({"records": records, "skipped": [i.as_dict() for i in issues], "plots": plots,
                   "out": str(out or "")})
        return
    report_issues(issues, output.as_json)
    echo(report.softening(results, failed))
    if plots:
        typer.echo(f"parity plots in {plot}")
    if out is not None:
        typer.echo(f"{len(results)} correction(s) written with {calibration} to {out}")


@app.command("decide")
@grouped()
def decide_cmd(
    labelled: List[Path] = typer.Argument(..., help="labelled structures (energy eV, forces eV/Å), one or more "
                                          "files; '-': extxyz on stdin"),
    calibration: Path = typer.Option(..., "--calibration", help="calibrated artifact from `calib calibrate`"),
    targets: Optional[List[Path]] = typer.Option(None, "--targets", help="structures you want to simulate "
                                                 "(repeatable; default: the labelled ones)"),
    force_tol: float = option(DecisionRules, "mae_tol_ev_per_a"),
    min_labels: int = option(DecisionRules, "min_labels"),
    max_untrusted: float = option(DecisionRules, "max_untrusted_fraction"),
    confidence: float = option(DecisionRules, "ci_level"),
    n_requests: int = option(DecisionRules, "n_requests"),
    energy_tol: Optional[float] = EnergyTolOpt,
    trust_confidence: float = TrustConfidenceOpt,
    request_out: Optional[Path] = typer.Option(None, "--request-out", help="write requested structures (extxyz)"),
    out: Optional[Path] = typer.Option(None, "-o", "--out",
                                       help="write CALIBRATION with the corrections of the 'scale' chemistries"),
    subset: Subset = GROUPED,
    run: ModelRun = GROUPED,
    overwrite: bool = OverwriteOpt,
    output: Output = GROUPED,
):
    """Per chemistry: accept, scale (one scalar on forces, stress and energy differences) or label.

    Target chemistries without labelled structures are decided 'label', with requests."""
    device = run.checked()
    rules = from_flags(DecisionRules, mae_tol_ev_per_a=force_tol, ci_level=confidence, min_labels=min_labels,
                       max_untrusted_fraction=max_untrusted, n_requests=n_requests)
    # the targets' verdict (--force-tol here is the rules' MAE tolerance: the verdict keeps its own force bound)
    policy = from_flags(TrustPolicy, energy_tol=energy_tol, confidence=trust_confidence)
    check_outputs({"-o": out, "--request-out": request_out}, inputs=[*labelled, *(targets or []), calibration],
                  overwrite=overwrite)
    sub = subset.checked()  # of the targets, or of the labelled structures without them
    lab = read_inputs(labelled, None if targets else sub)
    tgt = read_inputs(targets, sub) if targets else None
    from calib.workflows.decisions import decide, decision_corrections, write_requests

    m, art = model_and_artifact(run.model, device, calibration)
    art = calibrated(art, calibration, m)
    decisions, issues = decide(art, m, lab, tgt, rules=rules, batch_size=run.batch_size, progress=output.progress,
                               policy=policy)
    if not decisions:
        fail("nothing to decide: no valid labelled or target structure; " + "; ".join(map(str, issues[:5])))
    requested = [i for d in decisions for i in d.label_requests]
    writers = []
    if out is not None:
        corrected = art.with_corrections(decision_corrections(decisions))
        writers.append((out, corrected.save))
    if request_out is not None:
        pool = tgt if tgt is not None else lab
        writers.append((request_out, lambda p: write_requests(pool, requested, p)))
    stage_outputs(writers)  # both outputs or neither
    records = [d.as_dict() for d in decisions]
    into = "--targets" if tgt is not None else "the labelled structures"
    if output.as_json:
        emit_json({"records": records, "rules": rules.as_dict(), "request_out": str(request_out or ""),
                   "requests_index_into": "TARGETS" if tgt is not None else "LABELLED",
                   "skipped": [i.as_dict() for i in issues]})
        return
    report_issues(issues, output.as_json)
    echo(report.decisions(decisions, force_tol, into))
    if request_out is not None:
        typer.echo(f"{len(requested)} requested structure(s) written to {request_out}")
