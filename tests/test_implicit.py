"""The implicit steps: the residual is zero exactly at the dense solution of (I - dt W) q =
q_old and of BDF2's equation, the exact first step from a point mass, runs at a dt the explicit
step cannot take against the exact backward-Euler and BDF2 iterates, BDF2's error estimate
against its true local error."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

import nncme
from nncme import Reaction, ReactionNetwork, systems
from nncme.config import ConfigError, RunConfig
from nncme.exact import FSP, FSPSettings
from nncme.metrics import hellinger
from nncme.models import Delta
from nncme.optim import (
    BDF2Source,
    ImplicitTarget,
    bdf2_coefficients,
    bdf2_error,
    implicit_support,
)


class Table:
    """A distribution given by its values on an enumerated list of states."""

    device = torch.device("cpu")

    def __init__(self, states: np.ndarray, p: np.ndarray) -> None:
        self.index = {tuple(s): i for i, s in enumerate(states.tolist())}
        self.log_p = torch.log(torch.as_tensor(p, dtype=torch.float64).clamp_min(0))

    def log_prob(self, states: torch.Tensor, **_) -> torch.Tensor:
        rows = torch.tensor([self.index.get(tuple(s), -1) for s in states.tolist()])
        out = torch.full((len(rows),), -np.inf, dtype=torch.float64)
        out[rows >= 0] = self.log_p[rows[rows >= 0]]
        return out


def backward_euler(fsp: FSP, p: np.ndarray, t: float, dt: float) -> np.ndarray:
    A = sp.identity(fsp.num_states, format="csc") - dt * fsp.generator(t + dt)
    return spla.spsolve(A.tocsc(), p)


def bdf2(fsp: FSP, p: np.ndarray, p_prev: np.ndarray, t: float, h: float, h_prev: float):
    """The dense variable-step BDF2 step t -> t + h after one of h_prev."""
    a, b, gamma = bdf2_coefficients(h, h_prev)
    A = sp.identity(fsp.num_states, format="csc") - gamma * h * fsp.generator(t + h)
    return spla.spsolve(A.tocsc(), a * p - b * p_prev)


def test_the_residual_vanishes_exactly_at_the_backward_euler_solution():
    net = systems.get("toggle_switch", protein_limit=12)  # time-independent; a conserved gene
    fsp = FSP(net, FSPSettings(quiet=True))
    p_old = np.random.default_rng(0).random(fsp.num_states)
    p_old /= p_old.sum()
    dt = 0.05  # dt * a_0 up to 6: beyond any explicit step
    p_new = backward_euler(fsp, p_old, 0.3, dt)
    states = torch.as_tensor(fsp.states)
    target = ImplicitTarget(Table(fsp.states, p_old), net.compile("cpu", torch.float64), 0.3, dt)
    r, exit_rate = target.residual(Table(fsp.states, p_new), states)
    assert float(dt * exit_rate.max()) > 5
    assert float(r.abs().max()) < 1e-12
    r_old, _ = target.residual(Table(fsp.states, p_old), states)
    assert float(r_old.abs().max()) > 1.0  # q_old itself is far from solving the step


def test_the_residual_vanishes_exactly_at_the_bdf2_solution():
    """A step of 0.03 after one of 0.05 (dt a_0 up to 4), from a smoothed random law (so that
    the source a q_n - b q_{n-1} is positive everywhere and not floored)."""
    net = systems.get("toggle_switch", protein_limit=12)
    fsp = FSP(net, FSPSettings(quiet=True))
    p_prev = np.random.default_rng(1).random(fsp.num_states)
    p_prev = backward_euler(fsp, p_prev / p_prev.sum(), 0.0, 0.27)  # smoothed
    p_now = backward_euler(fsp, p_prev, 0.25, 0.05)
    h, h_prev = 0.03, 0.05
    a, b, gamma = bdf2_coefficients(h, h_prev)
    assert a - b == pytest.approx(1.0)
    assert (a * p_now - b * p_prev).min() > 0
    p_new = bdf2(fsp, p_now, p_prev, 0.3, h, h_prev)
    source = BDF2Source(Table(fsp.states, p_now), Table(fsp.states, p_prev), a, b)
    compiled = net.compile("cpu", torch.float64)
    target = ImplicitTarget(source, compiled, 0.3, gamma * h, t_rates=0.3 + h)
    states = torch.as_tensor(fsp.states)
    r, _ = target.residual(Table(fsp.states, p_new), states)
    assert float(r.abs().max()) < 1e-12
    be = backward_euler(fsp, p_now, 0.3, h)  # the first-order step is not its solution
    assert float(target.residual(Table(fsp.states, be), states)[0].abs().max()) > 1e-3


def test_the_bdf2_error_estimate_is_the_local_error():
    """Birth-death moving off a point mass: BDF2 steps of h from the exact laws at t - 2h and
    t - h; the estimate from the exact laws at t - 2h, t - h, t and the step's result is at
    least the step's true local error and at most 1.5 times it (both relative RMS under the
    result; 1.42 and 1.31 at these steps, towards 1 as h falls), and falls as h^3."""
    net = birth_death()
    fsp = FSP(net, FSPSettings(quiet=True))
    W = fsp.generator(0.0)
    p0 = fsp.initial_distribution()

    def exact(t: float) -> np.ndarray:
        return np.clip(spla.expm_multiply(t * W, p0), 0, None)

    estimates, truths = [], []
    for h in (0.02, 0.01):
        t = 0.3
        laws = [exact(t - 2 * h), exact(t - h), exact(t)]
        new = bdf2(fsp, laws[2], laws[1], t, h, h)
        keep = new > 1e-12 * new.max()
        truth = np.sqrt(np.sum(new[keep] * ((new[keep] - exact(t + h)[keep]) / new[keep]) ** 2))
        history = [(t - (2 - i) * h, Table(fsp.states, p)) for i, p in enumerate(laws)]
        states = torch.as_tensor(fsp.states[keep])
        estimate = bdf2_error(
            Table(fsp.states, new / new[keep].sum() * keep), history, t + h,
            samples=0, support=states,
        )  # fmt: skip
        estimates.append(estimate)
        truths.append(truth)
    ratios = np.array(estimates) / np.array(truths)
    assert np.all((ratios > 1) & (ratios < 1.5)), ratios
    assert 6 < estimates[0] / estimates[1] < 10, estimates


def test_the_first_implicit_run_step_from_a_point_mass_is_the_exact_solution():
    """exact=True: exp(dt W) p0 on the states that hold all but 1e-10 of it, not backward
    Euler's widened law."""
    net = systems.get("toggle_switch", protein_limit=12)
    fsp = FSP(net, FSPSettings(quiet=True))
    dt = 0.05
    states, log_p = implicit_support(
        Delta(net.initial_state, net.limits), net.compile("cpu", torch.float64), 0.0, dt,
        max_states=10**5, exact=True,
    )  # fmt: skip
    want = spla.expm_multiply(dt * fsp.generator(0.0), fsp.initial_distribution())
    got = np.zeros(fsp.num_states)
    got[fsp.index(states.numpy())] = np.exp(log_p.numpy())
    np.testing.assert_allclose(got, want, atol=1e-9)
    assert hellinger(got, backward_euler(fsp, fsp.initial_distribution(), 0.0, dt)) > 0.05


