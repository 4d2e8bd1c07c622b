"""Out-of-distribution detection by the Q residual and Hotelling's T² of a PCA model.

Following Wong & Yang (the Q-residual detector for MLIP descriptors): a PCA
is fitted on the per-atom descriptors of a reference (calibration) set,
keeping the components that carry ``variance`` of the variance; the Q
residual of an atom is the squared distance between its descriptor and its
reconstruction from those components, Q = ‖x − x̂‖² (descriptor units²). The
threshold is the ``quantile`` of the reference atoms' Q or, when the
reference atoms' structures are given, of each reference structure's largest
atomic Q (so that about ``1 - quantile`` of structures like the reference ones
are flagged, whatever their size). A structure is out of distribution when any
of its atoms exceeds the threshold; its score is its largest atomic Q divided
by the threshold (> 1: out of distribution).

The Q residual sees only the distance *off* the PCA subspace. Extrapolation *along* it (a cell compressed by a
third, an element the descriptors place inside the span) shows in Hotelling's T² = Σ_k t_k² / λ_k, the
squared Mahalanobis distance of the atom's scores t_k within the subspace (λ_k the reference variances of the
components); process monitoring uses the two together, each with its own control limit. The T² threshold is
set like Q's (the ``quantile`` of the reference structures' largest atomic T²), and a structure's domain
score is the larger of its two ratios (:meth:`QResidualDetector.domain_scores`).

The detector stored in a calib artifact is fitted on the structures the
Hessian was built from, which stand in for the model's training set: where the
model is expected to be right. H can stream millions of structures, so the
detector is fitted from :class:`DescriptorStats`, which accumulates the moments
of the per-atom descriptors (count, sum, sum of outer products: the PCA) and a
bounded sample of whole structures (the threshold), and merges like H. Being
outside the *calibration* structures is a separate piece of information (the
intervals there are extrapolated, not measured): the detector records the
largest score it gave a calibration structure (:attr:`calibration_max_`).
"""

from __future__ import annotations

import numpy as np


def principal_subspace(X: np.ndarray, variance: float, max_dims: int | None = None, min_points: int = 2,
                       what: str = "descriptors"):
    """(mean, leading components, their variances) of a PCA of X keeping ``variance`` of the variance.

    At most ``max_dims`` components, fewer than the number of points, and none of ~zero variance.
    """
    from sklearn.decomposition import PCA

    X = np.asarray(X, dtype=float)
    if X.ndim != 2 or len(X) < min_points:
        raise ValueError(f"{what}: need an (n ≥ {min_points}, d) array, got shape {X.shape}")
    pca = PCA().fit(X)
    ev = pca.explained_variance_
    k = int(np.searchsorted(np.cumsum(ev) / ev.sum(), variance) + 1)
    k = max(1, min(k, max_dims or X.shape[1], len(X) - 1, int(np.sum(ev > 1e-12 * ev[0]))))
    return pca.mean_, pca.components_[:k], ev[:k]


def structure_key(fingerprint: str) -> float:
    """A number in [0, 1) from a structure's content hash: the priority of :class:`DescriptorStats`'s sample,
    the same whichever process or shard sees the structure."""
    return int(fingerprint[:13], 16) / 16.0**13


