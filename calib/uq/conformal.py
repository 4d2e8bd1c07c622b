"""Split conformal prediction on LLPR σ: global and per class of atomic environment.

Score of a calibration point: s = |y − ŷ| / σ (σ the LLPR standard deviation,
in the target's own unit: eV for total energies, eV/Å for forces). For a
miscoverage level α and N calibration scores the quantile is the
k-th smallest score with k = ⌈(N + 1)(1 − α)⌉; the interval
ŷ ± q·σ then covers a new exchangeable point with probability in
[1 − α, 1 − α + 1/(N + 1)] (Vovk et al. 2005; Angelopoulos & Bates 2021).
When k > N no finite quantile has that guarantee: q = +inf, with a warning.

:class:`ConformalCalibrator` is the one calibrator. Given ``bins`` (a class
label per point, as crepes calls them) it is Mondrian: one quantile per class,
so coverage holds within each class and not only on average. Classes with too
few points fall back to the global quantile and say so; a class never seen at
calibration is ``"unknown"`` and gets the largest quantile.

Where the bins come from is a separate object, a *class assigner*, that the
calibrator may carry (``classes=``) and that saves its own kind:
:class:`LabelClasses` (the element or the chemical system of each point) or
:class:`MixtureClasses` (the components of a scikit-learn
:class:`~sklearn.mixture.BayesianGaussianMixture` fitted on invariant per-atom
descriptors; environments the mixture finds unlikely at prediction time are
``"unknown"`` instead of the nearest class). Assigners read points through two
attributes only, ``descriptors`` and ``labels`` (see :class:`calib.uq.targets.Points`).
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from calib.errors import CalibWarning

UNKNOWN = "unknown"


def _check(errors, sigmas, what: str = "calibration") -> tuple[np.ndarray, np.ndarray]:
    e = np.asarray(errors, dtype=float).ravel()
    s = np.asarray(sigmas, dtype=float).ravel()
    if e.shape != s.shape:
        raise ValueError(f"{what}: {e.size} errors but {s.size} sigmas")
    bad = ~np.isfinite(e) | ~np.isfinite(s) | (s <= 0)
    if np.any(bad):
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{what}: {int(bad.sum())} point(s) with a non-finite error or a σ ≤ 0 "
                         f"(first at position {i}: error {e[i]!r}, σ {s[i]!r})")
    return e, s


def conformal_rank(n: int, alpha: float) -> int:
    """k = ⌈(n + 1)(1 − α)⌉, the rank of the split-conformal quantile (1-based)."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    # the small tolerance keeps e.g. (9 + 1)·0.9 = 9.000000000000002 at rank 9
    return int(math.ceil((n + 1) * (1 - alpha) - 1e-9))


def conformal_quantile(sorted_scores: np.ndarray, alpha: float, warn: bool = True, what: str = "") -> float:
    """The split-conformal quantile of ascending ``sorted_scores``; +inf when the rank exceeds N."""
    n = len(sorted_scores)
    k = conformal_rank(n, alpha)
    if k > n:
        if warn:
            warnings.warn(f"{what or 'conformal'}: {n} calibration points are too few for α = {alpha} "
                          f"(rank ⌈(N+1)(1−α)⌉ = {k} > N): the interval is infinite", CalibWarning,
                          stacklevel=3)
        return math.inf
    return float(sorted_scores[k - 1])


def _factorize(bins) -> tuple[np.ndarray, np.ndarray]:
    """(distinct labels as text, index of each point's label): one pass, not one per class."""
    raw = np.asarray(bins).ravel()
    uniq, inv = np.unique(raw, return_inverse=True)
    names = uniq.astype(str)
    if len(set(names.tolist())) != len(names):  # e.g. 1 and "1" in one object array
        names, inv = np.unique(raw.astype(str), return_inverse=True)
    return names, inv.ravel()


