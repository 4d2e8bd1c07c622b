"""``calib report``: one self-contained HTML page about a calibration (figures embedded as PNG data URIs).

From an artifact alone the page shows what the calibration covers (the elements of its labels on a
periodic-table grid, coloured by the calibration compositions holding each), its conformal quantiles, the
energy-difference models and the stored scalar corrections. With labelled structures (``labelled``: best
held out, structures the artifact was not calibrated on; the page says how many were) it adds the held-out
quality: the reliability diagram (coverage against nominal), the interval widths against the errors, the
coverage of the force intervals by element class (s, p, d, f block) and by chemical system, the softening table
with its parity plots, and the trust verdict's precision, recall and AUROC beside the naive max|F| rule. With a
screen result (``screen``, the netCDF file of ``calib screen``) it adds the counts by status and by failed check.

Figures are matplotlib (Agg), the page a jinja2 template (``templates/report.html.j2``); the page needs no
network to open. Presentation only: every number comes from :func:`calib.workflows.evaluation.evaluate`,
:func:`calib.workflows.softening.measure_softening`, the predictor and :func:`calib.workflows.screen.summarize`.
"""

from __future__ import annotations

import base64
import io
import os

import numpy as np

from calib.cli import plots
from calib.data.figures import pyplot, save

#: chemistries whose parity plot the page shows (the table lists them all)
MAX_PARITY_PLOTS = 12
BLOCKS = ("s", "p", "d", "f")


def _png(draw) -> str:
    """A data URI of the PNG that ``draw(path_or_file)`` writes (matplotlib's savefig accepts a file)."""
    buf = io.BytesIO()
    draw(buf)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _fig(fig) -> str:
    return _png(lambda f: save(fig, f, dpi=110, tight=False, format="png"))


def element_counts(artifact) -> dict[str, int]:
    """Per element symbol, how many of the artifact's calibration compositions contain it (``errmodel``'s
    stored compositions; without them, the element reference's elements, counted once)."""
    from pymatgen.core import Composition

    ds = artifact.to_dataset()
    if "errmodel_compositions" in ds:
        counts: dict[str, int] = {}
        for formula in ds["errmodel_compositions"].values.astype(str):
            for el in Composition(formula).elements:
                counts[el.symbol] = counts.get(el.symbol, 0) + 1
        return counts
    ref = artifact.element_reference
    return {str(e).split(" ")[0]: 1 for e in (ref.elements_ if ref is not None else [])}


def periodic_table_figure(counts: dict[str, int]) -> str:
    """The periodic table (pymatgen's rows and groups), elements coloured by ``counts`` (grey: none)."""
    from pymatgen.core import Element

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 5.2))
    cmap = plt.get_cmap("viridis")
    top = max(counts.values(), default=1)
    for z in range(1, 104):
        el = Element.from_Z(z)
        row, col = el.row, el.group
        if el.is_lanthanoid or el.is_actinoid:  # the f block below the table
            row, col = (8 if el.is_lanthanoid else 9), 3 + (z - (57 if el.is_lanthanoid else 89))
        n = counts.get(el.symbol, 0)
        face = cmap(0.15 + 0.85 * np.log1p(n) / np.log1p(top)) if n else (0.9, 0.9, 0.9)
        ax.add_patch(plt.Rectangle((col - 0.5, -row - 0.5), 0.95, 0.95, facecolor=face, edgecolor="white"))
        ax.text(col - 0.03, -row + 0.08, el.symbol, ha="center", va="center", fontsize=8,
                color="white" if n and n > top / 3 else "black")
        if n:
            ax.text(col - 0.03, -row - 0.25, str(n), ha="center", va="center", fontsize=5.5,
                    color="white" if n > top / 3 else "black")
    ax.set_xlim(0.3, 18.7)
    ax.set_ylim(-9.7, -0.3)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title("elements of the calibration labels (number: calibration compositions holding the element)",
                 fontsize=9)
    return _fig(fig)


