"""Figures of results: marginals over time, means +- std, a 2D joint, comparisons.

Matplotlib with the Agg backend (files only, no display). A leaf module: numpy and matplotlib.
Each figure has a `*_figure` function that returns the matplotlib Figure (to adjust or to
inspect) and a `plot_*` function that saves it and returns the path it wrote.

Two drawing rules hold everywhere: a species with few counts (a gene that is on or off, a
limit of at most `DISCRETE_LIMIT`) is drawn as bars at its integer counts, a wide one as lines;
and a comparison shows every distribution on a linear and on a log scale, since two results
that look the same on a linear scale can differ by orders of magnitude in their tails.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .paths import atomic_write

if TYPE_CHECKING:
    from .results import Result

__all__ = [
    "COMPARE_SPECIES",
    "DISCRETE_LIMIT",
    "LOG_FLOOR",
    "comparison_figure",
    "comparison_times",
    "is_discrete",
    "joint_figure",
    "marginals_figure",
    "moments_figure",
    "plot_comparison",
    "plot_joint",
    "plot_marginals",
    "plot_moments",
    "save_result_plots",
    "solver_name",
]

MAX_PANELS = 16  # species shown per figure; larger networks show the first ones
COMPARE_SPECIES = 6  # species in a comparison (those farthest apart when there are more)
DISCRETE_LIMIT = 10  # count limits up to this are drawn as bars, wider species as lines
FLOOR = 1e-8  # smallest probability on log colour scales
LOG_FLOOR = 1e-12  # lowest probability a comparison's log axis reaches
COLORS = ("C0", "C1")  # the first (reference) and the second result of a comparison


def is_discrete(limit: int) -> bool:
    """Whether a species with this count limit is drawn as bars (few counts) or as lines."""
    return int(limit) <= DISCRETE_LIMIT


def solver_name(result: Result) -> str:
    """How figures name a result's solver: "FSP", "SSA (100,000 runs)", "VAN (nade)"."""
    if result.method == "ssa" and result.summary.get("samples"):
        return f"SSA ({int(result.summary['samples']):,} runs)"
    settings = result.summary.get("settings")
    if result.method == "van" and isinstance(settings, Mapping) and settings.get("model"):
        return f"VAN ({settings['model']})"
    return result.method.upper()


def _names(a: Result, b: Result) -> tuple[str, str]:
    """Legend names of two results; "A: " and "B: " prefixes when the solvers share a name."""
    na, nb = solver_name(a), solver_name(b)
    return (f"A: {na}", f"B: {nb}") if na == nb else (na, nb)


def _grid(n: int) -> tuple[int, int]:
    cols = min(n, 4)
    return (n + cols - 1) // cols, cols


def _panels(n: int, size: tuple[float, float] = (3.6, 2.8)):
    rows, cols = _grid(n)
    fig, axes = plt.subplots(
        rows, cols, figsize=(size[0] * cols, size[1] * rows), squeeze=False, layout="constrained"
    )
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat)


def _network_name(result: Result) -> str:
    net = result.summary.get("network", {})
    return str(net.get("name", "")) if isinstance(net, Mapping) else ""


def _title(result: Result) -> str:
    return f"{_network_name(result)} ({solver_name(result)})".strip()


def _edges(x: np.ndarray) -> np.ndarray:
    """Cell edges around points x (for pcolormesh on a possibly uneven time grid)."""
    if x.shape[0] == 1:
        return np.array([x[0] - 0.5, x[0] + 0.5])
    mid = (x[1:] + x[:-1]) / 2
    return np.concatenate([[2 * x[0] - mid[0]], mid, [2 * x[-1] - mid[-1]]])


# ------------------------------------------------------------------------ one result
def marginals_figure(result: Result) -> Figure:
    """Heat map per species: P(n_i = m, t), time on x, count on y, log colour scale."""
    L = min(result.num_species, MAX_PANELS)
    fig, axes = _panels(L)
    times = result.times
    mesh = None
    for i, ax in zip(range(L), axes):
        M = int(result.limits[i])
        p = np.clip(result.marginals[:, i, :M].T, FLOOR, None)
        mesh = ax.pcolormesh(
            _edges(times),
            np.arange(M + 1) - 0.5,
            p,
            norm=LogNorm(vmin=FLOOR, vmax=1.0),
            cmap="viridis",
            shading="flat",
        )
        ax.plot(times, result.means[:, i], color="w", lw=0.8, alpha=0.8)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(result.species[i])
        ax.set_xlabel("t")
        ax.set_ylabel("count")
    if mesh is not None:
        fig.colorbar(mesh, ax=axes[:L], label="probability", shrink=0.8)
    more = f" (first {L} of {result.num_species} species)" if result.num_species > L else ""
    fig.suptitle(f"marginals over time: {_title(result)}{more}")
    return fig


