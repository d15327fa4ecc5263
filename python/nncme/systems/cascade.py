"""Linear signalling cascade of any length: the high-dimensional linear benchmark."""

from __future__ import annotations

import numpy as np
from scipy import sparse, stats
from scipy.integrate import solve_ivp

from ..network import Reaction, ReactionNetwork
from ._common import TAIL, check_int, check_rate, nice_step, poisson_limit


def cascade(
    L: int = 20,
    beta: float = 10.0,
    k: float = 5.0,
    gamma: float = 1.0,
    conversion: bool = False,
    t_end: float = 1.0,
    dt: float | None = None,
) -> ReactionNetwork:
    """Linear signalling cascade X_1 -> X_2 -> ... -> X_L driven by constitutive production.

    Reactions: 0 -> X_1 at beta; X_i -> X_i + X_{i+1} at k (catalytic activation, i < L);
    X_i -> 0 at gamma (all i). With `conversion=True` the activation consumes its substrate
    instead, X_i -> X_{i+1} at k, the variant in the NNCME code (cascade1.py).

    Source: the linear signalling cascade of Gupta, Schwab & Khammash, "DeepCME", PLoS Comput.
    Biol. 17, e1009623 (2021) (code: linear_signalling_cascade, beta = 10, k = 5, gamma = 1,
    zero initial state), used in high dimension by Tang, Weng & Zhang, Nat. Mach. Intell. 5,
    376 (2023). First-order propensities: all conventions agree.

    The network is linear, so the first two moments obey closed ODEs (solved here): each
    stage multiplies the mean by k/gamma = 5 at stationarity, so counts explode downstream at
    late times; t_end = 1 keeps every mean below 24 (at t = 2 the largest is ~930, at t = 5
    ~7e7). Limits: per species, the 1e-8 quantile of the negative binomial (or Poisson, when
    not over-dispersed) with the exact mean and variance, maximised over [0, t_end], and at
    least 2. dt: the total propensity is beta + (k + gamma) * sum_i X_i; dt keeps dt times its
    1e-8 quantile (same moment matching for the total count) <= 0.25 (dt = 2e-5 at the
    defaults). Checked against FSP for L = 2, 3: every species leaves < 1e-8 beyond its
    limit (the FSP 1e-8 limits are 26, 67, 126 against 26, 76, 150 here).

    Args:
        L: number of species (>= 1).
        beta: production rate of X_1 (molecules per time).
        k: activation rate per molecule of X_i (1/time).
        gamma: degradation rate per molecule (1/time).
        conversion: activation consumes X_i instead of acting catalytically.
        t_end: end of the time span.
        dt: VAN time step (default: from the propensity quantile).
    """
    name = "cascade"
    L = check_int(L, f"{name}: L", minimum=1)
    beta = check_rate(beta, f"{name}: beta")
    k = check_rate(k, f"{name}: k")
    gamma = check_rate(gamma, f"{name}: gamma")
    conversion = bool(conversion)
    t_end = check_rate(t_end, f"{name}: t_end", positive=True)
    species = [f"X{i + 1}" for i in range(L)]
    reactions = [Reaction({}, {species[0]: 1}, beta, "produce_X1")]
    for i in range(L - 1):
        a, b = species[i], species[i + 1]
        products = {b: 1} if conversion else {a: 1, b: 1}
        reactions.append(Reaction({a: 1}, products, k, f"activate_{b}"))
    reactions += [Reaction({s: 1}, {}, gamma, f"degrade_{s}") for s in species]
    mean, var, total_mean, total_var = cascade_moments(L, beta, k, gamma, conversion, t_end)
    limits = [max(2, _moment_limit(m, v)) for m, v in zip(mean.T, var.T)]
    if dt is None:
        top = max(_moment_limit(m, v) for m, v in zip(total_mean, total_var))
        dt = nice_step(beta + (k + gamma) * top, cap=t_end / 100)
    return ReactionNetwork(
        dict(zip(species, limits)),
        reactions,
        {},
        name=name,
        conservation=[],
        t_end=t_end,
        dt=dt,
        description="linear signalling cascade of any length L (moment equations exact)",
        source="Gupta, Schwab & Khammash, PLoS Comput. Biol. 17, e1009623 (2021) (DeepCME); "
        "Tang, Weng & Zhang, Nat. Mach. Intell. 5, 376 (2023)",
        parameters=dict(
            L=L, beta=beta, k=k, gamma=gamma, conversion=conversion, t_end=t_end, dt=dt
        ),
    )


