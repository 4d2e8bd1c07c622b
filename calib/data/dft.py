"""The reference code's settings that commands take as options, declared once and light to import (no ASE), so
that the CLI builds its options from them when it starts (:mod:`calib.settings`).

:class:`calib.data.labelers.GPAWFactory` reads its defaults from :data:`GPAW`; ``calib label`` builds its
``--cutoff``, ``--kdensity`` and ``--xc`` from :class:`GPAWSettings`, and ``calib loop`` from the loop's own instance
(:data:`calib.workflows.settings.LOOP_GPAW`).
"""

from __future__ import annotations

from dataclasses import dataclass

from calib.errors import finite, positive
from calib.settings import setting, validate

#: the lowest plane-wave cutoff calib accepts, eV
MIN_CUTOFF = 50.0


def _cutoff(name: str, value) -> float:
    """A finite cutoff ≥ :data:`MIN_CUTOFF` eV."""
    return finite(name, value, minimum=MIN_CUTOFF, unit="eV")


def _kdensity(name: str, value) -> float:
    """A finite k-point density > 0, points per Å⁻¹."""
    return positive(name, value, unit="Å⁻¹")


@dataclass(frozen=True)
class GPAWSettings:
    """GPAW's basis settings that a command takes as options, validated on construction: ``cutoff`` (eV, the
    plane-wave cutoff), ``kdensity`` (k-points per Å⁻¹, ASE's convention) and ``xc`` (the functional)."""

    cutoff: float = setting(450.0, "GPAW plane-wave cutoff", unit="eV", check=_cutoff, flag="--cutoff")
    kdensity: float = setting(3.0, "GPAW k-point density", unit="points per Å⁻¹", check=_kdensity,
                              flag="--kdensity")
    xc: str = setting("PBE", "exchange-correlation functional", flag="--xc")

    def __post_init__(self):
        validate(self)


#: the defaults of :class:`calib.data.labelers.GPAWFactory` and ``calib label``
GPAW = GPAWSettings()


def materials_project_settings(symbols) -> dict:
    """Materials Project's spin and +U settings for a composition, as ``MPRelaxSet`` applies them (read from
    pymatgen's copy of the set, not typed here): ``magmoms``, the ferromagnetic initial moment per element (μB;
    0.6 for an element the set does not list), and ``hubbard_u``, the Dudarev U per element (eV, d shell) when
    the most electronegative element is one the set gives U for (O, F), else None. CHGNet and MACE-MP-0 learned
    MPtrj, whose energies and forces are GGA+U exactly there."""
    from pymatgen.core import Element
    from pymatgen.io.vasp.sets import MPRelaxSet

    incar = MPRelaxSet.CONFIG["INCAR"]
    elements = sorted(set(symbols), key=lambda el: Element(el).X)
    magmoms = {el: float(incar["MAGMOM"].get(el, 0.6)) for el in elements}
    table = incar["LDAUU"].get(elements[-1], {}) if elements else {}
    u = {el: float(table[el]) for el in elements if table.get(el)}
    return {"magmoms": magmoms, "hubbard_u": u or None}