def plot_marginals(result: Result, path: str | Path) -> Path:
    """Save `marginals_figure(result)` to `path`."""
    return _save(marginals_figure(result), path)


def moments_figure(
    result: Result,
    *,
    reference: Result | None = None,
    distances: Mapping[str, Any] | None = None,
) -> Figure:
    """Mean +- one standard deviation of each species over time, optionally over a reference.

    The band is clipped to the counts a species can take, [0, M_i - 1]: a std larger than the
    mean says the law is skewed, not that counts go negative.

    Args:
        result: the result to show.
        reference: a result on the same species (e.g. SSA or FSP) drawn dashed beneath it.
        distances: `metrics.compare(reference, result)`; the largest difference of the means
            goes in the title.
    """
    L = min(result.num_species, MAX_PANELS)
    fig, axes = _panels(L)
    if reference is None:
        shown = [(result, COLORS[0], "-", solver_name(result))]
    else:
        names = _names(reference, result)
        shown = [(reference, COLORS[0], "--", names[0]), (result, COLORS[1], "-", names[1])]
    for i, ax in zip(range(L), axes):
        name, top = result.species[i], float(result.limits[i] - 1)
        for r, color, ls, label in shown:
            j = r.index(name)
            m, s = r.means[:, j], r.stds[:, j]
            marker = "." if r.num_times < 40 else None
            ax.plot(r.times, m, color=color, ls=ls, marker=marker, label=f"{label}: mean ± std")
            lo, hi = np.clip(m - s, 0.0, top), np.clip(m + s, 0.0, top)
            ax.fill_between(r.times, lo, hi, color=color, alpha=0.2, lw=0)
        if is_discrete(result.limits[i]):
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(name)
        ax.set_xlabel("t")
        ax.set_ylabel("count")
    axes[0].legend(fontsize="x-small")  # the same in every panel
    title = f"mean ± std: {_title(result)}"
    if reference is not None:
        title += f" and {solver_name(reference)}"
    if distances is not None:  # absolute: a relative error is infinite where a mean is 0
        worst = float(np.max(np.abs(distances["mean_b"] - distances["mean_a"])))
        title += f"; largest difference of the means {worst:.3g} molecules"
    fig.suptitle(title)
    return fig


def plot_moments(
    result: Result,
    path: str | Path,
    *,
    reference: Result | None = None,
    distances: Mapping[str, Any] | None = None,
) -> Path:
    """Save `moments_figure(result, reference=..., distances=...)` to `path`."""
    return _save(moments_figure(result, reference=reference, distances=distances), path)


def _pick_times(times: np.ndarray, panels: int) -> list[int]:
    T = times.shape[0]
    return sorted(set(np.linspace(0, T - 1, min(panels, T)).round().astype(int).tolist()))