def test_the_first_implicit_step_from_a_point_mass_is_exact():
    net = systems.get("toggle_switch", protein_limit=12)
    fsp = FSP(net, FSPSettings(quiet=True))
    dt = 0.05
    states, log_p = implicit_support(
        Delta(net.initial_state, net.limits), net.compile("cpu", torch.float64), 0.0, dt,
        max_states=10**5,
    )  # fmt: skip
    p0 = fsp.initial_distribution()
    want = backward_euler(fsp, p0, 0.0, dt)
    got = np.zeros(fsp.num_states)
    got[fsp.index(states.numpy())] = np.exp(log_p.numpy())
    np.testing.assert_allclose(got, want, atol=1e-12)


def birth_death(limit: int = 30) -> ReactionNetwork:
    return ReactionNetwork(
        {"X": limit},
        [Reaction({}, {"X": 1}, 10.0, "birth"), Reaction({"X": 1}, {}, 1.0, "death")],
        {"X": 0},
        t_end=1.0,
        dt=0.1,
    )


# Fits that follow the implicit iterates to their tails: the mixture proposal under the
# log-variance objective (no floor on counts the samples never reach), tighter stopping.
TIGHT = dict(
    proposal="mixture", objective="log_variance", relative_tolerance=1e-3, iterations=300,
)  # fmt: skip


