"""Birth-death process with a sinusoidally modulated birth rate (time-dependent rates)."""

from __future__ import annotations

import math

from ..network import NetworkError, Reaction, ReactionNetwork, Sinusoidal
from ._common import check_int, check_rate, nice_step, poisson_limit


def birth_death_sinusoidal(
    c: float = 10.0,
    a: float = 0.5,
    omega: float = 1.0,
    phi: float = 0.0,
    gamma: float = 1.0,
    n0: int = 0,
    t_end: float = 20.0,
    dt: float | None = None,
    limit: int | None = None,
) -> ReactionNetwork:
    """Birth-death with birth rate c (1 + a sin(omega t + phi)) and degradation gamma * n.

    A monomolecular network with time-dependent rates keeps a Poisson law (Jahnke & Huisinga,
    J. Math. Biol. 54, 1 (2007)): from n0 = 0, X(t) ~ Poisson(lambda(t)) with
    d lambda/dt = c (1 + a sin(omega t + phi)) - gamma lambda, an exact oracle for solvers with
    time-dependent rates.

    Parameters (a test problem chosen here, not from a paper): c = 10 molecules/time, a = 0.5,
    omega = 1 rad/time, phi = 0, gamma = 1 /time, n0 = 0. First-order propensities, so all
    mass-action conventions agree. Limit: X(t) <= n0 + Poisson(c (1 + |a|) / gamma), giving the
    smallest M with a tail < 1e-8 (M = 42 at the defaults). Time span: t_end = 20, about three
    periods of the forcing; dt keeps dt * (c (1 + |a|) + gamma (M-1)) <= 0.25.

    Args:
        c: mean birth rate (molecules per time).
        a: relative amplitude, |a| <= 1.
        omega: angular frequency (rad per time).
        phi: phase (rad).
        gamma: degradation rate per molecule (1/time).
        n0: initial count.
        t_end: end of the time span.
        dt: VAN time step (default: from the propensity bound).
        limit: count limit (default: the 1e-8 Poisson bound above).
    """
    name = "birth_death_sinusoidal"
    c = check_rate(c, f"{name}: c")
    gamma = check_rate(gamma, f"{name}: gamma", positive=True)
    a, omega, phi = float(a), float(omega), float(phi)
    if not (math.isfinite(a) and abs(a) <= 1):
        raise NetworkError(f"{name}: a: the amplitude must satisfy |a| <= 1, got {a!r}")
    if not (math.isfinite(omega) and math.isfinite(phi)):
        raise NetworkError(f"{name}: omega and phi must be finite, got {omega!r}, {phi!r}")
    n0 = check_int(n0, f"{name}: n0")
    t_end = check_rate(t_end, f"{name}: t_end", positive=True)
    peak = c * (1 + abs(a))
    if limit is None:
        M = poisson_limit(peak / gamma, offset=n0)
    else:
        M = check_int(limit, f"{name}: limit", minimum=1)
    if dt is None:
        dt = nice_step(peak + gamma * (M - 1), cap=t_end / 100)
    return ReactionNetwork(
        {"X": M},
        [
            Reaction({}, {"X": 1}, Sinusoidal(c, a, omega, phi), "birth"),
            Reaction({"X": 1}, {}, gamma, "death"),
        ],
        {"X": n0},
        name=name,
        conservation=[],
        t_end=t_end,
        dt=dt,
        description="birth-death with a sinusoidal birth rate (time-dependent, Poisson law)",
        source="Poisson law for time-dependent monomolecular networks: Jahnke & Huisinga, "
        "J. Math. Biol. 54, 1 (2007)",
        parameters=dict(
            c=c, a=a, omega=omega, phi=phi, gamma=gamma, n0=n0, t_end=t_end, dt=dt, limit=M
        ),
    )
