"""MAPK: ERK dual phosphorylation by MEK with the MKP3 phosphatase (16 species, 35 reactions)."""

from __future__ import annotations

from ..network import Reaction, ReactionNetwork
from ._common import check_int, check_rate, poisson_limit

# Species, in the order of the NNCME-2 code. K is ERK (the MAP kinase), pY / pT / pp its
# tyrosine-, threonine- and doubly phosphorylated forms; X_Y_Z are the enzyme-substrate
# complexes of Markevich et al. (2004), suffix _Y / _T the site being processed.
SPECIES = (
    "MEK", "MKP3", "K", "KpY", "KpT", "Kpp",
    "K_MEK_Y", "K_MEK_T", "KpY_MEK", "KpT_MEK",
    "Kpp_MKP3", "KpY_MKP3", "KpT_MKP3_Y", "KpT_MKP3_T", "K_MKP3_T", "K_MKP3_Y",
)  # fmt: skip
ERK_FREE = ("K", "KpY", "KpT", "Kpp")
MEK_COMPLEXES = ("K_MEK_Y", "K_MEK_T", "KpY_MEK", "KpT_MEK")
MKP3_COMPLEXES = ("Kpp_MKP3", "KpY_MKP3", "KpT_MKP3_Y", "KpT_MKP3_T", "K_MKP3_T", "K_MKP3_Y")

# Rate constants of the NNCME-2 example (1/time, or per molecule pair per time).
RATES = dict(
    s2=0.001, d2=0.15, s3=0.005, s1=0.00024, d1=0.0001,
    k1=0.375, k_1=1.0, k2=0.06, k3=0.375, k_3=1.0, k4=4.5,
    k5=0.375, k_5=1.0, k6=0.06, k7=0.375, k_7=1.0, k8=4.5,
    h1=0.015, h_1=1.0, h2=0.032, h3=0.31, h_3=0.01, h4=0.01, h_4=1.0, h5=0.5,
    h6=0.086, h_6=0.0011, h7=0.01, h_7=1.0, h8=0.47, h9=0.14, h_9=0.0018,
)  # fmt: skip


