"""Helpers shared by the catalogue builders: parameter checks, count limits and time steps.

Count limits follow one rule: the limit M of a species is the smallest count such that the
exact distribution leaves less than `TAIL` probability at counts >= M at every time of the
system's time span. Where a rigorous bound is cheap (a Poisson bound, a conservation law, a
one-species chain solved exactly) the builders compute the limit from their parameters, so a
user who changes a rate gets a limit that still holds.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy import sparse, stats
from scipy.integrate import solve_ivp
from scipy.linalg import eigh_tridiagonal

from ..network import NetworkError

TAIL = 1e-8  # probability allowed beyond a count limit over the whole time span
DT_TARGET = 0.25  # dt * (max total propensity over the box) of the first-order VAN step


def check_rate(value: object, where: str, *, positive: bool = False) -> float:
    """A finite rate constant >= 0 (> 0 if `positive`), else a NetworkError naming `where`."""
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise NetworkError(f"{where}: must be a number, got {value!r}") from None
    if not math.isfinite(v) or v < 0 or (positive and v == 0):
        need = "> 0" if positive else ">= 0"
        raise NetworkError(f"{where}: must be finite and {need}, got {value!r}")
    return v


def check_int(value: object, where: str, *, minimum: int = 0) -> int:
    """An integer >= minimum (floats with integral values accepted), else a NetworkError."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer)):
        raise NetworkError(f"{where}: must be an integer >= {minimum}, got {value!r}")
    if isinstance(value, float) and not value.is_integer():
        raise NetworkError(f"{where}: must be an integer >= {minimum}, got {value!r}")
    if int(value) < minimum:
        raise NetworkError(f"{where}: must be an integer >= {minimum}, got {value!r}")
    return int(value)


def poisson_limit(mean: float, offset: int = 0, tail: float = TAIL) -> int:
    """Smallest M with P(offset + Poisson(mean) >= M) < tail.

    Used as a stochastic upper bound: a species whose production rate is at most `rate` and
    whose per-molecule loss is at least `gamma` is dominated by offset + Poisson(rate/gamma).
    """
    if mean <= 0:
        return offset + 1
    # isf(q) is the smallest k with P(X > k) <= q; counts >= k+1 then hold < tail.
    k = int(stats.poisson.isf(tail, mean))
    while stats.poisson.sf(k, mean) >= tail:
        k += 1
    return offset + k + 1


def nice_step(bound: float, target: float = DT_TARGET, cap: float | None = None) -> float:
    """Largest dt in {1, 2, 5} x 10^k with dt * bound <= target (and dt <= cap).

    `bound` is an upper bound of the total propensity sum_k a_k(n) over the states the
    dynamics visits; the first-order transition T = I + dt W stays a stochastic matrix there.
    """
    if not math.isfinite(bound) or bound <= 0:
        return cap if cap is not None else 0.01
    best = None
    for exp in range(-12, 4):
        for mant in (1.0, 2.0, 5.0):
            dt = mant * 10.0**exp
            if dt * bound <= target * (1 + 1e-12) and (cap is None or dt <= cap * (1 + 1e-12)):
                best = dt
    return best if best is not None else 10.0**-12