def test_an_implicit_run_at_a_dt_no_explicit_step_can_take():
    """Birth-death with dt = 0.1 (dt a_0 up to 3.9 in the box): the explicit run warns that
    its step saturates where the mass is, the implicit one follows the exact backward-Euler
    iterates."""
    net = birth_death()
    common = dict(t_end=0.6, dt=0.1, save_every=0.2, quiet=True, eval_samples=2000)
    with pytest.warns(UserWarning, match=r"dt \* a_0 > 0\.9 on .* of the mass"):
        nncme.run(net, RunConfig(integrator="heun", max_motion=0.0, **common))  # steps of dt
    # the step after the exact first one is the hardest fit (from a narrow law at dt a_0 ~ 2)
    fsp = FSP(net, FSPSettings(quiet=True))
    p0 = fsp.initial_distribution()
    exact = np.stack([spla.expm_multiply(t * fsp.generator(0.0), p0) for t in (0.2, 0.4, 0.6)])
    errors = {}
    # summed: each step's equation solved on the whole box and the model fitted to it;
    # drawn: the model fitted to the equation through its residual at the draws
    for order, enumerate_states in ((1, 1024), (2, 1024), (2, 0)):
        tight = {**TIGHT, "iterations": 1500, "implicit_order": order}
        tight["enumerate_states"] = enumerate_states
        out = nncme.run(net, RunConfig(integrator="implicit", **tight, **common))
        p = spla.expm_multiply(0.1 * fsp.generator(0.0), p0)  # the exact first step
        p_prev, want = p0, []
        for j in range(1, 6):  # backward Euler, or BDF2 after one backward-Euler step
            if order == 1 or j == 1:
                p, p_prev = backward_euler(fsp, p, 0.1 * j, 0.1), p
            else:
                p, p_prev = bdf2(fsp, p, p_prev, 0.1 * j, 0.1, 0.1), p
            if j % 2 == 1:
                want.append(p)
        h = hellinger(np.stack(want), out.result.marginals[1:, 0])
        # (summed: 0.0011 at the first save, after the hardest fit; drawn: 0.005-0.006)
        assert h.max() < (0.003 if enumerate_states else 0.02), (order, enumerate_states, h)
        assert {line["scheme"] for line in out.history} == {"exponential, exact", "implicit"}
        errors[order, enumerate_states] = hellinger(exact, out.result.marginals[1:, 0])
    # second order: closer to the CME once its steps are BDF2's (the first save time is
    # reached by the one backward-Euler step)
    assert max(errors[2, 1024][-1], errors[2, 0][-1]) < errors[1, 1024][-1] / 2, errors


def test_implicit_settings():
    with pytest.raises(ConfigError, match="integrator: implicit"):
        RunConfig(optimizer="natgrad", integrator="implicit")


def test_adaptive_implicit_steps_follow_the_exact_solution_where_fixed_ones_lag():
    """Birth-death leaving a point mass, at dt = 0.1 (dt a_0 up to 3.9): fixed backward-Euler
    steps widen and slow the law; sub-steps from the local error estimate follow FSP."""
    net = birth_death()
    common = dict(t_end=0.6, dt=0.1, save_every=0.2, quiet=True, eval_samples=4000, **TIGHT)
    fsp = FSP(net, FSPSettings(quiet=True))
    p0 = fsp.initial_distribution()
    exact = np.stack([spla.expm_multiply(t * fsp.generator(0.0), p0) for t in (0.2, 0.4, 0.6)])
    fixed = nncme.run(net, RunConfig(integrator="implicit", **common))
    adaptive = nncme.run(net, RunConfig(integrator="implicit", adaptive_dt=True, **common))
    h_fixed = hellinger(exact, fixed.result.marginals[1:, 0])
    h_adaptive = hellinger(exact, adaptive.result.marginals[1:, 0])
    assert h_adaptive.max() < 0.02 < h_fixed.max(), (h_adaptive, h_fixed)
    lines = adaptive.history
    assert sum(line["accepted"] for line in lines[1:]) > len(lines) - 1  # it sub-stepped
    assert all(line["local_error"] <= 1e-2 for line in lines[1:])


