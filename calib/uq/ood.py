"""Out-of-distribution detection by the Q residual (squared prediction error) of a PCA model.

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

The detector stored in a calib artifact is fitted at calibration on the
calibration structures: the conformal intervals hold for structures
exchangeable with those, so a structure far from all of them is the one whose
interval cannot be trusted.
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

    def fit(self, descriptors, atom_structure=None) -> QResidualDetector:
        """Fit on reference per-atom descriptors (n_atoms, d); with ``atom_structure`` (the reference
        structure of each atom) the threshold is the quantile of the structures' largest atomic Q."""
        X = np.asarray(descriptors, dtype=float)
        self.mean_, self.components_, _ = principal_subspace(X, self.variance, min_points=3,
                                                             what="Q-residual reference atoms")
        self.n_components_ = len(self.components_)
        q = self.q_residual(X)
        if atom_structure is not None:
            owner = np.asarray(atom_structure, dtype=int)
            per = np.zeros(owner.max() + 1)
            np.maximum.at(per, owner, q)
            q = per
        self.threshold_ = float(max(np.quantile(q, self.quantile), 1e-12 * (np.sum(X**2) / len(X) + 1e-300)))
        self.level_ = "structure" if atom_structure is not None else "atom"
        return self

    # ---- artifact round trip (calib.artifact)
    def to_variables(self, prefix: str = "ood") -> dict:
        """netCDF variables: PCA mean and components (descriptor units) and the threshold (units²)."""
        attrs = {"variance": self.variance, "quantile": self.quantile, "level": getattr(self, "level_", "atom")}
        return {
            f"{prefix}_mean": (("feature",), self.mean_, {"units": "1", "description": "PCA mean of the reference "
                                                          "per-atom descriptors"}),
            f"{prefix}_components": ((f"{prefix}_component", "feature"), self.components_, {"units": "1"}),
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
        return det

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
