"""transition_logsum beyond the random shapes of test_ops_network: thousands of reactions and
species, and the rows that leave the closed form (infinite, NaN or extreme inputs) for the
log-space path. The reference (`nncme.ops.reference.transition_logsum`) defines the results."""

from __future__ import annotations

import math

import pytest
import torch

from nncme import Reaction, ReactionNetwork, ops
from nncme.ops import reference

from .conftest import random_network, random_states

needs_kernel = pytest.mark.skipif(ops.extension() is None, reason="compiled extension not loaded")

TOL = {torch.float32: dict(rtol=2e-5, atol=1e-6), torch.float64: dict(rtol=1e-12, atol=1e-12)}


def assert_matches(fused, ref, dtype, terms: int = 1):
    """`terms`: the reactions summed per row. log T q's absolute error is T q's relative one,
    and a float32 sum of K terms rounds to about sqrt(K) ulps, in orders the kernel and the
    reference each choose (threads, vector widths), so for K in the thousands its atol grows
    as sqrt(K) / 4 (K = 2000: 1.1e-5)."""
    log_tq, gen, exit_rate = fused
    log_tol = dict(TOL[dtype])
    if dtype == torch.float32:
        log_tol["atol"] *= max(1.0, math.sqrt(terms) / 4)
    torch.testing.assert_close(log_tq, ref[0], equal_nan=True, **log_tol)
    torch.testing.assert_close(exit_rate, ref[2], equal_nan=True, **TOL[dtype])
    # (W q)/q = inflow - exit cancels: its rounding error scales with the terms, not the result
    finite = torch.isfinite(ref[1])
    assert torch.equal(finite, torch.isfinite(gen))
    assert torch.equal(torch.isnan(ref[1]), torch.isnan(gen))
    assert torch.equal(ref[1][torch.isinf(ref[1])], gen[torch.isinf(ref[1])])
    scale = (ref[2] + ref[1].abs())[finite]
    err = (gen - ref[1])[finite].abs()
    assert (err <= TOL[dtype]["rtol"] * 4 * scale + TOL[dtype]["atol"]).all()


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_transition_many_reactions_and_species(device, dtype, rng):
    """The benchmark's large shape class (K = 2000, L = 1024) on a small batch."""
    net = random_network(rng, 1024, 2000, max_limit=40).compile(device, dtype)
    B = 24
    states = random_states(rng, net.network, B, outside=0.1).to(device)
    log_q = (torch.randn(B, dtype=torch.float64) * 3 - 5).to(dtype).to(device)
    log_q_nbr = (torch.randn(B, 2000, dtype=torch.float64) * 3 - 5).to(dtype).to(device)
    log_q_nbr[torch.rand(B, 2000, device=device) < 0.1] = -math.inf
    args = net.operator_args(0.0)
    a0 = reference.propensities(states, *args).sum(1)
    dt = float(0.5 / max(float(a0.max()), 1e-3))
    fused = torch.ops.nncme.transition_logsum(states, log_q, log_q_nbr, *args, dt)
    assert_matches(
        fused, reference.transition_logsum(states, log_q, log_q_nbr, *args, dt), dtype, terms=2000
    )


def _two_species(dtype, device):
    net = ReactionNetwork(
        {"A": 20, "B": 15},
        [
            Reaction({}, {"A": 1}, 3.0, "make"),
            Reaction({"A": 1}, {"B": 1}, 0.7, "convert"),
            Reaction({"B": 2}, {}, 0.2, "pair decay"),
        ],
        {"A": 2, "B": 1},
        conservation=[],
    )
    return net.compile(device, dtype)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_transition_extreme_rows_take_the_log_space_path(device, dtype):
    c = _two_species(dtype, device)
    inf, nan = math.inf, math.nan
    states = torch.tensor([[5, 6]] * 10 + [[0, 0], [19, 14], [3, 20]], device=device)
    B = states.shape[0]
    log_q = torch.full((B,), -2.0, dtype=dtype, device=device)
    log_q_nbr = torch.full((B, 3), -3.0, dtype=dtype, device=device)
    log_q[0] = -inf  # q(n) = 0: only inflow; gen inf or NaN as the reference's algebra gives
    log_q[1] = -inf
    log_q_nbr[1, 0] = -inf
    log_q_nbr[2, 1] = inf  # an infinite neighbour
    log_q_nbr[3, 2] = nan  # a NaN neighbour
    log_q[4] = -900.0 if dtype == torch.float64 else -120.0  # exp(lqn - lq) overflows
    log_q_nbr[5] = -inf  # no inflow at all
    log_q[6] = inf
    log_q_nbr[7, :] = torch.tensor([-200.0, -300.0, -250.0], dtype=dtype)  # inflow underflows
    args = c.operator_args(0.0)
    exit_rate = reference.propensities(states, *args).sum(1)
    for dt in (1e-3, float(1.0 / exit_rate[8]), float(1.5 / exit_rate[9])):
        # the last two: 1 - dt a_0 = 0 on row 8 (stay term -inf), < 0 on row 9 (NaN)
        fused = torch.ops.nncme.transition_logsum(states, log_q, log_q_nbr, *args, dt)
        ref = reference.transition_logsum(states, log_q, log_q_nbr, *args, dt)
        assert_matches(fused, ref, dtype)


