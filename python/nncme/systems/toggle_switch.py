"""Genetic toggle switch with explicit gene states (bimodal joint distribution)."""

from __future__ import annotations

from ..network import Reaction, ReactionNetwork
from ._common import check_int, check_rate, nice_step


def toggle_switch(
    production: float = 50.0,
    degradation: float = 1.0,
    binding: float = 1e-4,
    unbinding: float = 0.1,
    protein_limit: int = 80,
    t_end: float = 40.0,
    dt: float | None = None,
) -> ReactionNetwork:
    """Two genes whose proteins repress each other by binding as dimers to the other gene.

    Species G_A, G_B (1 = gene free and active, 0 = gene bound by two repressors) and the
    proteins P_A, P_B. Reactions, for (X, Y) = (A, B) and (B, A):

        G_X -> G_X + P_X        production (only a free gene transcribes)
        P_X -> 0                degradation
        G_Y + 2 P_X -> 0        two P_X bind and silence gene Y  (G_Y: 1 -> 0)
        0 -> G_Y + 2 P_X        unbinding (G_Y: 0 -> 1, the two proteins return)

    The unbinding reaction can only fire from G_Y = 0: the gene limit is 2, so from G_Y = 1 its
    product state leaves the box and the truncation rule (DESIGN section 1) forbids it. This is
    exactly the gene-state mask of the reference implementation. Do not raise the gene limits.

    Source: Tang, Weng & Zhang, "Neural-network solutions to stochastic reaction networks",
    Nat. Mach. Intell. 5, 376 (2023), toggle-switch example; code: NNCME repository
    (Machine-learning-and-complex-systems/NNCME, Code/ToggleSwitch.sh and
    NNCME-2/nncme/systems/toggle_switch.py): production 50, degradation 1, binding 1e-4,
    unbinding 0.1, initial G_A = G_B = 1, P_A = P_B = 0, protein limit 80, 8000 steps of
    dt = 0.005 (t_end = 40). Propensity convention: "power" (n^r), as in that code, so binding
    fires at binding * G_Y * P_X^2.

    Limits: genes 2 (states 0, 1); proteins `protein_limit` = 80 as published. A free gene's
    protein is bounded by Poisson(production/degradation) = Poisson(50) (tail beyond 80:
    5.7e-5). FSP of the untruncated network (limit 110) puts 2.7e-5 of the mass at
    P_A >= 80 by t = 40 and gives a 1e-8 limit of 94; with the limit 80, 1.7e-5 sits at the
    box edge P_A = 79. Pass protein_limit=95 for a tail below 1e-8. dt keeps
    dt * (max total propensity over the box, 259) <= 0.25 (dt = 5e-4; the published 0.005
    gives 1.3 there).

    Args:
        production: transcription-translation rate of a free gene (proteins per time).
        degradation: protein degradation rate (1/time).
        binding: rate constant of two proteins binding the other gene.
        unbinding: rate of the bound repressor pair leaving (1/time).
        protein_limit: count limit of P_A and P_B.
        t_end: end of the time span.
        dt: VAN time step (default: from the propensity bound).
    """
    name = "toggle_switch"
    s = check_rate(production, f"{name}: production")
    d = check_rate(degradation, f"{name}: degradation")
    b = check_rate(binding, f"{name}: binding")
    u = check_rate(unbinding, f"{name}: unbinding")
    M = check_int(protein_limit, f"{name}: protein_limit", minimum=3)
    t_end = check_rate(t_end, f"{name}: t_end", positive=True)
    reactions = [
        Reaction({"G_A": 1}, {"G_A": 1, "P_A": 1}, s, "produce_A"),
        Reaction({"G_B": 1}, {"G_B": 1, "P_B": 1}, s, "produce_B"),
        Reaction({"P_A": 1}, {}, d, "degrade_A"),
        Reaction({"P_B": 1}, {}, d, "degrade_B"),
        Reaction({"G_B": 1, "P_A": 2}, {}, b, "A_binds_B"),
        Reaction({"G_A": 1, "P_B": 2}, {}, b, "B_binds_A"),
        Reaction({}, {"G_B": 1, "P_A": 2}, u, "A_unbinds_B"),
        Reaction({}, {"G_A": 1, "P_B": 2}, u, "B_unbinds_A"),
    ]
    top = M - 1
    bound = 2 * s + 2 * d * top + 2 * b * top**2 + 2 * u
    if dt is None:
        dt = nice_step(bound, cap=t_end / 100)
    return ReactionNetwork(
        {"G_A": 2, "G_B": 2, "P_A": M, "P_B": M},
        reactions,
        {"G_A": 1, "G_B": 1, "P_A": 0, "P_B": 0},
        name=name,
        convention="power",
        conservation=[],
        t_end=t_end,
        dt=dt,
        description="genetic toggle switch with gene states (bimodal)",
        source="Tang, Weng & Zhang, Nat. Mach. Intell. 5, 376 (2023); NNCME repository "
        "(Machine-learning-and-complex-systems/NNCME) toggle_switch",
        parameters=dict(
            production=s,
            degradation=d,
            binding=b,
            unbinding=u,
            protein_limit=M,
            t_end=t_end,
            dt=dt,
        ),
    )
