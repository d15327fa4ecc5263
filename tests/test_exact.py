"""FSP against analytic solutions, moment equations and an independent dense generator."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp
from scipy.stats import poisson

from nncme import NetworkError, RateFunction, Reaction, ReactionNetwork, Sinusoidal, conservation
from nncme.exact import FSP, FSPSettings, count_states, enumerate_states, solve_fsp
from nncme.results import BoundaryWarning

from .conftest import random_network

QUIET = dict(quiet=True)


def birth_death(k=10.0, g=1.0, limit=80, rate=None, t_end=5.0) -> ReactionNetwork:
    return ReactionNetwork(
        {"X": limit},
        [Reaction({}, {"X": 1}, k if rate is None else rate, "birth"), Reaction({"X": 1}, {}, g)],
        {"X": 0},
        t_end=t_end,
        dt=0.01,
    )


def sinusoidal_poisson_mean(t, c, a, omega, g):
    """Mean of immigration-death with immigration c(1 + a sin(omega t)), from 0 at t = 0."""
    t = np.asarray(t, dtype=np.float64)
    decay = np.exp(-g * t)
    forced = (g * np.sin(omega * t) - omega * np.cos(omega * t) + omega * decay) / (g**2 + omega**2)
    return c / g * (1 - decay) + c * a * forced


@pytest.mark.parametrize("method", ["uniformization", "expm", "BDF", "DOP853"])
def test_birth_death_is_poisson(method):
    net = birth_death()
    times = np.linspace(0, 5, 26)
    fsp = FSP(net, FSPSettings(method=method, **QUIET))
    P = fsp.solve(times)
    exact = np.stack([poisson.pmf(fsp.states[:, 0], 10 * (1 - np.exp(-t))) for t in times])
    assert np.abs(P - exact).max() < 1e-8
    assert np.abs(P.sum(axis=1) - 1).max() < 1e-10


def test_time_dependent_birth_death_is_poisson():
    c, a, omega, g = 8.0, 0.8, 3.0, 1.0
    net = birth_death(rate=Sinusoidal(c, a, omega), g=g, limit=60)
    times = np.linspace(0, 5, 21)
    fsp = FSP(net, FSPSettings(**QUIET))
    assert fsp.choose_method(5.0) == "DOP853" and fsp.time_dependent
    P = fsp.solve(times)
    mean = sinusoidal_poisson_mean(times, c, a, omega, g)
    exact = np.stack([poisson.pmf(fsp.states[:, 0], m) for m in mean])
    assert np.abs(P - exact).max() < 1e-8
    assert np.abs(P.sum(axis=1) - 1).max() < 1e-10


def test_custom_time_dependent_propensity_matches_named_rate():
    """A custom propensity (operator's slow path) gives the same CME as the named form."""
    c, a, omega = 8.0, 0.5, 2.0

    def birth(states, t):
        return torch.full(
            (states.shape[0],), c * (1 + a * math.sin(omega * t)), dtype=torch.float64
        )

    custom = ReactionNetwork(
        {"X": 40},
        [
            Reaction({}, {"X": 1}, name="birth", propensity=birth, time_dependent=True),
            Reaction({"X": 1}, {}, 1.0),
        ],
        {"X": 0},
        t_end=3,
    )
    named = birth_death(rate=Sinusoidal(c, a, omega), limit=40, t_end=3)
    fn = RateFunction(lambda t: c * (1 + a * math.sin(omega * t)), max_rate=c * (1 + a))
    plain = birth_death(rate=fn, limit=40, t_end=3)
    times = np.linspace(0, 3, 7)
    ref = FSP(named, FSPSettings(**QUIET)).solve(times)
    for net in (custom, plain):
        assert np.abs(FSP(net, FSPSettings(**QUIET)).solve(times) - ref).max() < 1e-8


def test_truncation_rule_gives_truncated_poisson():
    """Births are blocked at the top count: the stationary law is Poisson cut at M - 1."""
    net = birth_death(k=6.0, limit=5, t_end=40)
    with pytest.warns(BoundaryWarning, match="raise the limits of X"):
        result = solve_fsp(net, [0.0, 40.0], FSPSettings(**QUIET))
    pmf = poisson.pmf(np.arange(5), 6.0)
    assert np.abs(result.marginals[-1, 0] - pmf / pmf.sum()).max() < 1e-10
    assert result.boundary[-1] == pytest.approx(pmf[-1] / pmf.sum(), rel=1e-8)


def cascade(L=3, k=3.0, b=1.2, g=1.0, limit=36) -> ReactionNetwork:
    reactions = [Reaction({}, {"X0": 1}, k), Reaction({"X0": 1}, {}, g)]
    for i in range(1, L):
        reactions.append(Reaction({f"X{i - 1}": 1}, {f"X{i - 1}": 1, f"X{i}": 1}, b))
        reactions.append(Reaction({f"X{i}": 1}, {}, g * (1 + 0.3 * i)))
    return ReactionNetwork(
        {f"X{i}": limit for i in range(L)}, reactions, {"X0": 2}, t_end=4, dt=0.01
    )


def cascade_moments(net: ReactionNetwork, times: np.ndarray):
    """Exact means and covariances of a linear network: dm/dt = A m + c,
    dC/dt = A C + C A^T + sum_k s_k s_k^T E[a_k(n)] (E[a_k] linear in m)."""
    L = net.L
    rates = net.rates()
    A = np.zeros((L, L))
    c = np.zeros(L)
    for k in range(net.K):
        s, r = net.change_matrix[k], net.reactant_matrix[k]
        if r.sum() == 0:
            c += rates[k] * s
        else:
            A[:, int(np.argmax(r))] += rates[k] * s

    def mean_prop(m):
        return np.array(
            [
                rates[k] * (m[int(np.argmax(r))] if r.sum() else 1.0)
                for k, r in enumerate(net.reactant_matrix)
            ]
        )

    def rhs(t, y):
        m, C = y[:L], y[L:].reshape(L, L)
        D = np.einsum("k,ki,kj->ij", mean_prop(m), net.change_matrix, net.change_matrix)
        return np.concatenate([A @ m + c, (A @ C + C @ A.T + D).ravel()])

    y0 = np.concatenate([net.initial_state.astype(float), np.zeros(L * L)])
    sol = solve_ivp(rhs, (0, times[-1]), y0, t_eval=times, rtol=1e-12, atol=1e-12, method="DOP853")
    return sol.y[:L].T, sol.y[L:].T.reshape(-1, L, L)


def test_linear_cascade_matches_moment_equations():
    net = cascade()
    times = np.linspace(0, 4, 9)
    result = solve_fsp(net, times, FSPSettings(**QUIET))
    means, covs = cascade_moments(net, times)
    assert result.boundary.max() < 1e-9  # the box is large enough to be exact here
    np.testing.assert_allclose(result.means, means, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(
        result.stds**2, np.diagonal(covs, axis1=1, axis2=2), rtol=1e-6, atol=1e-9
    )
    np.testing.assert_allclose(result.covariances, covs, rtol=1e-6, atol=1e-8)
    total = np.array(result.summary["total_probability"])
    assert np.abs(total - 1).max() < 1e-10


def sir(N=12, forcing=False) -> ReactionNetwork:
    beta = Sinusoidal(0.08, 0.5, 1.0) if forcing else 0.08
    return ReactionNetwork(
        {"S": N + 1, "I": N + 1, "R": N + 1},
        [
            Reaction({"S": 1, "I": 1}, {"I": 2}, beta, "infection"),
            Reaction({"I": 1}, {"R": 1}, 0.3, "recovery"),
            Reaction({"R": 1}, {"S": 1}, 0.1, "waning"),
        ],
        {"S": N - 2, "I": 2},
        t_end=6,
    )


@pytest.mark.parametrize("forcing", [False, True])
def test_conservation_law_shrinks_state_space_exactly(forcing):
    """SIRS on S + I + R = N: the reduced space gives the full box's answer."""
    N = 12
    reduced_net = sir(N, forcing)
    full_net = ReactionNetwork(
        {"S": N + 1, "I": N + 1, "R": N + 1},
        reduced_net.reactions,
        {"S": N - 2, "I": 2},
        conservation=[],
        t_end=6,
    )
    states = enumerate_states(reduced_net)
    assert states.shape[0] == (N + 1) * (N + 2) // 2 == count_states(reduced_net)[0]
    assert np.all(states.sum(axis=1) == N)
    assert np.all(np.diff(np.ravel_multi_index(states.T, (N + 1,) * 3)) > 0)  # sorted
    times = np.linspace(0, 6, 7)
    reduced = solve_fsp(reduced_net, times, FSPSettings(**QUIET))
    full = solve_fsp(full_net, times, FSPSettings(**QUIET))
    assert reduced.summary["states"] < full.summary["states"] == (N + 1) ** 3
    np.testing.assert_allclose(reduced.marginals, full.marginals, atol=1e-9)
    assert np.abs(np.array(reduced.summary["total_probability"]) - 1).max() < 1e-10


@pytest.mark.parametrize("split_tables", [False, True])
def test_overlapping_laws_are_enumerated_exactly(split_tables, monkeypatch):
    """Two laws sharing a species (enzyme E + C and substrate S + C + P); with tiny table
    budgets the feasibility tables are per law (necessary conditions only) and FSP filters."""
    if split_tables:
        monkeypatch.setattr(conservation, "MAX_TABLE_ENTRIES", 10)
    net = ReactionNetwork(
        {"E": 4, "S": 7, "C": 4, "P": 7},
        [
            Reaction({"E": 1, "S": 1}, {"C": 1}, 1.0),
            Reaction({"C": 1}, {"E": 1, "S": 1}, 0.5),
            Reaction({"C": 1}, {"E": 1, "P": 1}, 0.7),
        ],
        {"E": 3, "S": 6},
    )
    states = enumerate_states(net)
    box = np.stack(np.unravel_index(np.arange(4 * 7 * 4 * 7), (4, 7, 4, 7)), axis=1)
    keep = np.ones(box.shape[0], dtype=bool)
    for law in net.conservation_laws:
        keep &= law.holds(box)
    assert net.feasibility.exact == (not split_tables)
    np.testing.assert_array_equal(states, box[keep])
    assert count_states(net) == (int(keep.sum()), True)


def test_boxes_beyond_int64_keys():
    """One walker on a ring of 64 binary sites: a 2^64 box, 64 states; P is Poisson-wrapped."""
    L = 64
    names = [f"A{i}" for i in range(L)]
    net = ReactionNetwork(
        {n: 2 for n in names},
        [Reaction({names[i]: 1}, {names[(i + 1) % L]: 1}, 1.0) for i in range(L)],
        {"A0": 1},
        t_end=3,
    )
    result = solve_fsp(net, [0.0, 3.0], FSPSettings(**QUIET))
    assert result.summary["states"] == L
    site = np.array([sum(poisson.pmf(j + L * m, 3.0) for m in range(3)) for j in range(L)])
    np.testing.assert_allclose(result.marginals[-1, :, 1], site, atol=1e-12)


def dense_generator(net: ReactionNetwork, states: np.ndarray, t: float = 0.0) -> np.ndarray:
    """W built state by state from the network's propensities (an independent assembly)."""
    index = {tuple(s): j for j, s in enumerate(states.tolist())}
    a = net.propensities(torch.as_tensor(states), t, impl="reference").numpy()
    W = np.zeros((len(states), len(states)))
    for j, s in enumerate(states):
        for k in range(net.K):
            if a[j, k] > 0:
                W[index[tuple(s + net.change_matrix[k])], j] += a[j, k]
                W[j, j] -= a[j, k]
    return W


@pytest.mark.parametrize("seed", range(4))
def test_generator_matches_dense_assembly(seed):
    rng = np.random.default_rng(seed)
    net = random_network(rng, 3, 5, max_limit=6)
    fsp = FSP(net, FSPSettings(**QUIET))
    W = fsp.generator().toarray()
    np.testing.assert_allclose(W, dense_generator(net, fsp.states), rtol=1e-12, atol=1e-12)
    assert np.abs(W.sum(axis=0)).max() < 1e-9 * max(1.0, np.abs(W).max())


def test_time_dependent_generator_matches_dense_assembly():
    net = sir(6, forcing=True)
    fsp = FSP(net, FSPSettings(**QUIET))
    for t in (0.0, 0.7, 2.5):
        dense = dense_generator(net, fsp.states, t)
        np.testing.assert_allclose(fsp.generator(t).toarray(), dense, atol=1e-12)
        p = np.random.default_rng(0).random(fsp.num_states)
        np.testing.assert_allclose(fsp._rhs(t, p), dense @ p, atol=1e-12)


def test_too_many_states_is_a_clear_error():
    net = ReactionNetwork(
        {"A": 1000, "B": 1000, "C": 1000},
        [
            Reaction({}, {"A": 1}, 1.0),
            Reaction({"A": 1}, {"B": 1}, 1.0),
            Reaction({"B": 1}, {"C": 1}),
        ],
        conservation=[],
    )
    with pytest.raises(NetworkError, match=r"1,000,000,000 states \(roughly .* GiB"):
        FSP(net, FSPSettings(**QUIET))


def test_times_and_initial_distribution():
    net = birth_death(limit=30)
    fsp = FSP(net, FSPSettings(**QUIET))
    p0 = poisson.pmf(np.arange(30), 10.0)
    P = fsp.solve([0.0, 0.5, 2.0], p0=p0)  # Poisson(10) is stationary
    np.testing.assert_allclose(P, np.broadcast_to(p0, P.shape), atol=1e-7)
    with pytest.raises(NetworkError, match="increasing"):
        fsp.solve([1.0, 0.5])
    result = solve_fsp(net, [0.5, 1.0], FSPSettings(**QUIET))  # times need not start at 0
    assert result.means[0, 0] == pytest.approx(10 * (1 - math.exp(-0.5)), rel=1e-7)


def test_result_of_fsp_has_joint_pair_and_summary(tmp_path):
    net = sir(8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no boundary mass with a conservation law
        result = solve_fsp(net, np.linspace(0, 6, 4), FSPSettings(**QUIET))
    assert result.joint is not None and result.joint_states.shape == (45, 3)
    np.testing.assert_allclose(result.joint.sum(axis=1), 1.0, atol=1e-10)
    assert result.pair == (0, 1) and result.pair_marginal.shape == (4, 9, 9)
    np.testing.assert_allclose(result.pair_marginal.sum(axis=2), result.marginals[:, 0], atol=1e-12)
    assert result.summary["network"]["name"] == net.name
    assert result.summary["integrator"] == "uniformization"
    assert result.boundary.max() == 0.0
    out = result.save(tmp_path / "fsp")
    assert {p.name for p in out.iterdir()} >= {"results.npz", "summary.json", "marginals.png"}


def test_linear_moments_of_the_closed_part_of_a_nonlinear_network():
    """Not in the catalogue: a forced gene product A (sinusoidal production) activating B
    (catalytic, first order) feeds a nonlinear tail (Hill-regulated C that dimerises), which
    changes neither A nor B; the moment equations of {A, B} are exact, FSP is the oracle."""
    from nncme.exact import closed_linear_species, linear_moments
    from nncme.network import Hill

    net = ReactionNetwork(
        {"A": 30, "B": 50, "C": 8, "D": 4},  # C, D truncated hard: they do not act on A, B
        [
            Reaction({}, {"A": 1}, Sinusoidal(4.0, 0.5, 2.0), "make_A"),
            Reaction({"A": 1}, {}, 1.0, "lose_A"),
            Reaction({"A": 1}, {"A": 1, "B": 1}, 1.5, "activate_B"),
            Reaction({"B": 1}, {}, 0.7, "lose_B"),
            Reaction({}, {"C": 1}, 3.0, "make_C", hill=Hill("B", 4.0, 2, "activation")),
            Reaction({"C": 2}, {"D": 1}, 0.2, "dimerise"),
            Reaction({"D": 1}, {}, 0.5, "lose_D"),
        ],
        {"A": 2, "C": 1},
        t_end=2.0,
    )
    assert closed_linear_species(net) == [0, 1]
    times = np.linspace(0, 2, 5)
    moments = linear_moments(net, times)
    assert moments.species == ["A", "B"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BoundaryWarning)  # C and D's: they leave A, B alone
        warnings.simplefilter("ignore", RuntimeWarning)  # round-off negatives of 1e-10
        exact = solve_fsp(net, times, FSPSettings(**QUIET))
    # what A and B lose at their limits moves a moment by < 1e-6 of itself
    assert max(exact.marginals[:, 0, 29].max(), exact.marginals[:, 1, 49].max()) < 1e-8
    np.testing.assert_allclose(moments.mean, exact.means[:, :2], rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(moments.cov, exact.covariances[:, :2, :2], rtol=1e-5, atol=1e-7)
    # a second-order reaction that changes A closes nothing
    net2 = ReactionNetwork({"A": 5}, [Reaction({"A": 2}, {}, 1.0)], {"A": 2})
    with pytest.raises(ValueError, match="no species has a closed"):
        linear_moments(net2, [0.0, 1.0])


def test_monomolecular_marginals_are_fsps_on_networks_of_every_kind():
    """Jahnke-Huisinga marginals against FSP: a diffusion lattice and a made-up network
    with molecules at t = 0 in several species, conversion, decay and birth."""
    from nncme import systems
    from nncme.exact import monomolecular_marginals

    lattice = systems.get(
        "reaction_diffusion", shape="2x2", kinetics="birth_death", x0=2, k=3, gamma=1, hopping=0.7
    )
    made_up = ReactionNetwork(
        {"A": 16, "B": 18, "C": 20},
        [
            Reaction({}, {"A": 1}, 2.5),
            Reaction({"A": 1}, {"B": 1}, 1.3),
            Reaction({"B": 1}, {"A": 1}, 0.4),
            Reaction({"B": 1}, {"C": 1}, 0.9),
            Reaction({"C": 1}, {}, 0.6),
            Reaction({"A": 1}, {}, 0.2),
        ],
        {"A": 3, "B": 1, "C": 4},
    )
    for net in (lattice, made_up):
        times = [0.0, 0.15, 0.7, 2.0]
        exact = solve_fsp(net, times=times, settings=FSPSettings(quiet=True)).marginals
        np.testing.assert_allclose(monomolecular_marginals(net, times), exact, atol=1e-9)
    with pytest.raises(ValueError, match="not monomolecular"):
        dimers = ReactionNetwork({"A": 10}, [Reaction({"A": 2}, {}, 1.0)], {"A": 4})
        monomolecular_marginals(dimers, [0.1])
