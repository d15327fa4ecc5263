"""Schlögl model: the classic bistable one-species network with rare switching."""

from __future__ import annotations

import numpy as np

from ..network import Reaction, ReactionNetwork
from ._common import chain_limit, check_int, check_rate, nice_step


def schlogl(
    c1: float = 3e-7,
    c2: float = 1e-4,
    c3: float = 1e-3,
    c4: float = 3.5,
    A: float = 1e5,
    B: float = 2e5,
    x0: int = 250,
    t_end: float = 5.0,
    dt: float | None = None,
    limit: int | None = None,
) -> ReactionNetwork:
    """Schlögl's model A + 2X <-> 3X, B <-> X with the buffered species A and B held fixed.

    Reactions (binomial mass action, the combinatorial convention of Gillespie's SSA):

        2X -> 3X    c1 A C(X, 2) = c1 A X (X-1) / 2
        3X -> 2X    c2 C(X, 3)   = c2 X (X-1) (X-2) / 6
        0  -> X     c3 B
        X  -> 0     c4 X

    Parameters: c1 = 3e-7, c2 = 1e-4, c3 = 1e-3, c4 = 3.5, A = 1e5, B = 2e5, X(0) = 250, the
    standard stochastic benchmark set (Ilie, Enright & Jackson, Can. Appl. Math. Q. 17, 523
    (2009), Table 1, as used in the GreatMod Schlögl model, qBioTurin/epimod, and in
    pysb/examples/schlogl.py, with these same propensities); model of Schlögl, Z. Phys. 253,
    147 (1972); its stochastic analysis: Vellela & Qian, J. R. Soc. Interface 6, 925 (2009).

    Convention: with these constants only the binomial convention is bistable: the
    deterministic rate has stable points X = 85 and 570 and an unstable one at 249, and the
    stationary law peaks at 82 and 563. The falling-factorial and power conventions double
    and sextuple the nonlinear terms and leave a single stable point near X = 160.

    Limit: computed exactly from the one-species chain: the smallest M with P(X_t >= M) < 1e-8
    for all t in [0, t_end] and at stationarity (M = 793 at the defaults). Time span: starting
    at the unstable point, the law splits into the two modes on the relaxation time scale
    (~1 time unit) and is quasi-stationary by t = 5; switching between the modes is far
    rarer. dt keeps dt * (max total propensity below the limit) <= 0.25 (dt = 1e-5).

    Args:
        c1, c2, c3, c4: stochastic rate constants (1/time per molecule combination).
        A, B: buffered copy numbers of A and B.
        x0: initial count of X.
        t_end: end of the time span.
        dt: VAN time step (default: from the propensity bound).
        limit: count limit of X (default: exact 1e-8 tail).
    """
    name = "schlogl"
    c1 = check_rate(c1, f"{name}: c1")
    c2 = check_rate(c2, f"{name}: c2")
    c3 = check_rate(c3, f"{name}: c3")
    c4 = check_rate(c4, f"{name}: c4")
    A = check_rate(A, f"{name}: A")
    B = check_rate(B, f"{name}: B")
    x0 = check_int(x0, f"{name}: x0")
    t_end = check_rate(t_end, f"{name}: t_end", positive=True)
    k1, k3 = c1 * A, c3 * B

    def birth(x: np.ndarray) -> np.ndarray:
        return k1 * x * (x - 1) / 2 + k3

    def death(x: np.ndarray) -> np.ndarray:
        return c2 * x * (x - 1) * (x - 2) / 6 + c4 * x

    if limit is None:
        M = chain_limit(birth, death, x0, t_end)
    else:
        M = check_int(limit, f"{name}: limit", minimum=1)
    M = max(M, x0 + 1)
    if dt is None:
        x = np.arange(M, dtype=np.float64)
        dt = nice_step(float((birth(x) + death(x)).max()), cap=t_end / 100)
    return ReactionNetwork(
        {"X": M},
        [
            Reaction({"X": 2}, {"X": 3}, k1, "autocatalysis"),
            Reaction({"X": 3}, {"X": 2}, c2, "reverse_autocatalysis"),
            Reaction({}, {"X": 1}, k3, "inflow"),
            Reaction({"X": 1}, {}, c4, "outflow"),
        ],
        {"X": x0},
        name=name,
        convention="binomial",
        conservation=[],
        t_end=t_end,
        dt=dt,
        description="Schlögl model: bistable, rare switching between two modes",
        source="Schlögl, Z. Phys. 253, 147 (1972); parameters of Ilie, Enright & Jackson, "
        "Can. Appl. Math. Q. 17, 523 (2009), Table 1",
        parameters=dict(c1=c1, c2=c2, c3=c3, c4=c4, A=A, B=B, x0=x0, t_end=t_end, dt=dt, limit=M),
    )
