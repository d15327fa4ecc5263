"""Fits over a small support summed exactly (`sampling.Enumerated`): the draw is every state of
the model's support with the weights q and the proposal's rho; the update's coefficients are
the exact gradients of the reverse KL and of the log-variance under rho (autograd of the
objective summed over the box); a run uses it by default where the support is small, not
where it is large or with `enumerate_states=0`; and such a run follows FSP."""

from __future__ import annotations

import math

import pytest
import torch

import nncme
from nncme import Reaction, ReactionNetwork
from nncme.api import build_driver
from nncme.config import RunConfig
from nncme.exact import FSP, FSPSettings, enumerate_states, solve_fsp
from nncme.metrics import hellinger
from nncme.models import build_model, frozen_copy
from nncme.observers import Recorder
from nncme.optim import ImplicitTarget, ImplicitUpdate, KLUpdate, StepProblem, TransitionTarget
from nncme.sampling import Alpha, Enumerated, Mixture, Vanilla

from .test_optim import conserved_network as optim_network


def conserved_network() -> ReactionNetwork:
    """A <-> B with A + B = 5, and an independent C: 72 states on the law in a box of 432."""
    return optim_network(c_limit=12, t_end=0.6)


def enumerated(net: ReactionNetwork, inner) -> Enumerated:
    return Enumerated(inner, torch.from_numpy(enumerate_states(net)))


def test_the_draw_is_every_state_with_q_and_rho():
    net = conserved_network()
    model = build_model("nade", net, hidden=4, seed=3)
    inner = Mixture(0.3)
    proposal = enumerated(net, inner)
    assert proposal.covers(model)
    draw = proposal.draw(model, 10, torch.Generator().manual_seed(0))
    assert draw.exhaustive and draw.states.shape == (72, 3)
    log_q = model.log_prob(draw.states).detach()
    torch.testing.assert_close(draw.weights, torch.exp(log_q))  # q sums to 1 on the law
    rho = torch.exp(inner.log_prob(model, draw.states))
    torch.testing.assert_close(float(rho.sum()), 1.0)
    torch.testing.assert_close(draw.as_drawn(), rho)
    torch.testing.assert_close(float(draw.counts.sum()), 72.0)
    # a list that leaves out states the model can hold is not its support
    assert not Enumerated(inner, proposal.support[:60]).covers(model)
    # a random draw counts every state once
    plain = Vanilla().draw(model, 10, torch.Generator().manual_seed(0))
    assert not plain.exhaustive
    torch.testing.assert_close(plain.as_drawn(), torch.full((10,), 0.1, dtype=torch.float64))


class _Spy(KLUpdate):
    def apply_gradient(self, problem, states, coef, weights, numbers=None):
        self.seen = (states, coef.detach().clone())
        return numbers


def _parameter_gradient(model, objective: torch.Tensor) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    objective.backward()
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize("objective", ["kl", "log_variance"])
@pytest.mark.parametrize("implicit", [False, True])
def test_an_exact_fit_reaches_its_target(objective, implicit):
    """L-BFGS on the whole support: a fit between two unrelated models (a motion of
    Hellinger ~ 0.1) ends within 1e-3 of its target, has made its whole motion, and does not
    depend on the random stream."""
    net = conserved_network()
    compiled = net.compile("cpu", torch.float64)
    old = frozen_copy(build_model("nade", net, hidden=16, seed=4))
    proposal = enumerated(net, Mixture(0.1))
    fitted = []
    for seed in (0, 1):
        model = build_model("nade", net, hidden=16, seed=3)
        update = ImplicitUpdate(
            torch.optim.Adam(model.parameters(), lr=0.01), iterations=60, tolerance=1e-6,
            relative_tolerance=0.01, min_iterations=3, objective=objective,
        )  # fmt: skip
        target = (
            ImplicitTarget(old, compiled, 0.0, 0.05)
            if implicit
            else TransitionTarget(old, compiled, 0.0, 0.02)
        )
        generator = torch.Generator().manual_seed(seed)
        report = update.run(StepProblem(model, target, proposal, 100, generator, 0.0, 0.02))
        fitted.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
        states = proposal.support
        with torch.no_grad():
            q = torch.exp(model.log_prob(states))
            if implicit:  # the backward-Euler solution on the support, by a dense solve
                p = _backward_euler(net, old, states, 0.05)
            else:
                p = torch.exp(target(states).log_tq)
        assert hellinger((p / p.sum()).numpy(), q.numpy()) < 1e-3
        assert abs(report.motion_made - 1) < 0.02
        assert not report.capped and report.iterations == len(report.residuals)
    torch.testing.assert_close(fitted[0], fitted[1])


def _backward_euler(net, old, states, dt):
    cme = FSP(net, FSPSettings(quiet=True))
    assert torch.equal(torch.from_numpy(cme.states), states)
    W = torch.as_tensor(cme.generator().toarray())
    p_old = torch.exp(old.log_prob(states))
    return torch.linalg.solve(torch.eye(states.shape[0], dtype=W.dtype) - dt * W, p_old)


