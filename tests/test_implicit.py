"""The implicit (backward Euler) step: its residual is zero exactly at the dense solution of
(I - dt W) q = q_old, the exact first step from a point mass, a run at a dt the explicit step
cannot take against the exact backward-Euler iterates."""

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
from nncme.optim import ImplicitTarget, implicit_support


class Table:
    """A distribution given by its values on an enumerated list of states."""

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
    out = nncme.run(
        net, RunConfig(integrator="implicit", **{**TIGHT, "iterations": 1500}, **common)
    )
    fsp = FSP(net, FSPSettings(quiet=True))
    p = spla.expm_multiply(0.1 * fsp.generator(0.0), fsp.initial_distribution())  # exact first
    want = []
    for j in range(1, 6):
        p = backward_euler(fsp, p, 0.1 * j, 0.1)
        if j % 2 == 1:
            want.append(p)
    h = hellinger(np.stack(want), out.result.marginals[1:, 0])
    assert h.max() < 0.02, h
    assert {line["scheme"] for line in out.history} == {"exponential, exact", "implicit"}


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
    """Birth-death at dt = 0.1, where dt a_0 is 1 to 2 on the mass: the auto integrator's Heun
    steps of dt give way to adaptive implicit ones (no warning, FSP followed); by default the
    law, which moves fast there, has the Heun steps cut into sub-steps instead (not stiff,
    FSP followed); at dt = 0.01 every step after the exact first one is Heun's."""
    net = birth_death()
    fsp = FSP(net, FSPSettings(quiet=True))
    p0 = fsp.initial_distribution()
    exact = np.stack([spla.expm_multiply(t * fsp.generator(0.0), p0) for t in (0.2, 0.4, 0.6)])
    common = dict(t_end=0.6, save_every=0.2, quiet=True, eval_samples=4000, **TIGHT)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no stiffness warning
        stiff = nncme.run(net, RunConfig(dt=0.1, max_motion=0.0, **common))
        cut = nncme.run(net, RunConfig(dt=0.1, **common))
    schemes = [line["scheme"] for line in stiff.history]
    assert schemes[0] == "exponential, exact" and set(schemes[1:]) == {"implicit"}
    assert hellinger(exact, stiff.result.marginals[1:, 0]).max() < 0.02
    assert {line["scheme"] for line in cut.history[1:]} == {"heun"}
    assert min(line["accepted"] for line in cut.history[1:]) > 1
    assert hellinger(exact, cut.result.marginals[1:, 0]).max() < 0.02
    mild = nncme.run(net, RunConfig(dt=0.01, **{**common, "iterations": 60}))
    assert {line["scheme"] for line in mild.history[1:]} == {"heun"}
    assert hellinger(exact, mild.result.marginals[1:, 0]).max() < 0.02
