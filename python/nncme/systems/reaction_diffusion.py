"""Reaction-diffusion: Schlögl or birth-death kinetics on every site of a 1D or 2D lattice."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..network import NetworkError, Reaction, ReactionNetwork
from ._common import (
    chain_marginals,
    check_int,
    check_rate,
    nice_step,
    parse_shape,
    poisson_limit,
    tail_limit,
)

KINETICS = ("schlogl", "birth_death")


def reaction_diffusion(
    shape: str | int | tuple[int, ...] = 8,
    kinetics: str = "schlogl",
    hopping: float = 8.2207,
    c1: float = 2.676,
    c2: float = 0.040,
    c3: float = 108.102,
    c4: float = 37.881,
    k: float = 10.0,
    gamma: float = 1.0,
    x0: int = 50,
    t_end: float = 1.0,
    dt: float | None = None,
    limit: int | None = None,
    order: str = "row",
) -> ReactionNetwork:
    """One species X per lattice site, local kinetics on every site and hopping to neighbours.

    The lattice is a chain (`shape` = 16 or "16") or a grid ("4x4", (4, 4)) with open
    boundaries: a molecule hops from a site to each existing nearest neighbour at rate
    `hopping` (X_i -> X_j), so an interior site of a grid loses molecules at 4 * hopping.
    Species are named X_i (chain) or X_r_c (grid, row-major); L = number of sites.

    Kinetics "schlogl" (per site, "power" convention n^r as in the reference code):
        2X -> 3X at c1, 3X -> 2X at c2, 0 -> X at c3, X -> 0 at c4,
    with the spatial Schlögl parameters of the NNCME-2 example (Machine-learning-and-complex-
    systems/NNCME, NNCME-2/nncme/systems/schlogl.py and Schlogl_2d.py: c1 = 2.676, c2 = 0.040,
    c3 = 108.102, c4 = 37.881, hopping d = 8.2207, X = 50 on every site, dt = 1e-5, 1e5 steps:
    t_end = 1; their count limit is 85). Deterministically each site is bistable with stable
    points X = 3.8 and 48.5 (unstable at 14.5). Kinetics "birth_death": 0 -> X at k, X -> 0 at
    gamma (a diffusing Poisson field; independent of the convention).

    Limits (one per site): birth_death: the network is monomolecular, so each site holds a
    Poisson-binomial count of the initial molecules (mean <= x0) plus an independent Poisson
    count (mean <= k/gamma) (Jahnke & Huisinga, J. Math. Biol. 54, 1 (2007)); the limit is
    the 1e-8 quantile of Poisson(x0 + k/gamma), whose tail dominates both. Schlögl: the exact
    1e-8 limit of a single site whose hopping out is balanced by equal hopping in (birth
    + z d x, death + z d x, z the largest number of neighbours), over [0, t_end] and at
    stationarity: M = 105 on the default 8-site chain. On two sites FSP leaves 2.1e-9 beyond
    105 (its own 1e-8 limit is 103); the published limit 85 leaves 3.6e-5 beyond it.
    dt: the total propensity grows with the number of sites n; dt keeps dt times a high
    quantile of it, n E_t[a] + 6 sqrt(n) SD_t[a] from the one-site laws (at most the box
    bound n max a), <= 0.25 (dt = 1e-6 for 8 sites, 1e-8 for a 32 x 32 grid).

    Building stays fast for large lattices (a 32 x 32 grid: 1024 species, 7968 reactions).

    Args:
        shape: lattice shape: n, "n", "rxc" or (r, c).
        kinetics: "schlogl" or "birth_death".
        hopping: hopping rate to each neighbour (1/time per molecule).
        c1, c2, c3, c4: Schlögl rate constants (per site).
        k, gamma: birth-death rates (per site).
        x0: initial count on every site.
        t_end: end of the time span.
        dt: VAN time step (default: from the propensity bound).
        limit: per-site count limit (default: as above).
        order: the order of the sites among the species, which is the order in which an
            autoregressive model conditions on them: "row" (row-major), "snake" (rows in
            alternating directions, so that consecutive sites are always neighbours) or
            "hilbert" (a Hilbert curve: consecutive sites are neighbours and sites close on
            the grid stay close in the order; square grids of side 2^k). A chain is in
            order whatever this says.
    """
    name = "reaction_diffusion"
    dims = parse_shape(shape, f"{name}: shape")
    if kinetics not in KINETICS:
        raise NetworkError(f"{name}: kinetics must be one of {KINETICS}, got {kinetics!r}")
    d = check_rate(hopping, f"{name}: hopping")
    x0 = check_int(x0, f"{name}: x0")
    t_end = check_rate(t_end, f"{name}: t_end", positive=True)
    rows, cols = (1, dims[0]) if len(dims) == 1 else dims
    n_sites = rows * cols
    names = (
        [f"X{j}" for j in range(cols)]
        if len(dims) == 1
        else [f"X{r}_{c}" for r in range(rows) for c in range(cols)]
    )
    z = (2 if cols > 1 else 0) + (2 if rows > 1 else 0) if n_sites > 1 else 0
    z = min(z, 4)
    if kinetics == "schlogl":
        rates = {
            key: check_rate(v, f"{name}: {key}")
            for key, v in zip(("c1", "c2", "c3", "c4"), (c1, c2, c3, c4))
        }
        local = [
            ({"X": 2}, {"X": 3}, rates["c1"], "autocatalysis"),
            ({"X": 3}, {"X": 2}, rates["c2"], "reverse_autocatalysis"),
            ({}, {"X": 1}, rates["c3"], "inflow"),
            ({"X": 1}, {}, rates["c4"], "outflow"),
        ]
        convention = "power"
    else:
        rates = dict(k=check_rate(k, f"{name}: k"), gamma=check_rate(gamma, f"{name}: gamma"))
        local = [
            ({}, {"X": 1}, rates["k"], "birth"),
            ({"X": 1}, {}, rates["gamma"], "death"),
        ]
        convention = "falling"

    def up(x: np.ndarray) -> np.ndarray:  # local propensities raising one site's count
        if kinetics == "schlogl":
            return rates["c1"] * x**2 + rates["c3"]
        return rates["k"] + 0 * x

    def down(x: np.ndarray) -> np.ndarray:  # local propensities lowering it, plus hopping out
        if kinetics == "schlogl":
            return rates["c2"] * x**3 + rates["c4"] * x + z * d * x
        return rates["gamma"] * x + z * d * x

    def inflow_balanced(x: np.ndarray) -> np.ndarray:  # neighbours hop in as much as out
        return up(x) + z * d * x

    laws = None
    M = None
    if kinetics == "schlogl":
        laws = chain_marginals(inflow_balanced, down, x0, t_end)
        M = tail_limit(laws)
    elif limit is None:
        if rates["gamma"] <= 0:
            raise NetworkError(f"{name}: gamma must be > 0 for the birth-death kinetics")
        mean = rates["k"] / rates["gamma"]
        M = poisson_limit(x0 + mean) if n_sites > 1 and d > 0 else poisson_limit(mean, offset=x0)
    if limit is not None:
        M = check_int(limit, f"{name}: limit", minimum=1)
    assert M is not None
    M = max(M, x0 + 1)
    if laws is None:  # birth-death: Poisson-like, one site's chain gives its laws
        laws = chain_marginals(inflow_balanced, down, x0, t_end, start=M, max_states=M)

    reactions = []
    for s in names:
        for reac, prod, rate, label in local:
            reac_s = {s: reac["X"]} if reac else {}
            prod_s = {s: prod["X"]} if prod else {}
            reactions.append(Reaction(reac_s, prod_s, rate, f"{label}_{s}"))
    ordered = [names[r * cols + c] for r, c in site_order(rows, cols, order)]
    if d > 0 and n_sites > 1:
        for r in range(rows):
            for c in range(cols):
                src = names[r * cols + c]
                for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                    rr, cc = r + dr, c + dc
                    if 0 <= rr < rows and 0 <= cc < cols:
                        dst = names[rr * cols + cc]
                        reactions.append(Reaction({src: 1}, {dst: 1}, d, f"hop_{src}_{dst}"))
    if dt is None:
        site_rate = lambda x: up(x) + down(x)  # noqa: E731  (one site's total, hops out once)
        dt = nice_step(_lattice_rate_bound(site_rate, M, n_sites, laws), cap=t_end / 100)
    shape_text = "x".join(str(v) for v in dims)
    lattice = f"{n_sites}-site chain" if len(dims) == 1 else f"{shape_text} grid"
    return ReactionNetwork(
        dict.fromkeys(ordered, M),
        reactions,
        dict.fromkeys(ordered, x0),
        name=name,
        convention=convention,
        conservation=[],
        t_end=t_end,
        dt=dt,
        description=f"reaction-diffusion ({kinetics}) on a {lattice}, hopping to neighbours",
        source="NNCME-2 spatial Schlögl example (Machine-learning-and-complex-systems/NNCME, "
        "NNCME-2/nncme/systems/schlogl.py, Schlogl_2d.py)",
        parameters=dict(
            shape=shape_text,
            kinetics=kinetics,
            hopping=d,
            **rates,
            x0=x0,
            t_end=t_end,
            dt=dt,
            limit=M,
            order=order,
        ),
    )


ORDERS = ("row", "snake", "hilbert")


def site_order(rows: int, cols: int, order: str = "row") -> list[tuple[int, int]]:
    """The (row, column) of every site of a rows x cols grid, in the given order (ORDERS)."""
    if order not in ORDERS:
        raise NetworkError(f"reaction_diffusion: order must be one of {ORDERS}, got {order!r}")
    if rows == 1 or cols == 1 or order == "row":
        return [(r, c) for r in range(rows) for c in range(cols)]
    if order == "snake":
        return [(r, c if r % 2 == 0 else cols - 1 - c) for r in range(rows) for c in range(cols)]
    side = rows
    if rows != cols or side & (side - 1):
        raise NetworkError(
            f"reaction_diffusion: order 'hilbert' needs a square grid of side 2^k, got "
            f"{rows}x{cols} (use 'snake')"
        )
    return [_hilbert_point(side, i) for i in range(side * side)]


def _hilbert_point(side: int, index: int) -> tuple[int, int]:
    """The index-th point of the Hilbert curve through a side x side grid (side = 2^k)."""
    x = y = 0
    s, t = 1, index
    while s < side:
        rx = 1 & (t // 2)
        ry = 1 & (t ^ rx)
        if ry == 0:  # rotate the quadrant
            if rx == 1:
                x, y = s - 1 - x, s - 1 - y
            x, y = y, x
        x, y = x + s * rx, y + s * ry
        t //= 4
        s *= 2
    return y, x


def _lattice_rate_bound(
    site_rate: Callable[[np.ndarray], np.ndarray], M: int, n_sites: int, laws: np.ndarray
) -> float:
    """A high quantile of the lattice's total propensity sum_i a(X_i) over the time span.

    a(x) is one site's total propensity (its hops out counted once). With the one-site laws
    P_t this is max_t n E_t[a] + 6 sqrt(n) SD_t[a]: sites are weakly coupled, so the sum
    concentrates like a sum of n independent terms. It never exceeds the box bound
    n max_x a(x), and is at least one site's max_x a(x).
    """
    a = site_rate(np.arange(M, dtype=np.float64))
    top = float(a.max())
    if n_sites == 1:
        return top
    P = laws[:, :M] / np.maximum(laws[:, :M].sum(axis=1, keepdims=True), 1e-300)
    mean = P @ a
    sd = np.sqrt(np.clip(P @ a**2 - mean**2, 0.0, None))
    typical = float((n_sites * mean + 6.0 * np.sqrt(n_sites) * sd).max())
    return min(n_sites * top, max(top, typical))