def cascade_moments(
    L: int,
    beta: float,
    k: float,
    gamma: float,
    conversion: bool,
    t_end: float,
    num: int = 101,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Exact means and variances of the cascade from the zero state, by the moment equations.

    For a linear network with propensities a(n) = W n + w0 and net changes S (K, L), the
    mean obeys m' = S^T (W m + w0) and the covariance C' = A C + C A^T + S^T diag(W m + w0) S
    with A = S^T W (exact, no closure). The cascade is feed-forward (species i only feels
    species < i), so the covariance is solved only for the leading species whose mean ever
    exceeds 1e-12; beyond them the variance is set to the (negligible) mean.

    Returns:
        mean (T, L), var (T, L) of the species and mean (T,), var (T,) of the total count, at
        `num` times evenly spaced in [0, t_end].
    """
    times = np.linspace(0.0, t_end, num)
    A, b = _drift(L, L, beta, k, gamma, conversion)
    sol = solve_ivp(
        lambda _t, m: A @ m + b, (0.0, t_end), np.zeros(L), t_eval=times, rtol=1e-8, atol=1e-30
    )
    mean = np.clip(sol.y.T, 0.0, None)
    var = mean.copy()
    live = np.nonzero(mean.max(axis=0) >= 1e-12)[0]
    n = int(live[-1]) + 1 if live.size else 1
    A, b = _drift(n, L, beta, k, gamma, conversion)

    def noise(m: np.ndarray) -> np.ndarray:
        # S^T diag(a) S summed over reactions: each reaction adds a s s^T.
        D = np.zeros((n, n))
        D[0, 0] += beta
        idx = np.arange(min(n, L - 1))
        act = k * m[idx]
        inside = idx + 1 < n
        D[idx[inside] + 1, idx[inside] + 1] += act[inside]
        if conversion:
            D[idx, idx] += act
            D[idx[inside], idx[inside] + 1] -= act[inside]
            D[idx[inside] + 1, idx[inside]] -= act[inside]
        D[np.arange(n), np.arange(n)] += gamma * m
        return D

    def rhs(_t: float, y: np.ndarray) -> np.ndarray:
        m, C = y[:n], y[n:].reshape(n, n)
        AC = A @ C
        return np.concatenate([A @ m + b, (AC + AC.T + noise(m)).ravel()])

    sol = solve_ivp(rhs, (0.0, t_end), np.zeros(n + n * n), t_eval=times, rtol=1e-8, atol=1e-10)
    y = sol.y.T
    C = y[:, n:].reshape(-1, n, n)
    mean[:, :n] = np.clip(y[:, :n], 0.0, None)
    var[:, :n] = np.clip(np.diagonal(C, axis1=1, axis2=2), 0.0, None)
    total_mean = mean.sum(axis=1)
    total_var = np.clip(C.sum(axis=(1, 2)) + var[:, n:].sum(axis=1), 0.0, None)
    return mean, var, total_mean, total_var


def _drift(
    n: int, L: int, beta: float, k: float, gamma: float, conversion: bool
) -> tuple[sparse.csr_matrix, np.ndarray]:
    """A = S^T W and b = S^T w0 restricted to the first n of L species: m' = A m + b."""
    diag = np.full(n, -gamma)
    if conversion:
        diag[: min(n, L - 1)] -= k  # every species but the last converts into the next
    A = sparse.diags([diag, np.full(n - 1, k)], [0, -1], format="csr")
    b = np.zeros(n)
    b[0] = beta
    return A, b


def _moment_limit(mean: np.ndarray | float, var: np.ndarray | float) -> int:
    """Max over times of the 1e-8 quantile of a law matching the mean and variance, plus one.

    Poisson when var <= mean (the species are never under-dispersed by much here), else the
    negative binomial with the same two moments: its geometric tail is the slowest decay a
    linear network's marginals show.
    """
    m = np.atleast_1d(np.asarray(mean, dtype=np.float64))
    v = np.atleast_1d(np.asarray(var, dtype=np.float64))
    keep = m >= TAIL  # Markov: P(X >= 1) <= E[X] < TAIL leaves count 0 only
    m, v = m[keep], v[keep]
    if m.size == 0:
        return 1
    over = v > m * (1 + 1e-9)
    best = max((poisson_limit(x) for x in np.unique(m[~over])), default=1)
    if over.any():
        r, p = m[over] ** 2 / (v[over] - m[over]), m[over] / v[over]
        q = np.floor(stats.nbinom.isf(TAIL, r, p))
        while True:
            low = stats.nbinom.sf(q, r, p) >= TAIL
            if not low.any():
                break
            q[low] += 1
        best = max(best, int(q.max()) + 1)
    return best