@pytest.mark.parametrize("objective", ["kl", "log_variance"])
def test_coefficients_are_the_exact_objectives_gradient(objective):
    """Natural gradient's path over a whole support (coefficients, not L-BFGS):
    sum_u coef_u grad log q(n_u) is the gradient of D(q || T q_old) (KL), or half that of
    Var_rho(log q - log T q_old) with rho held fixed (log-variance), summed over the box."""
    net = conserved_network()
    model = build_model("nade", net, hidden=4, seed=3)
    old = build_model("nade", net, hidden=4, seed=4)
    inner = Mixture(0.3)
    proposal = enumerated(net, inner)
    spy = _Spy(torch.optim.SGD(model.parameters(), lr=0.1), iterations=1, objective=objective)
    spy.exact_fits = False  # the draws' path, which natural gradient takes over a support
    spy.explore = 0.5  # exploration has nothing to add to a whole support: it is left out
    target = TransitionTarget(old, net.compile("cpu", torch.float64), 0.0, 0.02)
    problem = StepProblem(model, target, proposal, 50, torch.Generator().manual_seed(5), 0.0, 0.02)
    spy.run(problem)
    states, coef = spy.seen
    assert states.shape[0] == 72
    log_tq = target(states).log_tq.detach()
    log_q = model.log_prob(states)
    f = log_q - log_tq
    from_coef = _parameter_gradient(model, (coef * model.log_prob(states)).sum())
    if objective == "kl":
        exact = (torch.exp(log_q) * f).sum()
    else:
        rho = torch.exp(inner.log_prob(model, states)).detach()
        exact = 0.5 * (rho * (f - (rho * f).sum()) ** 2).sum()
    torch.testing.assert_close(from_coef, _parameter_gradient(model, exact))


def test_a_run_enumerates_small_supports_only():
    net = conserved_network()
    driver = build_driver(net, RunConfig(quiet=True))
    assert isinstance(driver.stepper.motion.proposal, Enumerated)
    assert driver.stepper.motion.proposal.support.shape[0] == 72
    assert driver.observer(Recorder).summary["enumerated_states"] == 72
    assert driver.observer(Recorder).summary["settings"]["objective"] == "log_variance"
    off = build_driver(net, RunConfig(quiet=True, enumerate_states=0))
    assert isinstance(off.stepper.motion.proposal, Mixture)
    assert off.observer(Recorder).summary["enumerated_states"] is None
    assert off.observer(Recorder).summary["settings"]["objective"] == "kl"  # two free counts
    small = build_driver(net, RunConfig(quiet=True, enumerate_states=71))
    assert isinstance(small.stepper.motion.proposal, Mixture)
    tdvp = build_driver(net, RunConfig(quiet=True, optimizer="tdvp"))  # a flow: draws
    assert isinstance(tdvp.stepper.motion.rhs.proposal, Mixture)
    natgrad = build_driver(net, RunConfig(quiet=True, optimizer="natgrad"))
    assert isinstance(natgrad.stepper.motion.proposal, Enumerated)


def births_and_deaths(limits: dict[str, int]) -> ReactionNetwork:
    """Independent births and deaths of every species, in a box of the given limits."""
    reactions = []
    for name in limits:
        reactions += [Reaction({}, {name: 1}, 2.0), Reaction({name: 1}, {}, 1.0)]
    return ReactionNetwork(limits, reactions, {}, t_end=0.5, dt=0.01)


def test_a_run_sums_where_an_evaluation_runs_few_prefixes():
    """The limit is the states and the prefixes a sum runs through the network
    (`Enumerated.MAX_ROWS`): a box of two species of 100 counts (10,000 states, 100
    prefixes) is summed, one of five species of 5 counts (3,125 states, 625 prefixes) too,
    one of six species of 5 and one of 2 (31,250 states, 15,625 prefixes) is drawn, and so is
    a box above `enumerate_states`."""
    wide = births_and_deaths({"X": 100, "Y": 100})
    summed = build_driver(wide, RunConfig(quiet=True))
    assert summed.stepper.motion.proposal.support.shape[0] == 10_000
    assert (
        summed.stepper.motion.proposal.scorer(
            summed.model, summed.stepper.motion.proposal.support
        ).rows
        == 100
    )
    five = births_and_deaths({s: 5 for s in "ABCDE"})
    assert isinstance(build_driver(five, RunConfig(quiet=True)).stepper.motion.proposal, Enumerated)
    flat = births_and_deaths({**{s: 5 for s in "ABCDEF"}, "G": 2})  # drawn, six free counts
    assert isinstance(build_driver(flat, RunConfig(quiet=True)).stepper.motion.proposal, Alpha)
    limited = RunConfig(quiet=True, enumerate_states=9_999)
    assert isinstance(build_driver(wide, limited).stepper.motion.proposal, Mixture)


def test_an_enumerated_run_follows_fsp():
    """The law's network at the defaults, every save time: marginals within 0.0025 of FSP,
    means within 0.5 %, and every upper tail P(n >= c) of every species down to 1e-9 within a
    factor 1.5 (the first step is fitted to the exact step on the whole support in log space,
    and every later fit sums the log-variance over it: no floor; with draws, C's tail at
    c = 11 was 4x the exact one at t = 0.3)."""
    net = conserved_network()
    out = nncme.run(net, RunConfig(quiet=True, seed=1))
    exact = solve_fsp(net, out.result.times, FSPSettings(quiet=True))
    for k, t in enumerate(out.result.times):
        if t == 0:
            continue
        for i in range(3):
            p, q = exact.marginals[k, i], out.result.marginals[k, i]
            assert hellinger(p, q) < 0.0025, (t, i)
            mean = float(exact.means[k, i])
            assert abs(float(out.result.means[k, i]) - mean) <= 0.005 * max(mean, 0.05), (t, i)
            tail_p = torch.as_tensor(p).flip(0).cumsum(0).flip(0)
            tail_q = torch.as_tensor(q).flip(0).cumsum(0).flip(0)
            seen = tail_p >= 1e-9
            ratio = tail_q[seen] / tail_p[seen]
            assert float(ratio.max()) < 1.5 and float(ratio.min()) > 1 / 1.5, (t, i, ratio)
    assert math.isfinite(out.history[-1]["loss"])
