"""Out-of-distribution detection by the Q residual (squared prediction error) of a PCA model.

Following Wong & Yang (the Q-residual detector for MLIP descriptors): a PCA
is fitted on the per-atom descriptors of a reference (calibration) set,
keeping the components that carry ``variance`` of the variance; the Q
residual of an atom is the squared distance between its descriptor and its
reconstruction from those components, Q = ‖x − x̂‖² (descriptor units²). The
threshold is the ``quantile`` of the reference atoms' Q. A structure is out
of distribution when any of its atoms exceeds the threshold; its score is its
largest atomic Q divided by the threshold (> 1: out of distribution).
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

    def fit(self, descriptors) -> QResidualDetector:
        X = np.asarray(descriptors, dtype=float)
        self.mean_, self.components_, _ = principal_subspace(X, self.variance, min_points=3,
                                                             what="Q-residual reference atoms")
        self.n_components_ = len(self.components_)
        q = self.q_residual(X)
        self.threshold_ = float(max(np.quantile(q, self.quantile), 1e-12 * (np.sum(X**2) / len(X) + 1e-300)))
        return self

    def q_residual(self, descriptors) -> np.ndarray:
        """Q = ‖x − x̂‖² per atom (descriptor units²)."""
        Xc = np.asarray(descriptors, dtype=float) - self.mean_
        recon = (Xc @ self.components_.T) @ self.components_
        return np.sum((Xc - recon) ** 2, axis=1)

    def structure_scores(self, descriptors, atom_structure, n_structures: int) -> np.ndarray:
        """Largest atomic Q of each structure divided by the threshold (> 1: out of distribution)."""
        q = self.q_residual(descriptors) / self.threshold_
        out = np.zeros(n_structures)
        np.maximum.at(out, np.asarray(atom_structure, dtype=int), q)
        return out
