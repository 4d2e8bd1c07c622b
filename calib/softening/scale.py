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

The correction itself (applied as forces × c, stress × c and
E = E_anchor + c·(E − E_anchor)) is :class:`calib.softening.correction.ScalarCorrection`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from calib.errors import positive_int
from calib.settings import open_fraction, setting, validate


@dataclass(frozen=True)
class SofteningSettings:
    """The bootstrap of the softening scale, validated on construction (each field declares its default and check
    once, :mod:`calib.settings`; ``calib softening`` builds its options from them, the library reads
    :data:`SOFTENING`): ``n_bootstrap`` resamples of structures, the CIs at ``confidence``."""

    n_bootstrap: int = setting(2000, "≥ 1 bootstrap resamples of structures", check=positive_int,
                               flag="--n-bootstrap")
    confidence: float = setting(0.95, "level of the confidence intervals, in (0, 1)", check=open_fraction,
                                flag="--confidence")

    def __post_init__(self):
        validate(self)


#: the defaults of :func:`fit_softening` and of every workflow that measures the softening
SOFTENING = SofteningSettings()


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
    confidence: float = SOFTENING.confidence
    domain_q_max: float | None = None  # largest Q score of these structures (the correction's domain), if known
    notes: list = field(default_factory=list)

    @property
    def softened(self) -> bool:
        """Whether the CI of s lies entirely below 1."""
        return self.softening_ci[1] < 1.0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class SofteningFailure:
    """A chemical system whose softening could not be measured: its ``n_structures`` labelled structures and the
    ``reason`` (e.g. every reference force component is zero)."""

    chemsys: str
    n_structures: int
    reason: str

    def as_dict(self) -> dict:
        """The JSON record: chemsys, n_structures, reason."""
        return {"chemsys": self.chemsys, "n_structures": self.n_structures, "reason": self.reason}


def _ci(values: np.ndarray, confidence: float) -> list:
    lo, hi = np.quantile(values, [(1 - confidence) / 2, (1 + confidence) / 2])
    return [float(lo), float(hi)]


def fit_softening(model_forces: Sequence[np.ndarray], reference_forces: Sequence[np.ndarray], *,
                  chemsys: str = "", model_energies=None, reference_energies=None, n_atoms=None,
                  same_composition: bool = True, n_bootstrap: int = SOFTENING.n_bootstrap,
                  confidence: float = SOFTENING.confidence,
                  seed: int = 0, domain_scores=None) -> SofteningResult:
    """Softening statistics of one chemical system from per-structure force arrays (eV/Å).

    Parameters
    ----------
    model_forces, reference_forces : one (N_i, 3) array per structure.
    model_energies, reference_energies, n_atoms : optional totals (eV) for the energy variant
        and the correction anchor.
    same_composition : whether all structures share one composition (needed for the energy slope).
    domain_scores : optional per-structure domain (or Q) scores of the predictor (dimensionless); their largest
        is the domain of the correction fitted here (``domain_q_max``).
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
        raise ValueError(f"{chemsys}: all {'reference' if gg.sum() <= 0 else 'model'} force components are zero "
                         "(structures at a symmetric equilibrium?); the softening scale is undefined: label "
                         "displaced or rattled structures of this chemistry")
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
        confidence=confidence, notes=notes,
        domain_q_max=None if domain_scores is None else float(np.max(np.asarray(domain_scores, dtype=float))))
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


def fit_softening_by_chemsys(chemsys: Sequence[str], model_forces, reference_forces, *, model_energies=None,
                             reference_energies=None, n_atoms=None, compositions=None,
                             n_bootstrap: int = SOFTENING.n_bootstrap,
                             confidence: float = SOFTENING.confidence, seed: int = 0, failures: dict | None = None,
                             domain_scores=None) -> dict:
    """:func:`fit_softening` for each chemical system of a list of structures.

    Parameters
    ----------
    chemsys : (S,) str; model_forces, reference_forces : S arrays (N_i, 3), eV/Å
    model_energies, reference_energies : (S,) total eV; n_atoms : (S,)
    compositions : (S,) reduced formulas (the energy slope needs one composition)
    domain_scores : (S,) domain scores; each chemistry's largest is its correction's domain

    Returns a dict chemsys → :class:`SofteningResult`. A chemistry whose
    statistics cannot be computed (all reference forces zero) raises ValueError
    naming it, unless ``failures`` is a dict: then it is recorded there
    (chemsys → :class:`SofteningFailure`) and the other chemistries go on.
    """
    chem = np.asarray(chemsys, dtype=str)
    out = {}
    for c in sorted(set(chem.tolist())):
        idx = np.flatnonzero(chem == c)
        same = True
        if compositions is not None and n_atoms is not None:
            same = (len({compositions[j] for j in idx}) == 1 and len({int(n_atoms[j]) for j in idx}) == 1)
        pick = (lambda x: None if x is None else np.asarray(x, dtype=float)[idx])  # noqa: E731
        try:
            out[c] = fit_softening([model_forces[j] for j in idx], [reference_forces[j] for j in idx], chemsys=c,
                                   model_energies=pick(model_energies), reference_energies=pick(reference_energies),
                                   n_atoms=pick(n_atoms), same_composition=same, n_bootstrap=n_bootstrap,
                                   confidence=confidence, seed=seed, domain_scores=pick(domain_scores))
        except ValueError as exc:
            if failures is None:
                raise
            failures[c] = SofteningFailure(c, int(len(idx)), str(exc).removeprefix(f"{c}: "))
    return out


def parity_plot(model_forces, reference_forces, result: SofteningResult, path, corrected: bool = True) -> None:
    """Force parity plot: model vs reference with the fitted slope, its CI band and the diagonal;
    with ``corrected`` a second panel after multiplying by c."""
    from calib.data.figures import pyplot, save

    plt = pyplot()

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
    save(fig, path)
