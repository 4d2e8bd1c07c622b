"""Error models that know the chemistry: σ of every force component and of the energy per atom.

A universal potential's error is not a fixed multiple of its force. At 1000 K an oxide perovskite and a soft
semiconductor have forces of the same size and errors 5× apart; the alkali halides are the least soft systems,
sp³ semiconductors the softest (Deng et al. 2025). calib fits, post hoc and for any backend, log-linear variance
models of the errors on calibration structures:

    log σ²_ai = θ · x_ai                 (force component i of atom a, eV²/Å²)
    log σ²_s  = log(1 + h_s) + ϑ · x_s   (energy per atom of structure s, eV²/atom²)

**Inputs.** x_ai: the log of the component's, the atom's and the structure's model force (squared, plus a
floor), and the chemistry: the atom's element by its properties (Pauling electronegativity, period, group,
atomic radius, metal or not, s/p/d block; :func:`element_properties`) and the structure's composition
(electronegativity spread and mean, metal fraction), and the unpaired electrons of the free atom's open 3d shell
(Hund's rule; :func:`unpaired_3d`) of the atom and, averaged, of its structure: the magnetic 3d metals and their
+U oxides, whose forces CHGNet gets worse than their other properties predict (an O atom of FeO included, so the
structure's mean too). x_s: the log of the structure's RMS force and its
composition; h_s is its *reference leverage* (:meth:`calib.uq.reference.ElementReference.leverage`): how well
the calibration compositions fix the per-element energy offsets of this composition. An energy error of a new
compound is mostly its formation-energy error against the offsets, whose spread grows like 1 + h (the
prediction variance of a least-squares fit): a fixed factor, not a fitted slope.

**What the data chose.** On the shipped GPAW labels split by chemical system, element *properties* generalise
to unseen chemistries and element identities do not: a one-hot element term (ridge-shrunk) lowers the held-out
likelihood, and so do the principal components of the model's per-atom descriptors, which extrapolate badly to
new chemistries (docs/errormodel.md has the table). The descriptor and LLPR terms are kept as options
(``terms``); the defaults are the measured best. One input beats every other, when a user can run it: the
forces of a *second* universal potential (the ``committee`` term: the log of the component's, the atom's and
the structure's disagreement with the model, squared plus the floor). Two models trained apart disagree where
at least one is wrong; on hot frames of unseen chemistries SevenNet-0's disagreement with CHGNet ranks CHGNet's
errors at AUROC 0.94 against 0.87 for the chemistry alone (docs/errormodel.md). The energy model's ``committee``
term is the log of the second model's energy disagreement after its own per-element reference
(:func:`energy_disagreement`). Validity on new chemistries
does not rest on the model being right: the conformal step scores every calibration structure with models fitted without its chemical system
(:func:`grouped_folds`, calib.workflows.calibration).

**Fit.** Gaussian negative log-likelihood of the errors e: minimising Σ w (log σ² + e²/σ²) over a log-linear σ²
is a gamma GLM with log link on e² (the gamma deviance of any shape has the same optimum), which is
scikit-learn's :class:`~sklearn.linear_model.GammaRegressor` with its L2 penalty (``ridge``) on standardised
inputs. Each structure weighs the same in the force fit, whatever its size. Nothing here runs a model.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from calib.uq.variance import gaussian_nll

#: floor of the force magnitudes inside the logs, eV/Å (a relaxed cell has forces ~0)
FORCE_FLOOR = 0.05
#: floor of the energy disagreement inside its log, eV/atom: a third of the typical out-of-group energy error
#: (0.06 eV/atom); two models that agree more closely than this say nothing more (chosen on held-out halvings
#: among 0.002–0.04 eV/atom, docs/errormodel.md)
ENERGY_FLOOR = 0.02
#: floor of e² in the gamma fit (the GLM needs y > 0): (1e-4 eV/Å)² or (1e-4 eV/atom)², below any real error
ERROR2_FLOOR = 1e-8

ELEMENT_PROPERTIES = ("electronegativity", "period", "group", "atomic_radius", "metal", "s_block", "p_block",
                      "d_block")


@functools.lru_cache(maxsize=None)
def element_properties(z: int) -> tuple[float, ...]:
    """The element descriptors of the error models (:data:`ELEMENT_PROPERTIES`), from pymatgen's periodic table:
    Pauling electronegativity (2.0 where undefined: noble gases), period, group, atomic radius (Å; 1.5 where
    unknown), metal (1/0), and the s, p, d block as 1/0 (f-block: all 0)."""
    from ase.data import chemical_symbols
    from pymatgen.core import Element

    el = Element(chemical_symbols[int(z)])
    x = float(el.X) if np.isfinite(el.X) else 2.0
    radius = float(el.atomic_radius) if el.atomic_radius is not None else 1.5
    block = el.block
    return (x, float(el.row), float(el.group), radius, float(el.is_metal), float(block == "s"), float(block == "p"),
            float(block == "d"))


@functools.lru_cache(maxsize=None)
def unpaired_3d(z: int) -> float:
    """Unpaired electrons of the free atom's 3d shell by Hund's rule, min(n, 10 − n) of its 3d occupancy n
    (pymatgen's electronic structure): Cr, Mn 5; Fe 4; V, Co 3; Ti, Ni 2; Sc 1; 0 for an element without an open
    3d shell (Cu and Zn, the p block after them, every 4d and 5d element)."""
    from ase.data import chemical_symbols
    from pymatgen.core import Element

    occ = [n for shell, sub, n in Element(chemical_symbols[int(z)]).full_electronic_structure
           if shell == 3 and sub == "d"]
    return float(min(occ[0], 10 - occ[0])) if occ else 0.0


def _property_table(numbers, properties=element_properties, width: int = len(ELEMENT_PROPERTIES)) -> np.ndarray:
    """(N, width): ``properties(z)`` of every atom, evaluated once per distinct element."""
    numbers = np.asarray(numbers, dtype=int)
    uniq, inv = np.unique(numbers, return_inverse=True)
    table = np.array([properties(int(z)) for z in uniq], dtype=float).reshape(len(uniq), width)
    return table[inv.ravel()]


def _structure_range(values: np.ndarray, structure: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(smallest, largest) of per-atom ``values`` over each structure's atoms (±inf for a structure of none)."""
    lo, hi = np.full(n, np.inf), np.full(n, -np.inf)
    np.minimum.at(lo, structure, values)
    np.maximum.at(hi, structure, values)
    return lo, hi


@dataclass
class AtomInputs:
    """What the error models read, per atom of S structures (arrays; nothing here runs a model).

    numbers : (N,) atomic numbers
    forces : (N, 3) model forces, eV/Å
    structure : (N,) the row (0 … S−1) of each atom's structure
    descriptors : (N, d) the model's per-atom last-layer descriptors (for the optional ``descriptor`` term)
    local_sigma : (N,) LLPR σ of each atom's energy contribution, eV (optional ``llpr`` term)
    leverage : (S,) reference leverage h of each structure's composition (energy model; NaN: not determined)
    second_forces : (N, 3) a second model's forces on the same atoms, eV/Å (the optional ``committee`` term)
    energy_disagreement : (S,) a second model's energy minus the model's, per atom, after a per-element
        reference fitted to that difference (:func:`energy_disagreement`), eV/atom (the energy ``committee``
        term; NaN: the reference does not determine the composition)
    """

    numbers: np.ndarray
    forces: np.ndarray
    structure: np.ndarray
    descriptors: np.ndarray | None = None
    local_sigma: np.ndarray | None = None
    leverage: np.ndarray | None = None
    n_structures: int | None = None
    second_forces: np.ndarray | None = None
    energy_disagreement: np.ndarray | None = None

    def __post_init__(self):
        self.numbers = np.asarray(self.numbers, dtype=int)
        self.forces = np.asarray(self.forces, dtype=float).reshape(-1, 3)
        self.structure = np.asarray(self.structure, dtype=int)
        n = len(self.numbers)
        if self.second_forces is not None:
            self.second_forces = np.asarray(self.second_forces, dtype=float).reshape(-1, 3)
        for name in ("forces", "structure", "descriptors", "local_sigma", "second_forces"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise ValueError(f"AtomInputs: {n} atoms but {len(value)} rows of {name}")
        if self.n_structures is None:
            self.n_structures = int(self.structure.max()) + 1 if n else 0
        if self.energy_disagreement is not None:
            self.energy_disagreement = np.asarray(self.energy_disagreement, dtype=float).reshape(-1)
            if len(self.energy_disagreement) != self.n_structures:
                raise ValueError(f"AtomInputs: {self.n_structures} structures but {len(self.energy_disagreement)} "
                                 "energy disagreements")

    @property
    def n_atoms(self) -> np.ndarray:
        return np.bincount(self.structure, minlength=self.n_structures)

    def subset(self, rows) -> AtomInputs:
        """The inputs of the structures ``rows`` (renumbered 0 … len(rows) − 1, in that order)."""
        rows = np.asarray(rows, dtype=int)
        new = np.full(self.n_structures, -1)
        new[rows] = np.arange(len(rows))
        sort = np.argsort(self.structure, kind="stable")
        starts = np.searchsorted(self.structure[sort], np.arange(self.n_structures + 1))
        order = np.concatenate([sort[starts[r]:starts[r + 1]] for r in rows]) if len(rows) else np.zeros(0, int)
        pick = (lambda x: None if x is None else np.asarray(x)[order])  # noqa: E731
        return AtomInputs(self.numbers[order], self.forces[order], new[self.structure[order]],
                          pick(self.descriptors), pick(self.local_sigma),
                          None if self.leverage is None else np.asarray(self.leverage)[rows], len(rows),
                          pick(self.second_forces),
                          None if self.energy_disagreement is None else self.energy_disagreement[rows])


def structure_mean(values: np.ndarray, structure: np.ndarray, n: int) -> np.ndarray:
    """Mean of per-atom rows over each structure's atoms: (S,) or (S, k)."""
    counts = np.maximum(np.bincount(structure, minlength=n), 1)
    if values.ndim == 1:
        return np.bincount(structure, weights=values, minlength=n) / counts
    return np.stack([np.bincount(structure, weights=v, minlength=n) for v in values.T], axis=1) / counts[:, None]


def _log_force(x) -> np.ndarray:
    return np.log(np.asarray(x, dtype=float) ** 2 + FORCE_FLOOR**2)


def _log_energy(x) -> np.ndarray:
    return np.log(np.asarray(x, dtype=float) ** 2 + ENERGY_FLOOR**2)


def _composition(inputs: AtomInputs, P: np.ndarray | None = None) -> np.ndarray:
    """(S, 3): electronegativity spread (max − min) and mean, and the metal fraction of each structure (``P``: the
    atoms' :func:`_property_table`, computed here when not given)."""
    P = _property_table(inputs.numbers) if P is None else P
    S, owner = inputs.n_structures, inputs.structure
    en = P[:, 0]
    lo, hi = _structure_range(en, owner, S)
    return np.column_stack([np.where(np.isfinite(hi - lo), hi - lo, 0.0), structure_mean(en, owner, S),
                            structure_mean(P[:, 4], owner, S)])


def _rms_force(inputs: AtomInputs, forces: np.ndarray | None = None) -> np.ndarray:
    """(S,) RMS force component of each structure, eV/Å: of the model forces, or of ``forces`` (N, 3) given."""
    F = inputs.forces if forces is None else forces
    return np.sqrt(structure_mean(np.sum(F**2, axis=1) / 3.0, inputs.structure, inputs.n_structures))


class _LogLinearVariance:
    """The shared machinery: a standardised design, the gamma GLM on squared errors, persistence."""

    kind = ""
    TERMS: tuple = ()
    DEFAULT_TERMS: tuple = ()
    DEFAULT_RIDGE = 1e-3

    def __init__(self, terms: Sequence[str] | None = None, ridge: float | None = None, n_components: int = 8,
                 max_iter: int = 300):
        self.terms = tuple(self.DEFAULT_TERMS if terms is None else terms)
        self.ridge = float(self.DEFAULT_RIDGE if ridge is None else ridge)
        self.n_components = int(n_components)
        self.max_iter = int(max_iter)
        unknown = set(self.terms) - set(self.TERMS)
        if unknown or not self.terms:
            raise ValueError(f"error-model terms must be a non-empty subset of {self.TERMS}, got {self.terms}")
        if not (np.isfinite(self.ridge) and self.ridge >= 0):
            raise ValueError(f"ridge must be a finite number ≥ 0, got {ridge}")

    def _columns(self, inputs: AtomInputs) -> np.ndarray:
        raise NotImplementedError

    def _fit_inputs(self, inputs: AtomInputs) -> None:
        """What the design learns from the fit's own inputs: the elements of the ``element`` term, the PCA of the
        ``descriptor`` term."""
        self.elements_ = np.array(sorted(set(inputs.numbers.tolist())), dtype=int)
        self.pca_mean_ = np.zeros(0)
        self.pca_components_ = np.zeros((0, 0))
        self.pca_scale_ = np.zeros(0)
        if "descriptor" in self.terms:
            from sklearn.decomposition import PCA

            if inputs.descriptors is None:
                raise ValueError("the 'descriptor' term needs per-atom descriptors")
            X = np.asarray(inputs.descriptors, dtype=float)
            pca = PCA(n_components=max(1, min(self.n_components, X.shape[1], len(X) - 1))).fit(X)
            self.pca_mean_, self.pca_components_ = pca.mean_, pca.components_
            self.pca_scale_ = np.sqrt(np.maximum(pca.explained_variance_, 1e-300))

    def _fit_design(self, inputs: AtomInputs) -> np.ndarray:
        """Fit what the design learns (:meth:`_fit_inputs`) and the standardisation of its columns (a constant
        column keeps scale 1); the unstandardised columns."""
        self._fit_inputs(inputs)
        cols = self._columns(inputs)
        self.center_ = cols.mean(axis=0)
        sd = cols.std(axis=0)
        self.scale_ = np.where(sd > 1e-12, sd, 1.0)
        return cols

    def _pcs(self, descriptors) -> np.ndarray:
        """Principal-component scores, clipped to ±3 reference standard deviations (no extrapolation)."""
        t = (np.asarray(descriptors, dtype=float) - self.pca_mean_) @ self.pca_components_.T
        return np.clip(t, -3 * self.pca_scale_, 3 * self.pca_scale_)

    def design(self, inputs: AtomInputs) -> np.ndarray:
        """The standardised design matrix, one row per fitted point."""
        return (self._columns(inputs) - self.center_) / self.scale_

    def _fit(self, inputs: AtomInputs, e2: np.ndarray, weights=None) -> None:
        from sklearn.linear_model import GammaRegressor

        cols = self._fit_design(inputs)
        y = np.maximum(e2, ERROR2_FLOOR)
        if cols.shape[1] == 0:  # the intercept alone: the gamma MLE of a constant mean is the (weighted) mean
            self.coef_, self.intercept_ = np.zeros(0), float(np.log(np.average(y, weights=weights)))
        else:
            glm = GammaRegressor(alpha=self.ridge, max_iter=self.max_iter, solver="newton-cholesky")
            glm.fit((cols - self.center_) / self.scale_, y, sample_weight=weights)
            self.coef_, self.intercept_ = glm.coef_.astype(float), float(glm.intercept_)
        self.n_fitted_ = int(len(e2))

    def _variance(self, X: np.ndarray) -> np.ndarray:
        return np.exp(np.clip(X @ self.coef_ + self.intercept_, -60.0, 60.0))

    def nll(self, inputs: AtomInputs, errors) -> float:
        """Mean Gaussian negative log-likelihood of ``errors`` under the model, nats per point."""
        s = np.asarray(self.sigma(inputs), dtype=float).ravel()
        e = np.asarray(errors, dtype=float).ravel()
        ok = np.isfinite(e)
        return gaussian_nll(e[ok] ** 2, s[ok] ** 2)

    # -- persistence (calib.artifact): every learned array, with units
    def to_variables(self, prefix: str) -> dict:
        attrs = {"terms": ",".join(self.terms), "ridge": self.ridge, "n_components": self.n_components,
                 "form": getattr(self, "form", "loglinear"),
                 "n_fitted": int(getattr(self, "n_fitted_", 0)), "kind": self.kind,
                 "description": (self.__class__.__doc__ or "").split("\n")[0]}
        return {
            f"{prefix}_coef": ((f"{prefix}_coefficient",), self.coef_, {
                "units": "1", "description": "coefficients of log sigma^2 on the standardised inputs (the two-part "
                                            "form: those of the force scale, then of the floor, each with an intercept)"}),
            f"{prefix}_intercept": ((), self.intercept_, {"units": f"log of ({self.unit})^2", **attrs}),
            f"{prefix}_center": ((f"{prefix}_input",), self.center_, {"units": "1"}),
            f"{prefix}_scale": ((f"{prefix}_input",), self.scale_, {"units": "1"}),
            f"{prefix}_pca_mean": ((f"{prefix}_dim",), self.pca_mean_, {"units": "descriptor units"}),
            f"{prefix}_pca_components": ((f"{prefix}_pc", f"{prefix}_dim"), self.pca_components_, {"units": "1"}),
            f"{prefix}_pca_scale": ((f"{prefix}_pc",), self.pca_scale_, {"units": "descriptor units"}),
            **({f"{prefix}_onehot_elements": ((f"{prefix}_onehot",), np.asarray(self.elements_, dtype=np.int32),
                                              {"units": "1", "description": "atomic numbers of the element term"})}
               if "element" in self.terms else {}),
        }

    @classmethod
    def from_variables(cls, ds, prefix: str):
        attrs = ds[f"{prefix}_intercept"].attrs
        kw = {"form": str(attrs.get("form", "loglinear"))} if cls is ForceComponentVariance else {}
        self = cls(terms=str(attrs["terms"]).split(","), ridge=float(attrs["ridge"]),
                   n_components=int(attrs.get("n_components", 8)), **kw)
        self.coef_ = ds[f"{prefix}_coef"].values.astype(float)
        self.intercept_ = float(ds[f"{prefix}_intercept"].values)
        self.center_ = ds[f"{prefix}_center"].values.astype(float)
        self.scale_ = ds[f"{prefix}_scale"].values.astype(float)
        self.pca_mean_ = ds[f"{prefix}_pca_mean"].values.astype(float)
        comps = ds[f"{prefix}_pca_components"].values.astype(float)
        self.pca_components_ = comps.reshape(-1, len(self.pca_mean_)) if len(self.pca_mean_) else np.zeros((0, 0))
        self.pca_scale_ = ds[f"{prefix}_pca_scale"].values.astype(float)
        self.n_fitted_ = int(attrs.get("n_fitted", 0))
        if f"{prefix}_onehot_elements" in ds:
            self.elements_ = ds[f"{prefix}_onehot_elements"].values.astype(int)
        return self

    @staticmethod
    def present(ds, prefix: str) -> bool:
        return f"{prefix}_coef" in ds


def force_terms(inputs: AtomInputs) -> tuple[str, ...]:
    """The force model's terms for these inputs: the defaults, and ``committee`` when they carry a second model's
    forces."""
    base = ForceComponentVariance.DEFAULT_TERMS
    return base + ("committee",) if inputs.second_forces is not None else base


class ForceComponentVariance(_LogLinearVariance):
    """σ² of every force component (eV²/Å²) from the model force and the chemistry of the atom and structure
    (and, with the ``committee`` term, a second model's disagreement with it)."""

    kind = "forces"
    unit = "eV/Å"
    TERMS = ("force", "chemistry", "open_3d", "element", "descriptor", "llpr", "committee")
    DEFAULT_TERMS = ("force", "chemistry", "open_3d")
    DEFAULT_RIDGE = 1e-3
    FORMS = ("loglinear", "two-part")

    def __init__(self, terms=None, ridge=None, n_components: int = 8, max_iter: int = 300, form: str = "loglinear"):
        super().__init__(terms, ridge, n_components, max_iter)
        if form not in self.FORMS:
            raise ValueError(f"form must be one of {self.FORMS}, got {form!r}")
        self.form = form

    def _columns(self, inputs: AtomInputs) -> np.ndarray:
        F, owner = inputs.forces, inputs.structure
        atom = []
        if "force" in self.terms:
            atom += [_log_force(np.linalg.norm(F, axis=1)), _log_force(_rms_force(inputs)[owner])]
        if "chemistry" in self.terms:
            atom += [_property_table(inputs.numbers), _composition(inputs)[owner]]
        if "open_3d" in self.terms:  # the atom's and its structure's open 3d shells: magnetism, +U (module doc)
            u = _property_table(inputs.numbers, lambda z: (unpaired_3d(z),), 1)[:, 0]
            atom += [u, structure_mean(u, owner, inputs.n_structures)[owner]]
        if "llpr" in self.terms:
            if inputs.local_sigma is None:
                raise ValueError("the 'llpr' term needs the atoms' LLPR energy σ")
            atom.append(np.log(np.maximum(inputs.local_sigma, 1e-12)))
        if "descriptor" in self.terms:
            atom.append(self._pcs(inputs.descriptors))
        if "element" in self.terms:  # one column per element of the fit (an unseen element: all zero)
            atom.append((inputs.numbers[:, None] == self.elements_[None, :]).astype(float))
        comp = [_log_force(F.reshape(-1, 1))] if "force" in self.terms else []
        if "committee" in self.terms:  # where two models disagree, at least one is wrong
            if inputs.second_forces is None:
                raise ValueError("the 'committee' term needs a second model's forces (AtomInputs.second_forces)")
            D = inputs.second_forces - F
            comp.append(_log_force(D.reshape(-1, 1)))
            atom += [_log_force(np.linalg.norm(D, axis=1)), _log_force(_rms_force(inputs, D)[owner])]
        atom = np.column_stack(atom) if atom else np.zeros((len(F), 0))
        return np.hstack(comp + [np.repeat(atom, 3, axis=0)])

    def fit(self, inputs: AtomInputs, errors, groups=None) -> ForceComponentVariance:
        """Fit on calibration atoms: ``errors`` (N, 3), reference − model forces in eV/Å. Every structure weighs
        the same whatever its size; with ``groups`` (S,) every group (chemical system) does."""
        e = np.asarray(errors, dtype=float).reshape(-1, 3)
        if len(e) != len(inputs.numbers):
            raise ValueError(f"{len(inputs.numbers)} atoms but {len(e)} force errors")
        if inputs.n_structures < 2:
            raise ValueError(f"the force error model needs ≥ 2 structures, got {inputs.n_structures}")
        per = 1.0 / np.maximum(inputs.n_atoms, 1).astype(float)
        if groups is not None:
            _, inv, counts = np.unique(np.asarray(groups).astype(str), return_inverse=True, return_counts=True)
            per = per / counts[inv.ravel()]
        w = np.repeat(per[inputs.structure], 3)
        w = w * len(w) / w.sum()
        if self.form == "loglinear":
            self._fit(inputs, (e**2).ravel(), weights=w)
        else:
            self._fit_two_part(inputs, (e**2).ravel(), w)
        return self

    def _fit_two_part(self, inputs: AtomInputs, e2: np.ndarray, w: np.ndarray) -> None:
        """σ² = exp(a·x) F_i² + exp(b·x): a scale of the force and a floor, each log-linear in the atom's inputs x
        (the component's own log force left out), by weighted Gaussian NLL with an L2 penalty on the slopes
        (:func:`calib.uq.variance.minimize_nll`)."""
        from calib.uq.variance import minimize_nll

        self._fit_design(inputs)
        X = np.column_stack([np.ones(len(e2)), self.design(inputs)[:, 1:]])
        F2 = inputs.forces.reshape(-1) ** 2
        k = X.shape[1]

        def variance(p):
            A, T = np.exp(np.clip(X @ p[:k], -60, 60)), np.exp(np.clip(X @ p[k:], -60, 60))
            return A * F2 + T, lambda g: np.concatenate([X.T @ (g * A * F2), X.T @ (g * T)])

        p0 = np.zeros(2 * k)
        p0[0] = np.log(max(np.average(e2, weights=w) / max(np.average(F2, weights=w), 1e-12), 1e-12))
        p0[k] = np.log(max(0.1 * np.average(e2, weights=w), ERROR2_FLOOR))
        penalized = np.ones(2 * k, dtype=bool)
        penalized[[0, k]] = False  # the two intercepts
        self.coef_ = minimize_nll(variance, e2, p0, weights=w, ridge=self.ridge, penalized=penalized,
                                  maxiter=5 * self.max_iter)[0]
        self.intercept_ = 0.0
        self.n_fitted_ = int(len(e2))

    def sigma(self, inputs: AtomInputs) -> np.ndarray:
        """σ of every force component, eV/Å, shape (N, 3)."""
        X = self.design(inputs)
        if self.form == "loglinear":
            return np.sqrt(self._variance(X)).reshape(-1, 3)
        X = np.column_stack([np.ones(len(X)), X[:, 1:]])
        k = X.shape[1]
        A, T = np.exp(np.clip(X @ self.coef_[:k], -60, 60)), np.exp(np.clip(X @ self.coef_[k:], -60, 60))
        return np.sqrt(A * inputs.forces.reshape(-1) ** 2 + T).reshape(-1, 3)


def energy_terms(inputs: AtomInputs) -> tuple[str, ...]:
    """The energy model's terms for these inputs: the defaults, and ``committee`` when they carry a second model's
    energy disagreement."""
    base = EnergyVariance.DEFAULT_TERMS
    return base + ("committee",) if inputs.energy_disagreement is not None else base


def energy_disagreement(numbers: Sequence[np.ndarray], second_delta, reference) -> np.ndarray:
    """d (S,), eV/atom: a second model's energy minus the model's (``second_delta``, total eV) less the per-element
    shift ``reference`` (an :class:`calib.uq.reference.ElementReference` fitted to that difference on calibration
    structures), per atom; NaN where that reference does not determine the composition. Two universal potentials
    sit on different per-element zeros; what is left after them is where they disagree on the compound."""
    nums = [np.asarray(n) for n in numbers]
    delta = np.asarray(second_delta, dtype=float)
    ok, _ = reference.determined(nums)
    n = np.maximum([len(x) for x in nums], 1)
    return np.where(ok, (delta - reference.predict(nums)) / n, np.nan)


class EnergyVariance(_LogLinearVariance):
    """σ² = (1 + h) exp(ϑ·x) of the energy per atom (eV²/atom²): h the reference leverage, x the RMS force.

    x also holds the composition (``chemistry``) and, with the ``committee`` term, the log of a second model's
    energy disagreement (:func:`energy_disagreement`, squared plus :data:`ENERGY_FLOOR` squared)."""

    kind = "energy"
    unit = "eV/atom"
    TERMS = ("leverage", "force", "chemistry", "llpr", "committee")
    DEFAULT_TERMS = ("leverage", "force", "chemistry")
    DEFAULT_RIDGE = 0.1

    def _offset(self, inputs: AtomInputs) -> np.ndarray:
        """1 + h where the ``leverage`` term is on (the variance of a least-squares prediction at the composition
        grows as τ²(1 + h): a fixed factor, not a fitted slope, which extrapolated badly), else 1."""
        if "leverage" not in self.terms:
            return np.ones(inputs.n_structures)
        if inputs.leverage is None:
            raise ValueError("the 'leverage' term needs each structure's reference leverage")
        h = np.asarray(inputs.leverage, dtype=float)
        return 1.0 + np.where(np.isfinite(h), np.maximum(h, 0.0), 1.0)

    def _columns(self, inputs: AtomInputs) -> np.ndarray:
        cols = [np.zeros((inputs.n_structures, 0))]
        if "force" in self.terms:
            cols.append(_log_force(_rms_force(inputs)))
        if "chemistry" in self.terms:
            cols.append(_composition(inputs))
        if "llpr" in self.terms:
            if inputs.local_sigma is None:
                raise ValueError("the 'llpr' term needs the atoms' LLPR energy σ")
            cols.append(structure_mean(np.log(np.maximum(inputs.local_sigma, 1e-12)), inputs.structure,
                                       inputs.n_structures))
        if "committee" in self.terms:  # where two models disagree on the compound, at least one is wrong
            if inputs.energy_disagreement is None:
                raise ValueError("the energy 'committee' term needs a second model's energy disagreement "
                                 "(AtomInputs.energy_disagreement)")
            cols.append(_log_energy(inputs.energy_disagreement))
        return np.column_stack(cols) if len(cols) > 1 else cols[0]

    def fit(self, inputs: AtomInputs, errors_per_atom, groups=None) -> EnergyVariance:
        """Fit on calibration structures: ``errors_per_atom`` (S,), reference − model energy per atom after the
        element reference, eV/atom (NaN: left out). With ``groups`` (S,), every group (chemical system) weighs
        the same: the frames of one chemistry share most of their energy error (its formation-energy error)."""
        e = np.asarray(errors_per_atom, dtype=float)
        keep = np.isfinite(e)
        if inputs.leverage is not None:
            keep &= np.isfinite(np.asarray(inputs.leverage, dtype=float))
        if "committee" in self.terms and inputs.energy_disagreement is not None:
            keep &= np.isfinite(inputs.energy_disagreement)
        if keep.sum() < 3:
            raise ValueError(f"the energy error model needs ≥ 3 structures with an energy residual, got {keep.sum()}")
        w = None
        if groups is not None:
            g = np.asarray(groups).astype(str)[keep]
            _, inv, counts = np.unique(g, return_inverse=True, return_counts=True)
            w = 1.0 / counts[inv.ravel()]
            w *= len(w) / w.sum()
        sub = inputs.subset(np.flatnonzero(keep))
        self._fit(sub, e[keep] ** 2 / self._offset(sub), weights=w)
        return self

    def sigma(self, inputs: AtomInputs) -> np.ndarray:
        """σ of the energy per atom of every structure, eV/atom, shape (S,)."""
        return np.sqrt(self._offset(inputs) * self._variance(self.design(inputs)))


def grouped_folds(groups: Sequence[str], n_splits: int = 10) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train rows, test rows) of a grouped K-fold over structures: every group (chemical system) falls in one
    test fold, so each structure is scored by models that never saw its group (scikit-learn's GroupKFold)."""
    from sklearn.model_selection import GroupKFold

    groups = np.asarray(groups).astype(str)
    k = min(int(n_splits), len(set(groups.tolist())))
    if k < 2:
        raise ValueError(f"grouped cross-fitting needs ≥ 2 groups (chemical systems), got "
                         f"{sorted(set(groups.tolist()))}")
    return list(GroupKFold(n_splits=k).split(np.zeros(len(groups)), groups=groups))


def largest_z(n) -> np.ndarray:
    """g(n) = Φ⁻¹(1 − 1/(4n)): the typical largest |z| of n standard normals (the size normalisation that makes
    the largest errors of structures of different sizes comparable)."""
    from scipy.stats import norm

    return norm.ppf(1.0 - 1.0 / (4.0 * np.maximum(np.asarray(n, dtype=float), 1.0)))


class ForceBound:
    """A conformal bound on a structure's largest force-component error, eV/Å, from per-component σ.

    Score of a calibration structure: t = max_i |e_i| / (g(n) max_i σ_i), with n its force components, g
    (:func:`largest_z`) and σ_i from an error model fitted *without* that structure's chemical system
    (:func:`cross_fit`). With q the split-conformal quantile of t at ``alpha``, U = q g(n) max_i σ_i bounds the
    largest error of a new structure of a new chemistry with probability ≥ 1 − α, to the extent that it is
    exchangeable with the calibration chemistries (docs/errormodel.md). (A Mondrian quantile per class of RMS
    force was measured and trusted fewer good structures at the same precision: one quantile.)

    Attributes: ``quantile_`` (1), ``n_structures_``, ``scores_`` (ascending).
    """

    def __init__(self, alpha: float = 0.1):
        self.alpha = float(alpha)

    def fit(self, sigmas: Sequence[np.ndarray], errors: Sequence[np.ndarray]) -> ForceBound:
        """One (N_s, 3) array per calibration structure of σ (cross-fitted) and of errors, eV/Å."""
        from calib.uq.conformal import conformal_quantile

        if len(sigmas) != len(errors) or len(sigmas) < 2:
            raise ValueError(f"the force bound needs ≥ 2 structures with σ and errors, got {len(sigmas)}")
        t = [np.max(np.abs(e)) / (largest_z(np.size(e)) * np.max(s)) for s, e in zip(sigmas, errors) if np.size(e)]
        self.scores_ = np.sort(np.asarray(t, dtype=float))
        self.quantile_ = conformal_quantile(self.scores_, self.alpha, what="force error bound")
        self.n_structures_ = len(self.scores_)
        return self

    def bound(self, sigma, alpha: float | None = None) -> float:
        """U (eV/Å) of one structure from its components' σ (N, 3), eV/Å; at confidence 1 − ``alpha`` (None: the
        fitted ``alpha``) from the stored scores."""
        from calib.uq.conformal import conformal_quantile

        s = np.asarray(sigma, dtype=float)
        q = self.quantile_ if alpha is None or len(self.scores_) == 0 else conformal_quantile(
            self.scores_, float(alpha), what="force error bound")
        return float(q * largest_z(s.size) * np.max(s)) if s.size else float("nan")

    def to_variables(self, prefix: str) -> dict:
        return {f"{prefix}_quantile": ((), self.quantile_, {
                    "units": "1", "alpha": self.alpha, "n_structures": int(self.n_structures_),
                    "description": "conformal quantile of t = max|e| / (g(n) max sigma) over the calibration "
                                   "structures, sigma cross-fitted by chemical system"}),
                f"{prefix}_scores": ((f"{prefix}_structure",), self.scores_, {"units": "1"})}

    @classmethod
    def from_variables(cls, ds, prefix: str) -> ForceBound:
        q = ds[f"{prefix}_quantile"]
        self = cls(alpha=float(q.attrs.get("alpha", 0.1)))
        self.quantile_, self.n_structures_ = float(q.values), int(q.attrs.get("n_structures", 0))
        self.scores_ = ds[f"{prefix}_scores"].values.astype(float)
        return self


#: eV/Å added to a structure's largest force error inside the log of :class:`StructureErrorModel` (a relaxed
#: cell's error can be 0)
WORST_FLOOR = 0.01


@functools.cache
def element_extra_properties(z: int) -> tuple[float, ...]:
    """The further element descriptors of the structure model, from pymatgen's periodic table: Pettifor's
    Mendeleev number, the first ionisation energy (eV; 8 where unknown), the electron affinity (eV; 0.5 where
    unknown), the log of the melting point (K; 1000 K where unknown) and of the atomic mass (amu)."""
    import warnings

    from ase.data import chemical_symbols
    from pymatgen.core import Element

    el = Element(chemical_symbols[int(z)])
    with warnings.catch_warnings():  # pymatgen warns of properties it lacks for an element; defaults stand in
        warnings.simplefilter("ignore")
        mendeleev = float(el.mendeleev_no) if el.mendeleev_no is not None else 50.0
        ie = float(el.ionization_energy) if el.ionization_energy is not None else 8.0
        ea = float(el.electron_affinity) if el.electron_affinity is not None else 0.5
        tm = float(el.melting_point) if el.melting_point is not None else 1000.0
    return mendeleev, ie, ea, float(np.log(max(tm, 1.0))), float(np.log(float(el.atomic_mass)))


def structure_features(inputs: AtomInputs, scale) -> np.ndarray:
    """(S, 22) inputs of :class:`StructureErrorModel`: the mean element properties of each structure's atoms
    (:data:`ELEMENT_PROPERTIES` and :func:`element_extra_properties`), the smallest and largest Mendeleev number
    of its elements, its composition (electronegativity spread and mean, metal fraction), the log of its RMS and
    largest model force component (squared, plus the floor, eV/Å), the log of the component model's scale
    g(n) max σ (eV/Å, ``scale`` (S,)) and the log of its number of atoms."""
    S, owner = inputs.n_structures, inputs.structure
    props = _property_table(inputs.numbers)
    extra = _property_table(inputs.numbers, element_extra_properties, width=5)
    lo, hi = _structure_range(extra[:, 0], owner, S)
    fmax = np.zeros(S)
    np.maximum.at(fmax, owner, np.abs(inputs.forces).max(axis=1))
    scale = np.asarray(scale, dtype=float)
    if scale.shape != (S,):
        raise ValueError(f"structure_features: {S} structures but scale of shape {scale.shape}")
    return np.column_stack([structure_mean(props, owner, S), structure_mean(extra, owner, S), lo, hi,
                            _composition(inputs, props),
                            _log_force(_rms_force(inputs)), _log_force(fmax), np.log(np.maximum(scale, 1e-12)),
                            np.log(np.maximum(inputs.n_atoms, 1))])


def component_scale(sigma, n_atoms) -> np.ndarray:
    """(S,) g(n) max σ of each structure (eV/Å) from per-component σ (N, 3): the component model's typical
    largest error, the size normalisation of :class:`ForceBound`."""
    parts = np.split(np.asarray(sigma, dtype=float).reshape(-1, 3), np.cumsum(n_atoms)[:-1])
    return np.array([largest_z(p.size) * p.max() if p.size else np.nan for p in parts])


class StructureErrorModel:
    """A structure's largest force-component error, from its chemistry and forces: gradient-boosted regression
    trees and a conformal quantile of their residuals (conformalised regression, Romano et al. 2019; one-sided).

    The component model (:class:`ForceComponentVariance`) is log-linear in its inputs: it ranks structures well
    but gives every chemistry the same relation between its element properties and its error, so its bound on a
    new chemistry is several times the error of the chemistries it gets right (an alkali halide, a perovskite
    oxide). Here y = log(max_i |e_i| + ``WORST_FLOOR``) is regressed on :func:`structure_features` (the component
    model's own scale among them) by scikit-learn's :class:`~sklearn.ensemble.GradientBoostingRegressor` (depth
    3, 150 trees, learning rate 0.05, ≥ 15 structures a leaf), which finds the interactions of chemistry and force
    the linear model cannot. Validity does not rest on the trees: the residuals r = y − ŷ of every calibration
    structure come from trees fitted without its chemical system (:func:`grouped_folds`, the component scales in
    the features themselves cross-fitted), and the bound at confidence 1 − α is U = exp(ŷ + q_α(r)) − floor, the
    split-conformal quantile of those residuals. The residuals are stored, so a bound at any confidence comes from
    one artifact (the trust verdict's ``TrustPolicy.confidence``).

    The trees are stored as plain arrays (children, split feature, threshold, leaf value), and predicted by
    :meth:`predict` from them: an artifact holds no pickled object. :meth:`fit` checks that prediction against
    scikit-learn's own.

    Attributes (after :meth:`fit`): ``scores_`` (ascending residuals, log eV/Å), ``baseline_``,
    ``learning_rate``, ``n_structures_``, the node arrays.
    """

    PARAMS = MappingProxyType({"max_depth": 3, "n_estimators": 150, "learning_rate": 0.05, "min_samples_leaf": 15})

    def __init__(self, n_splits: int = 10, random_state: int = 0):
        self.n_splits = int(n_splits)
        self.random_state = int(random_state)

    def _regressor(self):
        from sklearn.ensemble import GradientBoostingRegressor

        return GradientBoostingRegressor(random_state=self.random_state, **self.PARAMS)

    def fit(self, features, worst, groups) -> StructureErrorModel:
        """Fit on calibration structures: ``features`` (S, k) of :func:`structure_features` (with cross-fitted
        component scales), ``worst`` (S,) their largest force-component errors (eV/Å), ``groups`` (S,) their
        chemical systems (≥ 2)."""
        X = np.asarray(features, dtype=float)
        w = np.asarray(worst, dtype=float)
        ok = np.isfinite(w) & np.all(np.isfinite(X), axis=1)
        X, w, groups = X[ok], w[ok], np.asarray(groups).astype(str)[ok]
        if len(w) < 2 * self.PARAMS["min_samples_leaf"]:
            raise ValueError(f"the structure error model needs ≥ {2 * self.PARAMS['min_samples_leaf']} structures "
                             f"with forces, got {len(w)}")
        y = np.log(w + WORST_FLOOR)
        oof = np.full(len(y), np.nan)
        for train, test in grouped_folds(groups, self.n_splits):
            oof[test] = self._regressor().fit(X[train], y[train]).predict(X[test])
        self.scores_ = np.sort(y - oof)
        self.n_structures_ = len(y)
        gb = self._regressor().fit(X, y)
        self.baseline_ = float(np.ravel(gb.init_.constant_)[0])
        self.learning_rate = float(gb.learning_rate)
        trees = [est.tree_ for est in gb.estimators_[:, 0]]
        self.tree_start_ = np.cumsum([0] + [t.node_count for t in trees[:-1]]).astype(np.int64)
        self.left_ = np.concatenate([t.children_left for t in trees]).astype(np.int64)
        self.right_ = np.concatenate([t.children_right for t in trees]).astype(np.int64)
        self.feature_ = np.concatenate([t.feature for t in trees]).astype(np.int64)
        self.threshold_ = np.concatenate([t.threshold for t in trees]).astype(float)
        self.value_ = np.concatenate([t.value.reshape(-1) for t in trees]).astype(float)
        self.n_features_ = X.shape[1]
        mine, theirs = self.predict(X), gb.predict(X)
        if not np.allclose(mine, theirs, rtol=0, atol=1e-9):
            raise RuntimeError("StructureErrorModel: the stored trees do not reproduce scikit-learn's prediction "
                               f"(largest difference {np.max(np.abs(mine - theirs)):.3g}); scikit-learn's tree "
                               "layout may have changed")
        return self

    def predict(self, features) -> np.ndarray:
        """ŷ (S,): the predicted log(largest force error + floor), log eV/Å, from the stored trees."""
        # scikit-learn's trees compare float32 inputs with their float64 thresholds: so do these
        X = np.asarray(features, dtype=float).reshape(-1, self.n_features_).astype(np.float32).astype(float)
        rows = np.arange(len(X))
        total = np.zeros(len(X))
        for start in self.tree_start_:
            node = np.full(len(X), start)
            while True:
                inner = self.left_[node] >= 0
                if not inner.any():
                    break
                f = self.feature_[node]
                go_left = X[rows, np.where(inner, f, 0)] <= self.threshold_[node]
                child = np.where(go_left, self.left_[node], self.right_[node]) + start
                node = np.where(inner, child, node)
            total += self.value_[node]
        return self.baseline_ + self.learning_rate * total

    def bound(self, features, alpha: float) -> np.ndarray:
        """U (S,), eV/Å: the bound on each structure's largest force-component error at confidence 1 − α."""
        from calib.uq.conformal import conformal_quantile

        q = conformal_quantile(self.scores_, float(alpha), what="structure force error bound")
        return np.maximum(np.exp(self.predict(features) + q) - WORST_FLOOR, 0.0)

    def to_variables(self, prefix: str) -> dict:
        node = f"{prefix}_node"
        return {
            f"{prefix}_baseline": ((), self.baseline_, {
                "units": "log eV/Å", "learning_rate": self.learning_rate, "n_structures": int(self.n_structures_),
                "n_features": int(self.n_features_), "worst_floor": WORST_FLOOR,
                "description": "gradient-boosted trees of log(largest force error + floor) (eV/Å) on the "
                               "structure's chemistry and forces: initial value"}),
            f"{prefix}_tree_start": ((f"{prefix}_tree",), self.tree_start_, {"units": "1"}),
            f"{prefix}_left": ((node,), self.left_, {"units": "1", "description": "left child (−1: leaf)"}),
            f"{prefix}_right": ((node,), self.right_, {"units": "1"}),
            f"{prefix}_feature": ((node,), self.feature_, {"units": "1"}),
            f"{prefix}_threshold": ((node,), self.threshold_, {"units": "feature units"}),
            f"{prefix}_value": ((node,), self.value_, {"units": "log eV/Å"}),
            f"{prefix}_scores": ((f"{prefix}_structure",), self.scores_, {
                "units": "log eV/Å", "description": "residuals y - y_hat of the calibration structures, y_hat "
                                                   "from trees fitted without their chemical system (ascending)"}),
        }

    @classmethod
    def from_variables(cls, ds, prefix: str) -> StructureErrorModel:
        self = cls()
        b = ds[f"{prefix}_baseline"]
        self.baseline_, self.learning_rate = float(b.values), float(b.attrs["learning_rate"])
        self.n_structures_, self.n_features_ = int(b.attrs.get("n_structures", 0)), int(b.attrs["n_features"])
        for name in ("tree_start", "left", "right", "feature"):
            setattr(self, f"{name}_", ds[f"{prefix}_{name}"].values.astype(np.int64))
        self.threshold_ = ds[f"{prefix}_threshold"].values.astype(float)
        self.value_ = ds[f"{prefix}_value"].values.astype(float)
        self.scores_ = ds[f"{prefix}_scores"].values.astype(float)
        return self


@dataclass
class CrossFit:
    """What :func:`cross_fit` returns: per point, σ from models fitted without the point's group.

    force_sigma : (N, 3) eV/Å; energy_sigma : (S,) eV/atom; energy_errors : (S,) eV/atom, the residual under an
    element reference fitted without the group (NaN where the other groups do not fix the composition's shift);
    leverage : (S,) the reference leverage those residuals had; energy_disagreement : (S,) eV/atom, a second
    model's energy disagreement under its reference fitted without the group (None without a second model).
    """

    force_sigma: np.ndarray | None
    energy_sigma: np.ndarray | None
    energy_errors: np.ndarray | None
    leverage: np.ndarray | None
    n_folds: int
    energy_disagreement: np.ndarray | None = None
    seen_energy_sigma: np.ndarray | None = None  # the "seen" class (:meth:`ErrorModels.composition_class`)
    seen_energy_errors: np.ndarray | None = None
    corrected_force_sigma: np.ndarray | None = None  # (rows with a leave-one-out correction, concatenated)
    corrected_force_errors: np.ndarray | None = None


def grouped_energy_residuals(numbers: Sequence[np.ndarray], delta_energy, groups, n_splits: int = 10):
    """(per-atom residuals eV/atom, leverage) of every structure under an element reference fitted without its
    group (calib.uq.reference.ElementReference), NaN where the other groups do not determine the shift."""
    from calib.uq.reference import ElementReference

    delta = np.asarray(delta_energy, dtype=float)
    n = np.array([len(x) for x in numbers], dtype=float)
    out, lev = np.full(len(delta), np.nan), np.full(len(delta), np.nan)
    if len(set(np.asarray(groups).astype(str).tolist())) < 2:  # nothing to leave out: no out-of-group residual
        return out, lev
    for train, test in grouped_folds(groups, n_splits):
        train = train[np.isfinite(delta[train])]  # structures without an energy fix no offset
        ref = ElementReference().fit([numbers[i] for i in train], delta[train])
        nums = [numbers[i] for i in test]
        ok, _ = ref.determined(nums)
        rows = test[ok]
        if len(rows):
            out[rows] = (delta[rows] - ref.predict([numbers[i] for i in rows])) / n[rows]
            lev[rows] = ref.leverage([numbers[i] for i in rows])
    return out, lev


def cross_fit(inputs: AtomInputs, force_errors=None, *, numbers: Sequence[np.ndarray] | None = None,
              delta_energy=None, groups, n_splits: int = 10, force_model: dict | None = None,
              energy_model: dict | None = None, second_delta_energy=None) -> CrossFit:
    """Grouped cross-fitting of the error models over calibration structures (groups: chemical systems).

    Every structure's σ comes from models fitted on the other folds of groups only: its force σ from a
    :class:`ForceComponentVariance`, its energy σ from an :class:`EnergyVariance` fitted on residuals that are
    themselves out-of-group (a nested grouped split inside the training folds) under an element reference
    fitted without its group. ``force_errors`` (N, 3) eV/Å and ``delta_energy`` (S,) total eV (reference −
    model, NaN: no energy) are the labels; ``numbers`` one array of atomic numbers per structure.
    ``second_delta_energy`` (S,) total eV, a second model's energy minus the model's: its disagreement enters the
    energy model (the ``committee`` term, default then) out-of-group like the residuals, its own per-element
    reference fitted on the same structures without the group (and nested likewise).
    """
    groups = np.asarray(groups).astype(str)
    folds = grouped_folds(groups, n_splits)
    f_sig = None
    if force_errors is not None:
        fe = np.asarray(force_errors, dtype=float).reshape(-1, 3)
        f_sig = np.full(fe.shape, np.nan)
        starts = np.concatenate([[0], np.cumsum(inputs.n_atoms)])
        for train, test in folds:
            model = ForceComponentVariance(**(force_model or {})).fit(
                inputs.subset(train), np.concatenate([fe[starts[i]:starts[i + 1]] for i in train]),
            )
            sig = model.sigma(inputs.subset(test))
            ends = np.cumsum(inputs.n_atoms[test])
            for k, i in enumerate(test):
                f_sig[starts[i]:starts[i + 1]] = sig[ends[k] - inputs.n_atoms[i]:ends[k]]
    e_sig = e_err = lev = dis = None
    if delta_energy is not None and np.isfinite(np.asarray(delta_energy, dtype=float)).sum() >= 3:
        delta = np.asarray(delta_energy, dtype=float)
        e_err, lev = grouped_energy_residuals(numbers, delta, groups, n_splits)
        second = None
        if second_delta_energy is not None:  # its reference on the structures the energy reference is fitted on
            second = np.where(np.isfinite(delta), np.asarray(second_delta_energy, dtype=float), np.nan)
            dis = grouped_energy_residuals(numbers, second, groups, n_splits)[0]
            if energy_model is None:
                energy_model = {"terms": EnergyVariance.DEFAULT_TERMS + ("committee",)}
        e_sig = np.full(len(delta), np.nan)
        if tuple(EnergyVariance(**(energy_model or {})).terms) == ("leverage",):
            # σ = τ √(1 + h) has no fitted shape: its conformal score |e| / √(1 + h) needs no nested fit (τ cancels)
            sub = AtomInputs(inputs.numbers, inputs.forces, inputs.structure, inputs.descriptors, inputs.local_sigma,
                             lev, inputs.n_structures)
            ok = np.isfinite(e_err)
            if ok.sum() >= 3:
                e_sig[ok] = EnergyVariance(**(energy_model or {})).fit(sub, e_err, groups=groups).sigma(sub)[ok]
            folds_energy = []
        else:
            folds_energy = folds
        for train, test in folds_energy:
            inner, inner_lev = grouped_energy_residuals([numbers[i] for i in train], delta[train], groups[train],
                                                        n_splits)
            sub = inputs.subset(train)
            sub.leverage = inner_lev
            te = inputs.subset(test)
            te.leverage = lev[test]
            if second is not None:
                sub.energy_disagreement = grouped_energy_residuals([numbers[i] for i in train], second[train],
                                                                   groups[train], n_splits)[0]
                te.energy_disagreement = dis[test]
            try:
                model = EnergyVariance(**(energy_model or {})).fit(sub, inner, groups=groups[train])
            except ValueError:  # too few determined residuals in this fold
                continue
            ok = np.isfinite(e_err[test])
            e_sig[test[ok]] = model.sigma(te)[ok]
    return CrossFit(f_sig, e_sig, e_err, lev, len(folds), energy_disagreement=dis)


#: pseudo-count (force components) that shrinks a chemistry's own variance scale toward the cross-chemistry model:
#: one 10-atom structure's worth
SCALE_PRIOR = 30.0


def chemistry_scales(sigma: Sequence[np.ndarray], errors: Sequence[np.ndarray], groups, *,
                     prior: float = SCALE_PRIOR) -> tuple[dict, np.ndarray]:
    """The "seen" chemistries' own force-variance scales r_c, and each structure's leave-one-out scale.

    For the structures of chemistry c with σ_i from the cross-chemistry model, r_c = (Σ e_i²/σ_i² + prior) /
    (N_c + prior), N_c their components: the factor by which that chemistry's errors exceed (or fall short of)
    what its element properties predict, shrunk toward 1 with ``prior`` pseudo-components. Returns ({chemsys: r_c}
    over chemistries with ≥ 2 structures, (S,) r_{c,−s} fitted without structure s, NaN for one alone)."""
    groups = np.asarray(groups).astype(str)
    z2 = np.array([float(np.sum((np.asarray(e) / np.asarray(s)) ** 2)) for s, e in zip(sigma, errors)])
    n = np.array([np.size(e) for e in errors], dtype=float)
    scales, loo = {}, np.full(len(groups), np.nan)
    for g in set(groups.tolist()):
        rows = np.flatnonzero(groups == g)
        if len(rows) < 2:
            continue
        scales[g] = float((z2[rows].sum() + prior) / (n[rows].sum() + prior))
        loo[rows] = (z2[rows].sum() - z2[rows] + prior) / (n[rows].sum() - n[rows] + prior)
    return scales, loo


@dataclass
class ErrorModels:
    """The fitted error models a calibration holds: per-component force σ, the structure force bound, the energy
    σ per atom, the elements the force labels contained (atomic numbers), and how each was cross-fitted
    (groups: "chemical system", or "structure" for a one-chemistry set)."""

    forces: ForceComponentVariance | None = None
    bound: ForceBound | None = None
    forces_corrected: ForceComponentVariance | None = None  # σ of scalar-corrected forces c·F (inputs: c·F)
    bound_corrected: ForceBound | None = None
    energy: EnergyVariance | None = None
    energy_seen: EnergyVariance | None = None
    compositions: np.ndarray | None = None
    force_scales: dict | None = None  # chemsys → r_c: a calibrated chemistry's own force-variance scale
    bound_seen: ForceBound | None = None  # the bound's quantile for those chemistries (leave-one-out scales)
    structure: StructureErrorModel | None = None  # the bound of a new chemistry's raw prediction
    elements: np.ndarray | None = None
    force_groups: str = "chemical system"
    energy_groups: str = "chemical system"
    #: calib.uq.reference.ElementReference of a second model's energy minus the model's on the calibration
    #: structures (the energy model's ``committee`` term reads the disagreement left after it)
    committee_reference: object | None = None

    PREFIX = "errmodel"

    def composition_class(self, numbers_per_structure) -> np.ndarray:
        """"seen" for a structure whose reduced formula a calibration structure had (its energy error is a
        chemistry's own, within-composition error), "new" otherwise (a new compound's formation-energy error)."""
        from calib.uq.reference import reduced_formula

        seen = set((self.compositions if self.compositions is not None else np.zeros(0, str)).tolist())
        return np.array(["seen" if reduced_formula(n) in seen and self.energy_seen is not None else "new"
                         for n in numbers_per_structure], dtype=object)

    def force_scale(self, chemsys) -> np.ndarray:
        """(S,) the variance scale r_c of each structure's chemistry when calibrated on ("seen"), NaN otherwise."""
        from calib.softening.correction import _key

        table = self.force_scales or {}
        return np.array([table.get(_key(c), np.nan) for c in chemsys], dtype=float)

    def energy_sigma(self, inputs: AtomInputs, numbers_per_structure) -> tuple[np.ndarray, np.ndarray]:
        """(σ of the energy per atom, eV/atom, and its class "seen" | "new") of every structure."""
        cls = self.composition_class(numbers_per_structure)
        sig = self.energy.sigma(inputs)
        if self.energy_seen is not None and (cls == "seen").any():
            sig = np.where(cls == "seen", self.energy_seen.sigma(inputs), sig)
        return sig, cls

    def unlabelled(self, numbers_per_structure) -> list[str]:
        """Per structure, the elements (symbols, comma-joined) that no calibration force label contained."""
        from ase.data import chemical_symbols

        known = set((self.elements if self.elements is not None else np.zeros(0, int)).tolist())
        return [",".join(chemical_symbols[z] for z in sorted({int(z) for z in nums} - known)) for nums in
                numbers_per_structure]

    def to_variables(self) -> dict:
        p = self.PREFIX
        out = {}
        if self.forces is not None:
            out.update(self.forces.to_variables(f"{p}_forces"))
        if self.bound is not None:
            out.update(self.bound.to_variables(f"{p}_bound"))
        if self.structure is not None:
            out.update(self.structure.to_variables(f"{p}_structure"))
        if self.forces_corrected is not None:
            out.update(self.forces_corrected.to_variables(f"{p}_forces_corrected"))
            out.update(self.bound_corrected.to_variables(f"{p}_bound_corrected"))
        if self.energy is not None:
            out.update(self.energy.to_variables(f"{p}_energy"))
        if self.force_scales:
            chems = sorted(self.force_scales)
            out[f"{p}_scale_chemsys"] = ((f"{p}_scale",), np.array(chems, dtype=str), {})
            out[f"{p}_force_scale"] = ((f"{p}_scale",), np.array([self.force_scales[c] for c in chems]), {
                "units": "1", "prior": SCALE_PRIOR, "description": "a calibrated chemistry's own force-variance "
                "scale r_c (sigma^2 x r_c for its structures)"})
            out.update(self.bound_seen.to_variables(f"{p}_bound_seen"))
        if self.energy_seen is not None:
            out.update(self.energy_seen.to_variables(f"{p}_energy_seen"))
            out[f"{p}_compositions"] = ((f"{p}_composition",), np.asarray(self.compositions, dtype=str), {
                "description": "reduced formulas of the calibration structures (energy class 'seen')"})
        if self.committee_reference is not None:
            ref = self.committee_reference
            out[f"{p}_committee_species"] = ((f"{p}_committee_species",), np.array(ref.elements_, dtype=str), {})
            out[f"{p}_committee_reference"] = ((f"{p}_committee_species",), np.asarray(ref.values_, dtype=float), {
                "units": "eV/atom", "description": "per-element shift of the committee model's energy minus the "
                                                  "model's, least squares on the calibration structures"})
            if ref.basis_ is not None:
                out[f"{p}_committee_basis"] = ((f"{p}_committee_basis", f"{p}_committee_species"), ref.basis_, {
                    "units": "1", "description": "orthonormal rows spanning the calibration compositions"})
        if self.elements is not None:
            out[f"{p}_elements"] = ((f"{p}_element",), np.asarray(self.elements, dtype=np.int32), {
                "units": "1", "description": "atomic numbers the calibration force labels contain",
                "force_groups": self.force_groups, "energy_groups": self.energy_groups})
        return out

    @classmethod
    def present(cls, ds) -> bool:
        return f"{cls.PREFIX}_forces_coef" in ds or f"{cls.PREFIX}_energy_coef" in ds

    @classmethod
    def from_variables(cls, ds) -> ErrorModels:
        p = cls.PREFIX
        el = ds[f"{p}_elements"] if f"{p}_elements" in ds else None

        def part(kind, name: str, marker: str = ""):
            """The part ``name`` read by ``kind`` where the file holds it (the variable ``marker`` of its prefix,
            or ``kind.present``), else None."""
            prefix = f"{p}_{name}"
            held = f"{prefix}_{marker}" in ds if marker else kind.present(ds, prefix)
            return kind.from_variables(ds, prefix) if held else None

        return cls(
            forces=part(ForceComponentVariance, "forces"), bound=part(ForceBound, "bound", "quantile"),
            structure=part(StructureErrorModel, "structure", "baseline"),
            forces_corrected=part(ForceComponentVariance, "forces_corrected"),
            bound_corrected=part(ForceBound, "bound_corrected", "quantile"),
            energy=part(EnergyVariance, "energy"), energy_seen=part(EnergyVariance, "energy_seen"),
            compositions=ds[f"{p}_compositions"].values.astype(str) if f"{p}_compositions" in ds else None,
            force_scales=(dict(zip([str(c) for c in ds[f"{p}_scale_chemsys"].values],
                                   ds[f"{p}_force_scale"].values.astype(float)))
                          if f"{p}_force_scale" in ds else None),
            bound_seen=part(ForceBound, "bound_seen", "quantile"),
            elements=None if el is None else el.values.astype(int),
            committee_reference=_committee_reference(ds, p),
            force_groups=str(el.attrs.get("force_groups", "chemical system")) if el is not None else "chemical system",
            energy_groups=str(el.attrs.get("energy_groups", "chemical system")) if el is not None else "chemical system")


def _committee_reference(ds, p: str):
    """The committee's :class:`calib.uq.reference.ElementReference` stored by :meth:`ErrorModels.to_variables`."""
    from calib.uq.reference import ElementReference

    if f"{p}_committee_reference" not in ds:
        return None
    basis = ds[f"{p}_committee_basis"].values if f"{p}_committee_basis" in ds else None
    return ElementReference.from_dict(dict(zip([str(e) for e in ds[f"{p}_committee_species"].values],
                                               ds[f"{p}_committee_reference"].values.astype(float))), basis)


def leave_one_out_corrections(model_forces: Sequence[np.ndarray], errors: Sequence[np.ndarray], groups) -> np.ndarray:
    """c of each structure's chemistry (group) fitted on the *other* structures of that chemistry alone: the
    closed form c = Σ f·g / Σ f² of calib.softening.scale over them, g = f + e the reference forces (eV/Å).
    NaN for a structure alone in its group, or whose group's other forces are all zero. A corrected error
    g − c f made with it is the error of a correction fitted on labels of the chemistry and applied to a new
    structure, as a user's is."""
    groups = np.asarray(groups).astype(str)
    fg = np.array([float(np.sum(f * (f + e))) for f, e in zip(model_forces, errors)])
    ff = np.array([float(np.sum(f * f)) for f in model_forces])
    out = np.full(len(groups), np.nan)
    for g in set(groups.tolist()):
        rows = np.flatnonzero(groups == g)
        if len(rows) < 2:
            continue
        num, den = fg[rows].sum() - fg[rows], ff[rows].sum() - ff[rows]
        out[rows] = np.where(den > 1e-12, num / np.where(den > 1e-12, den, 1.0), np.nan)
    return out