def chain_marginals(
    birth: Callable[[np.ndarray], np.ndarray],
    death: Callable[[np.ndarray], np.ndarray],
    x0: int,
    t_end: float,
    *,
    num: int = 64,
    start: int = 256,
    max_states: int = 1 << 15,
) -> np.ndarray:
    """Exact laws of a one-species birth-death chain (steps +1 / -1) started at x0.

    The box 0..n-1 doubles until the probability reaching its far end is negligible (the
    truncation rule makes the box's last state reflecting). The chain is reversible, so its
    generator is similar to a symmetric tridiagonal matrix S with off-diagonal
    sqrt(b_n d_{n+1}); P(t) = Pi^{1/2} V exp(Lambda t) V^T Pi^{-1/2} delta_{x0} then costs one
    tridiagonal eigendecomposition (fast and exact even where the chain is stiff, as for
    Schlögl's 1e4-per-time propensities). Where that similarity would amplify round-off (a
    start far less likely than other states), a stiff ODE solver is used instead.

    Args:
        birth, death: vectorised propensities of x -> x+1 and x -> x-1 (x a float array).
        x0: initial count.
        t_end: end of the time span.
        num: number of times, evenly spaced on [0, t_end].

    Returns:
        (num + 1, n) laws: rows 0..num-1 at the times, the last row the stationary law of the
        chain on the box (zeros where it has none, e.g. an absorbing state).
    """
    if x0 >= max_states:
        raise NetworkError(f"initial count {x0} is beyond {max_states} states")
    n = min(max(start, 4 * (x0 + 1)), max_states)
    times = np.linspace(0.0, t_end, num)
    while True:
        x = np.arange(n, dtype=np.float64)
        b = np.clip(np.asarray(birth(x), dtype=np.float64), 0.0, None)
        d = np.clip(np.asarray(death(x), dtype=np.float64), 0.0, None)
        b[-1] = 0.0  # truncation rule: no birth out of the box
        d[0] = 0.0
        out = np.zeros((num + 1, n))
        with np.errstate(divide="ignore"):
            log_ratio = np.log(b[:-1]) - np.log(d[1:])  # log pi_{m+1} / pi_m
        reversible = bool(np.all(np.isfinite(log_ratio)))
        if reversible:
            lpi = np.concatenate([[0.0], np.cumsum(log_ratio)])
            pi = np.exp(lpi - lpi.max())
            out[-1] = pi / pi.sum()
            amplify = 0.5 * (lpi - lpi[x0])
            if amplify.max() < math.log(1e6):
                lam, V = eigh_tridiagonal(-(b + d), np.sqrt(b[:-1] * d[1:]))
                weights = np.exp(np.outer(times, lam)) * V[x0]  # (T, n)
                out[:-1] = (weights @ V.T) * np.exp(amplify)
            else:
                reversible = False
        if not reversible:
            Q = sparse.diags([-(b + d), b[:-1], d[1:]], [0, -1, 1], format="csc")
            p0 = np.zeros(n)
            p0[x0] = 1.0
            sol = solve_ivp(
                lambda _t, p, Q=Q: Q @ p,
                (0.0, t_end),
                p0,
                method="BDF",
                t_eval=times,
                jac=Q,
                rtol=1e-10,
                atol=1e-14,
            )
            out[:-1] = sol.y.T
        out = np.clip(out, 0.0, None)
        if out[:, -1].max() < TAIL * 1e-3 or n >= max_states:
            return out
        n = min(2 * n, max_states)


def chain_limit(
    birth: Callable[[np.ndarray], np.ndarray],
    death: Callable[[np.ndarray], np.ndarray],
    x0: int,
    t_end: float,
    *,
    tail: float = TAIL,
    **kwargs: int,
) -> int:
    """Smallest M with P(X_t >= M) < tail at all times of [0, t_end] and at stationarity."""
    laws = chain_marginals(birth, death, x0, t_end, **kwargs)
    return tail_limit(laws, tail)


def tail_limit(laws: np.ndarray, tail: float = TAIL) -> int:
    """(T, n) laws over counts -> smallest M with every row's mass at counts >= M below tail."""
    tails = np.cumsum(laws[:, ::-1], axis=1)[:, ::-1].max(axis=0)
    below = np.nonzero(tails < tail)[0]
    return int(below[0]) if below.size else laws.shape[1]


def parse_shape(shape: object, where: str = "shape") -> tuple[int, ...]:
    """A lattice shape: an int (chain), a tuple/list of 1 or 2 ints, or text such as "4x4"."""
    if isinstance(shape, str):
        parts = shape.lower().replace("*", "x").replace(",", "x").split("x")
        try:
            dims = tuple(int(p) for p in parts if p.strip())
        except ValueError:
            raise NetworkError(f"{where}: expected e.g. '16' or '4x4', got {shape!r}") from None
    elif isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        dims = (int(shape),)
    elif isinstance(shape, (tuple, list)):
        dims = tuple(check_int(s, where, minimum=1) for s in shape)
    else:
        raise NetworkError(f"{where}: expected e.g. 16, (4, 4) or '4x4', got {shape!r}")
    if not 1 <= len(dims) <= 2 or any(d < 1 for d in dims):
        raise NetworkError(f"{where}: a 1D chain or 2D grid of positive sizes, got {shape!r}")
    return dims
