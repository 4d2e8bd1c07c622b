"""The softening table of docs/softening.md for two foundation models side by side: CHGNet 0.3.0 and
SevenNet-0, on every shipped GPAW high-energy system.

For each chemical system and model: the softening scale s with its 95 % bootstrap CI (structures
resampled, 2000 resamples, seeded), the correction c and the force MAE (eV/Å). Then the fraction of soft
systems per model (s < 1, and CI upper bound < 1), the rank correlation of s between the models, and a
scatter of s_SevenNet against s_CHGNet. Needs the ``sevennet`` extra (its environment has CHGNet too).

    OMP_NUM_THREADS=1 python examples/softening_two_models.py [--plot docs/figures/softening/two_models.png]
        [--out softening_two_models.json]
"""

from __future__ import annotations

import argparse
import json

MODELS = {"chgnet": "CHGNet 0.3.0", "sevennet": "SevenNet-0"}


def main(plot: str | None, out: str | None) -> dict:
    import numpy as np
    from scipy.stats import spearmanr

    from calib import datasets
    from calib.models import load_model
    from calib.workflows.softening import measure_softening

    data = datasets.load("high-energy-states")
    runs = {name: measure_softening(load_model(name), data, n_bootstrap=2000).results for name in MODELS}
    chems = sorted(set(runs["chgnet"]) & set(runs["sevennet"]), key=lambda c: runs["chgnet"][c].softening_scale)
    print("| chemsys | frames | s CHGNet | 95 % CI | c | MAE | s SevenNet-0 | 95 % CI | c | MAE |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for c in chems:
        cells = []
        for name in MODELS:
            r = runs[name][c]
            cells.append(f"{r.softening_scale:.3f} | [{r.softening_ci[0]:.3f}, {r.softening_ci[1]:.3f}] | "
                         f"{r.correction:.3f} | {r.mae:.3f}")
        print(f"| {c} | {runs['chgnet'][c].n_structures} | " + " | ".join(cells) + " |")
    s = {n: np.array([runs[n][c].softening_scale for c in chems]) for n in MODELS}
    hi = {n: np.array([runs[n][c].softening_ci[1] for c in chems]) for n in MODELS}
    mae = {n: np.array([runs[n][c].mae for c in chems]) for n in MODELS}
    summary = {"n_systems": len(chems), "n_structures": len(data), "models": {}}
    for n, label in MODELS.items():
        summary["models"][label] = {"fraction_soft": float(np.mean(s[n] < 1)),
                                    "fraction_ci_below_1": float(np.mean(hi[n] < 1)),
                                    "median_s": float(np.median(s[n])),
                                    "s_range": [float(s[n].min()), float(s[n].max())],
                                    "median_force_mae": float(np.median(mae[n]))}
    summary["spearman_s"] = float(spearmanr(s["chgnet"], s["sevennet"]).statistic)
    summary["sevennet_softer"] = int(np.sum(s["sevennet"] < s["chgnet"]))
    summary["per_system"] = {c: {MODELS[n]: {"s": runs[n][c].softening_scale, "ci": list(runs[n][c].softening_ci),
                                             "c": runs[n][c].correction, "mae": runs[n][c].mae} for n in MODELS}
                             for c in chems}
    if out:
        with open(out, "w") as fh:
            json.dump(summary, fh, indent=1, default=float)
    if plot:
        import os

        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        os.makedirs(os.path.dirname(plot) or ".", exist_ok=True)
        fig, ax = plt.subplots(figsize=(4.6, 4.4))
        ax.scatter(s["chgnet"], s["sevennet"], s=14, color="tab:blue", edgecolor="k", lw=0.3)
        for c, x, y in zip(chems, s["chgnet"], s["sevennet"]):
            if abs(x - y) > 0.15 or min(x, y) < 0.5:
                ax.annotate(c, (x, y), fontsize=6, xytext=(2, 2), textcoords="offset points")
        lo = min(s["chgnet"].min(), s["sevennet"].min()) - 0.05
        ax.plot([lo, 1.1], [lo, 1.1], "k", lw=0.8)
        ax.axvline(1, color="gray", ls="--", lw=0.8)
        ax.axhline(1, color="gray", ls="--", lw=0.8)
        ax.set_xlabel("softening scale s, CHGNet 0.3.0")
        ax.set_ylabel("softening scale s, SevenNet-0")
        ax.set_title(f"{len(chems)} systems vs GPAW PBE forces (Spearman {summary['spearman_s']:.2f})", fontsize=9)
        fig.tight_layout()
        fig.savefig(plot, dpi=130)
    return {k: v for k, v in summary.items() if k != "per_system"}


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--plot", default=None)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    print(json.dumps(main(a.plot, a.out), indent=1))