def joint_figure(
    result: Result,
    *,
    panels: int = 4,
    reference: Result | None = None,
    distances: Mapping[str, Any] | None = None,
) -> Figure | None:
    """The stored 2D joint of one pair of species at up to `panels` times (log colours).

    Args:
        result: a result that stores a pair joint (`result.pair`), else None is returned.
        panels: how many times (evenly spread over the stored ones, first and last included).
        reference: a result with the same pair, drawn in a row above at the same times.
        distances: `metrics.compare(reference, result)`: its pair Hellinger goes in the titles.
    """
    if result.pair_marginal is None:
        return None
    a, b = result.pair
    pair_names = [result.species[a], result.species[b]]
    rows: list[Result] = [result]
    if reference is not None:
        if reference.pair is None or [reference.species[i] for i in reference.pair] != pair_names:
            raise ValueError(f"reference: stores no joint of {' and '.join(pair_names)}")
        rows.insert(0, reference)
    picks = [float(result.times[t]) for t in _pick_times(result.times, panels)]
    pair_h = _pair_hellinger(distances)
    fig, axes = plt.subplots(
        len(rows),
        len(picks),
        figsize=(3.6 * len(picks), 3.2 * len(rows)),
        squeeze=False,
        layout="constrained",
    )
    mesh = None
    for r, row in zip(rows, axes):
        for t, ax in zip(picks, row):
            p = np.clip(r.pair_marginal[r.time_index(t)], FLOOR, None)
            mesh = ax.pcolormesh(
                np.arange(p.shape[1] + 1) - 0.5,
                np.arange(p.shape[0] + 1) - 0.5,
                p,
                norm=LogNorm(vmin=FLOOR, vmax=1.0),
                cmap="magma",
            )
            title = f"{solver_name(r)}, t = {t:g}"
            if r is result and pair_h is not None and t in pair_h:
                title += f": H = {pair_h[t]:.3g}"
            ax.set_title(title, fontsize="medium")
            ax.set_xlabel(pair_names[1])
            ax.set_ylabel(pair_names[0])
    if mesh is not None:
        fig.colorbar(mesh, ax=list(axes.flat), label="probability", shrink=0.8)
    title = f"joint of {' and '.join(pair_names)}: {_title(result)}"
    if reference is not None:
        title = (
            f"joint of {' and '.join(pair_names)}, {_network_name(result)}: "
            f"{solver_name(reference)} (top), {solver_name(result)} (bottom)"
        )
    fig.suptitle(title)
    return fig


def _pair_hellinger(distances: Mapping[str, Any] | None) -> dict[float, float] | None:
    if distances is None or not distances.get("pair"):
        return None
    h = np.asarray(distances["pair"]["hellinger"])
    return {float(t): float(v) for t, v in zip(distances["times"], h)}


def plot_joint(
    result: Result,
    path: str | Path,
    *,
    panels: int = 4,
    reference: Result | None = None,
    distances: Mapping[str, Any] | None = None,
) -> Path | None:
    """Save `joint_figure(...)` to `path`; None (nothing written) without a stored pair."""
    fig = joint_figure(result, panels=panels, reference=reference, distances=distances)
    return None if fig is None else _save(fig, path)


def save_result_plots(result: Result, out_dir: str | Path) -> list[Path]:
    """The standard figures of a result directory: marginals.png, moments.png, joint_*.png."""
    out = Path(out_dir)
    files = [plot_marginals(result, out / "marginals.png")]
    files.append(plot_moments(result, out / "moments.png"))
    if result.pair is not None:
        a, b = (result.species[i] for i in result.pair)
        joint = plot_joint(result, out / f"joint_{_safe(a)}_{_safe(b)}.png")
        if joint is not None:
            files.append(joint)
    return files


# ------------------------------------------------------------------------ comparison
def comparison_times(distances: Mapping[str, Any]) -> list[int]:
    """Indices into `distances["times"]` that a comparison draws: the worst time (largest
    Hellinger distance over all species) and the final one; one index when they coincide."""
    h = np.asarray(distances["hellinger"])  # (T, L)
    worst, final = int(np.argmax(h.max(axis=1))), h.shape[0] - 1
    return [final] if worst == final else [worst, final]


def _compared_species(distances: Mapping[str, Any], limit: int) -> list[int]:
    """The species a comparison shows: all, or the `limit` farthest apart (in network order)."""
    h = np.asarray(distances["hellinger"])
    L = h.shape[1]
    if L <= limit:
        return list(range(L))
    return sorted(np.argsort(-h.max(axis=0), kind="stable")[:limit].tolist())


def _log_floor(*ps: np.ndarray) -> float:
    """Bottom of a log axis: a decade below the smallest positive probability, >= LOG_FLOOR."""
    positive = np.concatenate([p[p > 0] for p in ps])
    if positive.size == 0:
        return LOG_FLOOR
    return max(LOG_FLOOR, 10.0 ** np.floor(np.log10(positive.min()) - 1))


