"""Early-life self-replicators: noise-induced homochirality with a conserved total."""

from __future__ import annotations

from ..network import NetworkError, Reaction, ReactionNetwork
from ._common import chain_limit, check_int, check_rate, nice_step


def self_replicator(
    ka: float = 1.0,
    kn: float = 1.0,
    kd: float = 1.0,
    V: float = 1.0,
    A0: int = 2,
    L0: int = 49,
    D0: int = 49,
    t_end: float = 8.0,
    dt: float | None = None,
    substrate_limit: int | None = None,
) -> ReactionNetwork:
    """Left- and right-handed self-replicators competing for one achiral substrate.

    Species A (achiral substrate), X_L and X_D (the two chiral replicators). Reactions:

        A + X_L -> 2 X_L    ka / V     autocatalytic replication
        A + X_D -> 2 X_D    ka / V
        A -> X_L            kn         non-catalytic production
        A -> X_D            kn
        X_L -> A            kd         decay back to substrate
        X_D -> A            kd

    A + X_L + X_D = N is conserved (detected). Intrinsic noise drives the racemic state
    (X_L = X_D) towards homochirality even though the deterministic dynamics keep it racemic:
    Jafarpour, Biancalani & Goldenfeld, Phys. Rev. Lett. 115, 158101 (2015).

    Source of the parameters: the early-life example of Tang, Weng & Zhang, Nat. Mach. Intell.
    5, 376 (2023), code NNCME-1/Code/EarlyLife.py and EarlyLife.sh (Machine-learning-and-
    complex-systems/NNCME): ka = kn = kd = 1, V = 1, (A, X_L, X_D) = (2, 49, 49), N = 100,
    t_end = 8 (20000 steps of 4e-4), substrate limit 10. Propensities are bimolecular between
    distinct species: all conventions agree.

    Limits: X_L, X_D: N + 1 (conservation). A alone is a birth-death chain (birth
    kd (N - A), death A (ka/V (N - A) + 2 kn)), so its limit is computed exactly: the smallest
    M with P(A_t >= M) < 1e-8 over [0, t_end] (M = 11 at the defaults; the published 10 leaves
    1.0e-7). dt keeps dt * (total propensity bound over the box) <= 0.25.

    Args:
        ka: replication rate constant (times V: per A-X pair per time is ka / V).
        kn: non-catalytic production rate (1/time).
        kd: decay rate (1/time).
        V: volume (system size).
        A0, L0, D0: initial counts of A, X_L, X_D.
        t_end: end of the time span.
        dt: VAN time step (default: from the propensity bound).
        substrate_limit: count limit of A (default: exact 1e-8 tail).
    """
    name = "self_replicator"
    ka = check_rate(ka, f"{name}: ka")
    kn = check_rate(kn, f"{name}: kn")
    kd = check_rate(kd, f"{name}: kd")
    V = check_rate(V, f"{name}: V", positive=True)
    A0 = check_int(A0, f"{name}: A0")
    L0 = check_int(L0, f"{name}: L0")
    D0 = check_int(D0, f"{name}: D0")
    N = A0 + L0 + D0
    if N == 0:
        raise NetworkError(f"{name}: the total A0 + L0 + D0 is zero")
    t_end = check_rate(t_end, f"{name}: t_end", positive=True)
    kr = ka / V
    if substrate_limit is None:
        MA = chain_limit(
            lambda a: kd * (N - a),
            lambda a: a * (kr * (N - a) + 2 * kn),
            A0,
            t_end,
            start=N + 1,
            max_states=N + 1,
        )
    else:
        MA = check_int(substrate_limit, f"{name}: substrate_limit", minimum=1)
    MA = min(max(MA, A0 + 1), N + 1)
    if dt is None:
        a_top = MA - 1
        bound = kr * a_top * N + 2 * kn * a_top + kd * N
        dt = nice_step(bound, cap=t_end / 100)
    return ReactionNetwork(
        {"A": MA, "X_L": N + 1, "X_D": N + 1},
        [
            Reaction({"A": 1, "X_L": 1}, {"X_L": 2}, kr, "replicate_L"),
            Reaction({"A": 1, "X_D": 1}, {"X_D": 2}, kr, "replicate_D"),
            Reaction({"A": 1}, {"X_L": 1}, kn, "produce_L"),
            Reaction({"A": 1}, {"X_D": 1}, kn, "produce_D"),
            Reaction({"X_L": 1}, {"A": 1}, kd, "decay_L"),
            Reaction({"X_D": 1}, {"A": 1}, kd, "decay_D"),
        ],
        {"A": A0, "X_L": L0, "X_D": D0},
        name=name,
        t_end=t_end,
        dt=dt,
        description="early-life self-replicators: homochirality, conserved A + X_L + X_D",
        source="Jafarpour, Biancalani & Goldenfeld, PRL 115, 158101 (2015); Tang, Weng & Zhang, "
        "Nat. Mach. Intell. 5, 376 (2023), NNCME-1/Code/EarlyLife.py",
        parameters=dict(
            ka=ka,
            kn=kn,
            kd=kd,
            V=V,
            A0=A0,
            L0=L0,
            D0=D0,
            t_end=t_end,
            dt=dt,
            substrate_limit=MA,
        ),
    )
