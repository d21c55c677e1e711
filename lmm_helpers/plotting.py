"""The series' plotting style and the figures that recur across notebooks."""
from __future__ import annotations

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np


GROUP_COLORS = ["#1b6ca8", "#d1495b", "#2a9d8f", "#e9a03b", "#6d597a", "#577590"]


def figure_text(fig) -> str:
    """A figure's plain-text stand-in: its title (or its panels' titles), for text views and screen readers."""
    title = fig._suptitle.get_text() if fig._suptitle is not None else ""
    if not title:
        title = "; ".join(t for t in (ax.get_title() for ax in fig.axes if ax.get_visible()) if t)
    return f"[figure: {title}]" if title else "[figure]"


def use_style() -> None:
    """Apply the series' figure style: modest size, light grid, no top/right spines, fixed PNG output.

    In a notebook it also gives figures a plain-text form naming their title, in place of matplotlib's
    ``<Figure size ... with N Axes>``, so that what a notebook stores as a figure's text says what it shows.
    """
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
    try:
        from IPython import get_ipython
    except ImportError:  # plain Python: nothing is displayed
        return
    shell = get_ipython()
    if shell is not None:
        # Load the (inline) backend now: loading it resets every display formatter for figures, ours included.
        plt.switch_backend(mpl.get_backend())
        shell.display_formatter.formatters["text/plain"].for_type(
            mpl.figure.Figure, lambda fig, printer, cycle: printer.text(figure_text(fig)))


def plot_profile_zeta(profile, ax=None, points=None, label: str | None = None):
    """Plot a profile-likelihood interval: the signed root ``zeta`` of one SD, the cutoffs and the interval.

    Parameters
    ----------
    profile : lmm_helpers.inference.ProfileInterval
        From :func:`lmm_helpers.inference.profile_ci`.
    ax : matplotlib Axes, optional
        Drawn on a new figure when omitted.
    points : tuple of two arrays, optional
        ``(values, zeta)`` of another profile (e.g. lme4's) to overlay as markers.
    label : str, optional
        The parameter's name on the x axis (default: ``profile.parameter``).

    Returns
    -------
    matplotlib Axes
    """
    if ax is None:
        _, ax = plt.subplots()
    name = label or profile.parameter
    ax.plot(profile.values, profile.zeta, color=GROUP_COLORS[0], label=r"profile $\zeta$ (lmm_helpers)")
    if points is not None:
        ax.plot(points[0], points[1], "o", color=GROUP_COLORS[1], ms=4, label="lme4's profile points")
    for sign in (-1, 1):
        ax.axhline(sign * profile.cutoff, color="grey", ls="--", lw=1)
    ax.axhline(0.0, color="grey", lw=0.5)
    ax.axvspan(profile.lower, profile.upper, color=GROUP_COLORS[2], alpha=0.15,
               label=f"{100 * profile.level:.0f}% interval")
    ax.axvline(profile.estimate, color=GROUP_COLORS[3], lw=1, label="estimate")
    ax.set_xlim(profile.values.min(), profile.values.max())
    ax.set_ylim(min(profile.zeta.min(), -profile.cutoff) - 0.3, max(profile.zeta.max(), profile.cutoff) + 0.3)
    ax.set_xlabel(name)
    ax.set_ylabel(r"$\zeta$ = signed $\sqrt{\mathrm{deviance} - \min}$")
    ax.set_title(f"Profile of {name}")
    ax.legend(fontsize=8)
    return ax


def plot_shrinkage(own, blup, sizes, ax=None, title: str = "Shrinkage of the group effects"):
    """Each group's own estimate against its BLUP, coloured by group size, with the no-shrinkage line.

    Parameters
    ----------
    own : array-like
        Each group's own estimate of its effect (the mean residual of its rows from the population line).
    blup : array-like
        The predicted random effects ``E[u | y]``.
    sizes : array-like
        Rows per group.
    ax : matplotlib Axes, optional
    title : str

    Returns
    -------
    matplotlib Axes
    """
    own, blup, sizes = (np.asarray(a, dtype=float) for a in (own, blup, sizes))
    if not (own.shape == blup.shape == sizes.shape):
        raise ValueError("own, blup and sizes must have the same length")
    if ax is None:
        _, ax = plt.subplots()
    lim = float(np.max(np.abs(own))) * 1.05
    ax.plot([-lim, lim], [-lim, lim], color="grey", ls="--", lw=1, label="no shrinkage (BLUP = own)")
    ax.axhline(0.0, color="grey", lw=0.5)
    sc = ax.scatter(own, blup, c=sizes, cmap="viridis", s=18, label="groups")
    ax.figure.colorbar(sc, ax=ax, label="group size $n_g$")
    ax.set_xlabel("own estimate (group mean residual)")
    ax.set_ylabel(r"predicted $u_g$ (BLUP, estimated variances plugged in)")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left")
    return ax