class ConformalCalibrator:
    """Split conformal intervals ŷ ± q·σ with the finite-sample quantile, global or per class.

    Parameters
    ----------
    alpha : float
        Miscoverage level; intervals aim at coverage 1 − α (within each class when classes are used).
    classes : LabelClasses, MixtureClasses or None
        Where the bins of :meth:`fit_points` / :meth:`half_width_points` come from. Not needed
        when bins are passed to :meth:`fit` / :meth:`half_width` directly.
    min_class_size : int
        Classes with fewer calibration points use the global quantile.

    Attributes
    ----------
    quantile_ : float — the global q (dimensionless; +inf when N is too small for α)
    scores_ : (N,) float — calibration scores |error|/σ, ascending
    n_calibration_ : int
    classes_ : list of str or None — the classes seen at calibration (None: no bins)
    quantiles_ : dict class → q used for that class (its own or the global one)
    class_sizes_ : dict class → number of calibration points
    fallback_ : dict class → why it uses the global quantile
    unknown_quantile_ : float — q for ``"unknown"`` points: the largest finite class or
        global quantile (conservative; no coverage guarantee holds there)
    """

    def __init__(self, alpha: float = 0.1, classes=None, min_class_size: int = 30):
        conformal_rank(1, alpha)  # validates alpha
        self.alpha = float(alpha)
        self.classes = classes
        self.min_class_size = int(min_class_size)

    # ------------------------------------------------------------------ fitting
    def fit(self, errors, sigmas, bins=None) -> ConformalCalibrator:
        """Fit on calibration errors (reference − model) and σ, both in the target unit.

        ``bins``: one class label per point for Mondrian quantiles, or None.
        """
        e, s = _check(errors, sigmas)
        if e.size == 0:
            raise ValueError("calibration: no points")
        scores = np.abs(e) / s
        self.scores_ = np.sort(scores)
        self.n_calibration_ = int(e.size)
        self.quantile_ = conformal_quantile(self.scores_, self.alpha)
        self.classes_ = None
        self.quantiles_, self.class_sizes_, self.fallback_ = {}, {}, {}
        self.unknown_quantile_ = self.quantile_
        if bins is None:
            return self
        names, inv = _factorize(bins)
        if inv.size != e.size:
            raise ValueError(f"{inv.size} bins for {e.size} calibration points")
        self.classes_ = sorted(names.tolist())
        index = {c: i for i, c in enumerate(names.tolist())}
        for c in self.classes_:
            sc = np.sort(scores[inv == index[c]])
            self.class_sizes_[c] = int(sc.size)
            k = conformal_rank(sc.size, self.alpha)
            if sc.size < self.min_class_size:
                self.fallback_[c] = f"{sc.size} calibration points < min_class_size {self.min_class_size}"
            elif k > sc.size:
                self.fallback_[c] = f"rank ⌈(N+1)(1−α)⌉ = {k} exceeds its {sc.size} points"
            self.quantiles_[c] = self.quantile_ if c in self.fallback_ else float(sc[k - 1])
        finite = [q for q in [*self.quantiles_.values(), self.quantile_] if math.isfinite(q)]
        self.unknown_quantile_ = max(finite) if finite else math.inf
        return self

    def fit_points(self, points) -> ConformalCalibrator:
        """Fit on typed points (errors, σ and, with ``classes``, their bins)."""
        bins = None
        if self.classes is not None:
            bins = self.classes.fit(points).assign(points, allow_unknown=False)
        return self.fit(points.errors, points.sigma, bins)

    # ------------------------------------------------------------------ intervals
    @property
    def mondrian(self) -> bool:
        return self.classes_ is not None

    def assign(self, points) -> np.ndarray | None:
        """Class of each point (``"unknown"`` for unseen or unlikely ones); None without classes."""
        if not self.mondrian:
            return None
        if self.classes is None:
            raise ValueError("this calibrator was fitted on bins given by hand: pass bins, not points")
        return self._known(self.classes.assign(points))

    def _known(self, bins) -> np.ndarray:
        names, inv = _factorize(bins)
        known = np.array([c if c in self.quantiles_ else UNKNOWN for c in names.tolist()], dtype=object)
        return known[inv].astype(str)

    def quantile_for(self, bins=None):
        """q per point for ``bins`` (an array), or the global q when there are no classes."""
        if not self.mondrian or bins is None:
            if self.mondrian:
                raise ValueError("a Mondrian calibrator needs the bins of the points")
            return self.quantile_
        names, inv = _factorize(bins)
        return np.array([self.quantiles_.get(c, self.unknown_quantile_) for c in names.tolist()], dtype=float)[inv]

    def quantile_at(self, alpha: float) -> float:
        """The global quantile the same calibration scores give at another α (no warning)."""
        return conformal_quantile(self.scores_, alpha, warn=False)

    def half_width(self, sigma, bins=None) -> np.ndarray:
        """q·σ, in the unit of σ."""
        return self.quantile_for(bins) * np.asarray(sigma, dtype=float)

    def half_width_points(self, points) -> tuple[np.ndarray, np.ndarray | None]:
        """(q·σ per point, class per point or None) for typed points."""
        bins = self.assign(points)
        return self.half_width(np.asarray(points.sigma, dtype=float).ravel(), bins), bins

    def interval(self, pred, sigma, bins=None) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) = ŷ ∓ q·σ, in the unit of ŷ."""
        pred = np.asarray(pred, dtype=float)
        h = self.half_width(sigma, bins)
        return pred - h, pred + h

    def covered(self, errors, sigmas, bins=None) -> np.ndarray:
        """Whether each |error| ≤ q·σ."""
        e, s = _check(errors, sigmas, "evaluation")
        return np.abs(e) <= self.half_width(s, bins)

    # ------------------------------------------------------------------ persistence (see calib.artifact)
    def to_variables(self, prefix: str) -> dict:
        q_attrs = {"units": "1", "alpha": self.alpha, "min_class_size": self.min_class_size,
                   "classes": "none" if self.classes is None else self.classes.kind}
        out = {
            f"{prefix}_scores": ((f"{prefix}_point",), self.scores_,
                                 {"units": "1", "description": "calibration scores |error|/sigma, ascending"}),
            f"{prefix}_quantile": ((), self.quantile_, q_attrs),
        }
        if self.classes is not None:
            out.update(self.classes.to_variables(f"{prefix}_mix"))
        if self.mondrian:
            names = list(self.classes_)
            dim = (f"{prefix}_class",)
            q_attrs["unknown_quantile"] = self.unknown_quantile_
            out[f"{prefix}_class_name"] = (dim, np.array(names, dtype=str), {})
            out[f"{prefix}_class_quantile"] = (dim, np.array([self.quantiles_[c] for c in names]), {"units": "1"})
            out[f"{prefix}_class_size"] = (dim, np.array([self.class_sizes_[c] for c in names]),
                                           {"units": "calibration points"})
            out[f"{prefix}_class_fallback"] = (dim, np.array([self.fallback_.get(c, "") for c in names], dtype=str),
                                               {})
        return out

    @classmethod
    def from_variables(cls, ds, prefix: str) -> ConformalCalibrator:
        var = ds[f"{prefix}_quantile"]
        attrs = var.attrs
        kind = str(attrs.get("classes", "none"))
        classes = None if kind == "none" else class_assigner_from_variables(kind, ds, f"{prefix}_mix")
        self = cls(alpha=float(attrs["alpha"]), classes=classes, min_class_size=int(attrs.get("min_class_size", 30)))
        self.scores_ = ds[f"{prefix}_scores"].values.astype(float)
        self.n_calibration_ = int(self.scores_.size)
        self.quantile_ = float(var.values)
        self.classes_, self.quantiles_, self.class_sizes_, self.fallback_ = None, {}, {}, {}
        self.unknown_quantile_ = self.quantile_
        if f"{prefix}_class_name" in ds:
            names = [str(c) for c in ds[f"{prefix}_class_name"].values]
            self.classes_ = names
            self.quantiles_ = dict(zip(names, ds[f"{prefix}_class_quantile"].values.astype(float)))
            self.class_sizes_ = dict(zip(names, ds[f"{prefix}_class_size"].values.astype(int).tolist()))
            self.fallback_ = {c: str(r) for c, r in zip(names, ds[f"{prefix}_class_fallback"].values) if str(r)}
            self.unknown_quantile_ = float(attrs["unknown_quantile"])
        return self


class EnvironmentMixture:
    """Classes of atomic environments: a Bayesian Gaussian mixture on PCA-whitened descriptors.

    The descriptors (e.g. CHGNet's 64 last-layer features per atom, many of
    them dead) are centred, projected on the principal components that carry
    ``variance`` of their variance (at most ``max_dims``) and whitened; a
    scikit-learn ``BayesianGaussianMixture`` (Dirichlet process, full
    covariances) with up to ``n_classes`` components is fitted there.
    Components left with (almost) no weight are dropped. A point's class is
    the component of largest posterior under the fitted means, covariances and
    weights; a point whose mixture log-density lies below the
    ``unknown_quantile`` of the calibration points' is ``unknown``.
    """

    def __init__(self, n_classes: int = 8, *, variance: float = 0.99, max_dims: int = 10,
                 unknown_quantile: float = 0.001, random_state: int = 0):
        self.n_classes = int(n_classes)
        self.variance = variance
        self.max_dims = max_dims
        self.unknown_quantile = unknown_quantile
        self.random_state = random_state

    def fit(self, descriptors) -> EnvironmentMixture:
        from sklearn.mixture import BayesianGaussianMixture

        from calib.uq.ood import principal_subspace

        X = np.asarray(descriptors, dtype=float)
        self.mean_, self.components_, ev = principal_subspace(X, self.variance, self.max_dims)
        self.scale_ = np.sqrt(ev)
        Z = self.project(X)
        bgm = BayesianGaussianMixture(n_components=min(self.n_classes, len(X)), covariance_type="full",
                                      weight_concentration_prior_type="dirichlet_process",
                                      max_iter=1000, reg_covar=1e-4, random_state=self.random_state).fit(Z)
        active = bgm.weights_ > 1e-2 / max(1, self.n_classes)
        self.weights_ = bgm.weights_[active] / bgm.weights_[active].sum()
        self.means_ = bgm.means_[active]
        self.covariances_ = bgm.covariances_[active]
        labels, logp = self._assign(Z)
        used = np.unique(labels)  # keep only components that own calibration points
        self.weights_, self.means_, self.covariances_ = (self.weights_[used], self.means_[used],
                                                         self.covariances_[used])
        self.weights_ /= self.weights_.sum()
        _, logp = self._assign(Z)
        self.threshold_ = float(np.quantile(logp, self.unknown_quantile))
        return self

    @property
    def class_names(self) -> list[str]:
        return [f"env{k}" for k in range(len(self.weights_))]

    def project(self, X) -> np.ndarray:
        return (np.asarray(X, dtype=float) - self.mean_) @ self.components_.T / self.scale_

    def _assign(self, Z) -> tuple[np.ndarray, np.ndarray]:
        from scipy.special import logsumexp
        from scipy.stats import multivariate_normal

        logs = np.stack([np.log(w) + multivariate_normal(m, c, allow_singular=True).logpdf(Z)
                         for w, m, c in zip(self.weights_, self.means_, self.covariances_)], axis=-1)
        logs = logs.reshape(len(Z), -1)
        return np.argmax(logs, axis=1), logsumexp(logs, axis=1)

    def log_density(self, descriptors) -> np.ndarray:
        """Mixture log-density of each point in the whitened PCA space."""
        return self._assign(self.project(descriptors))[1]

    def predict(self, descriptors, allow_unknown: bool = True) -> np.ndarray:
        """Class name per point (``"env<k>"``, or ``"unknown"`` below the density threshold)."""
        k, logp = self._assign(self.project(descriptors))
        names = np.array(self.class_names, dtype=object)[k]
        if allow_unknown:
            names[logp < self.threshold_] = UNKNOWN
        return names.astype(str)

    def to_variables(self, prefix: str) -> dict:
        c, p = f"{prefix}_component", f"{prefix}_pc"
        return {
            f"{prefix}_pca_mean": ((f"{prefix}_descriptor",), self.mean_, {"units": "descriptor units"}),
            f"{prefix}_pca_components": ((p, f"{prefix}_descriptor"), self.components_, {"units": "1"}),
            f"{prefix}_pca_scale": ((p,), self.scale_, {"units": "descriptor units"}),
            f"{prefix}_weights": ((c,), self.weights_, {"units": "1"}),
            f"{prefix}_means": ((c, p), self.means_, {"units": "1 (whitened)"}),
            f"{prefix}_covariances": ((c, p, f"{prefix}_pc_b"), self.covariances_, {"units": "1 (whitened)"}),
            f"{prefix}_threshold": ((), self.threshold_, {"units": "log density", "unknown_quantile":
                                                          self.unknown_quantile}),
        }

    @classmethod
    def from_variables(cls, ds, prefix: str) -> EnvironmentMixture:
        self = cls(n_classes=ds.sizes[f"{prefix}_component"])
        self.mean_ = ds[f"{prefix}_pca_mean"].values
        self.components_ = ds[f"{prefix}_pca_components"].values
        self.scale_ = ds[f"{prefix}_pca_scale"].values
        self.weights_ = ds[f"{prefix}_weights"].values
        self.means_ = ds[f"{prefix}_means"].values
        self.covariances_ = ds[f"{prefix}_covariances"].values
        thr = ds[f"{prefix}_threshold"]
        self.threshold_ = float(thr.values)
        self.unknown_quantile = float(thr.attrs.get("unknown_quantile", 0.001))
        return self


# =========================================================================== class assigners


class LabelClasses:
    """Classes given by a label of each point: ``"element"``, ``"chemsys"`` or ``"composition"`` (the energy
    target's "seen" / "new" compositions, calib.workflows.calibration.fit_error_models).

    Reads ``points.labels[kind]``; nothing to fit.
    """

    KINDS = ("element", "chemsys", "composition")

    def __init__(self, kind: str = "element"):
        if kind not in self.KINDS:
            raise ValueError(f"label classes are one of {self.KINDS}, got {kind!r}")
        self.kind = kind

    def fit(self, points) -> LabelClasses:
        return self

    def assign(self, points, allow_unknown: bool = True) -> np.ndarray:
        return np.asarray(points.labels[self.kind]).astype(str).ravel()

    def to_variables(self, prefix: str) -> dict:
        return {}


class MixtureClasses:
    """Classes of atomic environments from an :class:`EnvironmentMixture` on ``points.descriptors``.

    Parameters
    ----------
    n_classes : int — most mixture components.
    random_state : int — seeds the mixture.
    """

    kind = "mixture"

    def __init__(self, n_classes: int = 8, random_state: int = 0):
        self.n_classes = int(n_classes)
        self.random_state = random_state

    def fit(self, points) -> MixtureClasses:
        self.mixture_ = EnvironmentMixture(self.n_classes, random_state=self.random_state).fit(points.descriptors)
        return self

    def assign(self, points, allow_unknown: bool = True) -> np.ndarray:
        return self.mixture_.predict(points.descriptors, allow_unknown=allow_unknown)

    def to_variables(self, prefix: str) -> dict:
        if not hasattr(self, "mixture_"):
            return {}
        out = self.mixture_.to_variables(prefix)
        out[f"{prefix}_threshold"][2]["n_classes"] = self.n_classes
        return out

    @classmethod
    def from_variables(cls, ds, prefix: str) -> MixtureClasses:
        mix = EnvironmentMixture.from_variables(ds, prefix)
        self = cls(n_classes=int(ds[f"{prefix}_threshold"].attrs.get("n_classes", mix.n_classes)))
        self.mixture_ = mix
        return self


def class_assigner(spec, random_state: int = 0):
    """An assigner from a user setting: an int K (mixture of ≤ K classes), "element", "chemsys",
    or None / "none" / 0 (no classes)."""
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("none", "", "0")) or spec == 0:
        return None
    if isinstance(spec, (int, np.integer)) or (isinstance(spec, str) and spec.strip().isdigit()):
        return MixtureClasses(int(spec), random_state=random_state)
    if isinstance(spec, str) and spec.strip().lower() in ("element", "chemsys"):
        return LabelClasses(spec.strip().lower())
    raise ValueError(f"classes must be an integer, 'element', 'chemsys' or None; got {spec!r}")


def class_assigner_from_variables(kind: str, ds, prefix: str):
    if kind == "mixture":
        return MixtureClasses.from_variables(ds, prefix)
    return LabelClasses(kind)
