"""Autoregulatory feedback loop: a gene switching between free and protein-bound states."""

from __future__ import annotations

from ..network import NetworkError, Reaction, ReactionNetwork
from ._common import check_int, check_rate, nice_step, poisson_limit

# (sigma_u, sigma_b, rho_u, rho_b): the three parameter sets of Sukys, Öcal & Grima (2022),
# shown there at t = 10, 25 and 100 respectively.
PARAMETER_SETS = {
    1: (0.94, 0.01, 8.40, 28.1),
    2: (0.69, 0.07, 7.2, 40.6),
    3: (0.44, 0.08, 0.94, 53.1),
}
SET_TIMES = {1: 10.0, 2: 25.0, 3: 100.0}


def autoregulation(
    parameter_set: int = 1,
    sigma_u: float | None = None,
    sigma_b: float | None = None,
    rho_u: float | None = None,
    rho_b: float | None = None,
    decay: float = 1.0,
    t_end: float | None = None,
    dt: float | None = None,
    limit: int | None = None,
) -> ReactionNetwork:
    """Autoregulatory feedback loop: the protein binds its own gene and changes its output.

    Species G_u (free gene), G_b (gene bound by one protein), P (protein); G_u + G_b = 1 is
    conserved (detected). Reactions:

        G_u + P -> G_b        sigma_b   (binding)
        G_b -> G_u + P        sigma_u   (unbinding)
        G_u -> G_u + P        rho_u     (production from the free gene)
        G_b -> G_b + P        rho_b     (production from the bound gene)
        P -> 0                decay

    Parameters: (sigma_u, sigma_b, rho_u, rho_b) from `parameter_set` 1, 2 or 3 =
    (0.94, 0.01, 8.40, 28.1), (0.69, 0.07, 7.2, 40.6), (0.44, 0.08, 0.94, 53.1), decay 1, as in
    Sukys, Öcal & Grima, "Approximating solutions of the chemical master equation using neural
    networks", iScience 25, 105010 (2022) (code: augustinas1/Nessie, afl/; set 3 is written
    53.13 there) and the NNCME-2 afl system; each of the four rates can be overridden. Initial
    state: gene free, no protein (as in Nessie's FSP). All propensities are first order or
    bimolecular between distinct species, so the conventions agree.

    Limits: genes 2; protein: P + G_b is produced at rate <= max(rho_u, rho_b) and lost at
    rate decay per free protein, so P <= 1 + Poisson(max(rho_u, rho_b)/decay) and the limit
    is that bound's 1e-8 quantile (P < 65, 83, 101 for sets 1, 2, 3). Time span: the time at
    which the paper shows each set (10, 25, 100); dt keeps dt * (total propensity bound) <= 0.25.

    Args:
        parameter_set: 1, 2 or 3.
        sigma_u, sigma_b, rho_u, rho_b: override the set's values.
        decay: protein decay rate (1/time).
        t_end: end of the time span (default: the set's time).
        dt: VAN time step (default: from the propensity bound).
        limit: protein count limit (default: the bound above).
    """
    name = "autoregulation"
    ps = check_int(parameter_set, f"{name}: parameter_set", minimum=1)
    if ps not in PARAMETER_SETS:
        raise NetworkError(f"{name}: parameter_set must be 1, 2 or 3, got {parameter_set!r}")
    base = dict(zip(("sigma_u", "sigma_b", "rho_u", "rho_b"), PARAMETER_SETS[ps]))
    given = dict(sigma_u=sigma_u, sigma_b=sigma_b, rho_u=rho_u, rho_b=rho_b)
    rates = {
        key: check_rate(base[key] if value is None else value, f"{name}: {key}")
        for key, value in given.items()
    }
    decay = check_rate(decay, f"{name}: decay", positive=True)
    t_end = SET_TIMES[ps] if t_end is None else check_rate(t_end, f"{name}: t_end", positive=True)
    rho = max(rates["rho_u"], rates["rho_b"])
    M = (
        poisson_limit(rho / decay, offset=1)
        if limit is None
        else check_int(limit, f"{name}: limit", minimum=2)
    )
    if dt is None:
        top = M - 1
        bound = rates["sigma_u"] + rates["sigma_b"] * top + rho + decay * top
        dt = nice_step(bound, cap=t_end / 100)
    reactions = [
        Reaction({"G_u": 1, "P": 1}, {"G_b": 1}, rates["sigma_b"], "binding"),
        Reaction({"G_b": 1}, {"G_u": 1, "P": 1}, rates["sigma_u"], "unbinding"),
        Reaction({"G_u": 1}, {"G_u": 1, "P": 1}, rates["rho_u"], "production_free"),
        Reaction({"G_b": 1}, {"G_b": 1, "P": 1}, rates["rho_b"], "production_bound"),
        Reaction({"P": 1}, {}, decay, "decay"),
    ]
    return ReactionNetwork(
        {"G_u": 2, "G_b": 2, "P": M},
        reactions,
        {"G_u": 1, "G_b": 0, "P": 0},
        name=name,
        t_end=t_end,
        dt=dt,
        description="autoregulatory feedback loop (gene free/bound, protein)",
        source="Sukys, Öcal & Grima, iScience 25, 105010 (2022); code augustinas1/Nessie afl",
        parameters=dict(parameter_set=ps, **rates, decay=decay, t_end=t_end, dt=dt, limit=M),
    )
