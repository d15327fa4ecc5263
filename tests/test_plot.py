"""Figures: what each one draws (scales, times, bars or lines, legends, bands), not just files."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.collections import PolyCollection
from scipy import stats

from nncme import metrics, plot
from nncme.results import Result

TIMES = np.array([0.0, 0.5, 1.0, 1.5])


def from_marginals(method: str, dists: dict[str, np.ndarray], summary=None, pair=None) -> Result:
    """A Result whose species have the given (T, M_i) marginals (moments computed from them)."""
    names = list(dists)
    limits = [dists[s].shape[1] for s in names]
    T, M = TIMES.shape[0], max(limits)
    marg = np.zeros((T, len(names), M))
    for i, s in enumerate(names):
        marg[:, i, : limits[i]] = dists[s]
    counts = np.arange(M)
    means = marg @ counts
    stds = np.sqrt(np.maximum(marg @ counts**2 - means**2, 0))
    extra = {}
    if pair is not None:  # independent species: the joint is the outer product
        a, b = pair
        extra = dict(
            pair=(names.index(a), names.index(b)),
            pair_marginal=np.einsum("ti,tj->tij", dists[a], dists[b]),
        )
    return Result(method, names, limits, TIMES, marg, means, stds, summary=summary or {}, **extra)


def poisson(lams, M=40) -> np.ndarray:
    p = stats.poisson.pmf(np.arange(M)[None, :], np.asarray(lams)[:, None])
    return p / p.sum(axis=1, keepdims=True)


def gene(on) -> np.ndarray:
    on = np.asarray(on, dtype=float)
    return np.stack([1 - on, on], axis=1)


LAMS = np.array([1.0, 4.0, 6.0, 7.0])


@pytest.fixture
def pair_of_results():
    """An exact reference and a sampled result that is farthest from it at t = 0.5, and whose
    P has no mass where the exact tail is below 1e-4."""
    exact = from_marginals("fsp", {"G": gene([1, 0.9, 0.8, 0.8]), "P": poisson(LAMS)})
    off = poisson(LAMS * np.array([1, 1.4, 1.05, 1.02]))
    off[off < 1e-4] = 0
    off /= off.sum(axis=1, keepdims=True)
    sampled = from_marginals(
        "ssa", {"G": gene([1, 0.7, 0.79, 0.81]), "P": off}, summary={"samples": 1000}
    )
    return exact, sampled, metrics.compare(exact, sampled)


def overlay_axes(fig):
    """The distribution panels of a comparison (every axis but the Hellinger one, the last)."""
    return fig.axes[:-1]


def test_comparison_times_are_the_worst_and_the_final():
    h = np.array([[0.0, 0.0], [0.01, 0.05], [0.02, 0.03], [0.01, 0.02]])
    assert plot.comparison_times({"hellinger": h}) == [1, 3]
    h[3, 0] = 0.2  # the final time is also the worst: drawn once
    assert plot.comparison_times({"hellinger": h}) == [3]


def test_comparison_draws_both_times_on_linear_and_log_scales(pair_of_results):
    exact, sampled, d = pair_of_results
    assert plot.comparison_times(d) == [1, 3]
    fig = plot.comparison_figure(exact, sampled, d)
    panels = overlay_axes(fig)
    assert len(panels) == 2 * 2 * 2  # species x times x (linear, log)
    for k, ax in enumerate(panels):
        species, j = ("G", "P")[k // 4], (1, 3)[(k // 2) % 2]
        scale = ("linear", "log")[k % 2]
        i = d["species"].index(species)
        assert ax.get_yscale() == scale
        title = ax.get_title()
        assert title.startswith(f"{species}, t = {TIMES[j]:g}: H = {d['hellinger'][j, i]:.3g}")
        assert f"({scale})" in title
        labels = ax.get_legend_handles_labels()[1]
        assert {f"FSP, t = {TIMES[j]:g}", f"SSA (1,000 runs), t = {TIMES[j]:g}"} <= set(labels)
    assert "max Hellinger" in fig.get_suptitle()


def test_genes_are_bars_and_wide_species_lines(pair_of_results):
    exact, sampled, d = pair_of_results
    fig = plot.comparison_figure(exact, sampled, d, t_indices=[2])
    gene_lin, gene_log, p_lin, p_log = overlay_axes(fig)
    for ax in (gene_lin, gene_log):
        assert len(ax.patches) == 2 * 2  # two bars per result at counts 0 and 1
        assert list(ax.get_xticks()) == [0, 1]
        assert not [ln for ln in ax.get_lines() if "t = 1" in ln.get_label()]
        heights = sorted(p.get_height() for p in ax.patches)
        expected = sorted([*exact.marginal("G", 2), *sampled.marginal("G", 2)])
        np.testing.assert_allclose(heights, expected)
    for ax in (p_lin, p_log):
        assert not ax.patches
        curves = [ln for ln in ax.get_lines() if ln.get_label().endswith("t = 1")]
        assert len(curves) == 2
    np.testing.assert_allclose(p_lin.get_lines()[0].get_ydata(), exact.marginal("P", 2))


def test_log_panels_mark_mass_that_only_one_result_has(pair_of_results):
    exact, sampled, d = pair_of_results
    fig = plot.comparison_figure(exact, sampled, d, t_indices=[3])
    _, _, p_lin, p_log = overlay_axes(fig)
    floor = p_log.get_ylim()[0]
    assert plot.LOG_FLOOR <= floor < 1e-4
    pa, pb = exact.marginal("P", 3), sampled.marginal("P", 3)
    only_exact = np.flatnonzero((pb < floor) & (pa >= floor))
    assert only_exact.size > 5  # the sampled tail was cut at 1e-4
    marks = [ln for ln in p_log.get_lines() if ln.get_marker() == "^"]
    assert len(marks) == 1 and marks[0].get_label().startswith("SSA (1,000 runs): none")
    np.testing.assert_array_equal(marks[0].get_xdata(), only_exact)
    np.testing.assert_allclose(marks[0].get_ydata(), floor)
    # the sampled curve breaks where it has no mass instead of diving to the floor
    sampled_curve = next(ln for ln in p_log.get_lines() if ln.get_label().startswith("SSA"))
    assert np.isnan(np.asarray(sampled_curve.get_ydata(), dtype=float)[only_exact]).all()
    assert not [ln for ln in p_lin.get_lines() if ln.get_marker() == "^"]


def test_hellinger_panel_has_every_species_and_the_drawn_times(pair_of_results):
    exact, sampled, d = pair_of_results
    fig = plot.comparison_figure(exact, sampled, d)
    ax = fig.axes[-1]
    curves = {ln.get_label(): ln for ln in ax.get_lines() if not ln.get_label().startswith("_")}
    assert set(curves) == {"G", "P"}
    np.testing.assert_allclose(curves["P"].get_ydata(), d["hellinger"][:, 1])
    marked = sorted(ln.get_xdata()[0] for ln in ax.get_lines() if ln.get_label().startswith("_"))
    assert marked == [TIMES[1], TIMES[3]]
    assert [text.get_text() for text in ax.texts] == ["worst: t = 0.5", "final: t = 1.5"]
    fig = plot.comparison_figure(exact, sampled, d, t_indices=[2])
    assert [text.get_text() for text in fig.axes[-1].texts] == ["t = 1"]


def test_many_species_show_those_farthest_apart():
    names = [f"S{i}" for i in range(9)]
    exact = from_marginals("fsp", {s: poisson(LAMS, 12) for s in names})
    shift = {s: 1 + 0.05 * i for i, s in enumerate(names)}  # S8 farthest, S0 identical
    approx = from_marginals("van", {s: poisson(LAMS * shift[s], 12) for s in names})
    d = metrics.compare(exact, approx)
    fig = plot.comparison_figure(exact, approx, d, species=4)
    shown = {ax.get_title().split(",")[0] for ax in overlay_axes(fig)}
    assert shown == {"S5", "S6", "S7", "S8"}
    assert "4 of 9 species shown" in fig.get_suptitle()


def test_two_results_of_one_solver_are_told_apart():
    a = from_marginals("van", {"P": poisson(LAMS)}, summary={"settings": {"model": "nade"}})
    b = from_marginals("van", {"P": poisson(LAMS * 1.1)}, summary={"settings": {"model": "nade"}})
    fig = plot.comparison_figure(a, b, metrics.compare(a, b))
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert labels == ["A: VAN (nade), t = 1.5", "B: VAN (nade), t = 1.5"]


def band_extent(ax) -> tuple[float, float]:
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    ys = np.concatenate([p.vertices[:, 1] for c in bands for p in c.get_paths()])
    return float(ys.min()), float(ys.max())


def test_moment_bands_stay_within_the_counts():
    # mean 0.6, std 1.8: the unclipped band would reach -1.2
    skewed = np.zeros((4, 20))
    skewed[:, 0], skewed[:, 19] = 0.97, 0.03
    r = from_marginals("ssa", {"G": gene([1, 0.5, 0.5, 0.5]), "X": skewed})
    assert r.means[0, 1] - r.stds[0, 1] < -1
    fig = plot.moments_figure(r)
    for ax, top in zip(fig.axes, (1, 19)):
        lo, hi = band_extent(ax)
        assert lo == 0.0 and hi <= top


def test_moments_over_a_reference_name_both_solvers(pair_of_results):
    exact, sampled, d = pair_of_results
    fig = plot.moments_figure(sampled, reference=exact, distances=d)
    assert fig.axes[0].get_legend_handles_labels()[1] == [
        "FSP: mean ± std",
        "SSA (1,000 runs): mean ± std",
    ]
    for ax, name in zip(fig.axes, ("G", "P")):
        bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
        assert len(bands) == 2 and len(ax.get_lines()) == 2
        np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), exact.means[:, exact.index(name)])
    worst = float(np.max(np.abs(sampled.means - exact.means)))
    assert f"largest difference of the means {worst:.3g} molecules" in fig.get_suptitle()


def test_joint_over_a_reference_shows_both_rows_with_distances():
    exact = from_marginals("fsp", {"A": poisson(LAMS, 10), "B": poisson(LAMS, 12)}, pair=("A", "B"))
    approx = from_marginals(
        "van", {"A": poisson(LAMS * 1.2, 10), "B": poisson(LAMS, 12)}, pair=("A", "B")
    )
    d = metrics.compare(exact, approx)
    fig = plot.joint_figure(approx, panels=3, reference=exact, distances=d)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert len(panels) == 2 * 3  # (reference, result) x times 0, 1, 1.5 (index 0, 2, 3)
    top, bottom = panels[:3], panels[3:]
    assert [ax.get_title() for ax in top] == ["FSP, t = 0", "FSP, t = 1", "FSP, t = 1.5"]
    h = d["pair"]["hellinger"]
    assert [ax.get_title() for ax in bottom] == [
        f"VAN, t = {t:g}: H = {h[j]:.3g}" for j, t in ((0, 0.0), (2, 1.0), (3, 1.5))
    ]
    other = from_marginals("fsp", {"A": poisson(LAMS, 10), "B": poisson(LAMS, 12)})
    with pytest.raises(ValueError, match="reference: stores no joint of A and B"):
        plot.joint_figure(approx, reference=other)


def test_plot_functions_write_what_the_figures_draw(tmp_path, pair_of_results):
    exact, sampled, d = pair_of_results
    path = plot.plot_comparison(exact, sampled, d, tmp_path / "sub" / "cmp.png")
    assert path == tmp_path / "sub" / "cmp.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