def test_auto_takes_heun_steps_where_the_mass_is_not_stiff_and_implicit_ones_where_it_is():
    """Birth-death at dt = 0.1, where dt a_0 is 1 to 2 on the mass, with drawn fits
    (enumerate_states 0): the auto integrator's Heun steps of dt give way to adaptive implicit
    ones where they may not be cut (max_motion 0), are cut into Heun sub-steps where they may
    (the law moves too fast for one), and at dt = 0.01 every step after the exact first one is
    Heun's; all follow FSP, with no warning. Where the fits sum over the box (the default),
    every step is exponential (`tests/test_exponential.py`)."""
    net = birth_death()
    fsp = FSP(net, FSPSettings(quiet=True))
    p0 = fsp.initial_distribution()
    exact = np.stack([spla.expm_multiply(t * fsp.generator(0.0), p0) for t in (0.2, 0.4, 0.6)])
    common = dict(t_end=0.6, save_every=0.2, quiet=True, eval_samples=4000, **TIGHT)
    drawn = dict(common, enumerate_states=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no stiffness warning
        stiff = nncme.run(net, RunConfig(dt=0.1, max_motion=0.0, **drawn))
        cut = nncme.run(net, RunConfig(dt=0.1, **drawn))
        summed = nncme.run(net, RunConfig(dt=0.1, **common))
    schemes = [line["scheme"] for line in stiff.history]
    assert schemes[0] == "exponential, exact" and set(schemes[1:]) == {"implicit"}
    assert hellinger(exact, stiff.result.marginals[1:, 0]).max() < 0.02
    assert {line["scheme"] for line in cut.history[1:]} == {"heun"}
    assert min(line["accepted"] for line in cut.history[1:]) > 1
    assert hellinger(exact, cut.result.marginals[1:, 0]).max() < 0.02
    assert {line["scheme"] for line in summed.history[1:]} == {"exponential"}
    assert hellinger(exact, summed.result.marginals[1:, 0]).max() < 0.002
    mild = nncme.run(net, RunConfig(dt=0.01, **{**drawn, "iterations": 60}))
    assert {line["scheme"] for line in mild.history[1:]} == {"heun"}
    assert hellinger(exact, mild.result.marginals[1:, 0]).max() < 0.02


def test_an_error_floor_above_the_tolerance_is_warned_about_not_fatal(monkeypatch):
    """An error estimate with a floor (the fits' own error, here 1e-3 plus a truncation
    error of 0.01 (h / 0.05)^2) above dt_tolerance (1e-4): the sub-steps shrink until the
    estimate stops falling with them, and the sub-step is accepted at that floor with one
    warning, instead of shrinking to min_step and stopping the run; later sub-steps are held
    to 1.5 x the floor (h about 0.01 here) and the run completes."""
    from nncme.steppers import BackwardEuler

    floor = 1e-3

    def floored(self, old, t, h):
        return floor + 0.01 * (h / 0.05) ** 2, 1

    monkeypatch.setattr(BackwardEuler, "_error", floored)
    cfg = RunConfig(
        integrator="implicit", adaptive_dt=True, dt_tolerance=1e-4, dt=0.1, t_end=0.3,
        save_every=0.1, quiet=True, iterations=30,
    )  # fmt: skip
    with pytest.warns(UserWarning, match="does not fall with the step") as caught:
        out = nncme.run(birth_death(), cfg)
    assert sum("does not fall with the step" in str(w.message) for w in caught) == 1
    assert out.result.times[-1] == pytest.approx(0.3)
    later = out.history[2:]  # after the step that found the floor
    assert all(line["local_error"] <= 1.5 * 1.001 * floor for line in later), later
    assert all(line["accepted"] >= 5 for line in later)  # h near 0.01: about 10 a step
