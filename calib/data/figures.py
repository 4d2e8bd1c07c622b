"""Figures as files: matplotlib on its Agg backend (no display needed), saved as PNG at one resolution.

Every plot calib writes (calibration plots, parity plots, NEB profiles, EOS ratios, the loop's rounds, the HTML
report's figures) is drawn with :func:`pyplot` and written with :func:`save`.
"""

from __future__ import annotations

#: dots per inch of a saved figure
DPI = 130


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (files only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path, *, dpi: int = DPI, tight: bool = True, **savefig) -> None:
    """Lay ``fig`` out tightly (unless ``tight`` is False), write it to ``path`` (a file name or a binary file;
    PNG unless ``savefig`` says otherwise, ``dpi`` dots per inch) and close it."""
    plt = pyplot()
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=dpi, **savefig)
    plt.close(fig)
