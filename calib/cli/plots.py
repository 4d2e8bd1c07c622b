"""Calibration plots (matplotlib, Agg backend; PNG files).

* :func:`calibration_curve_plot` — expected coverage 1 − α against the
  coverage observed on held-out data, the conformal quantile refitted on the
  stored calibration scores at every α;
* :func:`error_sigma_plot` — |error| against σ (log–log) with the lines
  |error| = q_p·σ where q_p is the conformal quantile at p = 68, 95, 99 %;
* :func:`class_coverage_plot` — held-out coverage per class with the nominal
  level and the class sizes.
"""

from __future__ import annotations

import os

import numpy as np

from calib.data.figures import pyplot, save


def observed_coverage_curve(calibrator, errors, sigma, alphas=None) -> tuple[np.ndarray, np.ndarray]:
    """(1 − α, held-out coverage of ±q(α)·σ) over a grid of α (global quantile)."""
    alphas = np.linspace(0.02, 0.98, 49) if alphas is None else np.asarray(alphas, dtype=float)
    scores = np.abs(np.asarray(errors, dtype=float)) / np.asarray(sigma, dtype=float)
    observed = np.array([np.mean(scores <= calibrator.quantile_at(a)) for a in alphas])
    return 1 - alphas, observed


def calibration_curve_plot(curves: dict, path, title: str = "") -> None:
    """curves: name → (expected, observed)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    ax.plot([0, 1], [0, 1], color="k", lw=0.8, label="ideal")
    for name, (exp, obs) in curves.items():
        ax.plot(exp, obs, marker=".", ms=3, label=name)
    ax.set_xlabel("expected coverage 1 − α")
    ax.set_ylabel("observed coverage (held out)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title or "Conformal calibration curve")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    save(fig, path)


def error_sigma_plot(errors, sigma, calibrator, path, unit: str, title: str = "") -> None:
    """|error| vs σ with the conformal 68/95/99 % lines."""
    plt = pyplot()
    e = np.abs(np.asarray(errors, dtype=float))
    s = np.asarray(sigma, dtype=float)
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    ax.scatter(s, np.maximum(e, 1e-6), s=4, alpha=0.4, color="tab:blue", rasterized=True)
    grid = np.geomspace(s.min(), s.max(), 50)
    for p, style in ((0.68, ":"), (0.95, "--"), (0.99, "-")):
        q = calibrator.quantile_at(1 - p)
        if np.isfinite(q):
            ax.plot(grid, q * grid, "k", ls=style, lw=1, label=f"{int(p * 100)} %: |err| = {q:.2f}σ")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"σ ({unit})")
    ax.set_ylabel(f"|error| ({unit})")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3, which="both")
    save(fig, path)


def class_coverage_plot(per_class: dict, alpha: float, path, title: str = "") -> None:
    """Bars of held-out coverage per class, nominal level as a line, class sizes on the bars."""
    plt = pyplot()
    names = list(per_class)
    cov = [per_class[c]["coverage"] for c in names]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(names) + 1.5), 3.6))
    bars = ax.bar(range(len(names)), cov, color=["tab:red" if c < 1 - alpha - 0.05 else "tab:blue" for c in cov])
    for b, c in zip(bars, names):
        ax.annotate(f"n={per_class[c]['n']}", (b.get_x() + b.get_width() / 2, b.get_height()),
                    ha="center", va="bottom", fontsize=7)
    ax.axhline(1 - alpha, color="k", lw=0.8, ls="--", label=f"nominal {1 - alpha:.2f}")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("coverage (held out)")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    save(fig, path)


def evaluation_plots(points: dict, folder, alpha: float | None) -> list[str]:
    """All three plots for every target of :func:`calib.workflows.evaluation.evaluate` (``return_points=True``)."""
    from calib.uq.metrics import per_class_coverage
    from calib.uq.targets import TARGETS

    os.makedirs(folder, exist_ok=True)
    written, curves = [], {}
    for name, p in points.items():
        cal = p["calibrator"]
        if cal is None:
            continue
        unit = TARGETS[name].unit
        curves[name] = observed_coverage_curve(cal, p["errors"], p["sigma"])
        path = os.path.join(folder, f"error_vs_sigma_{name}.png")
        error_sigma_plot(p["errors"], p["sigma"], cal, path, unit, title=f"{name}: |error| vs σ (held out)")
        written.append(path)
        if p["classes"] is not None:
            path = os.path.join(folder, f"class_coverage_{name}.png")
            class_coverage_plot(per_class_coverage(p["errors"], p["half_width"], p["classes"]), alpha, path,
                                title=f"{name}: coverage per class at α = {alpha}")
            written.append(path)
    if curves:
        path = os.path.join(folder, "calibration_curve.png")
        calibration_curve_plot(curves, path)
        written.insert(0, path)
    return written
