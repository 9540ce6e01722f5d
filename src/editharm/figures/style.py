"""The figures' look: matplotlib's backend, seaborn's theme, colours, markers and line styles.

Colours come from seaborn's colour-blind-safe palette, and markers / line styles differ
too, so lines stay apart in greyscale.
"""

from __future__ import annotations

from typing import Sequence

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")
LINESTYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1)), (0, (1, 3)))


def _pyplot():
    import matplotlib

    if "inline" not in matplotlib.get_backend().lower() and not _in_notebook():
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython

        shell = get_ipython()
        return shell is not None and hasattr(shell, "kernel")  # a Jupyter kernel (papermill), not a terminal
    except ImportError:
        return False


def setup_style() -> None:
    """Seaborn's whitegrid theme, colour-blind palette and font sizes legible at print size."""
    import seaborn as sns

    _pyplot()
    sns.set_theme(style="whitegrid", context="notebook", palette="colorblind", font_scale=1.05)
    import matplotlib as mpl

    mpl.rcParams.update({"axes.titlesize": 11, "axes.labelsize": 11, "xtick.labelsize": 9.5,
                         "ytick.labelsize": 9.5, "legend.fontsize": 10, "legend.title_fontsize": 10.5,
                         "figure.titlesize": 13, "savefig.facecolor": "white"})


def palette(levels: Sequence) -> dict:
    import seaborn as sns

    colours = sns.color_palette("colorblind", max(len(levels), 1))
    return {level: colours[i % len(colours)] for i, level in enumerate(levels)}
