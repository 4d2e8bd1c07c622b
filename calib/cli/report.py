"""Every human-readable table the commands print, from the typed results of the workflows.

Each function returns the lines of one report (units in the headers); the commands echo them. Under
``--json`` none of this runs: the JSON records come from the results' own ``as_dict``.
"""

from __future__ import annotations

import numpy as np


def _num(v, w: int, fmt: str = ".3f") -> str:
    return f"{'-':>{w}}" if v is None else f"{v:>{w}{fmt}}"


def hessian(llpr, out) -> list[str]:
    return [f"H from {llpr.n_structures_} structures: rank {llpr.rank_}/{llpr.n_features} (eigenvalues above 1e-6 "
            f"of the largest: the directions these structures determine); written to {out}"]


def calibration(s, alpha, out) -> list[str]:
    """``calib calibrate``: a :class:`calib.workflows.calibration.CalibrationSummary`."""
    f = s.fit
    lines = [f"calibrated on {s.n_structures} structures ({s.target}): {s.regularisation_note}",
             f"  energy: RMSE {1000 * f.energy_rmse_per_atom:.1f} meV/atom after element reference, "
             f"NLL {f.energy_nll:.3f}, Spearman(σ, |err|) {f.energy_spearman:.2f}"]
    if s.force_alpha2 is not None:
        lines.append(f"  forces: MAE {s.force_mae:.3f} eV/Å, NLL {f.force_nll:.3f}, "
                     f"Spearman(σ, |err|) {f.force_spearman:.2f}")
        if f.force_components_zero_sigma:
            lines.append(f"  {f.force_components_zero_sigma} force component(s) with σ = 0 by symmetry left out "
                         "of the NLL and the conformal scores")
    for name, q in s.conformal_quantile.items():
        fb = s.conformal_fallback.get(name) or {}
        note = f" ({len(fb)} class(es) on the global quantile)" if fb else ""
        lines.append(f"  conformal {name:<17} q = {q:.3f} at α = {alpha}{note}")
    return lines + [f"written to {out}"]


def evaluation(ev) -> list[str]:
    """``calib evaluate``: an :class:`calib.workflows.evaluation.Evaluation`, one row per target."""
    alpha = ev.alpha if ev.alpha is not None else 0.0
    lines = [f"{ev.n_structures} structures; intervals at α = {ev.alpha} (energies total eV, forces eV/Å)",
             ev.held_out["note"]]
    if ev.force_components_zero_sigma:
        lines.append(f"{ev.force_components_zero_sigma} force component(s) with σ = 0 by symmetry left out")
    head = (f"{'target':<18} {'n':>6} {'coverage':>9} {'nominal':>8} {'width':>9} {'w/err':>6} {'1σ cov':>7} "
            f"{'NLL':>8} {'ENCE':>6} {'mis.area':>8} {'Spearman':>8}")
    lines += [head, "-" * len(head)]
    for name, t in ev.targets.items():
        if t.coverage is None:
            continue
        ratio = "-" if t.width_error_ratio is None else f"{t.width_error_ratio:.2f}"
        lines.append(f"{name:<18} {t.n:>6} {t.coverage:>9.3f} {1 - alpha:>8.2f} {t.mean_width:>9.4f} {ratio:>6} "
                     f"{t.coverage_1sigma:>7.3f} {t.nll:>8.3f} {t.ence:>6.3f} {t.miscalibration_area:>8.3f} "
                     f"{t.spearman:>8.2f}")
        for c, pc in (t.per_class or {}).items():
            lines.append(f"  {c:<16} {pc['n']:>6} {pc['coverage']:>9.3f}")
    v = ev.verdict
    if v:
        lines.append(f"trust verdict against the labels (good: largest force error ≤ {v['force_tol']:g} eV/Å): "
                     f"{v['n_trusted']}/{v['n']} trusted, precision {v['precision']:.3f} (naive rule "
                     f"{v['naive_precision']:.3f}), recall {v['recall']:.3f}, flagged {v['flagged']:.3f}, "
                     f"AUROC {v['auroc']:.3f} (max |F|: {v['auroc_max_force']:.3f})")
        if "bound_coverage" in v:
            per = v["bound_coverage_by_chemsys"]
            worst = sorted(per.items(), key=lambda kv: kv[1]["coverage"])[:3]
            lines.append(f"force-error bound holds the largest error of {v['bound_coverage']:.3f} of the structures "
                         f"(nominal {1 - alpha:.2f}); lowest by chemical system: "
                         + ", ".join(f"{c} {x['coverage']:.2f} (n {x['n']})" for c, x in worst))
    return lines


