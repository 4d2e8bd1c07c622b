"""The dcdft curvature benchmark: model bulk moduli against WIEN2k PBE.

ASE ships ``ase.collections.dcdft``: 71 elemental crystals at their WIEN2k
PBE equilibrium volume, with the WIEN2k equation-of-state parameters (V0 in
Å³/atom, B0 in GPa, B'). For each crystal we scale the cell isotropically to
seven volumes within ±6 % of a centre volume (fractional coordinates fixed,
the Delta-test protocol), fit a Birch–Murnaghan E(V) to the model's energies
with :class:`ase.eos.EquationOfState`, and report B_model / B_WIEN2k. The
centre is the WIEN2k volume; when the model's minimum falls outside that
window the scan is repeated around the model's own minimum, so every B is the
curvature at the model's equilibrium.

A ratio below 1 is the curvature softening of Deng et al. seen across the
periodic table.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers
from ase.units import GPa

from calib.workflows.settings import EOS

#: relative volume offsets of the scan around the centre volume
VOLUME_OFFSETS = np.linspace(-0.06, 0.06, 7)


@dataclass
class EOSRecord:
    """One element: model and WIEN2k equation-of-state parameters.

    Volumes in Å³/atom, energies in eV/atom, bulk moduli in GPa.
    """

    element: str
    z: int
    b_model: float | None = None
    b_reference: float | None = None
    ratio: float | None = None
    v0_model: float | None = None
    v0_reference: float | None = None
    bp_model: float | None = None
    bp_reference: float | None = None
    recentred: bool = False
    error: str | None = None

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def check_elements(elements: Sequence[str] | None) -> None:
    """Refuse (:class:`calib.errors.UsageError`) symbols that name no crystal of ASE's dcdft set (None: all)."""
    from ase.collections import dcdft

    from calib.errors import UsageError

    unknown = [e for e in elements or () if e not in dcdft.names]
    if unknown:
        raise UsageError(f"elements {', '.join(unknown)}: not among the {len(dcdft.names)} elemental crystals of "
                         "ASE's dcdft set")


def dcdft_structures(elements: Sequence[str] | None = None) -> list[tuple[str, Atoms, dict]]:
    """(element, crystal at the WIEN2k volume, WIEN2k parameters) from ASE's dcdft collection."""
    from ase.collections import dcdft

    check_elements(elements)
    names = list(dcdft.names) if elements is None else list(elements)
    return [(e, dcdft[e], dict(dcdft.data[e])) for e in names]


def _scan(atoms: Atoms, v_centre: float) -> list[Atoms]:
    """The crystal scaled to v_centre·(1+x) per atom for every x in VOLUME_OFFSETS."""
    v_now = atoms.get_volume() / len(atoms)
    out = []
    for x in VOLUME_OFFSETS:
        a = atoms.copy()
        a.calc = None
        a.set_cell(a.cell[:] * ((v_centre * (1 + x) / v_now) ** (1 / 3)), scale_atoms=True)
        out.append(a)
    return out


