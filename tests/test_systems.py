"""The systems catalogue: every system builds, validates, compiles, and its limits hold."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import sparse, stats
from scipy.linalg import expm
from scipy.sparse.linalg import expm_multiply

from nncme import NetworkError, ReactionNetwork, systems
from nncme.systems._common import (
    chain_limit,
    chain_marginals,
    nice_step,
    parse_shape,
    poisson_limit,
)
from nncme.systems.mapk import MKP3_COMPLEXES

# (name, parameters): defaults and a second choice for every system with parameters
CASES = [
    ("birth_death", {}),
    ("birth_death", {"k": 5.0, "gamma": 0.5, "n0": 3}),
    ("birth_death_sinusoidal", {}),
    ("birth_death_sinusoidal", {"a": -0.8, "omega": 2.0, "phi": 1.0}),
    ("toggle_switch", {}),
    ("toggle_switch", {"production": 30.0, "protein_limit": 60}),
    ("schlogl", {}),
    ("schlogl", {"x0": 100, "t_end": 2.0}),
    ("autoregulation", {}),
    ("autoregulation", {"parameter_set": 2}),
    ("autoregulation", {"parameter_set": 3, "rho_b": 20.0}),
    ("cascade", {}),
    ("cascade", {"L": 8, "conversion": True}),
    ("sirs", {}),
    ("sirs", {"S0": 30, "I0": 5, "epsilon": 0.5}),
    ("self_replicator", {}),
    ("self_replicator", {"A0": 0, "L0": 30, "D0": 10, "V": 2.0}),
    ("mapk", {}),
    ("mapk", {"turnover": False}),
    ("reaction_diffusion", {}),
    ("reaction_diffusion", {"shape": "3x3", "kinetics": "birth_death"}),
]


@pytest.fixture(scope="module")
def built() -> dict:
    return {}


def _build(built: dict, name: str, params: dict) -> ReactionNetwork:
    key = (name, tuple(sorted(params.items())))
    if key not in built:
        built[key] = systems.get(name, **params)
    return built[key]


def test_every_system_is_tested():
    assert {name for name, _ in CASES} == set(systems.names())


@pytest.mark.parametrize("name,params", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_system_builds_compiles_and_has_sane_propensities(built, name, params):
    net = _build(built, name, params)
    assert net.name == name
    assert net.description and net.source
    for key, value in params.items():
        assert net.parameters[key] == (value if key != "shape" else "3x3")
    assert net.L >= 1 and net.K >= 1
    assert np.all(net.limits >= 1) and net.in_box(net.initial_state[None])[0]
    assert 0 < net.dt <= net.t_end / 100
    for dtype in (torch.float64, torch.float32):
        c = net.compile("cpu", dtype)
        assert c.rxn_ptr.shape == (net.K + 1,) and c.limits.shape == (net.L,)
        assert c.rates(0.5 * net.t_end).dtype == dtype
    rng = np.random.default_rng(0)
    states = np.concatenate([net.initial_state[None], rng.integers(0, net.limits, (64, net.L))])
    a = net.propensities(torch.as_tensor(states), 0.3 * net.t_end)
    assert a.shape == (65, net.K)
    assert torch.isfinite(a).all() and (a >= 0).all()
    # the first-order VAN step stays a stochastic matrix where the dynamics starts
    assert net.dt * float(a[0].sum()) < 0.5


def test_catalogue_lists_every_system_with_counts():
    entries = systems.catalogue()
    assert [e.name for e in entries] == systems.names()
    by_name = {e.name: e for e in entries}
    assert (by_name["mapk"].species, by_name["mapk"].reactions) == (16, 35)
    assert (by_name["toggle_switch"].species, by_name["toggle_switch"].reactions) == (4, 8)
    assert (by_name["cascade"].species, by_name["cascade"].reactions) == (20, 40)
    assert by_name["cascade"].parameters["L"] == 20
    assert by_name["autoregulation"].parameters["parameter_set"] == 1
    assert by_name["mapk"].parameters["k1"] == 0.375  # rate keywords are listed too
    assert all(e.description for e in entries)


def _laws(net: ReactionNetwork) -> dict[frozenset, int]:
    out = {}
    for law in net.conservation_laws:
        names = frozenset((s, int(w)) for s, w in zip(net.species_names, law.weights.tolist()) if w)
        out[names] = law.total
    return out


def test_conservation_laws_are_detected():
    assert _laws(systems.sirs()) == {frozenset({("S", 1), ("I", 1), ("R", 1)}): 60}
    assert _laws(systems.self_replicator()) == {frozenset({("A", 1), ("X_L", 1), ("X_D", 1)}): 100}
    assert _laws(systems.autoregulation()) == {frozenset({("G_u", 1), ("G_b", 1)}): 1}
    mkp3 = frozenset([("MKP3", 1)] + [(s, 1) for s in MKP3_COMPLEXES])
    # with turnover MEK and ERK are made and degraded: only the MKP3 total is conserved
    assert _laws(systems.mapk()) == {mkp3: 1}
    closed = _laws(systems.mapk(turnover=False))
    erk = {
        "K", "KpY", "KpT", "Kpp", "K_MEK_Y", "K_MEK_T", "KpY_MEK", "KpT_MEK", "Kpp_MKP3",
        "KpY_MKP3", "KpT_MKP3_Y", "KpT_MKP3_T", "K_MKP3_T", "K_MKP3_Y",
    }  # fmt: skip
    mek = {"MEK", "K_MEK_Y", "K_MEK_T", "KpY_MEK", "KpT_MEK"}
    assert closed == {
        mkp3: 1,
        frozenset((s, 1) for s in erk): 3,
        frozenset((s, 1) for s in mek): 1,
    }
    for name in ("toggle_switch", "cascade", "schlogl", "birth_death"):
        assert systems.get(name).conservation_laws == []


def test_mapk_matches_the_published_structure():
    net = systems.mapk()
    assert (net.L, net.K) == (16, 35)
    assert net.initial_state[net.index("MKP3")] == 1 and net.initial_state[net.index("K")] == 3
    assert net.initial_state.sum() == 4
    closed = systems.mapk(turnover=False)
    assert closed.K == 27 and closed.initial_state[closed.index("MEK")] == 1
    # reversible pairs have opposite changes; every reaction is at most bimolecular
    assert net.reactant_matrix.sum(axis=1).max() == 2
    assert systems.mapk(limit=10).limits.max() == 10  # the NNCME-2 setting


# ------------------------------------------------------------------------ exact checks
def _generator(net: ReactionNetwork) -> tuple[sparse.csc_matrix, np.ndarray]:
    """Dense enumeration of the whole box and its CME generator (small networks only)."""
    grids = np.meshgrid(*[np.arange(m) for m in net.limits], indexing="ij")
    states = np.stack([g.ravel() for g in grids], axis=1)
    a = net.propensities(torch.as_tensor(states), 0.0).numpy()
    radix = np.cumprod([1, *net.limits[::-1][:-1].tolist()])[::-1]
    src, dst, val = [], [], []
    for k in range(net.K):
        fire = a[:, k] > 0
        target = (states[fire] + net.change_matrix[k]) @ radix
        src.append(np.nonzero(fire)[0])
        dst.append(target)
        val.append(a[fire, k])
    src, dst, val = map(np.concatenate, (src, dst, val))
    n = states.shape[0]
    Q = sparse.csc_matrix((val, (dst, src)), shape=(n, n))
    Q = Q - sparse.diags(np.asarray(Q.sum(axis=0)).ravel())
    return Q.tocsc(), states


def _max_tail_beyond(net: ReactionNetwork, wide: ReactionNetwork, times: np.ndarray) -> np.ndarray:
    """Max over times of P(n_i >= limit_i of `net`) under the CME on the wider box `wide`."""
    Q, states = _generator(wide)
    p0 = np.all(states == wide.initial_state, axis=1).astype(np.float64)
    if Q.shape[0] <= 1500:  # small: one dense propagator over the time grid's step
        step = expm(Q.toarray() * (times[1] - times[0]))
        P = [p0]
        for _ in times[1:]:
            P.append(step @ P[-1])
        P = np.array(P)
    else:
        P = expm_multiply(Q, p0, start=times[0], stop=times[-1], num=len(times), endpoint=True)
    return np.array([P[:, states[:, i] >= net.limits[i]].sum(axis=1).max() for i in range(net.L)])


def _widen(net: ReactionNetwork, factor: float) -> ReactionNetwork:
    limits = {s.name: max(s.limit, math.ceil(s.limit * factor)) for s in net.species}
    return ReactionNetwork(
        limits,
        net.reactions,
        dict(zip(net.species_names, net.initial_state.tolist())),
        convention=net.convention,
        conservation=[],
        t_end=net.t_end,
        dt=net.dt,
    )


def test_autoregulation_protein_limit_holds_against_the_exact_cme():
    for ps in (1, 3):
        net = systems.autoregulation(parameter_set=ps)
        wide = ReactionNetwork(
            {"G_u": 2, "G_b": 2, "P": int(net.limits[2] * 1.4)},
            net.reactions,
            {"G_u": 1},
            t_end=net.t_end,
            dt=net.dt,
        )
        tail = _max_tail_beyond(net, wide, np.linspace(0, net.t_end, 9))
        assert tail[2] < 1e-8


def test_cascade_limits_hold_against_the_exact_cme():
    # moment-matched negative binomial limits are conservative (FSP: 1e-8 limit 67 < 76)
    net = systems.cascade(L=2)
    tail = _max_tail_beyond(net, _widen(net, 1.6), np.linspace(0, net.t_end, 11))
    assert np.all(tail < 1e-8)


def test_cascade_moments_match_the_exact_cme():
    from nncme.systems.cascade import cascade_moments

    for conversion in (False, True):
        net = systems.cascade(L=2, conversion=conversion)
        wide = _widen(net, 1.6)
        Q, states = _generator(wide)
        p0 = np.all(states == 0, axis=1).astype(np.float64)
        p = expm_multiply(Q * net.t_end, p0)
        mean, var, *_ = cascade_moments(2, 10.0, 5.0, 1.0, conversion, net.t_end)
        np.testing.assert_allclose(p @ states, mean[-1], rtol=1e-6)
        np.testing.assert_allclose(p @ states**2 - (p @ states) ** 2, var[-1], rtol=1e-5)


def test_schlogl_is_bistable_only_in_the_binomial_convention():
    net = systems.schlogl()
    x = torch.arange(net.limits[0]).reshape(-1, 1)
    up = net.change_matrix[:, 0] > 0

    def modes(network: ReactionNetwork) -> list[int]:
        a = network.propensities(x).numpy()
        birth, death = a[:, up].sum(1), a[:, ~up].sum(1)
        lp = np.concatenate([[0.0], np.cumsum(np.log(birth[:-1]) - np.log(death[1:]))])
        return [i for i in range(1, len(lp) - 1) if lp[i] > lp[i - 1] and lp[i] >= lp[i + 1]]

    assert modes(net) == [82, 563]
    falling = ReactionNetwork(
        {"X": int(net.limits[0])}, net.reactions, {"X": 250}, convention="falling"
    )
    assert len(modes(falling)) == 1


def test_schlogl_limit_is_the_exact_tail():
    net = systems.schlogl()
    M = int(net.limits[0])
    assert 700 < M < 900

    def birth(x):
        return 0.03 * x * (x - 1) / 2 + 200.0

    def death(x):
        return 1e-4 * x * (x - 1) * (x - 2) / 6 + 3.5 * x

    laws = chain_marginals(birth, death, 250, net.t_end)
    tails = np.cumsum(laws[:, ::-1], axis=1)[:, ::-1].max(axis=0)
    assert tails[M] < 1e-8 <= tails[M - 1]


def test_chain_marginals_match_the_poisson_solution():
    # 0 -> X at k, X -> 0 at g from x0: Binomial(x0, e^{-gt}) + Poisson(k/g (1 - e^{-gt}))
    k, g, x0, t_end = 10.0, 1.0, 3, 2.0
    laws = chain_marginals(lambda x: k + 0 * x, lambda x: g * x, x0, t_end, num=5)
    n = np.arange(laws.shape[1])
    for row, t in zip(laws[:-1], np.linspace(0, t_end, 5)):
        q = math.exp(-g * t)
        exact = np.convolve(
            stats.binom.pmf(np.arange(x0 + 1), x0, q), stats.poisson.pmf(n, k / g * (1 - q))
        )
        np.testing.assert_allclose(row, exact[: len(n)], atol=1e-12)
    np.testing.assert_allclose(laws[-1], stats.poisson.pmf(n, k / g), atol=1e-12)
    # a start in a very improbable region takes the stiff-ODE path; same answer
    laws = chain_marginals(lambda x: 1 + 0 * x, lambda x: 10 * x, 40, 0.5, num=3)
    q = math.exp(-5.0)
    exact = np.convolve(stats.binom.pmf(np.arange(41), 40, q), stats.poisson.pmf(n, 0.1 * (1 - q)))
    np.testing.assert_allclose(laws[-2], exact[: laws.shape[1]], atol=1e-8)


def test_birth_death_limits_are_the_smallest_poisson_bound():
    net = systems.birth_death(k=20.0, gamma=2.0, n0=0)
    M = int(net.limits[0])
    assert stats.poisson.sf(M - 1, 10.0) < 1e-8 <= stats.poisson.sf(M - 2, 10.0)
    assert poisson_limit(10.0, offset=5) == M + 5
    assert chain_limit(lambda x: 20 + 0 * x, lambda x: 2 * x, 0, 50.0) == M


def test_toggle_switch_gene_states_mask_unbinding():
    net = systems.toggle_switch()
    free = torch.tensor([[1, 1, 10, 10]])
    bound = torch.tensor([[0, 1, 10, 10]])
    a_free, a_bound = net.propensities(free)[0], net.propensities(bound)[0]
    k = net.reaction_names.index("B_unbinds_A")
    assert a_free[k] == 0 and a_bound[k] == pytest.approx(0.1)
    j = net.reaction_names.index("B_binds_A")
    assert a_free[j] == pytest.approx(1e-4 * 10**2) and a_bound[j] == 0  # power convention


def test_reaction_diffusion_lattices():
    chain = systems.reaction_diffusion(shape=5)
    assert chain.L == 5 and chain.K == 5 * 4 + 2 * 4
    grid = systems.get("reaction_diffusion", shape="3x4", kinetics="birth_death")
    assert grid.L == 12 and grid.K == 12 * 2 + 2 * (3 * 3 + 2 * 4)
    hop = grid.reaction_names.index("hop_X1_1_X1_2")
    assert grid.change_matrix[hop, grid.index("X1_1")] == -1
    assert grid.change_matrix[hop, grid.index("X1_2")] == 1
    big = systems.get("reaction_diffusion", shape="32x32")
    assert big.L == 1024 and big.K == 1024 * 4 + 2 * (2 * 32 * 31)
    assert big.compile("cpu").rxn_entries.shape[0] == 1024 * 4 + 2 * 2 * (2 * 32 * 31)


@pytest.mark.parametrize("order", ["snake", "hilbert"])
def test_lattice_site_orders_keep_consecutive_sites_neighbours(order):
    net = systems.get("reaction_diffusion", shape="4x4", kinetics="birth_death", order=order)
    rows = systems.get("reaction_diffusion", shape="4x4", kinetics="birth_death")
    assert sorted(net.species_names) == sorted(rows.species_names)  # the same sites
    assert sorted(net.reaction_names) == sorted(rows.reaction_names)  # the same reactions
    sites = [tuple(int(v) for v in name[1:].split("_")) for name in net.species_names]
    assert all(abs(a[0] - b[0]) + abs(a[1] - b[1]) == 1 for a, b in itertools.pairwise(sites))
    # row-major puts the end of a row next to the start of the next, 4 sites away
    assert rows.species_names[3:5] == ["X0_3", "X1_0"]
    assert net.parameters["order"] == order


def test_lattice_site_order_does_not_change_the_answer():
    """The order only permutes the species: FSP's marginals per site agree."""
    from nncme.exact import solve_fsp

    kw = dict(shape="2x2", kinetics="birth_death", x0=1, k=2, gamma=1, hopping=1, limit=8)
    a = solve_fsp(systems.get("reaction_diffusion", **kw), times=[0.3])
    b = solve_fsp(systems.get("reaction_diffusion", order="snake", **kw), times=[0.3])
    assert a.species != b.species
    for name in a.species:
        i, j = a.species.index(name), b.species.index(name)
        np.testing.assert_allclose(b.marginals[:, j], a.marginals[:, i], atol=1e-12)