class DescriptorStats:
    """Streaming statistics of per-atom descriptors (first ``n_dims`` dimensions) for :class:`QResidualDetector`.

    ``n``, ``total`` (Σx) and ``outer`` (Σxxᵀ), float64, give the mean and covariance of every atom seen;
    ``sample`` keeps the ``sample_size`` structures with the smallest keys (priority sampling: a uniform
    sample of structures, mergeable because the keys come from the structures themselves), each as its
    descriptors, for the structure-level threshold. Mergeable (:meth:`merge`) and checkpointable
    (:meth:`to_variables`)."""

    def __init__(self, n_dims: int, sample_size: int = 1000):
        self.n_dims, self.sample_size = int(n_dims), int(sample_size)
        self.n = 0
        self.total = np.zeros(self.n_dims)
        self.outer = np.zeros((self.n_dims, self.n_dims))
        self.sample: dict[float, np.ndarray] = {}

    def update(self, descriptors, atom_structure, keys) -> DescriptorStats:
        """Add one batch: per-atom descriptors (N, ≥ n_dims), the row of each atom's structure, one key per
        structure (:func:`structure_key`)."""
        X = np.asarray(descriptors, dtype=np.float64)[:, : self.n_dims]
        owner = np.asarray(atom_structure, dtype=int)
        self.n += len(X)
        self.total += X.sum(axis=0)
        self.outer += X.T @ X
        for k, key in enumerate(keys):
            self.sample[float(key)] = X[owner == k]
        self._trim()
        return self

    def _trim(self) -> None:
        if len(self.sample) > self.sample_size:
            for key in sorted(self.sample)[self.sample_size:]:
                del self.sample[key]

    def merge(self, other: DescriptorStats) -> DescriptorStats:
        """A new object holding both (disjoint shards of one input)."""
        if other.n_dims != self.n_dims:
            raise ValueError(f"cannot merge descriptor statistics of {self.n_dims} and {other.n_dims} dimensions")
        out = DescriptorStats(self.n_dims, self.sample_size)
        out.n, out.total, out.outer = self.n + other.n, self.total + other.total, self.outer + other.outer
        out.sample = {**self.sample, **other.sample}
        out._trim()
        return out

    def to_variables(self, prefix: str = "ood_stats") -> dict:
        keys = sorted(self.sample)
        sizes = np.array([len(self.sample[k]) for k in keys], dtype=np.int64)
        atoms = np.concatenate([self.sample[k] for k in keys]) if keys else np.zeros((0, self.n_dims))
        return {f"{prefix}_n": ((), int(self.n), {}), f"{prefix}_total": ((f"{prefix}_dim",), self.total, {}),
                f"{prefix}_outer": ((f"{prefix}_dim", f"{prefix}_dim_b"), self.outer, {}),
                f"{prefix}_keys": ((f"{prefix}_structure",), np.array(keys, dtype=float), {}),
                f"{prefix}_sizes": ((f"{prefix}_structure",), sizes, {}),
                f"{prefix}_atoms": ((f"{prefix}_atom", f"{prefix}_dim"), atoms, {"sample_size": self.sample_size})}

    @classmethod
    def from_variables(cls, ds, prefix: str = "ood_stats") -> DescriptorStats:
        out = cls(ds[f"{prefix}_total"].shape[0], int(ds[f"{prefix}_atoms"].attrs.get("sample_size", 1000)))
        out.n = int(ds[f"{prefix}_n"].values)
        out.total = ds[f"{prefix}_total"].values.astype(np.float64)
        out.outer = ds[f"{prefix}_outer"].values.astype(np.float64)
        atoms, ends = ds[f"{prefix}_atoms"].values, np.cumsum(ds[f"{prefix}_sizes"].values)
        out.sample = {float(k): atoms[e - n:e] for k, n, e in zip(ds[f"{prefix}_keys"].values,
                                                                   ds[f"{prefix}_sizes"].values, ends)}
        return out