def predictions(records, forces: bool) -> list[str]:
    """``calib predict``: the model energy with its σ, then the conformal interval next to the energy it bounds
    (the reference-code energy E + shift, shift from the artifact's element reference)."""
    width = max([4] + [len(r["name"]) for r in records])
    cols = [("#", 4, lambda r: f"{r['index']}"), ("name", -width, lambda r: r["name"]),
            ("chemsys", -10, lambda r: r["chemsys"]), ("N", 3, lambda r: f"{r['n_atoms']}"),
            ("E model (eV)", 12, lambda r: f"{r['energy']:.4f}"),
            ("σ_E (eV)", 9, lambda r: f"{r['energy_sigma']:.4f}"),
            ("σ_E/N (meV)", 11, lambda r: f"{1000 * r['energy_sigma'] / r['n_atoms']:.2f}")]
    if forces:
        cols += [("max|F|", 7, lambda r: f"{r['max_force']:.3f}"),
                 ("max σ_F", 8, lambda r: f"{r['max_force_sigma']:.4f}")]
    has_interval = bool(records) and "energy_interval" in records[0]
    if has_interval:
        def centre(r):
            return "-" if r["energy_interval"] is None else f"{r['energy'] + r['energy_shift']:.4f}"

        def interval(r):
            iv = r["energy_interval"]
            return "none (see below)" if iv is None else f"[{iv[0]:.3f}, {iv[1]:.3f}]"

        cols += [("E ref-code (eV)", 15, centre), ("its interval (eV)", 25, interval)]
    if records and "trusted" in records[0]:
        cols += [("trusted", 7, lambda r: "yes" if r["trusted"] else "NO")]
    head = " ".join(f"{h:>{w}}" if w > 0 else f"{h:<{-w}}" for h, w, _ in cols)
    lines = [head, "-" * len(head)]
    lines += [" ".join(f"{f(r):>{w}}" if w > 0 else f"{f(r):<{-w}}" for _, w, f in cols) for r in records]
    if has_interval:
        lines.append("E ref-code = E model + the element-reference shift: the reference code's (e.g. DFT) energy "
                     "the conformal interval is for")
    for r in records:
        if r.get("energy_interval_reason"):
            lines.append(f"structure {r['index']} ({r['name']}): {r['energy_interval_reason']}")
        if r.get("trust_reason"):
            lines.append(f"structure {r['index']} ({r['name']}) not trusted: {r['trust_reason']}")
    return lines


def screening(summary: dict, out, csv) -> list[str]:
    """``calib screen``: totals, per chemistry, and the commonest reasons."""
    lines = [f"resumed {out} after its {summary['resumed_from']} committed rows"] if summary.get("resumed_from") else []
    lines += [f"{summary['n_total']} structures: {summary['n_trusted']} trusted, {summary['n_untrusted']} "
              f"untrusted, {summary['n_failed']} failed; rows in {out}" + (f" and {csv}" if csv else ""),
             f"{'chemsys':<16} {'trusted':>8} {'untrusted':>10} {'failed':>7}"]
    for chem, c in summary["by_chemsys"].items():
        lines.append(f"{chem:<16} {c['trusted']:>8} {c['untrusted']:>10} {c['failed']:>7}")
    if summary["reasons"]:
        lines.append("not trusted because: " + "; ".join(f"{k} ({v})" for k, v in summary["reasons"].items()))
    return lines


def softening(results: dict, failed: dict) -> list[str]:
    """``calib softening``: one row per chemical system (SofteningResult), then the ones not measured
    (SofteningFailure)."""
    head = (f"{'chemsys':<10} {'N':>3} {'s':>6} {'CI of s':>15} {'c':>6} {'R²':>5} {'MAE':>6} {'cMAE':>6} "
            f"{'cMAE_loo':>8}  (forces, eV/Å)")
    lines = [head, "-" * len(head)]
    for r in results.values():
        lines.append(f"{r.chemsys:<10} {r.n_structures:>3} {r.softening_scale:>6.3f} "
                     f"[{r.softening_ci[0]:.3f}, {r.softening_ci[1]:.3f}] {r.correction:>6.3f} {r.r2:>5.2f} "
                     f"{r.mae:>6.3f} {r.cmae:>6.3f} {_num(r.cmae_loo, 8)}")
    for c, f in failed.items():
        lines.append(f"{c:<10} {f.n_structures:>3}  not measured: {f.reason}")
    return lines