def _reactions(c: dict[str, float], turnover: bool) -> list[Reaction]:
    def r(reac: dict, prod: dict, key: str, name: str) -> Reaction:
        return Reaction(reac, prod, c[key], name)

    out = []
    if turnover:
        out += [
            r({}, {"MEK": 1}, "s2", "MEK_synthesis"),
            r({"MEK": 1}, {}, "d2", "MEK_degradation"),
            r({"Kpp": 1}, {"Kpp": 1, "MEK": 1}, "s3", "MEK_induction_by_Kpp"),
            r({}, {"K": 1}, "s1", "ERK_synthesis"),
        ]
        out += [r({s: 1}, {}, "d1", f"{s}_degradation") for s in ERK_FREE]
    out += [
        # MEK phosphorylates Y then T, or T then Y (distributive, random order)
        r({"MEK": 1, "K": 1}, {"K_MEK_Y": 1}, "k1", "MEK_binds_K_Y"),
        r({"K_MEK_Y": 1}, {"MEK": 1, "K": 1}, "k_1", "K_MEK_Y_dissociates"),
        r({"K_MEK_Y": 1}, {"MEK": 1, "KpY": 1}, "k2", "Y_phosphorylation"),
        r({"MEK": 1, "KpY": 1}, {"KpY_MEK": 1}, "k3", "MEK_binds_KpY"),
        r({"KpY_MEK": 1}, {"MEK": 1, "KpY": 1}, "k_3", "KpY_MEK_dissociates"),
        r({"KpY_MEK": 1}, {"MEK": 1, "Kpp": 1}, "k4", "KpY_T_phosphorylation"),
        r({"MEK": 1, "K": 1}, {"K_MEK_T": 1}, "k5", "MEK_binds_K_T"),
        r({"K_MEK_T": 1}, {"MEK": 1, "K": 1}, "k_5", "K_MEK_T_dissociates"),
        r({"K_MEK_T": 1}, {"MEK": 1, "KpT": 1}, "k6", "T_phosphorylation"),
        r({"MEK": 1, "KpT": 1}, {"KpT_MEK": 1}, "k7", "MEK_binds_KpT"),
        r({"KpT_MEK": 1}, {"MEK": 1, "KpT": 1}, "k_7", "KpT_MEK_dissociates"),
        r({"KpT_MEK": 1}, {"MEK": 1, "Kpp": 1}, "k8", "KpT_Y_phosphorylation"),
        # MKP3 removes Y from Kpp, then T; or Y from KpY
        r({"MKP3": 1, "Kpp": 1}, {"Kpp_MKP3": 1}, "h1", "MKP3_binds_Kpp"),
        r({"Kpp_MKP3": 1}, {"MKP3": 1, "Kpp": 1}, "h_1", "Kpp_MKP3_dissociates"),
        r({"Kpp_MKP3": 1}, {"KpT_MKP3_Y": 1}, "h2", "Kpp_Y_dephosphorylation"),
        r({"KpT_MKP3_Y": 1}, {"MKP3": 1, "KpT": 1}, "h3", "KpT_MKP3_Y_dissociates"),
        r({"MKP3": 1, "KpT": 1}, {"KpT_MKP3_Y": 1}, "h_3", "MKP3_binds_KpT_Y"),
        r({"MKP3": 1, "KpT": 1}, {"KpT_MKP3_T": 1}, "h4", "MKP3_binds_KpT_T"),
        r({"KpT_MKP3_T": 1}, {"MKP3": 1, "KpT": 1}, "h_4", "KpT_MKP3_T_dissociates"),
        r({"KpT_MKP3_T": 1}, {"K_MKP3_T": 1}, "h5", "KpT_T_dephosphorylation"),
        r({"K_MKP3_T": 1}, {"MKP3": 1, "K": 1}, "h6", "K_MKP3_T_dissociates"),
        r({"MKP3": 1, "K": 1}, {"K_MKP3_T": 1}, "h_6", "MKP3_binds_K_T"),
        r({"MKP3": 1, "KpY": 1}, {"KpY_MKP3": 1}, "h7", "MKP3_binds_KpY"),
        r({"KpY_MKP3": 1}, {"MKP3": 1, "KpY": 1}, "h_7", "KpY_MKP3_dissociates"),
        r({"KpY_MKP3": 1}, {"K_MKP3_Y": 1}, "h8", "KpY_Y_dephosphorylation"),
        r({"K_MKP3_Y": 1}, {"MKP3": 1, "K": 1}, "h9", "K_MKP3_Y_dissociates"),
        r({"MKP3": 1, "K": 1}, {"K_MKP3_Y": 1}, "h_9", "MKP3_binds_K_Y"),
    ]
    return out