class QResidualDetector:
    """PCA Q-residual detector on per-atom descriptors.

    Parameters
    ----------
    variance : fraction of the reference variance the PCA keeps.
    quantile : quantile of the reference Q that sets the threshold.

    Attributes
    ----------
    n_components_ : int
    threshold_ : float, descriptor units²
    """

    def __init__(self, variance: float = 0.95, quantile: float = 0.99):
        self.variance = variance
        self.quantile = quantile

    def fit_stats(self, stats: DescriptorStats, max_dims: int | None = None,
                  reference: str = "calibration structures") -> QResidualDetector:
        """Fit from :class:`DescriptorStats`: the PCA of every atom seen (eigendecomposition of their
        covariance, the same subspace as :meth:`fit` on those atoms) and the threshold from the
        ``quantile`` of the sampled structures' largest atomic Q. ``reference`` says in words which structures
        the statistics are of (stored, reported)."""
        if stats.n < 3 or len(stats.sample) < 2:
            raise ValueError(f"Q-residual reference: {stats.n} atoms in {len(stats.sample)} structures; need ≥ 3 "
                             "atoms in ≥ 2 structures")
        mean = stats.total / stats.n
        cov = stats.outer / stats.n - np.outer(mean, mean)
        lam, vec = np.linalg.eigh(0.5 * (cov + cov.T))
        lam, vec = np.clip(lam[::-1], 0.0, None), vec[:, ::-1]
        k = int(np.searchsorted(np.cumsum(lam) / max(lam.sum(), 1e-300), self.variance) + 1)
        k = max(1, min(k, max_dims or stats.n_dims, stats.n - 1, int(np.sum(lam > 1e-12 * max(lam[0], 1e-300)))))
        self.mean_, self.components_ = mean, vec[:, :k].T
        # sklearn's PCA reports variances with n − 1 degrees of freedom: the same here, so T² matches it
        self.explained_variance_ = np.maximum(lam[:k] * stats.n / (stats.n - 1), 1e-12 * max(lam[0], 1e-300))
        self.n_components_, self.n_dims_ = k, stats.n_dims
        per = np.array([self.q_residual(x).max() for x in stats.sample.values() if len(x)])
        self.threshold_ = float(max(np.quantile(per, self.quantile), 1e-12 * (np.trace(stats.outer) / stats.n + 1e-300)))
        per_t2 = np.array([self.t2(x).max() for x in stats.sample.values() if len(x)])
        self.t2_threshold_ = float(max(np.quantile(per_t2, self.quantile), 1e-12))
        self.level_ = "structure"
        self.n_reference_atoms_, self.n_reference_sample_ = int(stats.n), len(per)
        self.reference_ = str(reference)
        return self

    def fit(self, descriptors, atom_structure=None, reference: str = "calibration structures") -> QResidualDetector:
        """Fit on reference per-atom descriptors (n_atoms, d); with ``atom_structure`` (the reference
        structure of each atom) the threshold is the quantile of the structures' largest atomic Q. ``reference``
        says in words which structures they are."""
        X = np.asarray(descriptors, dtype=float)
        self.mean_, self.components_, ev = principal_subspace(X, self.variance, min_points=3,
                                                              what="Q-residual reference atoms")
        self.explained_variance_ = np.maximum(ev, 1e-12 * max(ev[0], 1e-300))
        self.n_components_, self.n_dims_ = len(self.components_), X.shape[1]
        q, t2 = self.q_residual(X), self.t2(X)
        if atom_structure is not None:
            owner = np.asarray(atom_structure, dtype=int)
            per, per_t2 = np.zeros(owner.max() + 1), np.zeros(owner.max() + 1)
            np.maximum.at(per, owner, q)
            np.maximum.at(per_t2, owner, t2)
            q, t2 = per, per_t2
        self.threshold_ = float(max(np.quantile(q, self.quantile), 1e-12 * (np.sum(X**2) / len(X) + 1e-300)))
        self.t2_threshold_ = float(max(np.quantile(t2, self.quantile), 1e-12))
        self.level_ = "structure" if atom_structure is not None else "atom"
        self.reference_ = str(reference)
        return self

    def fit_calibration_max(self, descriptors, atom_structure, n_structures: int) -> QResidualDetector:
        """Learn the largest score the calibration structures get (:attr:`calibration_max_`, 1): above it a
        structure's intervals are extrapolated, not measured. Returns self."""
        scores = self.structure_scores(descriptors, atom_structure, n_structures)
        self.calibration_max_ = float(scores.max()) if len(scores) else float("nan")
        return self

    # ---- artifact round trip (calib.artifact)
    def to_variables(self, prefix: str = "ood") -> dict:
        """netCDF variables: PCA mean and components (descriptor units) and the threshold (units²)."""
        attrs = {"variance": self.variance, "quantile": self.quantile, "level": getattr(self, "level_", "atom"),
                 "reference": getattr(self, "reference_", "calibration structures"),
                 "calibration_max": float(getattr(self, "calibration_max_", np.nan))}
        t2 = {} if getattr(self, "explained_variance_", None) is None else {
            f"{prefix}_explained_variance": ((f"{prefix}_component",), self.explained_variance_,
                                             {"units": "descriptor units^2", "description": "variance of the "
                                              "reference descriptors along each component (Hotelling's T²)"}),
            f"{prefix}_t2_threshold": ((), self.t2_threshold_, {"units": "1", "description": "Hotelling T² "
                                       "threshold (the quantile of the reference structures' largest atomic T²)"})}
        return {
            **t2,
            f"{prefix}_mean": ((f"{prefix}_dim",), self.mean_, {"units": "1", "description": "PCA mean of the reference "
                                                          "per-atom descriptors"}),
            f"{prefix}_components": ((f"{prefix}_component", f"{prefix}_dim"), self.components_, {"units": "1"}),
            f"{prefix}_threshold": ((), self.threshold_, {"units": "descriptor units^2", **attrs,
                                                         "description": "Q-residual threshold"}),
        }

    @classmethod
    def from_variables(cls, ds, prefix: str = "ood") -> QResidualDetector:
        thr = ds[f"{prefix}_threshold"]
        det = cls(variance=float(thr.attrs.get("variance", 0.95)), quantile=float(thr.attrs.get("quantile", 0.99)))
        det.mean_ = ds[f"{prefix}_mean"].values.astype(float)
        det.components_ = ds[f"{prefix}_components"].values.astype(float)
        det.n_components_ = len(det.components_)
        det.threshold_ = float(thr.values)
        det.level_ = str(thr.attrs.get("level", "atom"))
        det.n_dims_ = det.mean_.shape[0]
        det.reference_ = str(thr.attrs.get("reference", "calibration structures"))
        det.calibration_max_ = float(thr.attrs.get("calibration_max", np.nan))
        det.explained_variance_ = (ds[f"{prefix}_explained_variance"].values.astype(float)
                                   if f"{prefix}_explained_variance" in ds else None)  # none before calib 0.6
        det.t2_threshold_ = float(ds[f"{prefix}_t2_threshold"].values) if f"{prefix}_t2_threshold" in ds else np.nan
        return det

    def q_residual(self, descriptors) -> np.ndarray:
        """Q = ‖x − x̂‖² per atom (descriptor units²), on the detector's leading ``n_dims_`` dimensions."""
        Xc = np.asarray(descriptors, dtype=float)[:, : len(self.mean_)] - self.mean_
        recon = (Xc @ self.components_.T) @ self.components_
        return np.sum((Xc - recon) ** 2, axis=1)

    def t2(self, descriptors) -> np.ndarray:
        """Hotelling's T² = Σ_k t_k² / λ_k per atom (dimensionless): the distance *along* the subspace."""
        t = (np.asarray(descriptors, dtype=float)[:, : len(self.mean_)] - self.mean_) @ self.components_.T
        return np.sum(t**2 / self.explained_variance_, axis=1)

    @property
    def has_t2(self) -> bool:
        """Whether the detector carries Hotelling's T² (fitted by calib ≥ 0.6)."""
        return getattr(self, "explained_variance_", None) is not None and np.isfinite(
            getattr(self, "t2_threshold_", np.nan))

    def structure_scores(self, descriptors, atom_structure, n_structures: int) -> np.ndarray:
        """Largest atomic Q of each structure divided by the threshold (> 1: out of distribution)."""
        return _structure_max(self.q_residual(descriptors) / self.threshold_, atom_structure, n_structures)

    def structure_t2_scores(self, descriptors, atom_structure, n_structures: int) -> np.ndarray:
        """Largest atomic T² of each structure divided by its threshold (NaN for a detector without T²)."""
        if not self.has_t2:
            return np.full(n_structures, np.nan)
        return _structure_max(self.t2(descriptors) / self.t2_threshold_, atom_structure, n_structures)

    def domain_scores(self, descriptors, atom_structure, n_structures: int) -> np.ndarray:
        """The domain score of each structure: max(Q ratio, T² ratio), > 1 out of the reference's domain (Q alone
        for a detector without T²)."""
        q = self.structure_scores(descriptors, atom_structure, n_structures)
        return np.fmax(q, self.structure_t2_scores(descriptors, atom_structure, n_structures))


def _structure_max(values, atom_structure, n_structures: int) -> np.ndarray:
    out = np.zeros(n_structures)
    np.maximum.at(out, np.asarray(atom_structure, dtype=int), values)
    return out
