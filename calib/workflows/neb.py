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

The path verdict. The raw barrier is **trusted** unless an image between the end points is untrusted by the
one structure verdict (calib.uq.trust, with the predictor's policy: its domain, its bound on the largest force
error; ``images_untrusted`` names them with their reasons: the same answer ``calib predict`` gives for each
image), its forward barrier's calibrated half-width exceeds ``barrier_tol``
(0.5 eV: wider than CHGNet's typical barrier error, MAE 0.39 eV over 470 Mg-migration paths in Deng et al.),
or the chemistry's stored softening moves the barrier by more than that half-width (|c − 1|·E_b > q σ_b:
the raw barrier is biased beyond its own band). The corrected barrier is trusted only where the
correction was fitted on environments like the path's: an interior image whose Q score exceeds the largest
Q of the correction's own structures lies outside them, and the corrected band is then made at least as
wide as the raw one (never narrower after a correction whose domain does not cover the path).
"""

from __future__ import annotations

import numpy as np

from calib import schema
from calib.predictor import CalibratedPredictor, as_structures
from calib.uq.differences import composition

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


def band(predictor: CalibratedPredictor, images, *, batch_size: int = 16, barrier_tol: float | None = None):
    """An xarray Dataset for one NEB path: relative energies, their covariance, barriers and intervals.

    Dimensions: ``image`` (0 … M), ``image_a``/``image_b`` (1 … M: image 0 is exact by definition),
    ``barrier`` (forward, reverse, kra) and ``variant`` (raw, and corrected when a scalar correction is
    stored for the path's chemistry). Variables besides ``name`` (the images' names), declared in calib.schema
    (``BAND``; C the band covariance, a a barrier's weights on the images, q the conformal quantile):

    {variables}

    Attributes: ``chemsys``, ``highest_image`` (m, the highest model image), ``alpha``, and the path verdict
    (module docstring): ``trusted`` (bool), ``reasons``, ``images_untrusted``, ``label_next`` (the interior image
    with the widest band: the label that would tell most), ``corrected_trusted`` (bool), ``corrected_reasons``.
    Raises ValueError for a skipped image or one of another composition. ``barrier_tol`` (eV) defaults to the
    predictor's policy's (``predictor.trust.barrier_tol``, calib.uq.trust.TrustPolicy).
    """
    if barrier_tol is None:
        barrier_tol = predictor.trust.barrier_tol if predictor.trust.barrier_tol is not None else np.inf
    art = predictor.artifact
    if art is None or art.differences.raw is None:
        raise ValueError("NEB error bars need an artifact calibrated with the energy-difference model "
                         "(calib calibrate, calib 0.2 or later)")
    structs = list(as_structures(images))
    if len(structs) < 3:
        raise ValueError(f"an NEB path needs at least 3 images, got {len(structs)}")
    formulas = {composition(a) for a in structs}  # one path: one composition (the pairs of calib.uq.differences)
    if len(formulas) != 1:
        raise ValueError(f"the images have different compositions ({', '.join(sorted(formulas))}): not one path")
    ds = predictor.raw().predict(structs, batch_size=batch_size, descriptors=True, progress=False)
    bad = [f"image {k}: {e}" for k, e in enumerate(ds["error"].values) if e]
    if bad:
        raise ValueError("cannot evaluate the path: " + "; ".join(bad))
    E = ds["energy"].values
    D = (E - E[0])[1:]
    M = len(D)
    L = difference_covariance(art.llpr, ds["features"].values, ds["n_atoms"].values)
    m = int(np.argmax(E))
    weights = np.array(list(barrier_weights(m, M).values()))  # (barrier, M)
    chem = str(ds["chemsys"].values[0])
    variants = [("raw", 1.0, 0.0, art.differences.raw, art.conformal.energy_difference)]
    c, sc = (float(x[0]) for x in art.corrections.per_structure([chem]))
    if np.isfinite(c) and art.differences.corrected is not None:
        variants.append(("corrected", c, sc, art.differences.corrected, art.conformal.energy_difference_corrected))
    q_img = ds["q_score"].values if "q_score" in ds else np.zeros(M + 1)
    domain = art.corrections.domain(chem) if len(variants) > 1 else None
    uncovered = domain is not None and bool(np.max(q_img[1:M]) > domain) if M > 1 else False
    rows = _band_rows(variants, L, D, weights, uncovered)
    out = _band_dataset(rows, [v[0] for v in variants], ds["name"].values, M)
    out.attrs.update(chemsys=chem, highest_image=m, alpha=float(variants[0][4].alpha) if variants[0][4] else np.nan)
    out.attrs.update(_path_verdict(ds, out, barrier_tol, uncovered, float(np.max(q_img[1:M])) if M > 1 else 0.0,
                                   domain))
    return out


if band.__doc__:  # the band's table, from the one schema (python -OO strips docstrings)
    band.__doc__ = band.__doc__.replace("{variables}", schema.table([c.name for c in schema.BAND], schema.BAND_BY_NAME)
                                        .replace("\n", "\n    "))


def _band_rows(variants, L, D, weights, uncovered: bool) -> dict:
    """Per variant (raw, corrected): the image energies E_i − E_0 (eV), their σ and covariance (eV, eV²), the
    barriers (eV) with their σ, the quantile and the factor c. The corrected band is never narrower than the raw
    one where the path leaves the correction's domain (``uncovered``)."""
    rows = {k: [] for k in ("energy", "energy_sigma", "covariance", "barrier", "barrier_sigma",
                            "barrier_sigma_independent", "quantile", "correction")}
    for name, c, sc, model, cal in variants:
        C = model.covariance(L, D, c, sc)
        if name == "corrected" and uncovered:  # never narrower than the raw band (same q scale: see above)
            C_raw = rows["covariance"][0]
            ratio = (rows["quantile"][0] / cal.quantile_) ** 2 if cal is not None else 1.0
            C = np.maximum(C, ratio * C_raw) if np.isfinite(ratio) else C
        rows["energy"].append(np.concatenate([[0.0], c * D]))
        rows["energy_sigma"].append(np.concatenate([[0.0], np.sqrt(np.diag(C))]))
        rows["covariance"].append(C)
        rows["barrier"].append(weights @ (c * D))
        rows["barrier_sigma"].append(np.sqrt(np.einsum("bi,ij,bj->b", weights, C, weights)))
        rows["barrier_sigma_independent"].append(np.sqrt(weights**2 @ np.diag(C)))
        rows["quantile"].append(cal.quantile_ if cal is not None else np.nan)
        rows["correction"].append(c)
    return rows


def _band_dataset(rows: dict, variants: list, names, M: int):
    """The band's Dataset (:func:`band`'s table) from :func:`_band_rows`."""
    import xarray as xr

    q = np.array(rows["quantile"])
    out = xr.Dataset(coords={"variant": variants, "image": np.arange(M + 1),
                             "image_a": np.arange(1, M + 1), "image_b": np.arange(1, M + 1),
                             "barrier": list(BARRIERS)})
    out["name"] = ("image", names)
    energy, sig = np.array(rows["energy"]), np.array(rows["energy_sigma"])
    bar, bsig = np.array(rows["barrier"]), np.array(rows["barrier_sigma"])
    values = {"energy": energy, "energy_sigma": sig, "energy_low": energy - q[:, None] * sig,
              "energy_high": energy + q[:, None] * sig, "covariance": np.array(rows["covariance"]),
              "barrier_height": bar, "barrier_sigma": bsig,
              "barrier_sigma_independent": np.array(rows["barrier_sigma_independent"]),
              "barrier_low": bar - q[:, None] * bsig, "barrier_high": bar + q[:, None] * bsig, "quantile": q,
              "correction": np.array(rows["correction"])}
    for col in schema.BAND:  # dims, units and meaning declared in calib.schema
        out[col.name] = (tuple(col.dims.split(",")), values[col.name], schema.attrs(col.name, schema.BAND_BY_NAME))
    return out


def _path_verdict(ds, out, barrier_tol: float, uncovered: bool, q_path: float, domain) -> dict:
    """The path verdict of :func:`band` (module docstring) from the image predictions ``ds`` and the band."""
    M = len(ds["structure"]) - 1
    interior = list(range(1, M))
    # images judged by the domain only: the structure verdict's force and energy tolerances are about single
    # structures; a barrier is an energy difference, judged by its own calibrated half-width below
    # images judged by the one structure verdict (the predictor's policy): what calib predict says of each
    trusted = ds["trusted"].values if "trusted" in ds else np.ones(M + 1, dtype=bool)
    bad = [k for k in interior if not trusted[k]]
    reasons = [f"image {k}: {ds['trust_reason'].values[k]}" for k in bad]
    raw = out.sel(variant="raw", barrier="forward")
    height, half = float(raw["barrier_height"]), float(raw["barrier_high"] - raw["barrier_height"])
    if np.isfinite(half) and half > barrier_tol:
        reasons.append(f"the forward barrier is known to ±{half:.3g} eV only (calibrated half-width) > "
                       f"{barrier_tol:g} eV")
    corrected_reasons = []
    if "corrected" in out["variant"].values:
        c = float(out["correction"].sel(variant="corrected"))
        shift = abs(c - 1.0) * abs(height)
        if np.isfinite(half) and shift > half:
            reasons.append(f"the softening of {out.attrs['chemsys']} (c = {c:.3f}) "
                           f"moves the barrier by {shift:.3g} eV, more than its calibrated half-width ±{half:.3g} eV: "
                           "the raw barrier is biased beyond its band")
        if uncovered:
            corrected_reasons.append(f"the correction was fitted on environments unlike the path's (an image scores "
                                     f"Q = {q_path:.3g} × the domain threshold, above the {domain:.3g} of the "
                                     "structures c was fitted on): its band is kept at least as wide as the raw one")
    sig = out["energy_sigma"].sel(variant="raw").values
    label_next = int(interior[int(np.argmax(sig[interior]))]) if interior else None
    return {"trusted": not reasons, "reasons": reasons, "images_untrusted": bad, "label_next": label_next,
            "corrected_trusted": not reasons and not corrected_reasons, "corrected_reasons": corrected_reasons}


def summary(ds, reference_energies=None) -> dict:
    """The JSON record of :func:`band` (eV), with the reference (e.g. DFT) energies and how many lie inside.

    Keys as since calib 0.2: ``energies``, ``energy_sigmas``, ``barrier_<b>``, ``barrier_<b>_sigma``,
    ``barrier_<b>_interval`` and, with a correction, the same with ``_corrected``; with a reference,
    ``reference_barrier_<b>``, ``barrier_<b>[_corrected]_covers_reference`` and ``n_inside[_corrected]``."""
    m = int(ds.attrs["highest_image"])
    rec = {"chemsys": ds.attrs["chemsys"], "highest_image": m, "trusted": ds.attrs["trusted"],
           "reasons": list(ds.attrs["reasons"]), "images_untrusted": list(ds.attrs["images_untrusted"]),
           "label_next": ds.attrs["label_next"]}
    if "corrected" in ds["variant"].values:
        rec.update(corrected_trusted=ds.attrs["corrected_trusted"],
                   corrected_reasons=list(ds.attrs["corrected_reasons"]))
    variants = [str(v) for v in ds["variant"].values]
    for v in variants:
        part, sfx = ds.sel(variant=v), "" if v == "raw" else f"_{v}"
        rec[f"energies{sfx}"] = part["energy"].values.tolist()
        rec[f"energy_sigmas{sfx}"] = part["energy_sigma"].values.tolist()
        for name in BARRIERS:
            one = part.sel(barrier=name)
            rec[f"barrier_{name}{sfx}"] = float(one["barrier_height"])
            rec[f"barrier_{name}{sfx}_sigma"] = float(one["barrier_sigma"])
            rec[f"barrier_{name}{sfx}_interval"] = [float(one["barrier_low"]), float(one["barrier_high"])]
    if reference_energies is not None:
        ref = np.asarray(reference_energies, dtype=float)
        rel = ref - ref[0]
        rec["reference_energies"] = rel.tolist()
        ref_barriers = {"forward": rel[m], "reverse": rel[m] - rel[-1], "kra": rel[m] - rel[-1] / 2}
        for v in variants:
            part, sfx = ds.sel(variant=v), "" if v == "raw" else f"_{v}"
            lo, hi = part["energy_low"].values[1:], part["energy_high"].values[1:]
            rec[f"n_inside{sfx}"] = int(np.sum((lo <= rel[1:]) & (rel[1:] <= hi)))
            for name, value in ref_barriers.items():
                lo, hi = rec[f"barrier_{name}{sfx}_interval"]
                rec[f"reference_barrier_{name}"] = float(value)
                rec[f"barrier_{name}{sfx}_covers_reference"] = bool(lo <= value <= hi)
        rec["n_images_compared"] = int(len(rel) - 1)
    return rec


def plot_band(ds, path, reference_energies=None, title: str = "") -> None:
    """Profile with 1σ and 2σ bands (raw and corrected) and the reference points, as a PNG."""
    from calib.data.figures import pyplot, save

    plt = pyplot()

    x = ds["image"].values
    fig, ax = plt.subplots(figsize=(5.2, 3.9))
    colors = {"raw": ("tab:blue", "model"), "corrected": ("tab:orange", "corrected")}
    for variant in ds["variant"].values:
        color, label = colors[str(variant)]
        y, s = ds["energy"].sel(variant=variant).values, ds["energy_sigma"].sel(variant=variant).values
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
    save(fig, path)
