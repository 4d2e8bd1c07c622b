"""Calibrated error bars on NEB paths: image energies with their covariance, barriers with intervals.

For images 0 … M of one path (one composition), with model total energies E_i, the energies relative
to image 0, D_i = E_i − E_0, have the covariance

    C_ij = β · L_ij + κ² · ΔE_i ΔE_j + τ²/2 · (1 + δ_ij)                        [eV²]

(:meth:`calib.uq.differences.DifferenceVarianceModel.covariance`, whose diagonal is the pair variance)

where L_ij = α² (s_i f_i − s_0 f_0)ᵀ Σ (s_j f_j − s_0 f_0) is the LLPR covariance of the differences
(neighbouring images have nearly equal features, so it is strongly correlated), κ² ΔE_i ΔE_j the
softening term of calib.uq.differences taken as fully correlated along the path (a scale error has one
sign), and τ² the floor, read as independent per-image noise of variance τ²/2 so that each difference
has variance τ² as in the pair model. With a scalar correction c stored for the chemistry, the
corrected path c·D uses the corrected model, c² L and the uncertainty σ_c of c: (κ_c² + σ_c²) ΔE_i ΔE_j.

Barriers are linear in D: forward E_m − E_0 = D_m (m the highest model image), reverse E_m − E_M =
D_m − D_M, KRA E_m − (E_0 + E_M)/2 = D_m − D_M/2; their σ is √(aᵀ C a) for those weights a, which uses
the covariance (an independent-σ formula over-states the reverse barrier's σ when images are
correlated). Intervals are ± q σ with q the artifact's energy-difference conformal quantile: the
conformal guarantee is for differences like the calibration pairs; for a barrier the same q is an
approximation, measured on the shipped paths in docs/neb.md.
"""

from __future__ import annotations

import numpy as np

from calib.predictor import CalibratedPredictor, as_structures

BARRIERS = ("forward", "reverse", "kra")


def vacancy_hop(cell, species: str | None = None):
    """(initial, final) end points of a vacancy hop in ``cell`` (ASE Atoms, unrelaxed): the first atom of
    ``species`` (default: the first atom's) is removed and its nearest same-species neighbour (minimum
    image) moves onto the vacant site."""
    import numpy as np

    symbols = cell.get_chemical_symbols()
    species = species or symbols[0]
    same = [i for i, s in enumerate(symbols) if s == species]
    vac, others = same[0], same[1:]
    d = cell.get_distances(vac, others, mic=True, vector=True)
    hop = others[int(np.argmin(np.linalg.norm(d, axis=1)))]
    initial = cell.copy()
    del initial[vac]
    final = initial.copy()
    final.positions[hop - 1 if hop > vac else hop] += -d[others.index(hop)]
    return initial, final


def difference_covariance(llpr, features, n_atoms) -> np.ndarray:
    """LLPR covariance (eV²) of E_i − E_0 for i = 1 … M from the pooled features of images 0 … M."""
    C = llpr.energy_covariance(features, n_atoms)
    return C[1:, 1:] - C[1:, :1] - C[:1, 1:] + C[0, 0]


def barrier_weights(m: int, M: int) -> dict:
    """Weights a on (D_1 … D_M) of the forward, reverse and KRA barriers; m is the index of the highest image."""
    out = {}
    for name in BARRIERS:
        a = np.zeros(M)
        if m > 0:
            a[m - 1] += 1.0
        if name == "reverse":
            a[M - 1] -= 1.0
        elif name == "kra":
            a[M - 1] -= 0.5
        out[name] = a
    return out


