"""The series' plotting style and the figures that recur across notebooks."""
from __future__ import annotations

import matplotlib as mpl
import matplotlib.pyplot as plt


GROUP_COLORS = ["#1b6ca8", "#d1495b", "#2a9d8f", "#e9a03b", "#6d597a", "#577590"]


def use_style() -> None:
    """Apply the series' figure style: modest size, light grid, no top/right spines, fixed PNG output."""
    mpl.rcParams.update({
        "figure.figsize": (6.0, 4.0),
        "figure.dpi": 96,
        "savefig.dpi": 96,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.prop_cycle": mpl.cycler(color=GROUP_COLORS),
        "legend.frameon": False,
        "font.size": 10,
    })
    plt.rcParams["svg.hashsalt"] = "lmm-from-scratch"