def plot_toy(df, ax=None, x: str = "Treat", y: str = "Resp", group: str = "Ind",
             title: str = "The toy data: two individuals, each measured twice",
             xlabel: str | None = None, ylabel: str | None = None):
    """Plot each individual's observations joined by a line, one colour per individual, with a legend.

    Parameters
    ----------
    df : pandas.DataFrame
        Long-format data with the columns named by ``x``, ``y`` and ``group`` (the toy data by default).
    ax : matplotlib Axes, optional
        Drawn on a new figure when omitted.
    x, y, group : str
        Column names of the condition (x axis), the response (y axis) and the individual.
    title : str
        The figure's title.
    xlabel, ylabel : str, optional
        Axis labels that say what is measured; the column names by default.

    Returns
    -------
    matplotlib Axes

    Raises
    ------
    ValueError
        If ``df`` lacks one of the named columns or has no rows.
    """
    missing = [c for c in (x, y, group) if c not in getattr(df, "columns", [])]
    if missing:
        raise ValueError(f"df: no column(s) {missing}; pass a DataFrame with columns {x!r}, {y!r}, {group!r}")
    if len(df) == 0:
        raise ValueError("df: has no rows")
    if ax is None:
        _, ax = plt.subplots()
    for k, (label, rows) in enumerate(df.sort_values([group, x]).groupby(group, sort=True)):
        ax.plot(rows[x], rows[y], "-o", color=GROUP_COLORS[k % len(GROUP_COLORS)], label=f"{group} {label}")
    ax.set_xticks(sorted(df[x].unique()))
    ax.set_xlabel(x if xlabel is None else xlabel)
    ax.set_ylabel(y if ylabel is None else ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return ax


def plot_small_multiples(data, x: str, y: str, group: str, lines=None, ncols: int = 6, title: str = "",
                         xlabel: str | None = None, ylabel: str | None = None):
    """One small panel per group: its points, and optionally one straight line per model in each panel.

    Parameters
    ----------
    data : pandas.DataFrame
        Long-format data with columns ``x``, ``y`` and ``group``.
    x, y, group : str
        Column names.
    lines : dict of str to DataFrame, optional
        For each legend label, a DataFrame indexed by group label with columns ``intercept`` and ``slope``.
    ncols : int
        Panels per row.
    title : str
        Figure title.
    xlabel, ylabel : str, optional
        Axis labels (with units); the column names by default.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    for arg, col in (("x", x), ("y", y), ("group", group)):
        if col not in data.columns:
            raise ValueError(f"{arg}: data has no column {col!r}")
    labels = list(dict.fromkeys(data[group]))
    nrows = -(-len(labels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.6 * ncols, 1.5 * nrows + 0.8), sharex=True, sharey=True)
    axes = np.atleast_1d(axes).ravel()
    xs = np.array([data[x].min(), data[x].max()], dtype=float)
    # dashed, thin solid, thick solid, dash-dot: told apart by pattern and weight, not by colour alone
    # (a dotted line at 1.4 pt looked like the dashed one in a small panel)
    styles = [dict(ls="--", lw=1.3), dict(ls="-", lw=1.0), dict(ls="-", lw=2.4, alpha=0.85), dict(ls="-.", lw=1.3)]
    for ax, lab in zip(axes, labels):
        sub = data[data[group] == lab]
        ax.plot(sub[x], sub[y], "o", ms=3, color="0.35")
        for k, (name, coef) in enumerate((lines or {}).items()):
            a, b = coef.loc[lab, "intercept"], coef.loc[lab, "slope"]
            ax.plot(xs, a + b * xs, color=GROUP_COLORS[k % len(GROUP_COLORS)], label=name, **styles[k % len(styles)])
        ax.set_title(str(lab), fontsize=8, pad=2)
        ax.tick_params(labelsize=7)
    if np.issubdtype(data[x].dtype, np.integer):  # whole-number x (days, visits): no 2.5 ticks
        axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes[len(labels):]:
        ax.set_visible(False)
    fig.supxlabel(x if xlabel is None else xlabel)
    fig.supylabel(y if ylabel is None else ylabel)
    top = 1.0
    if title:
        fig.suptitle(title, y=0.995)
        top -= 0.06
    if lines:
        handles, names = axes[0].get_legend_handles_labels()
        fig.legend(handles, names, loc="upper center", ncol=len(names), bbox_to_anchor=(0.5, top))
        top -= 0.05
    fig.tight_layout(rect=(0, 0, 1, top))
    return fig


def plot_shrinkage_2d(own, blup, centre, cov, ax=None, level: float = 0.95, labels=None,
                      xlabel: str = "intercept", ylabel: str = "slope",
                      title: str = "Shrinkage of the groups' intercepts and slopes"):
    """Each group's own (intercept, slope) with an arrow to its BLUP, and the fitted population ellipse.

    Parameters
    ----------
    own : array-like, shape (G, 2)
        Each group's own estimate (its least-squares fit to its rows alone).
    blup : array-like, shape (G, 2)
        The mixed model's prediction for the group: fixed effects plus predicted random effects.
    centre : array-like, shape (2,)
        The population mean (the fixed effects).
    cov : array-like, shape (2, 2)
        The fitted covariance ``D`` of the random effects; drawn as the ellipse
        ``(x - centre)^T D^{-1} (x - centre) = chi2_2.ppf(level)`` that holds ``level`` of the population.
    ax : matplotlib Axes, optional
        Drawn on a new figure when omitted.
    level : float
        Share of the fitted population inside the ellipse, in (0, 1).
    labels : sequence of str, optional
        One label per group, written beside its own estimate.
    xlabel, ylabel, title : str
        Axis labels (with units) and the figure's title.

    Returns
    -------
    matplotlib Axes

    Raises
    ------
    ValueError
        If ``own`` and ``blup`` are not both of shape (G, 2), ``centre`` is not of length 2, ``cov`` is not a
        symmetric positive semi-definite 2 x 2 matrix, ``level`` is outside (0, 1), or ``labels`` has the wrong
        length.
    """
    from matplotlib.patches import FancyArrowPatch
    from scipy import stats

    own, blup = np.asarray(own, dtype=float), np.asarray(blup, dtype=float)
    centre, cov = np.asarray(centre, dtype=float), np.asarray(cov, dtype=float)
    if own.ndim != 2 or own.shape[1] != 2 or blup.shape != own.shape:
        raise ValueError(f"own and blup must both have shape (G, 2); got {own.shape} and {blup.shape}")
    if centre.shape != (2,):
        raise ValueError(f"centre must have length 2; got shape {centre.shape}")
    if cov.shape != (2, 2) or not np.allclose(cov, cov.T) or np.linalg.eigvalsh(cov).min() < -1e-12 * abs(
            cov).max():
        raise ValueError("cov must be a symmetric positive semi-definite 2 x 2 matrix")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1); got {level}")
    if labels is not None and len(labels) != len(own):
        raise ValueError(f"labels has {len(labels)} entries for {len(own)} groups")
    if ax is None:
        _, ax = plt.subplots()
    # The ellipse: the image of a circle of radius sqrt(chi2_2 quantile) under a square root of cov.
    vals, vecs = np.linalg.eigh(cov)
    angle = np.linspace(0.0, 2.0 * np.pi, 241)
    circle = np.sqrt(stats.chi2.ppf(level, 2)) * np.vstack([np.cos(angle), np.sin(angle)])
    ellipse = centre[:, None] + vecs @ (np.sqrt(np.clip(vals, 0.0, None))[:, None] * circle)
    ax.plot(ellipse[0], ellipse[1], color=GROUP_COLORS[2], lw=1.2,
            label=f"fitted population: {100 * level:.0f}% ellipse of $D$")
    for start, end in zip(own, blup):
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=9, color="0.55", lw=0.8,
                                     shrinkA=0, shrinkB=0))
    ax.scatter(own[:, 0], own[:, 1], facecolors="white", edgecolors=GROUP_COLORS[0], s=22, zorder=3,
               label="own least-squares fit")
    ax.scatter(blup[:, 0], blup[:, 1], color=GROUP_COLORS[1], s=18, zorder=3, label="mixed model (BLUP)")
    ax.plot(*centre, marker="*", color="black", ms=11, ls="none", zorder=4, label="population (fixed effects)")
    if labels is not None:
        for (x, y), text in zip(own, labels):
            ax.annotate(str(text), (x, y), xytext=(3, 3), textcoords="offset points", fontsize=7, color="0.35")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)  # below: off the points
    return ax
