"""The series' figures: what plot_toy draws is the data it was given, and bad input is refused."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

import lmm_helpers as lh  # noqa: E402
from lmm_helpers.plotting import (  # noqa: E402
    GROUP_COLORS,
    plot_profile_zeta,
    plot_shrinkage,
    plot_shrinkage_2d,
    plot_toy,
)


@pytest.fixture
def ax():
    fig, ax = plt.subplots()
    yield ax
    plt.close(fig)


def test_plot_toy_draws_one_line_per_individual_through_its_points(ax):
    toy = lh.load_toy()
    out = plot_toy(toy, ax=ax)
    assert out is ax
    lines = ax.get_lines()
    assert len(lines) == toy.Ind.nunique() == 2
    for line, (ind, rows) in zip(lines, toy.groupby("Ind")):
        rows = rows.sort_values("Treat")
        np.testing.assert_array_equal(line.get_xdata(), rows.Treat.to_numpy())
        np.testing.assert_array_equal(line.get_ydata(), rows.Resp.to_numpy())
        assert line.get_label() == f"Ind {ind}"
    colors = [matplotlib.colors.to_hex(line.get_color()) for line in lines]
    assert colors == GROUP_COLORS[:2]


def test_plot_toy_labels_title_and_legend(ax):
    plot_toy(lh.load_toy(), ax=ax)
    assert ax.get_xlabel() == "Treat" and ax.get_ylabel() == "Resp" and ax.get_title()
    legend = ax.get_legend()
    assert legend is not None
    assert [t.get_text() for t in legend.get_texts()] == ["Ind 1", "Ind 2"]
    assert list(ax.get_xticks()) == [0, 1]


def test_plot_toy_takes_axis_labels_that_say_what_is_measured(ax):
    plot_toy(lh.load_toy(), ax=ax, xlabel="treatment (0 = untreated, 1 = treated)", ylabel="response")
    assert ax.get_xlabel() == "treatment (0 = untreated, 1 = treated)" and ax.get_ylabel() == "response"


def test_plot_toy_other_columns_unsorted_rows_and_new_figure():
    df = pd.DataFrame({"g": ["b", "a", "b", "a", "c"], "t": [1, 1, 0, 0, 0], "r": [4.0, 2.0, 3.0, 1.0, 5.0]})
    ax = plot_toy(df, x="t", y="r", group="g")
    try:
        lines = ax.get_lines()
        assert [line.get_label() for line in lines] == ["g a", "g b", "g c"]
        np.testing.assert_array_equal(lines[0].get_ydata(), [1.0, 2.0])  # sorted by t within the group
        np.testing.assert_array_equal(lines[1].get_ydata(), [3.0, 4.0])
        np.testing.assert_array_equal(lines[2].get_xdata(), [0])
    finally:
        plt.close(ax.figure)


@pytest.mark.parametrize("bad", [
    pd.DataFrame({"Ind": [1], "Treat": [0]}),
    pd.DataFrame({"Ind": [], "Treat": [], "Resp": []}),
    np.zeros((4, 3)),
])
def test_plot_toy_refuses_bad_input(bad):
    with pytest.raises(ValueError, match="df"):
        plot_toy(bad)


def test_plot_small_multiples_one_panel_per_group_with_its_points_and_lines():
    from lmm_helpers.plotting import plot_small_multiples

    sleep = lh.load_dataset("sleepstudy")
    subjects = list(dict.fromkeys(sleep.Subject))
    own = pd.DataFrame({"intercept": 250.0, "slope": 10.0}, index=subjects)
    fig = plot_small_multiples(sleep, "Days", "Reaction", "Subject", lines={"own": own}, ncols=5,
                               ylabel="Reaction (ms)")
    visible = [a for a in fig.axes if a.get_visible()]
    assert len(visible) == len(subjects) == 18 and len(fig.axes) == 20  # 4 rows of 5, two panels hidden
    first = visible[0]
    points, line = first.get_lines()
    rows = sleep[sleep.Subject == subjects[0]]
    np.testing.assert_array_equal(points.get_ydata(), rows.Reaction.to_numpy())
    np.testing.assert_allclose(line.get_ydata(), 250.0 + 10.0 * np.array([rows.Days.min(), rows.Days.max()]))
    assert first.get_title() == str(subjects[0])
    assert all(float(t).is_integer() for t in first.get_xticks())  # whole days, no 2.5
    assert fig.get_supylabel() == "Reaction (ms)" and fig.get_supxlabel() == "Days"
    plt.close(fig)


def test_plot_small_multiples_lines_differ_in_pattern_or_weight():
    """Three models' lines in one panel must be told apart without colour: no two share dash pattern and width."""
    from lmm_helpers.plotting import plot_small_multiples

    sleep = lh.load_dataset("sleepstudy")
    subjects = list(dict.fromkeys(sleep.Subject))
    lines = {name: pd.DataFrame({"intercept": 250.0 + k, "slope": 10.0}, index=subjects)
             for k, name in enumerate(["own", "population", "mixed"])}
    fig = plot_small_multiples(sleep, "Days", "Reaction", "Subject", lines=lines)
    drawn = fig.axes[0].get_lines()[1:]
    looks = {(ln.get_linestyle(), ln.get_linewidth()) for ln in drawn}
    assert len(drawn) == 3 and len(looks) == 3
    assert ":" not in {ln.get_linestyle() for ln in drawn}
    plt.close(fig)