def decisions(decisions, force_tol: float, into: str) -> list[str]:
    """``calib decide``: one row per chemistry (Decision) with its reasons, requests and the next command."""
    head = f"{'chemsys':<10} {'N':>3} {'s':>6} {'CI of s':>15} {'c':>6} {'MAE':>6} {'cMAE_loo':>8} {'decision':>8}"
    lines = [head + f"   (forces, eV/Å; tolerance {force_tol} eV/Å)", "-" * len(head)]
    for d in decisions:
        s = d.softening
        ci_txt = f"[{s.softening_ci[0]:.3f}, {s.softening_ci[1]:.3f}]" if s is not None else "-"
        lines.append(f"{d.chemsys:<10} {d.n_structures:>3} {_num(s and s.softening_scale, 6)} {ci_txt:>15} "
                     f"{_num(s and s.correction, 6)} {_num(s and s.mae, 6)} {_num(s and s.cmae_loo, 8)} "
                     f"{d.decision:>8}")
        lines += [f"    - {reason}" for reason in d.reasons]
        if d.label_requests:
            lines.append(f"    label next (positions in {into}, from 0): {d.label_requests}")
    if any(d.decision == "label" for d in decisions):
        lines.append("next, for a 'label' chemistry: calib label REQUESTS.extxyz -o NEW.extxyz, then calib finetune "
                     "NEW.extxyz -o MODEL.pt (or calib loop START.extxyz -o DIR: MD, labels, fine-tuning and "
                     "recalibration in rounds)")
    return lines


def neb(rec: dict, n_images: int, alpha, has_reference: bool) -> list[str]:
    """``calib neb``: the profile, raw and corrected, then each barrier with its interval."""
    corrected = "energies_corrected" in rec
    lines = [f"{rec['chemsys']}: {n_images} images, highest model image {rec['highest_image']}; "
             f"intervals at α = {alpha} (eV, relative to image 0)"]
    head = f"{'image':>5} {'E - E0':>8} {'σ':>7}" + (f" {'corrected':>9} {'σ':>7}" if corrected else "")
    lines.append(head + (f" {'reference':>9}" if has_reference else ""))
    for k, e in enumerate(rec["energies"]):
        line = f"{k:>5} {e:>8.3f} {rec['energy_sigmas'][k]:>7.3f}"
        if corrected:
            line += f" {rec['energies_corrected'][k]:>9.3f} {rec['energy_sigmas_corrected'][k]:>7.3f}"
        if has_reference:
            line += f" {rec['reference_energies'][k]:>9.3f}"
        lines.append(line)
    for suffix in ("", "_corrected") if corrected else ("",):
        for name in ("forward", "reverse", "kra"):
            key = f"barrier_{name}{suffix}"
            lo, hi = rec[f"{key}_interval"]
            extra = ""
            if has_reference:
                extra = f"   reference {rec[f'reference_barrier_{name}']:.3f} " + (
                    "inside" if rec[f"{key}_covers_reference"] else "OUTSIDE")
            lines.append(f"{key:<27} {rec[key]:.3f} ± {rec[f'{key}_sigma']:.3f} eV   [{lo:.3f}, {hi:.3f}]{extra}")
    if has_reference:
        lines.append(f"reference energies inside the raw band: {rec['n_inside']}/{rec['n_images_compared']}"
                     + (f", corrected: {rec['n_inside_corrected']}/{rec['n_images_compared']}"
                        if "n_inside_corrected" in rec else ""))
    if "trusted" in rec:
        lines.append("path " + ("trusted" if rec["trusted"] else "NOT trusted") + (
            ": " + "; ".join(rec["reasons"]) if rec["reasons"] else ""))
        lines.append("  (the path is trusted when every interior image is trusted by the structure verdict, as "
                     "calib predict judges it, and the barrier's band is narrow enough: docs/neb.md)")
        if rec.get("label_next") is not None:
            lines.append(f"label next: image {rec['label_next']}")
    return lines


def eos(records, summary: dict) -> list[str]:
    """``calib eos``: bulk moduli per element, model vs WIEN2k (GPa, Å³/atom)."""
    lines = [f"{'el':<3} {'Z':>3} {'B_model':>8} {'B_WIEN2k':>8} {'ratio':>6} {'V0_model':>8} {'V0_ref':>7}  "
             "(GPa, Å³/atom)"]
    for r in records:
        if r.error:
            lines.append(f"{r.element:<3} {r.z:>3}  skipped: {r.error}")
            continue
        lines.append(f"{r.element:<3} {r.z:>3} {r.b_model:>8.1f} {r.b_reference:>8.1f} {r.ratio:>6.2f} "
                     f"{r.v0_model:>8.2f} {r.v0_reference:>7.2f}{'  (re-centred)' if r.recentred else ''}")
    lines.append(f"{summary['n_elements']} elements: median B ratio {summary['median_ratio']:.3f}, "
                 f"{100 * summary['fraction_below_1']:.0f} % below 1; {summary['n_failed']} skipped")
    return lines


