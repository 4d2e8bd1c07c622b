"""Softening scale per chemical system, and the one-scalar correction of Deng et al.

For the force components of one chemical system (model f, reference g, eV/Å):

* softening scale s — least-squares slope through the origin of f against
  g: s = Σ f·g / Σ g² (s < 1: the model is soft);
* the with-intercept slope and intercept (ordinary least squares), and R²
  of the through-origin fit;
* the correction c = Σ f·g / Σ f² — the scalar minimising Σ (c·f − g)²,
  i.e. the factor by which to multiply the model's forces;
* MAE = mean |f − g|, cMAE = mean |c·f − g| (eV/Å), and cMAE_loo: each
  structure's components corrected with the c fitted on the *other*
  structures (leave one structure out), an honest estimate for new data;
* bootstrap confidence intervals of s and c that resample *structures*
  with replacement (the components of one structure are correlated), seeded.

The energy variant uses energies relative to the chemistry's mean (total eV,
same composition only), the slope through the origin of ΔE_model on ΔE_ref.

The correction is applied as forces × c, stress × c and
E = E_anchor + c·(E − E_anchor), where the anchor is the model's lowest
energy per atom among the labelled structures of that chemistry times the
number of atoms; energy *differences* within a chemistry (barriers, defect
and surface energies) then scale by c exactly as the forces do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class SofteningResult:
    """Softening statistics of one chemical system (forces in eV/Å, energies in eV)."""

    chemsys: str
    n_structures: int
    n_components: int
    softening_scale: float
    softening_ci: list
    correction: float
    correction_ci: list
    slope_with_intercept: float
    intercept: float
    r2: float
    mae: float
    cmae: float
    cmae_loo: float | None
    energy_scale: float | None = None
    energy_anchor_per_atom: float | None = None
    confidence: float = 0.95
    notes: list = field(default_factory=list)

    @property
    def softened(self) -> bool:
        """Whether the CI of s lies entirely below 1."""
        return self.softening_ci[1] < 1.0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _ci(values: np.ndarray, confidence: float) -> list:
    lo, hi = np.quantile(values, [(1 - confidence) / 2, (1 + confidence) / 2])
    return [float(lo), float(hi)]


def fit_softening(model_forces: Sequence[np.ndarray], reference_forces: Sequence[np.ndarray], *,
                  chemsys: str = "", model_energies=None, reference_energies=None, n_atoms=None,
                  same_composition: bool = True, n_bootstrap: int = 2000, confidence: float = 0.95,
                  seed: int = 0) -> SofteningResult:
    """Softening statistics of one chemical system from per-structure force arrays (eV/Å).

    Parameters
    ----------
    model_forces, reference_forces : one (N_i, 3) array per structure.
    model_energies, reference_energies, n_atoms : optional totals (eV) for the energy variant
        and the correction anchor.
    same_composition : whether all structures share one composition (needed for the energy slope).
    """
    f_parts = [np.asarray(f, dtype=float).ravel() for f in model_forces]
    g_parts = [np.asarray(g, dtype=float).ravel() for g in reference_forces]
    if len(f_parts) != len(g_parts) or not f_parts:
        raise ValueError(f"{chemsys or 'softening'}: need matching, non-empty model and reference force lists")
    for k, (f, g) in enumerate(zip(f_parts, g_parts)):
        if f.shape != g.shape:
            raise ValueError(f"{chemsys}: structure {k} has {f.size} model and {g.size} reference components")
    fg = np.array([f @ g for f, g in zip(f_parts, g_parts)])
    gg = np.array([g @ g for g in g_parts])
    ff = np.array([f @ f for f in f_parts])
    if gg.sum() <= 0 or ff.sum() <= 0:
        raise ValueError(f"{chemsys}: all force components are zero; the softening scale is undefined")
    f, g = np.concatenate(f_parts), np.concatenate(g_parts)
    s = fg.sum() / gg.sum()
    c = fg.sum() / ff.sum()
    slope, intercept = np.polyfit(g, f, 1)
    r2 = 1 - np.sum((f - s * g) ** 2) / np.sum((f - f.mean()) ** 2)
    n = len(f_parts)
    rng = np.random.default_rng(seed)
    w = rng.multinomial(n, np.full(n, 1 / n), size=n_bootstrap).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        s_boot = (w @ fg) / (w @ gg)
        c_boot = (w @ fg) / (w @ ff)
    notes = []
    if n < 2:
        notes.append("one structure: the bootstrap CI is a single point and cMAE_loo is undefined")
    cmae_loo = None
    if n >= 2:
        loo = [np.abs((fg.sum() - fg[k]) / (ff.sum() - ff[k]) * f_parts[k] - g_parts[k]) for k in range(n)
               if ff.sum() - ff[k] > 0]
        cmae_loo = float(np.mean(np.concatenate(loo)))
    res = SofteningResult(
        chemsys=chemsys, n_structures=n, n_components=int(f.size),
        softening_scale=float(s), softening_ci=_ci(s_boot[np.isfinite(s_boot)], confidence),
        correction=float(c), correction_ci=_ci(c_boot[np.isfinite(c_boot)], confidence),
        slope_with_intercept=float(slope), intercept=float(intercept), r2=float(r2),
        mae=float(np.mean(np.abs(f - g))), cmae=float(np.mean(np.abs(c * f - g))), cmae_loo=cmae_loo,
        confidence=confidence, notes=notes)
    if model_energies is not None and n_atoms is not None:
        em = np.asarray(model_energies, dtype=float)
        na = np.asarray(n_atoms, dtype=float)
        res.energy_anchor_per_atom = float(np.min(em / na))
        if reference_energies is not None and same_composition and n >= 3:
            er = np.asarray(reference_energies, dtype=float)
            dm, dr = em - em.mean(), er - er.mean()
            res.energy_scale = float(dm @ dr / (dr @ dr)) if dr @ dr > 0 else None
        elif reference_energies is not None:
            res.notes.append("energy slope needs ≥ 3 structures of one composition")
    return res


def measure_softening(model, labelled, *, batch_size: int = 16, n_bootstrap: int = 2000,
                      confidence: float = 0.95, seed: int = 0, progress: bool = False):
    """Predict with ``model`` and fit :func:`fit_softening` per chemical system.

    Returns (results by chemsys, skipped structure issues).
    """
    structs, pred, issues = predict_labelled(model, labelled, batch_size=batch_size, progress=progress)
    return softening_from_prediction(pred, structs, n_bootstrap=n_bootstrap, confidence=confidence,
                                     seed=seed), issues


def predict_labelled(model, labelled, *, batch_size: int = 16, progress: bool = False):
    """(valid labelled structures, their Prediction with forces, issues of the skipped ones)."""
    good, issues = model.validate(labelled, require_labels=True)
    structs = [labelled[i] for i in good]
    pred = model.predict(structs, forces=True, batch_size=batch_size, progress=progress, validate=False)
    pred.indices = np.asarray(good, dtype=int)  # positions in ``labelled``, as for any Prediction
    return structs, pred, issues


def softening_from_prediction(pred, structs, *, n_bootstrap: int = 2000, confidence: float = 0.95,
                              seed: int = 0) -> dict:
    """:func:`fit_softening` per chemical system from a Prediction (with forces) of labelled ``structs``."""
    from .structures import get_energy, get_forces

    out = {}
    for chem in sorted(set(pred.chemsys)):
        idx = [j for j, c in enumerate(pred.chemsys) if c == chem]
        comps = {structs[j].get_chemical_formula(empirical=True) for j in idx}
        out[chem] = fit_softening(
            [pred.forces_of(j) for j in idx], [get_forces(structs[j]) for j in idx], chemsys=chem,
            model_energies=pred.energy[idx], reference_energies=[get_energy(structs[j]) for j in idx],
            n_atoms=pred.n_atoms[idx], same_composition=len(comps) == 1 and len({len(structs[j]) for j in idx}) == 1,
            n_bootstrap=n_bootstrap, confidence=confidence, seed=seed)
    return out


@dataclass
class ScalarCorrection:
    """Per-chemistry scalar correction: forces × c, stress × c, E_anchor + c (E − E_anchor).

    ``factors[chemsys] = (c, anchor)`` with the anchor in eV/atom (model energy).
    Chemistries without a factor are left unchanged.
    """

    factors: dict

    @classmethod
    def from_results(cls, results: dict) -> ScalarCorrection:
        return cls({k: (r.correction, r.energy_anchor_per_atom if r.energy_anchor_per_atom is not None else 0.0)
                    for k, r in results.items()})

    @classmethod
    def from_artifact(cls, artifact) -> ScalarCorrection:
        """The corrections stored in a calib artifact (``Artifact.corrections``)."""
        return cls({k: (v["c"], v["anchor"]) for k, v in artifact.corrections.items()})

    def factor(self, chemsys: str) -> tuple[float, float]:
        return self.factors.get(chemsys, (1.0, 0.0))

    def apply(self, chemsys: str, n_atoms: int, energy=None, forces=None, stress=None):
        """Corrected (energy eV, forces eV/Å, stress eV/Å³); None passes through."""
        c, anchor = self.factor(chemsys)
        e = None if energy is None else anchor * n_atoms + c * (energy - anchor * n_atoms)
        f = None if forces is None else c * np.asarray(forces, dtype=float)
        s = None if stress is None else c * np.asarray(stress, dtype=float)
        return e, f, s


def artifact_corrections(results: dict, only: set | None = None) -> dict:
    """``Artifact.corrections`` entries (c, its CI, anchor eV/atom) from softening results."""
    return {k: {"c": r.correction, "ci": list(r.correction_ci),
                "anchor": r.energy_anchor_per_atom if r.energy_anchor_per_atom is not None else 0.0}
            for k, r in results.items() if only is None or k in only}


def corrected_calculator(base, correction: ScalarCorrection, chemsys: str | None = None):
    """An ASE calculator giving ``base``'s results with the scalar correction applied."""
    from ase.calculators.calculator import Calculator, all_changes

    from .structures import chemsys as get_chemsys

    class CorrectedCalculator(Calculator):
        implemented_properties = ["energy", "free_energy", "forces", "stress"]

        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            a = self.atoms.copy()
            a.calc = base
            chem = chemsys or get_chemsys(a)
            want_stress = "stress" in properties
            e, f, s = correction.apply(chem, len(a), a.get_potential_energy(), a.get_forces(),
                                       a.get_stress() if want_stress else None)
            self.results = {"energy": e, "free_energy": e, "forces": f}
            if s is not None:
                self.results["stress"] = s

    return CorrectedCalculator()