def test_plot_small_multiples_refuses_a_missing_column():
    from lmm_helpers.plotting import plot_small_multiples

    with pytest.raises(ValueError, match="group: data has no column 'Subjekt'"):
        plot_small_multiples(lh.load_dataset("sleepstudy"), "Days", "Reaction", "Subjekt")


def test_figure_text_names_the_title():
    from lmm_helpers.plotting import figure_text

    fig, (a, b) = plt.subplots(1, 2)
    assert figure_text(fig) == "[figure]"
    a.set_title("left")
    b.set_title("right")
    assert figure_text(fig) == "[figure: left; right]"
    fig.suptitle("both")
    assert figure_text(fig) == "[figure: both]"
    plt.close(fig)


def test_plot_shrinkage_puts_each_group_at_own_versus_blup(ax):
    own, blup, sizes = np.array([-2.0, 0.5, 3.0]), np.array([-1.0, 0.2, 2.5]), np.array([2, 5, 10])
    plot_shrinkage(own, blup, sizes, ax=ax, title="Shrinkage")
    np.testing.assert_array_equal(ax.collections[0].get_offsets(), np.column_stack([own, blup]))
    np.testing.assert_array_equal(ax.collections[0].get_array(), sizes)
    assert ax.get_title() == "Shrinkage" and ax.get_xlabel() and ax.get_ylabel()
    with pytest.raises(ValueError, match="same length"):
        plot_shrinkage(own, blup[:2], sizes, ax=ax)


def test_plot_profile_zeta_shades_the_interval_and_draws_the_cutoffs(ax):
    y, X, g = lh.load_toy().Resp, lh.toy_design(lh.load_toy()), lh.load_toy().Ind
    prof = lh.profile_ci(y, X, g)["sigma"]
    plot_profile_zeta(prof, ax=ax, points=(prof.values[::4], prof.zeta[::4]))
    line, pts = ax.get_lines()[:2]
    np.testing.assert_array_equal(line.get_xdata(), prof.values)
    np.testing.assert_array_equal(line.get_ydata(), prof.zeta)
    np.testing.assert_array_equal(pts.get_xdata(), prof.values[::4])
    cutoffs = sorted(ln.get_ydata()[0] for ln in ax.get_lines()[2:4])
    assert cutoffs == pytest.approx([-prof.cutoff, prof.cutoff])
    span = ax.patches[0]  # axvspan: a rectangle in data x (axes y)
    assert (span.get_x(), span.get_x() + span.get_width()) == pytest.approx((prof.lower, prof.upper))
    assert ax.get_title() == "Profile of sigma"


def test_plot_shrinkage_2d_arrows_from_own_to_blup_and_the_ellipse_of_d(ax):
    own = np.array([[250.0, 12.0], [300.0, 2.0], [200.0, 15.0]])
    blup = np.array([[252.0, 11.0], [280.0, 5.0], [220.0, 13.0]])
    centre, cov = np.array([250.0, 10.0]), np.array([[400.0, 12.0], [12.0, 25.0]])
    plot_shrinkage_2d(own, blup, centre, cov, ax=ax, level=0.9, labels=["a", "b", "c"], xlabel="x (ms)",
                      ylabel="y (ms/day)", title="2-D shrinkage")
    arrows = [p for p in ax.patches if isinstance(p, matplotlib.patches.FancyArrowPatch)]
    assert len(arrows) == 3
    for arrow, start, end in zip(arrows, own, blup):
        np.testing.assert_allclose(arrow._posA_posB, [start, end])
    own_pts, blup_pts = ax.collections[:2]
    np.testing.assert_array_equal(own_pts.get_offsets(), own)
    np.testing.assert_array_equal(blup_pts.get_offsets(), blup)
    ellipse, star = ax.get_lines()[:2]
    pts = np.column_stack([ellipse.get_xdata(), ellipse.get_ydata()]) - centre
    mahal = np.einsum("ij,ij->i", pts @ np.linalg.inv(cov), pts)
    np.testing.assert_allclose(mahal, scipy_chi2_ppf(0.9, 2))  # every point on the 90% contour
    np.testing.assert_array_equal(np.column_stack(star.get_data()), [centre])
    assert [t.get_text() for t in ax.texts] == ["a", "b", "c"]
    assert (ax.get_title(), ax.get_xlabel(), ax.get_ylabel()) == ("2-D shrinkage", "x (ms)", "y (ms/day)")
    assert len(ax.get_legend().get_texts()) == 4


def scipy_chi2_ppf(level, df):
    from scipy import stats

    return stats.chi2.ppf(level, df)


@pytest.mark.parametrize("kwargs, match", [
    ({"blup": np.zeros((2, 2))}, "shape"),
    ({"own": np.zeros(3), "blup": np.zeros(3)}, "shape"),
    ({"centre": np.zeros(3)}, "centre"),
    ({"cov": np.array([[1.0, 2.0], [2.0, 1.0]])}, "positive semi-definite"),
    ({"cov": np.array([[1.0, 0.5], [0.0, 1.0]])}, "symmetric"),
    ({"level": 1.0}, "level"),
    ({"labels": ["a"]}, "labels"),
])
def test_plot_shrinkage_2d_refuses_bad_input(ax, kwargs, match):
    args = {"own": np.zeros((3, 2)), "blup": np.ones((3, 2)), "centre": np.zeros(2), "cov": np.eye(2)} | kwargs
    with pytest.raises(ValueError, match=match):
        plot_shrinkage_2d(**args, ax=ax)