def _block(symbol: str) -> str:
    from pymatgen.core import Element

    return Element(symbol).block


def force_coverage(ds, structures) -> dict:
    """Coverage of the conformal force-component intervals (eV/Å) by element block and by chemical system, from
    a prediction Dataset (``forces_low/high``) and the labelled ``structures`` (their reference forces)."""
    from ase.data import chemical_symbols

    from calib.data.structures import get_forces

    ok = ds["error"].values == ""
    if "forces_low" not in ds:
        return {}
    ref = np.concatenate([get_forces(a) for a, keep in zip(structures, ok) if keep])
    inside = (ref >= ds["forces_low"].values) & (ref <= ds["forces_high"].values)
    owner = np.searchsorted(ds["structure"].values, ds["structure_index"].values)
    chem = ds["chemsys"].values.astype(str)[owner]
    block = np.array([_block(chemical_symbols[z]) for z in ds["numbers"].values])
    by_block = {b: {"n": int(3 * np.sum(block == b)), "coverage": float(inside[block == b].mean())}
                for b in BLOCKS if np.any(block == b)}
    by_chem = {c: {"n": int(3 * np.sum(chem == c)), "coverage": float(inside[chem == c].mean())}
               for c in sorted(set(chem.tolist()))}
    return {"all": float(inside.mean()), "n": int(inside.size), "by_block": by_block, "by_chemsys": by_chem}


def width_figure(points: dict) -> str:
    """Per target: the conformal half-widths against the |errors| they should cover (histograms, log scale)."""
    plt = pyplot()
    from calib.uq.targets import TARGETS

    names = [n for n, p in points.items() if p["half_width"] is not None]
    cols = min(max(len(names), 1), 2)
    rows = -(-max(len(names), 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.8 * rows), squeeze=False)
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    for ax, name in zip(axes.ravel(), names):
        p = points[name]
        e, h = np.abs(np.asarray(p["errors"])), np.asarray(p["half_width"])
        lo = max(min(np.min(e[e > 0]) if np.any(e > 0) else 1e-6, np.min(h[h > 0])), 1e-8)
        bins = np.logspace(np.log10(lo), np.log10(max(e.max(), h.max()) * 1.05), 30)
        ax.hist(e, bins=bins, alpha=0.6, label="|error|")
        ax.hist(h, bins=bins, alpha=0.6, label="half-width")
        ax.set_xscale("log")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(TARGETS[name].unit)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _fig(fig)


def reliability_figure(points: dict) -> str:
    curves = {n: plots.observed_coverage_curve(p["calibrator"], p["errors"], p["sigma"])
              for n, p in points.items() if p["calibrator"] is not None}
    return _png(lambda f: plots.calibration_curve_plot(curves, f))


def screen_figure(summary: dict) -> str:
    plt = pyplot()
    reasons = summary.get("reasons", {})
    fig, ax = plt.subplots(figsize=(6, 0.5 + 0.45 * max(len(reasons), 1)))
    ax.barh(list(reasons)[::-1] or ["(none)"], list(reasons.values())[::-1] or [0], color="tab:red")
    ax.set_xlabel("untrusted structures")
    ax.set_title(f"{summary['n_untrusted']} untrusted of {summary['n_total']} by failed check", fontsize=9)
    fig.tight_layout()
    return _fig(fig)


