"""Exponential steps (`nncme.steppers.Exponential`, `auto` where the fits sum over the support):
the CME's own solution as each fit's target, steps as long as the fits allow whatever the
rates, the time error estimate of time-dependent rates against the true error."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

import nncme
from nncme import Reaction, ReactionNetwork
from nncme.api import build_driver
from nncme.config import RunConfig
from nncme.exact import FSPSettings, solve_fsp
from nncme.metrics import hellinger
from nncme.network import PiecewiseConstant, Sinusoidal
from nncme.optim.implicit import solve_on
from nncme.steppers import Exponential


def bistable(x0: int = 200) -> ReactionNetwork:
    """A Schlögl network of our own (not the catalogue's rates): deterministic stable points
    near 76 and 460 and an unstable one near 210, total rates up to 2e4 in its box of 600,
    started near the unstable point, from where the law splits between the modes."""
    return ReactionNetwork(
        {"X": 600},
        [
            Reaction({"X": 2}, {"X": 3}, 0.03, "autocatalysis"),
            Reaction({"X": 3}, {"X": 2}, 1.2e-4, "reverse"),
            Reaction({}, {"X": 1}, 150.0, "inflow"),
            Reaction({"X": 1}, {}, 3.0, "outflow"),
        ],
        {"X": x0},
        convention="binomial",
        t_end=2.0,
        dt=1e-5,
    )


def seasonal(limit: int = 80) -> ReactionNetwork:
    """Immigration-death with a sinusoidal immigration rate 20 (1 + 0.9 sin(2 t)), death 1."""
    return ReactionNetwork(
        {"X": limit},
        [
            Reaction({}, {"X": 1}, Sinusoidal(c=20.0, a=0.9, omega=2.0, phi=0.0), "immigration"),
            Reaction({"X": 1}, {}, 1.0, "death"),
        ],
        {"X": 5},
        t_end=3.0,
        dt=0.01,
    )


def test_exponential_steps_cross_a_stiff_bistable_network_in_few_long_steps():
    """From near the unstable point at dt = 1e-5 (dt a_0 reaches 0.2 in the box) to t = 2,
    where the law has split between the modes: every step after the exact first one is
    exponential, the steps grow past any explicit or error-limited length (h a_0 in the
    thousands), each fit reaches its target, and the law follows FSP at every save time,
    its split and its upper tail included."""
    net = bistable()
    out = nncme.run(net, RunConfig(save_every=0.5, quiet=True))
    steps = out.history[1:]
    assert {h["scheme"] for h in steps} == {"exponential"}
    assert not any(h["capped"] for h in steps)
    assert len(steps) < 60  # 200,000 steps of dt
    a0_top = 0.03 * 599 * 598 / 2 + 1.2e-4 * 599 * 598 * 597 / 6 + 150 + 3 * 599
    assert max(h["dt"] for h in steps) * a0_top > 1000
    exact = solve_fsp(net, out.result.times, FSPSettings(quiet=True))
    assert hellinger(exact.marginals, out.result.marginals).max() < 0.002
    p, q = exact.marginals[-1, 0], out.result.marginals[-1, 0]
    assert 0.3 < p[:150].sum() < 0.7  # split between the modes
    assert q[:150].sum() == pytest.approx(p[:150].sum(), rel=0.01)
    upper = np.cumsum(p[::-1])[::-1]
    for level in (1e-4, 1e-6):  # P(X >= k) at the exact upper quantiles
        k = int(np.argmax(upper <= level))
        assert q[k:].sum() == pytest.approx(p[k:].sum(), rel=0.05), level


def test_the_time_error_estimate_is_the_midpoint_steps_own():
    """Where a rate depends on time, one exponential midpoint step is compared with two half
    steps: the estimate is within a factor 1.5 of the step's true error (against the same law
    carried by 512 midpoint steps), which falls nearly as h^3 (second order) right after the
    start."""
    net = seasonal()
    driver = build_driver(net, RunConfig(quiet=True))
    driver.step()  # the exact first step: the model holds a law of its own
    stepper = driver.stepper.exponential
    assert isinstance(stepper, Exponential) and stepper.time_dependent
    motion = stepper.motion
    t = driver.t
    with torch.no_grad():
        p = torch.exp(motion.model.log_prob(motion.support).double()).numpy()

    def midpoint(h: float, pieces: int) -> np.ndarray:
        q, piece = p, h / pieces
        for i in range(pieces):
            q, _ = solve_on(
                motion.support, q, motion.net, t + (i + 0.5) * piece, piece, "auto", True
            )
        return q

    true_errors = []
    for h in (0.0125, 0.025, 0.05):
        truth, one = midpoint(h, 512), midpoint(h, 1)
        true_error = math.sqrt(float(((one - truth) ** 2 / np.maximum(truth, 1e-300)).sum()))
        _, estimate = stepper._propagated(t, h)
        assert 1 / 1.5 < estimate / true_error < 1.5, (h, estimate, true_error)
        true_errors.append(true_error)
    for shorter, longer in itertools.pairwise(true_errors):  # h^3 as h -> 0: 5.7-6.2 here
        assert 5 < longer / shorter < 10


def test_exponential_steps_follow_a_time_dependent_law_within_their_tolerance():
    """The seasonal immigration-death with every default: the steps' time error stays under
    the summed tolerance (1e-3), and the law follows FSP at every save time."""
    net = seasonal()
    out = nncme.run(net, RunConfig(save_every=0.5, quiet=True))
    steps = out.history[1:]
    assert {h["scheme"] for h in steps} == {"exponential"}
    assert max(h["local_error"] for h in steps) <= 1e-3
    assert len(steps) < 100  # 300 steps of dt
    exact = solve_fsp(net, out.result.times, FSPSettings(quiet=True))
    assert hellinger(exact.marginals, out.result.marginals).max() < 0.002


def test_exponential_sub_steps_end_where_a_rate_jumps():
    """A birth rate that jumps from 5 to 50 at t = 0.93, inside a grown step: the sub-step
    ends at the jump (a step across it would take one rate for both sides, and the midpoint
    rule's two half steps, at 0.805 and 0.915 of a step from 0.75 to 0.97, see no jump), and
    the law follows FSP."""
    jump = PiecewiseConstant(breakpoints=[0.93], values=[5.0, 50.0])
    net = ReactionNetwork(
        {"X": 120},
        [Reaction({}, {"X": 1}, jump, "birth"), Reaction({"X": 1}, {}, 1.0, "death")],
        {"X": 0},
        t_end=2.0,
        dt=0.01,
    )
    out = nncme.run(net, RunConfig(save_every=0.25, quiet=True))
    assert any(h["t"] > 0.93 and h["t"] - h["dt"] < 0.93 for h in out.history)  # a step across
    exact = solve_fsp(net, out.result.times, FSPSettings(quiet=True))
    assert hellinger(exact.marginals, out.result.marginals).max() < 0.002


def test_steps_grow_only_while_their_fits_follow(monkeypatch):
    """Where no rate depends on time a step doubles up to the time between saves, but only
    while its fit ends below GROW_BELOW: with every fit counted as not following (GROW_BELOW
    = 0), no step is longer than the first exponential one."""
    net = ReactionNetwork(
        {"X": 60},
        [Reaction({}, {"X": 1}, 12.0, "birth"), Reaction({"X": 1}, {}, 1.0, "death")],
        {"X": 0},
        t_end=1.0,
        dt=0.01,
    )
    grown = nncme.run(net, RunConfig(save_every=0.5, quiet=True)).history[1:]
    assert max(h["dt"] for h in grown) >= 0.25
    monkeypatch.setattr(Exponential, "GROW_BELOW", 0.0)
    held = nncme.run(net, RunConfig(save_every=0.5, quiet=True)).history[1:]
    assert {h["scheme"] for h in held} == {"exponential"}
    assert max(h["dt"] for h in held) <= held[0]["dt"] + 1e-12
    assert len(held) > 2 * len(grown)