def _overlay(
    ax: Any, ps: Sequence[np.ndarray], names: Sequence[str], t: float, *, discrete: bool, log: bool
) -> None:
    """Two distributions over counts on one axis: bars side by side (few counts) or lines.

    On a log axis, values below the floor are left out (lines break there) and, where one
    result has mass at or above the floor and the other has none, a triangle in the colour of
    the one that lacks it sits on the floor.
    """
    n = max(p.shape[0] for p in ps)
    ps = [np.pad(p, (0, n - p.shape[0])) for p in ps]
    x = np.arange(n)
    floor = _log_floor(*ps) if log else 0.0
    for k, (p, name, color) in enumerate(zip(ps, names, COLORS)):
        label = f"{name}, t = {t:g}"
        if discrete:
            ax.bar(x + (k - 0.5) * 0.4, p, 0.4, color=color, label=label, alpha=0.85)
        else:
            y = np.where(p >= floor, p, np.nan) if log else p
            ax.plot(x, y, color=color, lw=1.6 - 0.6 * k, ls="-" if k == 0 else "--", label=label)
    if log:
        for k, (p, other) in enumerate([(ps[0], ps[1]), (ps[1], ps[0])]):
            lacks = (p < floor) & (other >= floor)
            if lacks.any():
                ax.plot(
                    x[lacks] + ((k - 0.5) * 0.4 if discrete else 0.0),
                    np.full(int(lacks.sum()), floor),
                    ls="none",
                    marker="^",
                    ms=4,
                    color=COLORS[k],
                    clip_on=False,
                    label=f"{names[k]}: none (< {floor:.0e})",
                )
        ax.set_yscale("log")
        top = max(float(max(p.max() for p in ps)), floor * 10)
        ax.set_ylim(floor, min(1.5, 2 * top))
    if discrete:
        ax.set_xticks(x)
        ax.set_xlim(-0.6, n - 0.4)


def comparison_figure(
    a: Result,
    b: Result,
    distances: Mapping[str, Any],
    *,
    t_indices: Sequence[int] | None = None,
    species: int = COMPARE_SPECIES,
) -> Figure:
    """Marginals of two results overlaid, linear and log, at the worst and the final time.

    One row per species (all, or the `species` farthest apart), two columns (linear, log) per
    time drawn; a last row with the Hellinger distance of each shown species over time, the
    drawn times marked.

    Args:
        a, b: results on the same species (a: the reference, e.g. FSP or SSA).
        distances: `metrics.compare(a, b)` (its "times", "species" and "hellinger" (T, L)).
        t_indices: indices into distances["times"] to draw (default: `comparison_times`).
        species: how many species at most.
    """
    times = np.asarray(distances["times"])
    h = np.asarray(distances["hellinger"])
    names = list(distances["species"])
    picks = list(comparison_times(distances) if t_indices is None else t_indices)
    rows = _compared_species(distances, species)
    labels_ab = _names(a, b)
    ncols = 2 * len(picks)
    fig = plt.figure(figsize=(3.4 * ncols, 2.6 * (len(rows) + 1)), layout="constrained")
    grid = fig.add_gridspec(len(rows) + 1, ncols)
    for r, i in enumerate(rows):
        name = names[i]
        discrete = is_discrete(a.limits[a.index(name)])
        for c, j in enumerate(picks):
            t = float(times[j])
            ps = [res.marginal(name, res.time_index(t)) for res in (a, b)]
            for k, log in enumerate((False, True)):
                ax = fig.add_subplot(grid[r, 2 * c + k])
                _overlay(ax, ps, labels_ab, t, discrete=discrete, log=log)
                scale = "log" if log else "linear"
                ax.set_title(f"{name}, t = {t:g}: H = {h[j, i]:.3g} ({scale})", fontsize="medium")
                ax.set_xlabel(f"{name} count")
                ax.set_ylabel("probability")
                ax.legend(fontsize="x-small")
    ax = fig.add_subplot(grid[len(rows), :])
    for i in rows:
        ax.plot(times, h[:, i], marker="." if times.shape[0] < 40 else None, label=names[i])
    worst_j, final_j = int(np.argmax(h.max(axis=1))), times.shape[0] - 1
    for j in picks:
        which = ", ".join(w for w, k in (("worst", worst_j), ("final", final_j)) if k == j)
        ax.axvline(times[j], color="grey", ls=":", lw=1)
        ax.annotate(
            f"{which + ': ' if which else ''}t = {times[j]:g}",
            (times[j], 0.97),
            xytext=(-2, 0),
            xycoords=("data", "axes fraction"),
            textcoords="offset points",
            ha="right",
            va="top",
            fontsize="small",
            color="grey",
            rotation=90,
        )
    ax.set_title(f"Hellinger distance between {labels_ab[0]} and {labels_ab[1]}")
    ax.set_xlabel("t")
    ax.set_ylabel("Hellinger")
    ax.legend(fontsize="small", ncols=min(len(rows), 6))
    title = f"{_title(a)} vs {_title(b)}\nmax Hellinger {float(h.max()):.3g}"
    worst = distances.get("worst")
    if worst:
        title += f" ({worst['species']} at t = {worst['time']:g})"
    if len(rows) < len(names):
        title += f"; {len(rows)} of {len(names)} species shown, those farthest apart"
    fig.suptitle(title, fontsize="medium")
    return fig


