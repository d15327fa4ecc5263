"""Propensity, neighbour and transition operators: compiled kernels against the reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nncme import Complement, Hill, Reaction, ReactionNetwork, ops
from nncme.ops import reference

from .conftest import random_network, random_states

TOL = {torch.float32: dict(rtol=2e-5, atol=1e-6), torch.float64: dict(rtol=1e-12, atol=1e-12)}
SHAPES = [(1, 1, 1), (7, 1, 3), (64, 4, 8), (300, 16, 35), (33, 500, 20), (5, 3, 200)]

needs_kernel = pytest.mark.skipif(ops.extension() is None, reason="compiled extension not loaded")


def _close(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> None:
    torch.testing.assert_close(a, b, equal_nan=True, **TOL[dtype])


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("B,L,K", SHAPES)
def test_propensities_match_reference(device, dtype, B, L, K, rng):
    net = random_network(rng, L, K).compile(device, dtype)
    states = random_states(rng, net.network, B).to(device)
    args = net.operator_args(0.0)
    fused = torch.ops.nncme.propensities(states, *args)
    ref = reference.propensities(states, *args)
    assert fused.shape == (B, K) and fused.dtype == dtype
    _close(fused, ref, dtype)


@needs_kernel
@pytest.mark.parametrize("B,L,K", SHAPES)
def test_neighbors_match_reference(device, B, L, K, rng):
    net = random_network(rng, L, K).compile(device)
    states = random_states(rng, net.network, B).to(device)
    a = torch.ops.nncme.neighbors(states, net.rxn_ptr, net.rxn_entries, net.limits)
    b = reference.neighbors(states, net.rxn_ptr, net.rxn_entries, net.limits)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("B,L,K", SHAPES)
def test_transition_matches_reference(device, dtype, B, L, K, rng):
    net = random_network(rng, L, K).compile(device, dtype)
    states = random_states(rng, net.network, B).to(device)
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))  # the test's own draws
    log_q = (torch.randn(B, generator=gen, dtype=torch.float64) * 3).to(device, dtype)
    log_q_nbr = (torch.randn(B, K, generator=gen, dtype=torch.float64) * 3).to(device, dtype)
    log_q_nbr[(torch.rand(B, K, generator=gen) < 0.2).to(device)] = -math.inf
    log_q[(torch.rand(B, generator=gen) < 0.05).to(device)] = -math.inf
    # a dt small enough that 1 - dt * a_0 stays positive on most rows, too large on a few
    a0 = reference.propensities(states, *net.operator_args(0.0)).sum(1)
    dt = float(0.5 / max(float(a0.max()), 1e-3))
    args = net.operator_args(0.0)
    fused = torch.ops.nncme.transition_logsum(states, log_q, log_q_nbr, *args, dt)
    ref = reference.transition_logsum(states, log_q, log_q_nbr, *args, dt)
    assert all(f.shape == (B,) for f in fused)
    # log T q is a log-sum-exp of terms as large as the inputs: its rounding error is a few
    # ulps of the largest term, not of the (possibly near-zero) result
    inputs = torch.cat([log_q, log_q_nbr.flatten()])
    largest = float(inputs[torch.isfinite(inputs)].abs().max())
    tol = dict(TOL[dtype], atol=max(TOL[dtype]["atol"], 4 * torch.finfo(dtype).eps * largest))
    torch.testing.assert_close(fused[0], ref[0], equal_nan=True, **tol)
    _close(fused[2], ref[2], dtype)
    # (W q)/q = inflow - exit cancels: its rounding error scales with the terms, not the result
    gen_f, gen_r, exit_rate = fused[1], ref[1], ref[2]
    scale = exit_rate + gen_r.abs()
    finite = torch.isfinite(gen_r)
    assert torch.equal(finite, torch.isfinite(gen_f))
    err = (gen_f - gen_r)[finite].abs()
    assert (err <= TOL[dtype]["rtol"] * scale[finite] + TOL[dtype]["atol"]).all()


@needs_kernel
def test_transition_non_contiguous_inputs(device, rng):
    net = random_network(rng, 5, 9).compile(device)
    states = random_states(rng, net.network, 40, outside=0).to(device)
    states_t = states.t().contiguous().t()  # same values, column-major
    log_q_nbr = torch.randn(9, 40, dtype=torch.float64, device=device).t()
    log_q = torch.randn(80, dtype=torch.float64, device=device)[::2]
    args = net.operator_args(0.0)
    fused = torch.ops.nncme.transition_logsum(states_t, log_q, log_q_nbr, *args, 1e-3)
    ref = reference.transition_logsum(
        states, log_q.contiguous(), log_q_nbr.contiguous(), *args, 1e-3
    )
    for f, r in zip(fused, ref):
        _close(f, r, torch.float64)


def _birth_death() -> ReactionNetwork:
    return ReactionNetwork(
        {"X": 30},
        [Reaction({}, {"X": 1}, 4.0, "birth"), Reaction({"X": 1}, {}, 0.5, "death")],
        {"X": 2},
        conservation=[],
    )


def test_transition_is_one_euler_step_of_the_master_equation():
    """T q summed over the box is 1 and equals (I + dt W) applied to a known distribution."""
    net = _birth_death()
    c = net.compile()
    states = torch.arange(30).unsqueeze(1)
    p = torch.distributions.Poisson(3.0).log_prob(torch.arange(30.0)).double()
    p = p - torch.logsumexp(p, 0)
    nbr, valid = ops.neighbors(states, c)
    log_q_nbr = torch.where(valid, p[nbr[..., 0]], -math.inf)
    dt = 0.01
    log_tq, gen, _ = ops.transition_logsum(states, p, log_q_nbr, c, 0.0, dt)
    # dense generator by hand
    W = torch.zeros(30, 30, dtype=torch.float64)
    for n in range(30):
        if n + 1 < 30:
            W[n + 1, n] += 4.0
            W[n, n] -= 4.0
        if n > 0:
            W[n - 1, n] += 0.5 * n
            W[n, n] -= 0.5 * n
    expected = (torch.eye(30, dtype=torch.float64) + dt * W) @ p.exp()
    torch.testing.assert_close(log_tq.exp(), expected, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(gen * p.exp(), W @ p.exp(), rtol=1e-10, atol=1e-14)
    assert abs(float(log_tq.exp().sum()) - 1.0) < 1e-12


def test_propensity_conventions_and_hill():
    net = ReactionNetwork(
        {"A": 10, "B": 10},
        [
            Reaction({"A": 3}, {"B": 1}, 2.0, "tri"),
            Reaction({}, {"A": 1}, 5.0, "act", hill=Hill("B", 4.0, 2.0, "activation")),
            Reaction({}, {"B": 1}, 5.0, "rep", hill=Hill("A", 4.0, 2.0, "repression")),
        ],
        conservation=[],
    )
    s = torch.tensor([[5, 6], [9, 9], [2, 0]])
    expect_rate = {"falling": 5 * 4 * 3, "binomial": 10, "power": 125}
    for conv, v in expect_rate.items():
        net.convention = conv
        net._compiled.clear()
        a = net.propensities(s)
        assert a[0, 0].item() == pytest.approx(2.0 * v)
    a = net.propensities(s)
    assert a[0, 1].item() == pytest.approx(5.0 * 36 / (16 + 36))
    assert a[0, 2].item() == pytest.approx(5.0 * 16 / (16 + 25))
    # truncation: A at the limit cannot grow, B at the limit cannot grow
    assert a[1, 1].item() == 0.0 and a[1, 2].item() == 0.0 and a[1, 0].item() == 0.0
    # power convention gives 2^3 > 0 at A = 2, but A + s = -1 leaves the box: truncated
    assert a[2, 0].item() == 0.0


def test_custom_propensity_matches_equivalent_mass_action():
    def birth(states, t):
        return torch.full((states.shape[0],), 4.0, dtype=torch.float64)

    custom = ReactionNetwork(
        {"X": 30},
        [
            Reaction({}, {"X": 1}, name="birth", propensity=birth),
            Reaction({"X": 1}, {}, 0.5, "death"),
        ],
        {"X": 2},
        conservation=[],
    )
    plain = _birth_death()
    states = torch.arange(-1, 31).unsqueeze(1)
    torch.testing.assert_close(custom.propensities(states), plain.propensities(states))
    log_q = torch.randn(32, dtype=torch.float64)
    log_q_nbr = torch.randn(32, 2, dtype=torch.float64)
    a = ops.transition_logsum(states, log_q, log_q_nbr, custom.compile(), 0.0, 0.01)
    b = ops.transition_logsum(states, log_q, log_q_nbr, plain.compile(), 0.0, 0.01)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y)


@needs_kernel
def test_opcheck(rng):
    net = random_network(rng, 4, 6).compile("cpu")
    states = random_states(rng, net.network, 16, outside=0)
    args = net.operator_args(0.0)
    torch.library.opcheck(torch.ops.nncme.propensities.default, (states, *args))
    torch.library.opcheck(
        torch.ops.nncme.neighbors.default, (states, net.rxn_ptr, net.rxn_entries, net.limits)
    )
    log_q = torch.randn(16, dtype=torch.float64)
    log_q_nbr = torch.randn(16, 6, dtype=torch.float64)
    # opcheck compares outputs without NaN equality: keep dt * a_0 < 1 on every row
    dt = 0.5 / max(float(reference.propensities(states, *args).sum(1).max()), 1.0)
    torch.library.opcheck(
        torch.ops.nncme.transition_logsum.default, (states, log_q, log_q_nbr, *args, dt)
    )


@needs_kernel
def test_kernel_errors_are_actionable():
    net = _birth_death().compile()
    with pytest.raises(RuntimeError, match="states must be int64"):
        torch.ops.nncme.propensities(torch.zeros(3, 1), *net.operator_args(0.0))
    with pytest.raises(RuntimeError, match="states have 2 species"):
        torch.ops.nncme.propensities(torch.zeros(3, 2, dtype=torch.int64), *net.operator_args(0.0))
    with pytest.raises(RuntimeError, match="log_q_nbr must have shape"):
        torch.ops.nncme.transition_logsum(
            torch.zeros(3, 1, dtype=torch.int64),
            torch.zeros(3, dtype=torch.float64),
            torch.zeros(3, 5, dtype=torch.float64),
            *net.operator_args(0.0),
            0.1,
        )


def _hill_network() -> ReactionNetwork:
    """Two species, three reactions (one of order 2, one Hill-regulated, one with a complement
    factor and its own convention): every table used."""
    return ReactionNetwork(
        {"A": 8, "B": 6},
        [
            Reaction({"A": 2}, {"B": 1}, 0.5, "dimerise"),
            Reaction({}, {"A": 1}, 3.0, "make", hill=Hill("B", 2.0, 2.0, "repression")),
            Reaction({"B": 1}, {}, 1.0, "decay", complement=Complement("A", 9), convention="power"),
        ],
        conservation=[],
    )


def _set(t: torch.Tensor, index, value) -> torch.Tensor:
    t = t.clone()
    t[index] = value
    return t


# Tables of _hill_network by name: L = 2, rxn_ptr = [0, 2, 3, 4], rxn_entries rows (species,
# order, change) = (0, 2, -2), (1, 0, 1), (0, 0, 1), (1, 1, -1); convention = [0, 0, 2];
# factor_ptr = [0, 0, 1, 2], factor_index = [1, 0], factor_params rows = (1, 2, 2), (2, 9, 1).
TABLES = ("rxn_ptr", "rxn_entries", "convention", "factor_ptr", "factor_index", "factor_params")


def _corrupt(name: str, index, value):
    return lambda tables: {**tables, name: _set(tables[name], index, value)}


# (what is corrupted, tables -> corrupted tables, the message)
BAD_TABLES = [
    (
        "species >= L",
        _corrupt("rxn_entries", (1, 0), 2),
        r"rxn_entries\[1, 0\] must be a species index in \[0, L\) = \[0, 2\), got 2",
    ),
    (
        "species < 0",
        _corrupt("rxn_entries", (3, 0), -1),
        r"rxn_entries\[3, 0\] must be a species index",
    ),
    (
        "negative order",
        _corrupt("rxn_entries", (0, 1), -2),
        r"rxn_entries\[0, 1\] \(a reactant order\) must be >= 0",
    ),
    ("rxn_ptr not from 0", _corrupt("rxn_ptr", 0, 1), r"rxn_ptr must start at 0"),
    (
        "rxn_ptr decreasing",
        _corrupt("rxn_ptr", 2, 1),
        r"rxn_ptr must be non-decreasing .*, got rxn_ptr\[1\] = 2 > rxn_ptr\[2\] = 1",
    ),
    (
        "rxn_ptr beyond nnz",
        _corrupt("rxn_ptr", 3, 5),
        r"rxn_ptr must end at nnz = rxn_entries.size\(0\) = 4, got rxn_ptr\[3\] = 5",
    ),
    ("rxn_ptr short of nnz", _corrupt("rxn_ptr", 3, 3), r"rxn_ptr must end at nnz"),
    (
        "convention out of range",
        _corrupt("convention", 1, 3),
        r"convention\[1\] must be 0 \(falling\), 1 \(binomial\) or 2 \(power\), got 3",
    ),
    (
        "factor_index >= L",
        _corrupt("factor_index", 1, 2),
        r"factor_index\[1\] must be a species index in \[0, L\) = \[0, 2\), got 2",
    ),
    ("factor_index < 0", _corrupt("factor_index", 0, -1), r"factor_index\[0\] must be a species"),
    ("factor_ptr not from 0", _corrupt("factor_ptr", 0, 1), r"factor_ptr must start at 0"),
    (
        "factor_ptr decreasing",
        _corrupt("factor_ptr", 1, 2),
        r"factor_ptr must be non-decreasing .*, got factor_ptr\[1\] = 2 > factor_ptr\[2\] = 1",
    ),
    (
        "factor_ptr beyond F",
        _corrupt("factor_ptr", 3, 3),
        r"factor_ptr must end at F = factor_index.size\(0\) = 2, got factor_ptr\[3\] = 3",
    ),
    (
        "unknown factor kind",
        _corrupt("factor_params", (0, 0), 3.0),
        r"factor_params\[0, 0\] \(the factor kind\) must be 0 \(Hill activation\), 1 \(Hill "
        r"repression\) or 2 \(complement\), got 3",
    ),
    (
        "fractional complement total",
        _corrupt("factor_params", (1, 1), 8.5),
        r"factor_params\[1\] of a complement factor must hold an integer total >= 0 and an "
        r"integer order >= 0, got total 8.5, order 1",
    ),
    (
        "negative complement order",
        _corrupt("factor_params", (1, 2), -1.0),
        r"factor_params\[1\] of a complement factor must hold an integer total",
    ),
]


def _call_with_tables(op: str, c, states, tables: dict):
    rates = c.rates(0.0)
    net = (tables["rxn_ptr"], tables["rxn_entries"], c.limits, rates)
    net += tuple(tables[name] for name in TABLES[2:])
    B = states.shape[0]
    if op == "propensities":
        return torch.ops.nncme.propensities(states, *net)
    if op == "neighbors":
        return torch.ops.nncme.neighbors(states, tables["rxn_ptr"], tables["rxn_entries"], c.limits)
    log_q = torch.zeros(B, dtype=rates.dtype, device=states.device)
    log_q_nbr = torch.zeros(B, rates.shape[0], dtype=rates.dtype, device=states.device)
    return torch.ops.nncme.transition_logsum(states, log_q, log_q_nbr, *net, 1e-3)


def _tables(c) -> dict:
    return {name: getattr(c, name) for name in TABLES}


@needs_kernel
@pytest.mark.parametrize("op", ["propensities", "neighbors", "transition_logsum"])
@pytest.mark.parametrize("what,corrupt,message", BAD_TABLES, ids=[b[0] for b in BAD_TABLES])
def test_corrupted_network_tables_are_rejected(device, op, what, corrupt, message):
    """Every op that takes the network tables validates their contents before a kernel reads
    them: an index out of range is an error naming the table, never an out-of-bounds read."""
    c = _hill_network().compile(device)
    states = torch.tensor([[3, 2], [0, 0], [7, 5]], device=device)
    tables = _tables(c)
    assert c.rxn_entries.shape[0] == 4
    assert c.factor_ptr.tolist() == [0, 0, 1, 2] and c.factor_index.tolist() == [1, 0]
    assert c.factor_params.tolist() == [[1.0, 2.0, 2.0], [2.0, 9.0, 1.0]]
    assert c.convention.tolist() == [0, 0, 2]
    _call_with_tables(op, c, states, tables)  # the intact tables pass
    if op == "neighbors" and not what.startswith(("species", "negative order", "rxn_ptr")):
        _call_with_tables(op, c, states, corrupt(tables))  # not an argument of neighbors
        return
    with pytest.raises(RuntimeError, match=message):
        _call_with_tables(op, c, states, corrupt(tables))


@needs_kernel
def test_network_table_shapes_are_named():
    c = _hill_network().compile()
    states = torch.zeros(2, 2, dtype=torch.int64)
    t = _tables(c)
    with pytest.raises(RuntimeError, match=r"rxn_entries must be int64 of shape \(nnz, 3\)"):
        _call_with_tables("neighbors", c, states, {**t, "rxn_entries": t["rxn_entries"][:, :2]})
    with pytest.raises(RuntimeError, match=r"rxn_ptr must be int64 of shape \(K\+1,\)"):
        _call_with_tables("neighbors", c, states, {**t, "rxn_ptr": t["rxn_ptr"].int()})
    with pytest.raises(RuntimeError, match=r"convention must be int64 of shape \(K,\) = \(3,\)"):
        _call_with_tables("propensities", c, states, {**t, "convention": t["convention"][:2]})
    with pytest.raises(RuntimeError, match=r"factor_ptr must be int64 of shape \(K\+1,\) = \(4,\)"):
        _call_with_tables("propensities", c, states, {**t, "factor_ptr": t["factor_ptr"][:3]})
    with pytest.raises(RuntimeError, match=r"factor_params must have shape \(F, 3\) = \(2, 3\)"):
        _call_with_tables("propensities", c, states, {**t, "factor_params": t["factor_params"][:1]})
    with pytest.raises(RuntimeError, match=r"factor_params must have the dtype of rates"):
        _call_with_tables(
            "propensities", c, states, {**t, "factor_params": t["factor_params"].float()}
        )
    with pytest.raises(RuntimeError, match=r"rxn_ptr must have shape \(K\+1,\) = \(4,\)"):
        _call_with_tables("transition_logsum", c, states, {**t, "rxn_ptr": t["rxn_ptr"][:3]})


@pytest.mark.cuda
@needs_kernel
def test_operands_on_two_devices_are_named():
    """The dispatcher runs the CUDA kernel as soon as one operand is on the GPU: every other
    operand is checked and named."""
    c = _hill_network().compile("cuda")
    args = list(c.operator_args(0.0))
    states = torch.zeros(3, 2, dtype=torch.int64, device="cuda")
    names = ["rxn_ptr", "rxn_entries", "limits", "rates", "convention", "factor_ptr"]
    for i, name in enumerate([*names, "factor_index", "factor_params"]):
        bad = [*args]
        bad[i] = bad[i].cpu()
        with pytest.raises(RuntimeError, match=f"{name} must be on cuda"):
            torch.ops.nncme.propensities(states, *bad)
    with pytest.raises(RuntimeError, match=r"rxn_ptr must be on cpu \(the device of states\)"):
        torch.ops.nncme.propensities(states.cpu(), *args)
    with pytest.raises(RuntimeError, match="limits must be on cuda"):
        torch.ops.nncme.neighbors(states, c.rxn_ptr, c.rxn_entries, c.limits.cpu())
    log_q = torch.zeros(3, dtype=torch.float64, device="cuda")
    log_q_nbr = torch.zeros(3, 3, dtype=torch.float64, device="cuda")
    with pytest.raises(RuntimeError, match="log_q_nbr must be on cuda"):
        torch.ops.nncme.transition_logsum(states, log_q, log_q_nbr.cpu(), *args, 1e-3)
    with pytest.raises(RuntimeError, match="factor_params must be on cuda"):
        torch.ops.nncme.transition_logsum(states, log_q, log_q_nbr, *args[:7], args[7].cpu(), 1e-3)


def test_impl_switch(monkeypatch):
    assert ops.resolve_impl("propensities", "cpu", "reference") == "reference"
    monkeypatch.setenv("NNCME_FORCE_REFERENCE", "1")
    assert ops.resolve_impl("propensities", "cpu", "auto") == "reference"
    with pytest.raises(ValueError):
        ops.resolve_impl("propensities", "cpu", "fast")


def test_max_exit_rate_bound_covers_the_box():
    net = _birth_death()
    states = torch.arange(30).unsqueeze(1)
    exit_rate = net.propensities(states).sum(1)
    assert float(exit_rate.max()) <= net.max_exit_rate_bound() + 1e-12
    assert np.isclose(net.max_exit_rate_bound(), 4.0 + 0.5 * 29)