def parity_plot(model_forces, reference_forces, result: SofteningResult, path, corrected: bool = True) -> None:
    """Force parity plot: model vs reference with the fitted slope, its CI band and the diagonal;
    with ``corrected`` a second panel after multiplying by c."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f = np.concatenate([np.ravel(x) for x in model_forces])
    g = np.concatenate([np.ravel(x) for x in reference_forces])
    panels = [("model", f, result.softening_scale, result.softening_ci)]
    if corrected:
        c = result.correction
        panels.append((f"corrected (× {c:.3f})", c * f, result.softening_scale * c,
                       [x * c for x in result.softening_ci]))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 4.2), squeeze=False)
    lim = 1.05 * max(np.abs(f).max() * max(1.0, result.correction), np.abs(g).max())
    x = np.array([-lim, lim])
    for ax, (name, y, slope, ci) in zip(axes[0], panels):
        ax.scatter(g, y, s=4, alpha=0.4, rasterized=True)
        ax.plot(x, x, "k", lw=0.8, label="y = x")
        ax.plot(x, slope * x, "tab:red", lw=1.2, label=f"slope {slope:.3f}")
        ax.fill_between(x, ci[0] * x, ci[1] * x, color="tab:red", alpha=0.2,
                        label=f"{int(100 * result.confidence)} % CI [{ci[0]:.3f}, {ci[1]:.3f}]")
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_xlabel("reference force component (eV/Å)")
        ax.set_ylabel(f"{name} force component (eV/Å)")
        ax.legend(fontsize=8, loc="upper left")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{result.chemsys}: {result.n_structures} structures")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
