"""SIRS epidemic with seasonally forced infection: time-dependent rates and a conserved total."""

from __future__ import annotations

import math

from ..network import NetworkError, Reaction, ReactionNetwork, Sinusoidal
from ._common import check_int, check_rate, nice_step


def sirs(
    beta: float = 0.003,
    epsilon: float = 0.2,
    period: float = 6.0,
    gamma: float = 0.02,
    xi: float = 0.007,
    S0: int = 50,
    I0: int = 10,
    R0: int = 0,
    t_end: float = 20.0,
    dt: float | None = None,
) -> ReactionNetwork:
    """SIRS epidemic in a closed population with a seasonally forced infection rate.

    Reactions (bimolecular between distinct species: all conventions agree):

        S + I -> 2 I    beta (1 + epsilon sin(2 pi t / period))   infection
        I -> R          gamma                                      recovery
        R -> S          xi                                         loss of immunity

    S + I + R = N is conserved (detected from the stoichiometry), so each species' limit is
    N + 1 and nothing is truncated.

    Source: the epidemic example of Tang, Weng & Zhang, Nat. Mach. Intell. 5, 376 (2023),
    code NNCME-1/Code/Epidemic.py (Machine-learning-and-complex-systems/NNCME): beta = 0.003,
    epsilon = 0.2, period 6, gamma = 0.02, xi = 0.007, (S, I, R) = (50, 10, 0), t_end = 20
    (1000 steps of 0.02). That code also removes individuals (S, I, R -> 0 at 0.002, 0.05,
    0.002); they are left out here so that the population, and with it the conservation law,
    is exact. dt keeps dt * (beta (1+|epsilon|) N^2/4 + (gamma + xi) N) <= 0.25 (dt = 0.05 at
    the defaults; the published step was 0.02).

    Args:
        beta: mean infection rate constant (per S-I pair per time).
        epsilon: relative amplitude of the seasonal forcing, |epsilon| <= 1.
        period: period of the forcing (time units).
        gamma: recovery rate (1/time).
        xi: rate of losing immunity (1/time).
        S0, I0, R0: initial counts.
        t_end: end of the time span.
        dt: VAN time step (default: from the propensity bound).
    """
    name = "sirs"
    beta = check_rate(beta, f"{name}: beta")
    epsilon = float(epsilon)
    if not (math.isfinite(epsilon) and abs(epsilon) <= 1):
        raise NetworkError(f"{name}: epsilon: must satisfy |epsilon| <= 1, got {epsilon!r}")
    period = check_rate(period, f"{name}: period", positive=True)
    gamma = check_rate(gamma, f"{name}: gamma")
    xi = check_rate(xi, f"{name}: xi")
    S0 = check_int(S0, f"{name}: S0")
    I0 = check_int(I0, f"{name}: I0")
    R0 = check_int(R0, f"{name}: R0")
    N = S0 + I0 + R0
    if N == 0:
        raise NetworkError(f"{name}: the population S0 + I0 + R0 is empty")
    t_end = check_rate(t_end, f"{name}: t_end", positive=True)
    infection = Sinusoidal(beta, epsilon, 2 * math.pi / period, 0.0)
    if dt is None:
        bound = beta * (1 + abs(epsilon)) * N * N / 4 + (gamma + xi) * N
        dt = nice_step(bound, cap=t_end / 100)
    return ReactionNetwork(
        {"S": N + 1, "I": N + 1, "R": N + 1},
        [
            Reaction({"S": 1, "I": 1}, {"I": 2}, infection, "infection"),
            Reaction({"I": 1}, {"R": 1}, gamma, "recovery"),
            Reaction({"R": 1}, {"S": 1}, xi, "immunity_loss"),
        ],
        {"S": S0, "I": I0, "R": R0},
        name=name,
        t_end=t_end,
        dt=dt,
        description="SIRS epidemic with seasonal forcing (time-dependent, conserved S+I+R)",
        source="Tang, Weng & Zhang, Nat. Mach. Intell. 5, 376 (2023); NNCME repository "
        "NNCME-1/Code/Epidemic.py (deaths removed)",
        parameters=dict(
            beta=beta,
            epsilon=epsilon,
            period=period,
            gamma=gamma,
            xi=xi,
            S0=S0,
            I0=I0,
            R0=R0,
            t_end=t_end,
            dt=dt,
        ),
    )
