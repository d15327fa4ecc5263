"""Figures of results: marginals over time, means +- std, a 2D joint, comparisons.

Matplotlib with the Agg backend (files only, no display). A leaf module: numpy and matplotlib.
Every function takes a `Result` (or two) and a path, and returns the path it wrote.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import LogNorm

if TYPE_CHECKING:
    from .results import Result

__all__ = [
    "plot_comparison",
    "plot_joint",
    "plot_marginals",
    "plot_moments",
    "save_result_plots",
]

MAX_PANELS = 12  # species shown per figure; larger networks show the first ones
FLOOR = 1e-8  # smallest probability on log colour scales


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


def _title(result: Result) -> str:
    net = result.summary.get("network", {})
    name = net.get("name", "") if isinstance(net, Mapping) else ""
    return f"{name} ({result.method})".strip()


def _edges(x: np.ndarray) -> np.ndarray:
    """Cell edges around points x (for pcolormesh on a possibly uneven time grid)."""
    if x.shape[0] == 1:
        return np.array([x[0] - 0.5, x[0] + 0.5])
    mid = (x[1:] + x[:-1]) / 2
    return np.concatenate([[2 * x[0] - mid[0]], mid, [2 * x[-1] - mid[-1]]])


def plot_marginals(result: Result, path: str | Path) -> Path:
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
        ax.set_title(result.species[i])
        ax.set_xlabel("t")
        ax.set_ylabel("count")
    if mesh is not None:
        fig.colorbar(mesh, ax=axes[:L], label="probability", shrink=0.8)
    more = f" (first {L} of {result.num_species} species)" if result.num_species > L else ""
    fig.suptitle(f"marginals over time: {_title(result)}{more}")
    return _save(fig, path)


def plot_moments(result: Result, path: str | Path) -> Path:
    """Mean +- one standard deviation of each species over time."""
    L = min(result.num_species, MAX_PANELS)
    fig, axes = _panels(L)
    for i, ax in zip(range(L), axes):
        m, s = result.means[:, i], result.stds[:, i]
        ax.plot(result.times, m, color="C0", marker="." if result.num_times < 40 else None)
        ax.fill_between(result.times, m - s, m + s, color="C0", alpha=0.25, lw=0)
        ax.set_title(result.species[i])
        ax.set_xlabel("t")
        ax.set_ylabel("count")
    fig.suptitle(f"mean ± std: {_title(result)}")
    return _save(fig, path)


def plot_joint(result: Result, path: str | Path, *, panels: int = 4) -> Path | None:
    """The stored 2D joint of one pair of species at up to `panels` times (log colours)."""
    if result.pair_marginal is None:
        return None
    a, b = result.pair
    T = result.num_times
    picks = sorted(set(np.linspace(0, T - 1, min(panels, T)).round().astype(int).tolist()))
    fig, axes = _panels(len(picks), size=(3.6, 3.2))
    mesh = None
    for t, ax in zip(picks, axes):
        p = np.clip(result.pair_marginal[t], FLOOR, None)
        mesh = ax.pcolormesh(
            np.arange(p.shape[1] + 1) - 0.5,
            np.arange(p.shape[0] + 1) - 0.5,
            p,
            norm=LogNorm(vmin=FLOOR, vmax=1.0),
            cmap="magma",
        )
        ax.set_title(f"t = {result.times[t]:g}")
        ax.set_xlabel(result.species[b])
        ax.set_ylabel(result.species[a])
    if mesh is not None:
        fig.colorbar(mesh, ax=axes[: len(picks)], label="probability", shrink=0.8)
    fig.suptitle(f"joint of {result.species[a]} and {result.species[b]}: {_title(result)}")
    return _save(fig, path)


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


def plot_comparison(
    a: Result, b: Result, distances: Mapping[str, Any], path: str | Path, *, t_index: int = -1
) -> Path:
    """Marginals of both results at one time per species, and Hellinger distance over time.

    Args:
        a, b: results on the same species (times aligned by the caller).
        distances: `metrics.compare(a, b)` output (its "times" and "hellinger" (T, L) entries).
        t_index: which of the compared times to overlay.
    """
    species = list(distances["species"])
    L = min(len(species), MAX_PANELS)
    fig, axes = _panels(L + 1)
    axes = list(axes)
    t = float(distances["times"][t_index])
    for i, ax in zip(range(L), axes):
        name = species[i]
        pa = a.marginal(name, a.time_index(t))
        pb = b.marginal(name, b.time_index(t))
        ax.step(np.arange(pa.shape[0]), pa, where="mid", label=f"A ({a.method})", lw=1.5)
        ax.step(np.arange(pb.shape[0]), pb, where="mid", label=f"B ({b.method})", lw=1, ls="--")
        ax.set_title(f"{name}, t = {t:g}")
        ax.set_xlabel("count")
        ax.set_ylabel("probability")
    axes[0].legend(fontsize="small")
    ax = axes[L]
    h = np.asarray(distances["hellinger"])
    times = np.asarray(distances["times"])
    for i in range(L):
        ax.plot(times, h[:, i], label=species[i])
    ax.set_title("Hellinger distance per species")
    ax.set_xlabel("t")
    if L <= 8:
        ax.legend(fontsize="small")
    fig.suptitle(f"{_title(a)} vs {_title(b)}")
    return _save(fig, path)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