def plot_comparison(
    a: Result,
    b: Result,
    distances: Mapping[str, Any],
    path: str | Path,
    *,
    t_indices: Sequence[int] | None = None,
    species: int = COMPARE_SPECIES,
) -> Path:
    """Save `comparison_figure(a, b, distances, ...)` to `path`."""
    return _save(comparison_figure(a, b, distances, t_indices=t_indices, species=species), path)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_write(path, "wb") as f:  # never half a PNG, as for every file nncme writes
            fig.savefig(f, dpi=110, format=path.suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)
    return path


def sweep_figure(sweep: Mapping[str, Any], statistic: str, species: int, axes: Sequence[str]):
    """A statistic of one species over a one- or two-quantity grid (`nncme.amortise.sweep`):
    a line over one quantity, a heat map over two (first quantity across, second up)."""
    values = np.asarray(sweep["values"])
    names = list(sweep["names"])
    z = np.asarray(sweep["stats"][statistic])[:, species]
    label = f"{statistic} of {sweep['species'][species]} at t = {sweep['t']:g}"
    fig, ax = plt.subplots(figsize=(5.2, 4.0))
    cols = [names.index(a) for a in axes]
    if len(cols) == 1:
        x = values[:, cols[0]]
        order = np.argsort(x)
        ax.plot(x[order], z[order], marker="o", ms=3)
        ax.set_xlabel(axes[0])
        ax.set_ylabel(label)
    elif len(cols) == 2:
        xs, ys = np.unique(values[:, cols[0]]), np.unique(values[:, cols[1]])
        grid = np.full((len(ys), len(xs)), np.nan)
        grid[np.searchsorted(ys, values[:, cols[1]]), np.searchsorted(xs, values[:, cols[0]])] = z
        mesh = ax.pcolormesh(_edges(xs), _edges(ys), grid, shading="flat", cmap="viridis")
        fig.colorbar(mesh, ax=ax, label=label)
        ax.set_xlabel(axes[0])
        ax.set_ylabel(axes[1])
    else:
        raise ValueError(f"a sweep figure shows one or two quantities, got {list(axes)}")
    ax.set_title(label)
    fig.tight_layout()
    return fig


def plot_sweep(
    sweep: Mapping[str, Any], statistic: str, species: int, axes: Sequence[str], path: str | Path
) -> Path:
    """Save `sweep_figure` to path; returns the path."""
    return _save(sweep_figure(sweep, statistic, species, axes), path)


def paths_figure(paths: Any, shown: int = 20):
    """A panel per species of a `nncme.amortise.PathEnsemble`: the mean with a band of one
    standard deviation over every path, and the first `shown` paths as steps."""
    fig, axes = _panels(len(paths.species))
    for i, (ax, name) in enumerate(zip(axes, paths.species)):
        x = paths.states[:, :, i].astype(np.float64)
        mean, sd = x.mean(axis=0), x.std(axis=0)
        for row in x[:shown]:
            ax.step(paths.times, row, where="post", lw=0.6, alpha=0.35, color="grey")
        ax.plot(paths.times, mean, color="C0", lw=1.6, label=f"mean of {len(x):,} paths")
        ax.fill_between(paths.times, mean - sd, mean + sd, color="C0", alpha=0.2, label="± 1 sd")
        ax.set_title(name)
        ax.set_xlabel("t")
        ax.set_ylabel("count")
    axes[0].legend(fontsize="small")
    return fig


def plot_paths(paths: Any, path: str | Path) -> Path:
    """Save `paths_figure` to path; returns the path."""
    return _save(paths_figure(paths), path)