def build(artifact, *, model=None, labelled=None, screen=None, progress: bool = False) -> dict:
    """The report's context: sections of tables (lists of rows) and figures (data URIs)."""
    import calib

    ctx = {"calib_version": calib.__version__, "title": f"calib report: {artifact.model_info.get('model_name')} {artifact.model_info.get('model_version')}",
           "provenance": _provenance(artifact), "counts_figure": periodic_table_figure(element_counts(artifact)),
           "quantiles": [{"target": k, "quantile": c.quantile_, "alpha": c.alpha, "n": len(getattr(c, "scores_", []))}
                         for k, c in artifact.conformal.items()],
           "differences": [{"model": k, "beta": m.beta_, "kappa2": m.kappa2_, "tau2": m.tau2_}
                           for k, m in artifact.differences.items()],
           "corrections": _corrections(artifact), "heldout": None, "screen": None}
    if labelled:
        ctx["heldout"] = _heldout(artifact, model, labelled, progress)
    if screen is not None:
        from calib.workflows.screen import summarize

        s = summarize(screen)
        ctx["screen"] = {**s, "figure": screen_figure(s), "path": os.fspath(screen)}
    return ctx


def _provenance(artifact) -> list[tuple[str, str]]:
    a, m = artifact.attrs, artifact.model_info
    rows = [("model", f"{m.get('model_name')} {m.get('model_version')} (weights {str(m.get('model_fingerprint'))[:12]})"),
            ("stage", artifact.stage), ("calibration structures", str(a.get("calibration_n_structures", "?"))),
            ("calibration sets", str(a.get("calibration_sets", ""))), ("reference code", str(a.get("reference_code", ""))),
            ("energy scores", str(a.get("energy_scores", ""))), ("created", str(a.get("created", "")))]
    return [(k, v) for k, v in rows if v]


def _corrections(artifact) -> list[dict]:
    """The stored scalar corrections: chemsys, c, its CI (1) and energy anchor (eV/atom)."""
    return [{"chemsys": k, "c": v["c"], "ci_low": v["ci"][0], "ci_high": v["ci"][1], "anchor": v["anchor"]}
            for k, v in sorted(artifact.corrections.as_dict().items())]


def _heldout(artifact, model, labelled, progress: bool) -> dict:
    from calib.predictor import CalibratedPredictor
    from calib.workflows.evaluation import evaluate
    from calib.workflows.softening import measure_softening

    ev = evaluate(artifact, model, labelled, return_points=True, progress=progress)
    pred = CalibratedPredictor(model, artifact).predict(labelled, forces=True, force_mode="none", progress=progress)
    soft = measure_softening(model, labelled, progress=progress)
    parity = []
    for chem in list(soft.results)[:MAX_PARITY_PLOTS]:
        parity.append({"chemsys": chem, "figure": _parity(soft, chem)})
    targets = [{"target": k, "unit": t.unit, "n": t.n, "coverage": t.coverage, "width": t.mean_width,
                "coverage_1sigma": t.coverage_1sigma, "spearman": t.spearman, "ratio": t.width_error_ratio}
               for k, t in ev.targets.items()]
    return {"held_out": ev.held_out, "alpha": ev.alpha, "targets": targets,
            "reliability": reliability_figure(ev.points), "widths": width_figure(ev.points),
            "force_coverage": force_coverage(pred, labelled), "verdict": ev.verdict,
            "softening": [r.as_dict() for r in soft.results.values()], "parity": parity,
            "softening_failed": {c: {"n_structures": f.n_structures, "reason": f.reason}
                                 for c, f in soft.failures.items()}}


def _parity(soft, chem: str) -> str:
    from calib.data.structures import get_forces
    from calib.softening.scale import parity_plot

    lp = soft.labelled
    idx = np.flatnonzero(lp.ok["chemsys"].values == chem)
    return _png(lambda f: parity_plot([lp.forces_of(k) for k in idx], [get_forces(lp.structures[k]) for k in idx],
                                      soft.results[chem], f))


def render(ctx: dict, path) -> None:
    """Write the page (jinja2, ``templates/report.html.j2``; autoescaped)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("calib.cli", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]), undefined=jinja2.StrictUndefined)
    env.filters["num"] = lambda v, fmt="{:.3g}": "–" if v is None or (isinstance(v, float) and not np.isfinite(v)) \
        else fmt.format(v)
    html = env.get_template("report.html.j2").render(**ctx)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(html)