def mapk(
    turnover: bool = True,
    MKP3_0: int = 1,
    K0: int = 3,
    MEK0: int | None = None,
    t_end: float = 5000.0,
    dt: float = 0.01,
    limit: int | None = None,
    **rates: float,
) -> ReactionNetwork:
    """ERK (K) dual phosphorylation by MEK and dephosphorylation by MKP3, with turnover.

    The elementary random-order mechanism of Markevich, Hoek & Kholodenko, J. Cell Biol. 164,
    353 (2004) (BioModels BIOMD0000000028, 16 species, 27 elementary reactions: MEK binds ERK
    and phosphorylates Y or T first, MKP3 dephosphorylates), plus the 8 turnover reactions of
    the NNCME-2 example: MEK synthesis, degradation and induction by Kpp; ERK synthesis and
    degradation of the four free ERK forms. That is 16 species and 35 reactions, with the rate
    constants and initial state (MKP3 = 1, K = 3, all else 0) of the NNCME-2 code
    (Machine-learning-and-complex-systems/NNCME, NNCME-2/nncme/systems/mapk.py and MAPK.sh:
    dt = 0.01, limit 10, 5e5 steps: t_end = 5000). Every rate is a keyword (s1, s2, s3, d1,
    d2, k1..k8, k_1.., h1..h9, h_1..; see RATES). Bimolecular reactions join distinct species:
    all conventions agree.

    Conservation laws (detected from the stoichiometry): with turnover only the MKP3 total
    (MKP3 + its six complexes = MKP3_0) is conserved, since MEK and ERK are synthesised and
    degraded. With `turnover=False` (the closed Markevich core, 27 reactions) the MEK, MKP3
    and ERK totals are all conserved; MEK0 then defaults to 1 (0 with turnover: MEK is made).

    Limits: closed core: from the conserved totals (exact). With turnover: species holding
    MKP3 are bounded by MKP3_0; the ERK total is at most K0 + Poisson(s1 t_end) (synthesis
    without loss), giving a 1e-8 bound E for every ERK form and complex; the MEK total is at
    most (E - 1) + Poisson((s2 + s3 (E - 1)) / d2), giving free MEK's limit (ERK forms < 15 and
    free MEK < 23 at the defaults). `limit` overrides the limit of every species not holding MKP3
    (limit=10 reproduces NNCME-2). dt: the published 0.01. An SSA at the defaults (2000
    trajectories to t = 5000, states recorded at 1001 times) saw total propensities of at most
    7.6 (dt * a0 <= 0.08) and counts of at most MEK 4, free ERK 9, Kpp 8.

    Args:
        turnover: include the 8 synthesis/degradation reactions (the published 35).
        MKP3_0, K0: initial MKP3 and ERK counts.
        MEK0: initial MEK (default 0 with turnover, 1 without).
        t_end: end of the time span.
        dt: VAN time step.
        limit: count limit of every species that does not hold MKP3 (default: the bounds).
        **rates: overrides of the rate constants in RATES.
    """
    name = "mapk"
    unknown = sorted(set(rates) - set(RATES))
    if unknown:
        from ..network import NetworkError

        raise NetworkError(
            f"{name}: unknown rate {', '.join(map(repr, unknown))}; rates: {', '.join(RATES)}"
        )
    c = {key: check_rate(rates.get(key, v), f"{name}: {key}") for key, v in RATES.items()}
    turnover = bool(turnover)
    P0 = check_int(MKP3_0, f"{name}: MKP3_0")
    K0 = check_int(K0, f"{name}: K0")
    E0 = (0 if turnover else 1) if MEK0 is None else check_int(MEK0, f"{name}: MEK0")
    t_end = check_rate(t_end, f"{name}: t_end", positive=True)
    dt = check_rate(dt, f"{name}: dt", positive=True)
    if turnover:
        erk = poisson_limit(c["s1"] * t_end, offset=K0)  # ERK total < erk
        mek = poisson_limit((c["s2"] + c["s3"] * (erk - 1)) / c["d2"], offset=erk - 1)
    else:
        erk, mek = K0 + 1, E0 + 1
    if limit is not None:
        erk = mek = check_int(limit, f"{name}: limit", minimum=1)
    limits = {s: erk for s in SPECIES}
    limits["MEK"] = mek
    for s in MEK_COMPLEXES:
        limits[s] = min(erk, mek)
    for s in ("MKP3", *MKP3_COMPLEXES):
        limits[s] = min(P0 + 1, erk) if s != "MKP3" else P0 + 1
    return ReactionNetwork(
        limits,
        _reactions(c, turnover),
        {"MEK": E0, "MKP3": P0, "K": K0},
        name=name,
        t_end=t_end,
        dt=dt,
        description="MAPK: ERK dual phosphorylation by MEK, MKP3 phosphatase (16 species)",
        source="Markevich, Hoek & Kholodenko, J. Cell Biol. 164, 353 (2004) (BIOMD0000000028); "
        "turnover and rates of the NNCME-2 example (NNCME-2/nncme/systems/mapk.py)",
        parameters=dict(
            turnover=turnover, MKP3_0=P0, K0=K0, MEK0=E0, t_end=t_end, dt=dt, limit=limit, **c
        ),
    )