def _fit(volumes: np.ndarray, energies: np.ndarray) -> tuple[float, float, float]:
    """(V0 Å³/atom, B0 GPa, B') of a Birch–Murnaghan fit to E(V) per atom."""
    from ase.eos import EquationOfState

    eos = EquationOfState(volumes, energies, eos="birchmurnaghan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        v0, _, b = eos.fit(warn=False)
    bp = float(eos.eos_parameters[2])
    return float(v0), float(b / GPa), bp


def _energies(model, structures: list[Atoms], batch_size: int, progress: bool) -> np.ndarray:
    """Energies per atom (eV/atom); NaN for structures the model rejects."""
    pred = model.predict(structures, forces=False, batch_size=batch_size, progress=progress)
    out = np.full(len(structures), np.nan)
    out[pred.indices] = pred.energy_per_atom
    return out


def run_eos(model, elements: Sequence[str] | None = None, *, batch_size: int = EOS.batch_size,
            progress: bool = True) -> tuple[list[EOSRecord], dict]:
    """Bulk moduli of the dcdft crystals with ``model`` against WIEN2k PBE.

    Parameters
    ----------
    model : ModelAdapter
    elements : symbols to run (default: all 71 dcdft elements the model supports).

    Returns
    -------
    records : one :class:`EOSRecord` per element (``error`` set where the fit failed)
    summary : ``n_elements``, ``n_failed``, ``median_ratio``, ``fraction_below_1``
    """
    entries = dcdft_structures(elements)
    records: list[EOSRecord] = []
    todo = []
    for element, atoms, ref in entries:
        rec = EOSRecord(element=element, z=atomic_numbers[element], b_reference=float(ref["wien2k_B"]),
                        v0_reference=float(ref["wien2k_volume"]), bp_reference=float(ref["wien2k_Bp"]))
        records.append(rec)
        if atomic_numbers[element] not in model.supported_elements:
            rec.error = f"{element}: not supported by {model.name}"
            continue
        todo.append((rec, atoms))

    def one_pass(items, centres):
        scans = [s for (_, atoms), c in zip(items, centres) for s in _scan(atoms, c)]
        return _energies(model, scans, batch_size, progress).reshape(len(items), len(VOLUME_OFFSETS))

    k = len(VOLUME_OFFSETS)
    centres = [rec.v0_reference for rec, _ in todo]
    energies = one_pass(todo, centres) if todo else np.zeros((0, k))
    again = []
    for (rec, atoms), c, e in zip(todo, centres, energies):
        v = c * (1 + VOLUME_OFFSETS)
        if not np.all(np.isfinite(e)):
            rec.error = f"{rec.element}: the model rejected a scaled cell (see calib.data.structures.validate)"
            continue
        try:
            v0, b, bp = _fit(v, e)
        except (RuntimeError, ValueError) as exc:
            rec.error = f"{rec.element}: Birch–Murnaghan fit failed ({exc})"
            continue
        if not (v[0] < v0 < v[-1]) and np.isfinite(v0) and 0.5 * c < v0 < 2.0 * c:
            again.append((rec, atoms, v0))
            continue
        _store(rec, v0, b, bp, v)
    if again:
        items = [(rec, atoms) for rec, atoms, _ in again]
        centres2 = [v0 for _, _, v0 in again]
        energies2 = one_pass(items, centres2)
        for (rec, _, c), e in zip(again, energies2):
            rec.recentred = True
            v = c * (1 + VOLUME_OFFSETS)
            try:
                v0, b, bp = _fit(v, e)
            except (RuntimeError, ValueError) as exc:
                rec.error = f"{rec.element}: Birch–Murnaghan fit failed after re-centring ({exc})"
                continue
            _store(rec, v0, b, bp, v)
    for rec, _ in todo:
        if rec.error is None and rec.b_model is None:
            rec.error = f"{rec.element}: the model's E(V) has no minimum within ±50 % of the WIEN2k volume"
    ok = [r.ratio for r in records if r.ratio is not None]
    summary = {
        "n_elements": len(ok),
        "n_failed": sum(r.error is not None for r in records),
        "median_ratio": float(np.median(ok)) if ok else None,
        "fraction_below_1": float(np.mean(np.asarray(ok) < 1)) if ok else None,
        "volume_offsets": VOLUME_OFFSETS.tolist(),
        "eos": "birchmurnaghan",
    }
    return records, summary


def _store(rec: EOSRecord, v0: float, b: float, bp: float, v: np.ndarray) -> None:
    if not (np.isfinite(b) and b > 0 and v[0] <= v0 <= v[-1]):
        rec.error = (f"{rec.element}: no usable minimum (V0 = {v0:.3g} Å³/atom, B = {b:.3g} GPa) "
                     f"in the scan {v[0]:.3g}–{v[-1]:.3g} Å³/atom")
        return
    rec.v0_model, rec.b_model, rec.bp_model = v0, b, bp
    rec.ratio = b / rec.b_reference


def plot_eos(records: Sequence[EOSRecord], path, title: str = "") -> None:
    """B_model / B_WIEN2k against atomic number (log scale), one labelled point per element."""
    from calib.data.figures import pyplot, save

    plt = pyplot()

    ok = [r for r in records if r.ratio is not None]
    fig, ax = plt.subplots(figsize=(11, 4.2))
    z = [r.z for r in ok]
    ratio = [r.ratio for r in ok]
    ax.scatter(z, ratio, c=["tab:blue" if x < 1 else "tab:red" for x in ratio], s=22, zorder=3)
    for r in ok:
        ax.annotate(r.element, (r.z, r.ratio), textcoords="offset points", xytext=(0, 4),
                    ha="center", fontsize=7)
    ax.axhline(1.0, color="k", lw=0.8)
    if ratio:
        ax.axhline(float(np.median(ratio)), color="tab:blue", lw=0.8, ls="--",
                   label=f"median {np.median(ratio):.2f}")
        ax.legend(loc="upper right")
    ax.set_yscale("log")
    ax.set_xlabel("atomic number Z")
    ax.set_ylabel("B_model / B_WIEN2k (PBE)")
    ax.set_title(title or "Bulk-modulus ratio on the dcdft elemental crystals")
    ax.grid(alpha=0.3, which="both")
    save(fig, path)
