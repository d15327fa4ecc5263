"""Birth-death process: the one system with a closed-form solution at every time."""

from __future__ import annotations

from ..network import Reaction, ReactionNetwork
from ._common import check_int, check_rate, nice_step, poisson_limit


def birth_death(
    k: float = 10.0,
    gamma: float = 1.0,
    n0: int = 0,
    t_end: float = 10.0,
    dt: float | None = None,
    limit: int | None = None,
) -> ReactionNetwork:
    """Birth-death process: 0 -> X at rate k, X -> 0 at rate gamma * n.

    The exact solution is X(t) ~ Binomial(n0, e^{-gamma t}) + Poisson(k/gamma (1 - e^{-gamma t}))
    (Jahnke & Huisinga, J. Math. Biol. 54, 1 (2007), monomolecular networks); it starts as a
    delta at n0 and relaxes to Poisson(k/gamma) on the time scale 1/gamma.

    Parameters (defaults are a textbook choice, not from a paper): k = 10 molecules/time,
    gamma = 1 /time, n0 = 0. Propensities are first order, so every mass-action convention
    agrees. Limit: X(t) <= n0 + Poisson(k/gamma) stochastically, so the count limit is the
    smallest M with P(n0 + Poisson(k/gamma) >= M) < 1e-8 (M = 33 at the defaults). Time span:
    t_end = 10/gamma (relaxed to 1 - e^{-10}); dt keeps dt * (k + gamma (M-1)) <= 0.25.

    Args:
        k: birth rate (molecules per time).
        gamma: degradation rate per molecule (1/time).
        n0: initial count.
        t_end: end of the time span.
        dt: VAN time step (default: from the propensity bound).
        limit: count limit M (default: the 1e-8 Poisson bound above).
    """
    k = check_rate(k, "birth_death: k")
    gamma = check_rate(gamma, "birth_death: gamma", positive=True)
    n0 = check_int(n0, "birth_death: n0")
    t_end = check_rate(t_end, "birth_death: t_end", positive=True)
    M = (
        poisson_limit(k / gamma, offset=n0)
        if limit is None
        else check_int(limit, "birth_death: limit", minimum=1)
    )
    if dt is None:
        dt = nice_step(k + gamma * (M - 1), cap=t_end / 100)
    return ReactionNetwork(
        {"X": M},
        [Reaction({}, {"X": 1}, k, "birth"), Reaction({"X": 1}, {}, gamma, "death")],
        {"X": n0},
        name="birth_death",
        conservation=[],
        t_end=t_end,
        dt=dt,
        description="birth-death process with a Poisson solution",
        source="analytic solution: Jahnke & Huisinga, J. Math. Biol. 54, 1 (2007)",
        parameters=dict(k=k, gamma=gamma, n0=n0, t_end=t_end, dt=dt, limit=M),
    )