@needs_kernel
def test_transition_base_isa_matches(monkeypatch, rng):
    net = random_network(rng, 12, 40).compile("cpu")
    states = random_states(rng, net.network, 100)
    log_q = torch.randn(100, dtype=torch.float64)
    log_q_nbr = torch.randn(100, 40, dtype=torch.float64)
    args = net.operator_args(0.0)
    default = torch.ops.nncme.transition_logsum(states, log_q, log_q_nbr, *args, 1e-4)
    monkeypatch.setenv("NNCME_CPU_ISA", "base")
    base = torch.ops.nncme.transition_logsum(states, log_q, log_q_nbr, *args, 1e-4)
    for i in (0, 2):  # log T q and exit rate; the local generator is checked against ref below
        torch.testing.assert_close(default[i], base[i], rtol=1e-13, atol=1e-13, equal_nan=True)
    ref = reference.transition_logsum(states, log_q, log_q_nbr, *args, 1e-4)
    assert_matches(base, ref, torch.float64)


@needs_kernel
def test_transition_empty_network_and_batch(device):
    c = _two_species(torch.float64, device)
    args = c.operator_args(0.0)
    empty = torch.zeros(0, 2, dtype=torch.int64, device=device)
    out = torch.ops.nncme.transition_logsum(
        empty,
        torch.zeros(0, dtype=torch.float64, device=device),
        torch.zeros(0, 3, dtype=torch.float64, device=device),
        *args,
        0.1,
    )
    assert all(o.shape == (0,) for o in out)


@pytest.mark.cuda
@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_transition_cuda_kernel_matches_cpu_kernel(dtype, rng):
    """Both benchmark shape classes: 35 reactions (8/16/32 lanes per state) and 2000."""
    for L, K, B in [(16, 35, 4096), (1024, 2000, 256), (3, 6, 100), (5, 12, 100)]:
        net = random_network(rng, L, K, max_limit=40)
        cpu, gpu = net.compile("cpu", dtype), net.compile("cuda", dtype)
        states = random_states(rng, net, B)
        log_q = (torch.randn(B, dtype=torch.float64) * 3 - 5).to(dtype)
        log_q_nbr = (torch.randn(B, K, dtype=torch.float64) * 3 - 5).to(dtype)
        log_q_nbr[torch.rand(B, K) < 0.1] = -math.inf
        log_q[torch.rand(B) < 0.05] = -math.inf
        a0 = reference.propensities(states, *cpu.operator_args(0.0)).sum(1)
        dt = float(0.5 / max(float(a0.max()), 1e-3))
        ref = torch.ops.nncme.transition_logsum(
            states, log_q, log_q_nbr, *cpu.operator_args(0.0), dt
        )
        out = torch.ops.nncme.transition_logsum(
            states.cuda(), log_q.cuda(), log_q_nbr.cuda(), *gpu.operator_args(0.0), dt
        )
        assert_matches(tuple(o.cpu() for o in out), ref, dtype)


@needs_kernel
def test_transition_opcheck_on_device(device, rng):
    net = random_network(rng, 6, 20).compile(device)
    states = random_states(rng, net.network, 24, outside=0).to(device)
    args = net.operator_args(0.0)
    log_q = torch.randn(24, dtype=torch.float64, device=device)
    log_q_nbr = torch.randn(24, 20, dtype=torch.float64, device=device)
    dt = 0.5 / max(float(reference.propensities(states, *args).sum(1).max()), 1.0)
    torch.library.opcheck(
        torch.ops.nncme.transition_logsum.default, (states, log_q, log_q_nbr, *args, dt)
    )
