"""Boxes beyond int64 keys (lattices of many sites): distinct states by hashes, checked; the
step target memoised and taken in chunks there, with the values of a direct evaluation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import nncme.sampling as sampling
from nncme import Reaction, ReactionNetwork, ops
from nncme.io import resolve_network
from nncme.models import build_model
from nncme.optim import target as target_module
from nncme.optim.target import TransitionTarget
from nncme.sampling import state_hash, state_keys, unique_states

from .conftest import random_network

LATTICE = "reaction_diffusion:shape=4x4,kinetics=birth_death,x0=2,k=4,gamma=1,hopping=1"


def lattice():
    net = resolve_network(LATTICE)
    compiled = net.compile(torch.device("cpu"), torch.float64)
    assert state_keys(compiled.limits.unsqueeze(0) - 1, compiled.limits) is None  # hashed
    return net, compiled


def repeated_rows(seed: int, limits: torch.Tensor) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rows = torch.randint(0, int(limits.min()), (400, limits.shape[0]), generator=g)
    return torch.cat([rows, rows[::3], rows[:7]])[torch.randperm(540, generator=g)]


def test_hashed_distinct_states_are_the_rows_themselves():
    limits = torch.full((40,), 30)
    rows = repeated_rows(0, limits)
    unique, inverse = unique_states(rows, limits)
    assert torch.equal(unique[inverse], rows)
    assert torch.equal(torch.unique(unique, dim=0), torch.unique(rows, dim=0))
    assert unique.shape[0] == 400
    # the hash: 62 bits, fixed per width, the second one independent of the first
    keys, again = state_hash(rows), state_hash(rows.clone())
    assert torch.equal(keys, again) and int(keys.min()) >= 0 and int(keys.max()) < 2**62
    assert not torch.equal(keys, state_hash(rows, second=True))
    # counts so large that the terms are reduced one by one: the same rows found
    huge = rows * 10**6
    u2, inv2 = unique_states(huge, torch.full((40,), 10**8))
    assert torch.equal(u2[inv2], huge) and u2.shape[0] == 400


def test_states_that_share_a_hash_are_still_told_apart(monkeypatch):
    limits = torch.full((40,), 30)
    rows = repeated_rows(1, limits)
    real = sampling.state_hash

    def colliding(states, *, second=False):
        return real(states, second=True) if second else states[:, 0].clone()  # many collide

    monkeypatch.setattr(sampling, "state_hash", colliding)
    unique, inverse = unique_states(rows, limits)
    assert torch.equal(unique[inverse], rows) and unique.shape[0] == 400


def direct_target(model, compiled, states, dt):
    """log T q at states with every neighbour scored afresh (no memo, no chunks)."""
    nbr, valid = ops.neighbors(states, compiled)
    with torch.no_grad():
        log_q = model.log_prob(states)
        log_nbr = model.log_prob(nbr.reshape(-1, states.shape[1])).reshape(valid.shape)
    log_nbr = torch.where(valid, log_nbr, torch.full_like(log_nbr, -math.inf))
    return ops.transition_logsum(states, log_q, log_nbr, compiled, 0.0, dt)[0]


MODELS = {"nade": {"hidden": 8}, "transformer": {"hidden": 8, "layers": 1, "heads": 2}}


@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.parametrize("route", ["prefix", "memo"])
@pytest.mark.parametrize("elements", [target_module.DEFAULT_NEIGHBOUR_ELEMENTS, 16 * 80 * 37])
def test_the_step_target_on_a_hashed_box_is_the_direct_one(kind, route, elements, monkeypatch):
    """Both models' neighbours scored from their shared prefixes; or (the route of a model
    that cannot) every distinct neighbour scored, memoised by checked hashes."""
    net, compiled = lattice()
    model = build_model(kind, net, dtype=torch.float64, seed=3, **MODELS[kind])
    generator = torch.Generator().manual_seed(0)
    first, _ = model.sample(300, generator)
    second = torch.cat([first[:150], model.sample(150, generator)[0]])  # half seen before

    def target_of(**kw):
        made = TransitionTarget(model, compiled, 0.0, 1e-4, neighbour_elements=elements, **kw)
        assert made._by_prefix  # a lattice, and a model that scores from prefixes
        made._by_prefix = route == "prefix"
        return made

    target = target_of()
    assert target.chunk == elements // (16 * 80)
    for states in (first, second):
        got = target(states).log_tq
        torch.testing.assert_close(got, direct_target(model, compiled, states, 1e-4))
    if route == "prefix":
        assert target._keys is None  # nothing memoised
        return
    assert target._checks is not None and target._keys.shape == target._checks.shape
    # a memo that would pass MEMO_ENTRIES starts over, with the same values
    monkeypatch.setattr(target_module, "MEMO_ENTRIES", 1000)
    small = target_of()
    for states in (first, second):
        torch.testing.assert_close(
            small(states).log_tq, direct_target(model, compiled, states, 1e-4)
        )
    assert small._keys.shape[0] <= 1000 + 300 * 81


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_models_score_neighbours_from_their_shared_prefix(kind):
    """Against log q of each neighbour scored alone, with changes at up to four species (the
    Transformer's parameters moved off their small start, so that every position matters)."""
    rng = np.random.default_rng(7)
    net = random_network(rng, 12, 30, max_limit=7, factor_fraction=0.0)
    compiled = net.compile(torch.device("cpu"), torch.float64)
    sites, steps = ops.neighbour_changes(compiled)
    assert sites.shape[1] >= 3 and bool((sites[:, 1:] >= sites[:, :-1]).all())
    model = build_model(kind, net, dtype=torch.float64, seed=2, **MODELS[kind])
    with torch.no_grad():
        g = torch.Generator().manual_seed(4)
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    states = torch.as_tensor(rng.integers(0, net.limits, size=(200, net.L)))
    nbr, valid = ops.neighbors(states, compiled)
    own, scored = model.score_neighbours(states, sites, steps, valid, elements=500)
    with torch.no_grad():
        want = model.log_prob(nbr.reshape(-1, net.L)).reshape(valid.shape)
        torch.testing.assert_close(own, model.log_prob(states))
    assert float(want[valid].std()) > 1.0  # neighbours that differ
    torch.testing.assert_close(scored[valid], want[valid])
    assert bool(torch.isinf(scored[~valid]).all()) and bool((~valid).any())
    conditional = build_model(kind, net, dtype=torch.float64, context_dim=2, **MODELS[kind])
    assert conditional.score_neighbours(states, sites, steps, valid) is None


def test_a_chunked_target_saturates_as_a_whole_one():
    """dt a_0 of about 1 on the model's draws: the saturated map, chunk by chunk."""
    net, compiled = lattice()
    model = build_model("nade", net, dtype=torch.float64, seed=3, hidden=8)
    states, _ = model.sample(200, torch.Generator().manual_seed(1))
    whole = TransitionTarget(model, compiled, 0.0, 1e-3)(states)
    assert float((1e-3 * whole.exit_rate).max()) > target_module.STIFF_RATE_DT
    chunked = TransitionTarget(model, compiled, 0.0, 1e-3, neighbour_elements=16 * 80 * 23)
    parts = chunked(states)
    for a, b in zip((whole.log_tq, whole.local_gen, whole.exit_rate),
                    (parts.log_tq, parts.local_gen, parts.exit_rate)):  # fmt: skip
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def direct_neighbour_exits(states, compiled, t):
    """a_0(n - s_k) (B, K) by evaluating every neighbour's propensities."""
    nbr, valid = ops.neighbors(states, compiled, impl="reference")
    B, K, L = nbr.shape
    a0 = ops.propensities(nbr.reshape(-1, L), compiled, t, impl="reference").sum(dim=1)
    return a0.reshape(B, K), valid


@pytest.mark.parametrize("impl", ["reference", "auto"])
def test_neighbour_exit_rates_from_the_reactions_each_change_touches(impl):
    rng = np.random.default_rng(5)
    net = random_network(rng, 60, 40, max_limit=9)  # Hill, complement factors, conventions
    compiled = net.compile(torch.device("cpu"), torch.float64)
    exits = ops.neighbour_exit_rates(compiled)
    assert exits.sparse and ops.neighbour_exit_rates(compiled) is exits  # built once
    states = torch.as_tensor(rng.integers(0, net.limits, size=(300, net.L)))
    own = ops.propensities(states, compiled, 0.0, impl=impl)
    got = exits(states, own, 0.0, impl=impl)
    want, valid = direct_neighbour_exits(states, compiled, 0.0)
    torch.testing.assert_close(got[valid], want[valid], rtol=1e-12, atol=1e-12)
    _, lattice_net = lattice()
    assert ops.neighbour_exit_rates(lattice_net).sparse  # 80 reactions, 1-2 sites each
    dense = ReactionNetwork(
        {"A": 10, "B": 10},
        [Reaction({"A": 1}, {"B": 1}, 1.0), Reaction({"B": 1}, {"A": 1}, 2.0)],
        {"A": 3},
    )
    assert not ops.neighbour_exit_rates(dense.compile(torch.device("cpu"), torch.float64)).sparse


def test_the_saturated_target_by_touched_reactions_is_the_direct_one(monkeypatch):
    net, compiled = lattice()
    model = build_model("nade", net, dtype=torch.float64, seed=3, hidden=8)
    states, _ = model.sample(200, torch.Generator().manual_seed(2))
    sparse = TransitionTarget(model, compiled, 0.0, 1e-3)(states)
    exits = ops.neighbour_exit_rates(compiled)
    monkeypatch.setattr(exits, "sparse", False)  # every neighbour's propensities
    dense = TransitionTarget(model, compiled, 0.0, 1e-3)(states)
    assert float((1e-3 * dense.exit_rate).max()) > target_module.STIFF_RATE_DT
    torch.testing.assert_close(sparse.log_tq, dense.log_tq, rtol=1e-12, atol=1e-12)


def test_the_memo_keeps_new_states_only_while_batches_repeat():
    """A batch that hardly repeats scores its states without growing the memo (keeping it
    sorted would cost more than it saves); one that repeats enough adds its new states."""
    net, compiled = lattice()
    model = build_model("transformer", net, dtype=torch.float64, seed=3, **MODELS["transformer"])
    generator = torch.Generator().manual_seed(4)
    first, second, third = (model.sample(200, generator)[0] for _ in range(3))
    target = TransitionTarget(model, compiled, 0.0, 1e-4)
    target._by_prefix = False  # the route of a model that cannot score from prefixes
    target(first)
    kept = target._keys.shape[0]
    target(second)  # new draws of a broad law: next to no repeats
    assert target._keys.shape[0] == kept
    mixed = torch.cat([first[:100], third[:100]])
    values = target(mixed).log_tq
    assert target._keys.shape[0] > kept  # half repeated: its new states kept
    torch.testing.assert_close(values, direct_target(model, compiled, mixed, 1e-4))


def test_a_long_listed_fit_draws_its_states():
    """A first-step fit to more states than its batch fits draws of p, the same law in the
    end; a list within the batch is fitted exactly as without one."""
    from scipy.stats import poisson

    from nncme.optim import fit_enumerated

    net = ReactionNetwork(
        {"A": 30, "B": 30}, [Reaction({}, {"A": 1}, 1.0), Reaction({}, {"B": 1}, 1.0)], {"A": 0}
    )
    grid = torch.cartesian_prod(torch.arange(30), torch.arange(30))
    log_p = torch.as_tensor(
        poisson.logpmf(grid[:, 0].numpy(), 6) + poisson.logpmf(grid[:, 1].numpy(), 11)
    )

    def fitted(batch):
        model = build_model("nade", net, dtype=torch.float64, seed=1, hidden=8)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.03)
        report = fit_enumerated(
            model,
            grid,
            log_p,
            optimizer,
            iterations=400,
            tolerance=1e-9,
            batch=batch,
            generator=torch.Generator().manual_seed(0),
        )
        with torch.no_grad():
            p = torch.softmax(log_p, 0)
            kl = float((p * (torch.log(p) - model.log_prob(grid))).sum())
        return report, kl

    report_whole, kl_whole = fitted(None)
    report_same, _ = fitted(900)  # within the batch: the exact fit
    assert report_same.losses == report_whole.losses
    report_drawn, kl_drawn = fitted(128)
    assert kl_whole < 0.01 and kl_drawn < 0.02
    assert math.isfinite(report_drawn.loss) and report_drawn.iterations == 400
