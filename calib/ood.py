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
        from sklearn.decomposition import PCA

        X = np.asarray(descriptors, dtype=float)
        if X.ndim != 2 or len(X) < 3:
            raise ValueError(f"the Q-residual detector needs ≥ 3 reference atoms, got shape {X.shape}")
        pca = PCA().fit(X)
        ratio = np.cumsum(pca.explained_variance_ratio_)
        k = int(min(np.searchsorted(ratio, self.variance) + 1, len(X) - 1, X.shape[1]))
        self.mean_ = pca.mean_
        self.components_ = pca.components_[:k]
        self.n_components_ = k
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
