"""Propensity factors beyond mass action, against exact answers: complement factors against the
same model written with explicit free-gene species (FSP to 1e-10), per-reaction conventions
against a generator assembled by hand, two Hill factors against a custom propensity callable,
the operators on each specialised kernel body, and one short VAN run on a network using them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import nncme
from nncme import Complement, Exponential, Hill, NetworkError, Reaction, ReactionNetwork, ops
from nncme.config import RunConfig
from nncme.exact import FSP, FSPSettings, solve_fsp
from nncme.metrics import hellinger
from nncme.models import Product
from nncme.ops import reference

from .conftest import random_network, random_states

QUIET = FSPSettings(quiet=True)
# the small VAN budget of test_evolve: at most 20 iterations per step
BUDGET = dict(batch=500, iterations=20, tolerance=1e-5, quiet=True, eval_samples=4000)
needs_kernel = pytest.mark.skipif(ops.extension() is None, reason="compiled extension not loaded")


# ------------------------------------------------------------------------ complement factors
def gene_copies(explicit: bool, copies: int = 3, order: int = 1, limit: int = 25):
    """A gene with `copies` copies, each free or bound by its protein P; free copies make P.

    explicit: the free copies are a species G_f (with the law G_f + G_b = copies); else they are
    implicit, copies - G_b, through complement factors. order 2 adds a reaction that binds two
    free copies at once (binomial convention): C(G_f, 2) against C(copies - G_b, 2).
    """
    species = {"G_b": copies + 1, "P": limit}
    free = {} if explicit else {"complement": Complement("G_b", copies)}
    free_in = {"G_f": 1} if explicit else {}
    reactions = [
        Reaction({"P": 1, **free_in}, {"G_b": 1}, 0.4, "bind", **free),
        Reaction({"G_b": 1}, {"P": 1, **free_in}, 2.0, "unbind"),
        Reaction(free_in, {"P": 1, **free_in}, 6.0, "make", **free),
        Reaction({"P": 1}, {}, 1.0, "decay"),
    ]
    if order == 2:
        pair = {} if explicit else {"complement": Complement("G_b", copies, order=2)}
        reactants = {"P": 1, "G_f": 2} if explicit else {"P": 1}
        reactions.append(
            Reaction(reactants, {"G_b": 2}, 0.05, "bind_pair", convention="binomial", **pair)
        )
    if explicit:
        species = {"G_f": copies + 1, **species}
    initial = {"G_f": copies} if explicit else {}
    return ReactionNetwork(species, reactions, initial, t_end=2.0, dt=0.01)


@pytest.mark.parametrize("order", [1, 2])
def test_complement_factor_equals_explicit_free_copies(order):
    implicit, explicit = gene_copies(False, order=order), gene_copies(True, order=order)
    assert explicit.conservation_laws and not implicit.conservation_laws
    times = [0.0, 0.3, 1.0, 2.0]
    a, b = FSP(implicit, QUIET), FSP(explicit, QUIET)
    Pa, Pb = a.solve(times), b.solve(times)
    # the same states: (G_b, P) of the implicit model, (3 - G_b, G_b, P) of the explicit one
    np.testing.assert_array_equal(b.states[:, 0], 3 - b.states[:, 1])
    rows = a.index(b.states[:, 1:])
    assert np.all(rows >= 0) and len(set(rows.tolist())) == a.num_states == b.num_states
    assert np.abs(Pa[:, rows] - Pb).max() < 1e-10
    assert Pa[-1, a.states[:, 0] > 0].sum() > 0.3  # the bound states carry mass
    # all copies bound is the model's own cap, not the box's: the same boundary mass (that of
    # P's limit) in both models
    settings = FSPSettings(quiet=True, boundary_warn=1.0)
    ra, rb = solve_fsp(implicit, times, settings), solve_fsp(explicit, times, settings)
    np.testing.assert_allclose(ra.boundary, rb.boundary, rtol=0, atol=1e-10)
    assert implicit.box_limited_change()[:, 0].tolist() == [0, -1, 0, 0, 0][: implicit.K]


def test_complement_factor_values_and_truncation():
    net = ReactionNetwork(
        {"G_b": 4, "P": 6},
        [
            Reaction({"P": 1}, {"G_b": 1}, 2.0, "bind", complement=Complement("G_b", 5, 2)),
            Reaction({}, {"P": 1}, 1.5, "make", complement=Complement("G_b", 3)),
            Reaction(
                {"P": 2}, {}, 1.0, "pair", complement=Complement("G_b", 4), convention="power"
            ),
        ],
        conservation=[],
    )
    states = torch.tensor([[0, 2], [2, 3], [3, 5], [1, 1]])
    a = net.propensities(states, impl="reference")
    ff = lambda m, r: math.prod(m - j for j in range(r))  # noqa: E731
    for row, (g, p) in enumerate(states.tolist()):
        expected = [
            2.0 * p * ff(5 - g, 2) if g + 1 < 4 else 0.0,
            1.5 * (3 - g) if p + 1 < 6 else 0.0,
            1.0 * p**2 * (4 - g) if p >= 2 else 0.0,
        ]
        np.testing.assert_allclose(a[row].numpy(), expected, rtol=1e-14)
    assert net.max_exit_rate_bound() == pytest.approx(2.0 * 5 * 20 + 1.5 * 3 + 25 * 4)


def test_complement_errors_name_the_field():
    def make(complement, limit=4):
        return ReactionNetwork(
            {"G_b": limit, "P": 5},
            [Reaction({}, {"P": 1}, 1.0, "make", complement=complement)],
            conservation=[],
        )

    with pytest.raises(NetworkError) as info:
        make(Complement("G_b", 2))
    assert str(info.value) == (
        "reaction 'make' (reactions[0]): complement.total: 2 is below the largest count 3 of "
        "'G_b' in the box, where 2 - G_b would be negative; lower the limit of 'G_b' to 3 "
        "(counts 0..2) or raise the total"
    )
    with pytest.raises(NetworkError, match=r"complement\[1\]\.species: 'Q' is not a species"):
        make([Complement("G_b", 3), Complement("Q", 3)])
    with pytest.raises(NetworkError, match=r"complement\.order: must be >= 1, got 0"):
        make(Complement("G_b", 3, 0))
    with pytest.raises(NetworkError, match=r"complement\.total: must be a non-negative integer"):
        make(Complement("G_b", 3.5))


# ---------------------------------------------------------------- per-reaction conventions
def _convention_network() -> ReactionNetwork:
    return ReactionNetwork(
        {"A": 6, "B": 5},
        [
            Reaction({"A": 2}, {"B": 1}, 0.7, "pair", convention="binomial"),
            Reaction({"A": 1, "B": 2}, {"A": 1}, 0.3, "squash", convention="power"),
            Reaction({"A": 3}, {}, 0.05, "triple"),  # the network's convention
            Reaction({}, {"A": 1}, 2.0, "make"),
            Reaction({"B": 1}, {"A": 1}, 1.1, "back", convention="falling"),
        ],
        {"A": 2},
        convention="power",
        conservation=[],
    )


def _hand_propensities(a: int, b: int) -> list[float]:
    """The propensities of _convention_network at (A, B), truncation rule included."""
    inside = lambda x, y: 0 <= x < 6 and 0 <= y < 5  # noqa: E731
    values = [
        (0.7 * a * (a - 1) / 2, (a - 2, b + 1)),
        (0.3 * a * b**2, (a, b - 2)),
        (0.05 * a**3, (a - 3, b)),  # power, the network's convention
        (2.0, (a + 1, b)),
        (1.1 * b, (a + 1, b - 1)),
    ]
    return [v if inside(*after) else 0.0 for v, after in values]


def test_per_reaction_conventions_match_a_hand_built_generator():
    net = _convention_network()
    fsp = FSP(net, QUIET)
    states = fsp.states
    index = {tuple(s): j for j, s in enumerate(states.tolist())}
    changes = [(-2, 1), (0, -2), (-3, 0), (1, 0), (1, -1)]
    W = np.zeros((len(states), len(states)))
    for j, (a, b) in enumerate(states.tolist()):
        for value, (da, db) in zip(_hand_propensities(a, b), changes):
            if value > 0:
                W[index[(a + da, b + db)], j] += value
                W[j, j] -= value
    np.testing.assert_allclose(fsp.generator().toarray(), W, rtol=1e-14, atol=1e-14)
    assert net.compile().convention.tolist() == [1, 2, 2, 2, 0]
    assert "[binomial]" in net.summary() and "[power]" in net.summary()
    with pytest.raises(NetworkError, match=r"reactions\[0\]\): convention must be one of"):
        ReactionNetwork({"A": 3}, [Reaction({"A": 1}, {}, 1.0, convention="factorial")])


# --------------------------------------------------------------------- several Hill factors
HILLS = (Hill("A", 3.0, 2.0, "activation"), Hill("B", 2.0, 1.5, "repression"))


def _regulated(custom: bool) -> ReactionNetwork:
    def make_x(states: torch.Tensor, t: float) -> torch.Tensor:
        a, b = states[:, 0], states[:, 1]
        return 5.0 * a**2 / (3.0**2 + a**2) * 2.0**1.5 / (2.0**1.5 + b**1.5)

    produce = (
        Reaction({}, {"X": 1}, name="make_x", propensity=make_x)
        if custom
        else Reaction({}, {"X": 1}, 5.0, "make_x", hill=HILLS)
    )
    return ReactionNetwork(
        {"A": 8, "B": 7, "X": 14},
        [
            Reaction({}, {"A": 1}, 3.0, "make_a"),
            Reaction({"A": 1}, {}, 0.8, "decay_a"),
            Reaction({}, {"B": 1}, 2.0, "make_b"),
            Reaction({"B": 1}, {}, 1.0, "decay_b"),
            produce,
            Reaction({"X": 1}, {}, 0.6, "decay_x"),
        ],
        {"A": 1},
        conservation=[],
        t_end=2.0,
    )


def test_two_hill_factors_equal_a_custom_propensity():
    net, custom = _regulated(False), _regulated(True)
    assert net.reactions[4].hills == HILLS and "Hill-repression(B" in net.summary()
    fsp = FSP(net, QUIET)
    states = torch.as_tensor(fsp.states)
    for impl in ("reference", "auto"):
        torch.testing.assert_close(
            net.propensities(states, impl=impl), custom.propensities(states), rtol=1e-13, atol=0
        )
    times = [0.0, 0.5, 2.0]
    P = fsp.solve(times)
    P_custom = FSP(custom, QUIET).solve(times)
    assert np.abs(P - P_custom).max() < 1e-10
    # the transition operator (the VAN's target) agrees with its custom-propensity path
    rng = np.random.default_rng(0)
    log_q = torch.as_tensor(rng.normal(-5, 1, len(states)))
    log_q_nbr = torch.as_tensor(rng.normal(-5, 1, (len(states), net.K)))
    a = ops.transition_logsum(states, log_q, log_q_nbr, net.compile(), 0.0, 1e-3)
    b = ops.transition_logsum(states, log_q, log_q_nbr, custom.compile(), 0.0, 1e-3)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)


def test_hill_errors_name_the_factor():
    def make(hill):
        return ReactionNetwork(
            {"A": 4, "X": 4}, [Reaction({}, {"X": 1}, 1.0, "make", hill=hill)], conservation=[]
        )

    with pytest.raises(NetworkError, match=r"reactions\[0\]\): hill\[1\]\.K: must be finite"):
        make([Hill("A", 1.0, 1.0), Hill("A", -1.0, 1.0)])
    with pytest.raises(NetworkError, match=r"hill\[0\]\.regulator: 'Q' is not a species"):
        make([Hill("Q", 1.0, 1.0)])
    with pytest.raises(NetworkError, match=r"hill\[1\]: expected a Hill\(\.\.\.\), got 3"):
        make([Hill("A", 1.0, 1.0), 3])


# ------------------------------------------------------------ operators, every kernel body
def _network_of(rng, L: int, K: int, mixed: bool, factors: bool) -> ReactionNetwork:
    """A random network with (or without) several conventions and (or without) factors."""
    for _ in range(100):
        net = random_network(
            rng,
            L,
            K,
            factor_fraction=0.6 if factors else 0.0,
            own_convention_fraction=0.6 if mixed else 0.0,
        )
        c = net.compile()
        if (len(set(c.convention.tolist())) > 1) == mixed and (
            c.factor_index.numel() > 0
        ) == factors:
            return net
    raise AssertionError("no random network of this variant in 100 draws")


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mixed", [False, True], ids=["one convention", "mixed conventions"])
@pytest.mark.parametrize("factors", [False, True], ids=["no factors", "factors"])
def test_kernel_variants_match_reference(device, dtype, mixed, factors, rng):
    """The CPU kernels specialise on (one convention for all reactions or not) x (factors or
    not): each variant against the reference on fresh random inputs."""
    tol = dict(rtol=2e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    for L, K, B in [(3, 7, 50), (9, 40, 300)]:
        net = _network_of(rng, L, K, mixed, factors)
        c = net.compile(device, dtype)
        states = random_states(rng, net, B).to(device)
        args = c.operator_args(0.0)
        a = torch.ops.nncme.propensities(states, *args)
        torch.testing.assert_close(a, reference.propensities(states, *args), **tol)
        log_q = torch.randn(B, dtype=dtype, device=device)
        log_q_nbr = torch.randn(B, K, dtype=dtype, device=device)
        dt = float(0.5 / max(float(a.sum(1).max()), 1e-3))
        fused = torch.ops.nncme.transition_logsum(states, log_q, log_q_nbr, *args, dt)
        ref = reference.transition_logsum(states, log_q, log_q_nbr, *args, dt)
        torch.testing.assert_close(fused[0], ref[0], **tol)
        torch.testing.assert_close(fused[2], ref[2], **tol)
        scale = ref[2] + ref[1].abs()  # (W q)/q cancels: its error scales with the terms
        assert ((fused[1] - ref[1]).abs() <= tol["rtol"] * 4 * scale + tol["atol"]).all()


@needs_kernel
def test_opcheck_with_factors(rng):
    net = _network_of(rng, 5, 12, mixed=True, factors=True)
    c = net.compile("cpu")
    states = random_states(rng, net, 20, outside=0)
    args = c.operator_args(0.0)
    torch.library.opcheck(torch.ops.nncme.propensities.default, (states, *args))
    log_q = torch.randn(20, dtype=torch.float64)
    log_q_nbr = torch.randn(20, 12, dtype=torch.float64)
    dt = 0.5 / max(float(reference.propensities(states, *args).sum(1).max()), 1.0)
    torch.library.opcheck(
        torch.ops.nncme.transition_logsum.default, (states, log_q, log_q_nbr, *args, dt)
    )


# ------------------------------------------------------------------------------- the VAN
def test_van_tracks_a_network_with_complements_hills_and_a_time_dependent_rate():
    """Two gene copies (complement factors, a binomial pair reaction), production under two
    Hill factors at an exponentially relaxing rate: a short NADE run (small budget, Poisson
    start) against FSP from the same start."""
    copies = Complement("G_b", 2)
    net = ReactionNetwork(
        {"G_b": 3, "P": 14},
        [
            Reaction({"P": 2}, {"G_b": 1}, 0.05, "bind", complement=copies, convention="binomial"),
            Reaction({"G_b": 1}, {"P": 2}, 1.0, "unbind"),
            Reaction(
                {},
                {"P": 1},
                Exponential(c0=3.0, tau=0.5, c_inf=8.0),
                "make",
                complement=copies,
                hill=(Hill("P", 6.0, 2.0, "repression"), Hill("G_b", 1.0, 1.0, "repression")),
            ),
            Reaction({"P": 1}, {}, 1.0, "decay"),
        ],
        {"P": 2},
        conservation=[],
        t_end=0.4,
        dt=0.02,
    )
    assert 0.02 * net.max_exit_rate_bound(0.4) < 1
    start = Product.poisson([0.5, 3.0], net.limits)
    cfg = RunConfig(t_end=0.4, dt=0.02, save_every=0.2, integrator="euler", **BUDGET)
    out = nncme.run(net, cfg, start=start)
    fsp = FSP(net, QUIET)
    q0, p0 = (m.numpy() for m in start.marginals())
    exact = solve_fsp(net, out.result.times, QUIET, p0=q0[fsp.states[:, 0]] * p0[fsp.states[:, 1]])
    assert hellinger(exact.marginals, out.result.marginals).max() < 0.04