# --------------------------------------------------------------------------- helpers, errors
def test_nice_step_and_shapes():
    assert nice_step(100.0) == 0.002
    assert nice_step(1.0, cap=0.05) == 0.05
    assert parse_shape("4x4") == (4, 4) and parse_shape(7) == (7,) and parse_shape([2, 3]) == (2, 3)
    for bad in ("4x4x4", "ax2", 0, (0, 2)):
        with pytest.raises(NetworkError, match="shape"):
            parse_shape(bad)


def test_parse_spec():
    assert systems.parse_spec("cascade") == ("cascade", {})
    assert systems.parse_spec("cascade:L=8, k=2") == ("cascade", {"L": "8", "k": "2"})
    assert systems.parse_spec("reaction_diffusion:shape=(4,4)") == (
        "reaction_diffusion",
        {"shape": "(4,4)"},
    )
    with pytest.raises(NetworkError, match="key=value"):
        systems.parse_spec("cascade:L")


@pytest.mark.parametrize(
    "name,params,message",
    [
        ("nope", {}, "unknown system 'nope'; the catalogue has: birth_death"),
        ("cascade", {"Q": 1}, "cascade: unknown parameter 'Q'; parameters: L, beta"),
        ("cascade", {"L": "abc"}, "cascade: parameter L: expected int, got 'abc'"),
        ("cascade", {"L": 0}, "cascade: L: must be an integer >= 1, got 0"),
        ("birth_death", {"k": -1}, "birth_death: k: must be finite and >= 0, got -1"),
        ("birth_death", {"gamma": 0}, "birth_death: gamma: must be finite and > 0"),
        ("sirs", {"epsilon": 2}, "sirs: epsilon: must satisfy |epsilon| <= 1"),
        ("autoregulation", {"parameter_set": 4}, "parameter_set must be 1, 2 or 3"),
        ("mapk", {"k9": 1.0}, "mapk: unknown parameter 'k9'"),
        ("reaction_diffusion", {"kinetics": "brusselator"}, "kinetics must be one of"),
        ("reaction_diffusion", {"order": "zigzag"}, "order must be one of"),
        ("reaction_diffusion", {"shape": "3x3", "order": "hilbert"}, "side 2^k"),
        ("schlogl", {"c1": float("nan")}, "schlogl: c1: must be finite"),
    ],
)
def test_parameter_errors_name_the_parameter(name, params, message):
    with pytest.raises(NetworkError) as info:
        systems.get(name, **params)
    assert message in str(info.value)


def test_text_parameters_are_converted():
    net = systems.get("cascade", L="3", conversion="true", t_end="0.5")
    assert net.L == 3 and net.parameters["conversion"] is True and net.t_end == 0.5
    assert systems.get("autoregulation", rho_b="20").parameters["rho_b"] == 20.0
    assert systems.get("mapk", k1="0.5").parameters["k1"] == 0.5