def band(predictor: CalibratedPredictor, images, *, batch_size: int = 16):
    """An xarray Dataset for one NEB path: relative energies, their covariance, barriers and intervals.

    Variables over ``image`` (0 … M): ``energy`` (E_i − E_0, eV), ``energy_sigma``, ``energy_low/high``
    (and ``energy_corrected``, ``energy_corrected_sigma``, ``energy_corrected_low/high`` with a stored
    correction); ``covariance`` (image_a, image_b) of images 1 … M (image 0 is exact by definition);
    per barrier b in forward / reverse / kra: ``barrier_<b>``, ``barrier_<b>_sigma``,
    ``barrier_<b>_sigma_independent`` (the σ that ignores correlations), ``barrier_<b>_low/high`` and the
    corrected ones. Raises ValueError for a skipped image or one of another composition.
    """
    import xarray as xr

    art = predictor.artifact
    if art is None or "raw" not in art.differences:
        raise ValueError("NEB error bars need an artifact calibrated with the energy-difference model "
                         "(calib calibrate, calib 0.2 or later)")
    structs = list(as_structures(images))
    if len(structs) < 3:
        raise ValueError(f"an NEB path needs at least 3 images, got {len(structs)}")
    formulas = {a.get_chemical_formula() for a in structs}
    if len(formulas) != 1:
        raise ValueError(f"the images have different compositions ({', '.join(sorted(formulas))}): not one path")
    ds = predictor.predict(structs, batch_size=batch_size, descriptors=True, progress=False)
    bad = [f"image {k}: {e}" for k, e in enumerate(ds["error"].values) if e]
    if bad:
        raise ValueError("cannot evaluate the path: " + "; ".join(bad))
    E = ds["energy"].values
    D = (E - E[0])[1:]
    M = len(D)
    L = difference_covariance(art.llpr, ds["features"].values, ds["n_atoms"].values)
    m = int(np.argmax(E))
    weights = barrier_weights(m, M)
    out = xr.Dataset(coords={"image": np.arange(M + 1), "image_a": np.arange(1, M + 1),
                             "image_b": np.arange(1, M + 1)})
    out["name"] = ("image", ds["name"].values)
    chem = str(ds["chemsys"].values[0])
    variants = [("", 1.0, 0.0, art.differences["raw"], art.conformal.get("energy_difference"))]
    c, sc = (float(x[0]) for x in art.corrections.per_structure([chem]))
    if np.isfinite(c) and "corrected" in art.differences:
        variants.append(("_corrected", c, sc, art.differences["corrected"],
                         art.conformal.get("energy_difference_corrected")))
    for suffix, c, sc, model, cal in variants:
        C = model.covariance(L, D, c, sc)
        q = cal.quantile_ if cal is not None else np.nan
        rel = np.concatenate([[0.0], c * D])
        sig = np.concatenate([[0.0], np.sqrt(np.diag(C))])
        units = {"units": "eV"}
        out[f"energy{suffix}"] = ("image", rel, {**units, "description": "E_i - E_0" + (f", x c = {c:.4f}"
                                                                                        if suffix else "")})
        out[f"energy{suffix}_sigma"] = ("image", sig, units)
        out[f"energy{suffix}_low"] = ("image", rel - q * sig, units)
        out[f"energy{suffix}_high"] = ("image", rel + q * sig, units)
        out[f"covariance{suffix}"] = (("image_a", "image_b"), C, {"units": "eV^2"})
        for name, a in weights.items():
            value = float(a @ (c * D))
            s = float(np.sqrt(a @ C @ a))
            out[f"barrier_{name}{suffix}"] = ((), value, units)
            out[f"barrier_{name}{suffix}_sigma"] = ((), s, units)
            out[f"barrier_{name}{suffix}_sigma_independent"] = ((), float(np.sqrt(a**2 @ np.diag(C))), units)
            out[f"barrier_{name}{suffix}_low"] = ((), value - q * s, units)
            out[f"barrier_{name}{suffix}_high"] = ((), value + q * s, units)
        out.attrs[f"quantile{suffix}"] = float(q)
    out.attrs.update(chemsys=chem, highest_image=m, alpha=float(variants[0][4].alpha) if variants[0][4] else np.nan,
                     corrected=int(len(variants) > 1))
    return out


def summary(ds, reference_energies=None) -> dict:
    """The JSON record of :func:`band` (eV), with the reference (e.g. DFT) energies and how many lie inside."""
    rec = {"chemsys": ds.attrs["chemsys"], "highest_image": int(ds.attrs["highest_image"]),
           "energies": ds["energy"].values.tolist(), "energy_sigmas": ds["energy_sigma"].values.tolist()}
    suffixes = [""] + (["_corrected"] if ds.attrs.get("corrected") else [])
    for suffix in suffixes:
        if suffix:
            rec["energies_corrected"] = ds["energy_corrected"].values.tolist()
            rec["energy_sigmas_corrected"] = ds["energy_corrected_sigma"].values.tolist()
        for name in BARRIERS:
            key = f"barrier_{name}{suffix}"
            rec[key] = float(ds[key])
            rec[f"{key}_sigma"] = float(ds[f"{key}_sigma"])
            rec[f"{key}_interval"] = [float(ds[f"{key}_low"]), float(ds[f"{key}_high"])]
    if reference_energies is not None:
        ref = np.asarray(reference_energies, dtype=float)
        rel = ref - ref[0]
        rec["reference_energies"] = rel.tolist()
        m = int(ds.attrs["highest_image"])
        ref_barriers = {"forward": rel[m], "reverse": rel[m] - rel[-1], "kra": rel[m] - rel[-1] / 2}
        for suffix in suffixes:
            lo, hi = ds[f"energy{suffix}_low"].values[1:], ds[f"energy{suffix}_high"].values[1:]
            rec[f"n_inside{suffix}"] = int(np.sum((lo <= rel[1:]) & (rel[1:] <= hi)))
            for name, value in ref_barriers.items():
                lo, hi = rec[f"barrier_{name}{suffix}_interval"]
                rec[f"reference_barrier_{name}"] = float(value)
                rec[f"barrier_{name}{suffix}_covers_reference"] = bool(lo <= value <= hi)
        rec["n_images_compared"] = int(len(rel) - 1)
    return rec


def plot_band(ds, path, reference_energies=None, title: str = "") -> None:
    """Profile with 1σ and 2σ bands (raw and corrected) and the reference points, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = ds["image"].values
    fig, ax = plt.subplots(figsize=(5.2, 3.9))
    styles = [("", "tab:blue", "model")]
    if ds.attrs.get("corrected"):
        styles.append(("_corrected", "tab:orange", "corrected"))
    for suffix, color, label in styles:
        y, s = ds[f"energy{suffix}"].values, ds[f"energy{suffix}_sigma"].values
        ax.fill_between(x, y - 2 * s, y + 2 * s, color=color, alpha=0.15, lw=0)
        ax.fill_between(x, y - s, y + s, color=color, alpha=0.3, lw=0)
        ax.plot(x, y, "-o", color=color, ms=3, label=f"{label} (1σ, 2σ bands)")
    if reference_energies is not None:
        ref = np.asarray(reference_energies, dtype=float)
        ax.plot(x, ref - ref[0], "k*", ms=7, label="reference")
    ax.set_xlabel("image")
    ax.set_ylabel("E − E₀ (eV)")
    ax.set_title(title or f"{ds.attrs['chemsys']}: NEB profile")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