def bench(result: dict) -> list[str]:
    return [f"{key:<40} {value:.4g}" if isinstance(value, (float, np.floating)) else f"{key:<40} {value}"
            for key, value in result.items()]


def finetune(res) -> list[str]:
    """``calib finetune``: what was trained and the training errors before and after."""
    p, b, a = res.provenance, res.before, res.after
    return [f"fine-tuned {p['base_model']} on {p['n_labels']} labelled + {p['n_replay']} replay structure(s), "
            f"{p['epochs']} epochs at lr {p['learning_rate']:g} ({p['targets']}; {p['seconds']:.0f} s)",
            f"  training force MAE {b['force_mae']:.3f} → {a['force_mae']:.3f} eV/Å, energy MAE "
            f"{1000 * b['energy_mae_per_atom']:.1f} → {1000 * a['energy_mae_per_atom']:.1f} meV/atom "
            "(after the element reference)",
            f"written to {res.path}: load it with --model {res.path}; the calibration of the base model does not fit "
            "it (recalibrate: calib hessian + calib calibrate with --model, or calib loop)"]


def loop(rep: dict, out) -> list[str]:
    """``calib loop``: per round, the current model on its fresh labels and the decision."""
    lines = [f"{rep['chemsys']}: {len(rep['rounds'])} round(s) in {out}"]
    for e in rep["rounds"]:
        b = e.get("before", {})
        lines.append(f"  round {e['round']}: {e.get('n_labels', 0)} label(s) so far; model before this round's "
                     f"labels: force MAE {b.get('force_mae', float('nan')):.3f} eV/Å, s "
                     f"{b.get('softening_scale', float('nan')):.3f}; decision {e.get('decision', '-')}")
        lines += [f"      - {r}" for r in e.get("reasons", [])]
    lines.append(f"final model: {rep.get('final_model')} (load it with --model), calibration: "
                 f"{rep.get('final_calibration')}; figure: {out}/report.png")
    return lines


def demo(run) -> list[str]:
    """``calib demo``: a :class:`calib.workflows.demo.DemoRun` (the plan and each step were logged as it ran)."""
    h = run.heldout
    lines = _demo_table(run.records, forces=h is not None)
    if h is None:
        return lines
    c, alpha = h.coverage, h.alpha
    return lines + [
        (f"\nheld-out energies within 1σ / 2σ / 3σ: {c[1]:.0%} / {c[2]:.0%} / {c[3]:.0%} "
         f"(Gaussian: 68% / 95% / 99.7%) over {len(run.records)} structures"),
        (f"held-out conformal coverage at α = {alpha} (nominal {1 - alpha:.0%}): energies {h.energy_coverage:.0%} "
         f"({h.n_with_interval} structures, {h.n_without_interval} without an interval), force components "
         f"{h.force_coverage:.0%} ({h.n_force_components})"),
        (f"\nsummary: {run.model_label} calibrated on {run.summary.n_structures} GPAW-labelled structures "
         f"({run.n_chemistries} chemistries) in {run.seconds / 60:.1f} min; held-out conformal coverage "
         f"{h.energy_coverage:.0%} (energies) and {h.force_coverage:.0%} (force components) at nominal "
         f"{1 - alpha:.0%}.\nartifact: {run.artifact_path}\nnext: calib predict YOUR.extxyz --calibration "
         f"{run.artifact_path} --forces | calib screen CANDIDATES.extxyz --calibration {run.artifact_path} -o "
         "screen.nc")]


def _demo_table(records, forces: bool) -> list[str]:
    head = f"{'name':<14} {'chemsys':<9} {'N':>3} {'E/N (eV)':>9} {'σ_E/N (meV)':>11}"
    if records and "energy_error" in records[0]:
        head += f" {'err/N (meV)':>11} {'z':>6}"
    if forces:
        head += f" {'max σ_F':>8} {'max|ΔF|':>8}"
    lines = [head, "-" * len(head)]
    for r in records:
        line = (f"{r['name'][:14]:<14} {r['chemsys'][:9]:<9} {r['n_atoms']:>3} {r['energy_per_atom']:>9.4f} "
                f"{1000 * r['energy_sigma'] / r['n_atoms']:>11.2f}")
        if "energy_error" in r:
            line += f" {1000 * r['energy_error'] / r['n_atoms']:>11.2f} {r['energy_z']:>6.2f}"
        if forces:
            line += f" {r['max_force_sigma']:>8.4f} {r.get('max_force_error', float('nan')):>8.4f}"
        lines.append(line)
    return lines
