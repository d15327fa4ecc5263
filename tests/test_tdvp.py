"""TDVP: the right-hand side against a dense least-squares solve with the generator from FSP
(a wrong sign, a missing inflow term or an uncentred fit fails it), the integrators' orders
and the adaptive step control on an ODE with a known solution, and a run of the birth-death
process against its exact Poisson solution."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

import nncme
from nncme import Reaction, ReactionNetwork
from nncme.config import RunConfig
from nncme.exact import FSP, FSPSettings
from nncme.metrics import hellinger
from nncme.models import Product, build_model
from nncme.optim import (
    DivergenceError,
    FisherSolver,
    TDVPEvaluation,
    TDVPRightHandSide,
    flat_parameters,
    per_sample_grads,
)
from nncme.sampling import Alpha, Vanilla
from nncme.steppers import RK4, Euler, Flow, Heun


def conserved_network() -> ReactionNetwork:
    return ReactionNetwork(
        {"A": 6, "B": 6, "C": 8},
        [
            Reaction({"A": 1}, {"B": 1}, 2.0),
            Reaction({"B": 1}, {"A": 1}, 1.0),
            Reaction({"A": 1, "C": 1}, {"A": 1, "C": 2}, 0.4),
            Reaction({"C": 1}, {}, 1.0),
            Reaction({}, {"C": 1}, 0.5),
        ],
        {"A": 5, "C": 1},
        t_end=1.0,
        dt=0.02,
    )


@pytest.mark.parametrize("gradients", ["analytic", "gram"])
@pytest.mark.parametrize("proposal", [Vanilla(), Alpha(0.6)], ids=repr)
def test_theta_dot_is_the_dense_least_squares_solution(proposal, gradients):
    net = conserved_network()
    model = build_model("nade", net, hidden=4, seed=7)
    lam = 1e-3
    rhs = TDVPRightHandSide(
        net.compile("cpu", torch.float64),
        proposal=proposal,
        batch_size=400,
        solver=FisherSolver(lam, adaptive=False, gradients=gradients),
    )
    ev = rhs(model, 0.0, torch.Generator().manual_seed(0))
    # R(n) = (W q)(n) / q(n) from the exact generator over every feasible state
    fsp = FSP(net, FSPSettings(quiet=True))
    q = torch.exp(model.log_prob(torch.as_tensor(fsp.states))).detach().numpy()
    wq = fsp.generator(0.0) @ q
    R = torch.as_tensor((wq / q)[fsp.index(ev.states.numpy())])
    O = per_sample_grads(model, ev.states, "func")
    w = ev.weights
    Oc, Rc = O - w @ O, R - w @ R
    S = Oc.T @ (w.unsqueeze(1) * Oc) + lam * torch.eye(O.shape[1], dtype=O.dtype)
    want = torch.linalg.solve(S, Oc.T @ (w * Rc))
    torch.testing.assert_close(ev.theta_dot, want, rtol=1e-7, atol=1e-9)
    misfit = float((w * (Oc @ want - Rc) ** 2).sum() / (w * Rc**2).sum())
    assert ev.residual == pytest.approx(misfit, rel=1e-6) and 0 < ev.residual < 1
    # the right-hand side is sensitive to the generator: a wrong sign moves theta_dot away
    wrong = torch.linalg.solve(S, Oc.T @ (w * -Rc))
    assert (wrong - ev.theta_dot).norm() > 0.5 * ev.theta_dot.norm()


@pytest.mark.parametrize("gradients", ["analytic", "gram"])
def test_cross_validated_shift_is_used_by_the_solve(gradients):
    """With cv the shift is an entry of the grid, the held-out misfit is reported, and
    theta_dot is the dense least-squares solution at that shift."""
    net = conserved_network()
    model = build_model("nade", net, hidden=4, seed=7)
    solver = FisherSolver(
        adaptive=False, cv=True, grid=(1e-5, 1e-3, 1e-1, 10.0), gradients=gradients
    )
    rhs = TDVPRightHandSide(net.compile("cpu", torch.float64), batch_size=400, solver=solver)
    ev = rhs(model, 0.0, torch.Generator().manual_seed(0), need_grads=gradients == "analytic")
    assert ev.shift in solver.grid and 0 <= ev.held_out < 1
    R = rhs.local_generator(model, ev.states, 0.0)
    O = per_sample_grads(model, ev.states, "func")
    w = ev.weights
    Oc, Rc = O - w @ O, R - w @ R
    S = Oc.T @ (w.unsqueeze(1) * Oc) + ev.shift * torch.eye(O.shape[1], dtype=O.dtype)
    torch.testing.assert_close(ev.theta_dot, torch.linalg.solve(S, Oc.T @ (w * Rc)))


class Parameters(torch.nn.Module):
    """A bare parameter vector theta, moved by a `Flow` as a VAN's would be."""

    def __init__(self, theta: torch.Tensor) -> None:
        super().__init__()
        self.theta = torch.nn.Parameter(theta.clone())


def linear_field(rate: torch.Tensor):
    """theta_dot = -rate * theta as a TDVP right-hand side (grads = I for the error norm)."""
    P = rate.shape[0]
    eye = torch.eye(P, dtype=torch.float64)
    uniform = torch.full((P,), 1.0 / P, dtype=torch.float64)

    def rhs(model, t, generator, h, need_grads=False) -> TDVPEvaluation:
        theta = flat_parameters(model)
        return TDVPEvaluation(-rate * theta, 0.0, 0.0, 1.0, eye, eye, uniform)

    return rhs


@pytest.mark.parametrize("stepper,order", [(Euler, 1), (Heun, 2), (RK4, 4)])
def test_flow_stepper_orders(stepper, order):
    """Each scheme's Shu–Osher tableau, stepping theta along a linear ODE, converges at its
    order and evaluates the right-hand side once per stage."""
    rate = torch.tensor([1.0, 3.0], dtype=torch.float64)
    errors = []
    for n in (10, 20):
        model = Parameters(torch.ones(2, dtype=torch.float64))
        scheme = stepper(Flow(model, linear_field(rate), None))
        h = 1.0 / n
        for j in range(n):
            report = scheme.step(j * h, h)
            assert report.iterations == len(stepper.scheme.stages)
        errors.append(float((model.theta.detach() - torch.exp(-rate)).abs().max()))
    observed = math.log2(errors[0] / errors[1])
    assert abs(observed - order) < 0.3, (errors, observed)


@pytest.mark.parametrize("stepper", [Heun, RK4, Euler])
def test_adaptive_steps_meet_the_tolerance(stepper):
    rate = torch.tensor([0.5, 4.0], dtype=torch.float64)
    errs, accepted = [], []
    for tol in (1e-3, 1e-5):
        model = Parameters(torch.ones(2, dtype=torch.float64))
        scheme = stepper(Flow(model, linear_field(rate), None, need_grads=True), tolerance=tol)
        report = scheme.step(0.0, 1.0)
        errs.append(float((model.theta.detach() - torch.exp(-rate)).abs().max()))
        accepted.append(report.accepted)
        assert report.accepted >= 2
        assert scheme.state_dict()["h"] > 0
    assert errs[1] < errs[0] and accepted[1] > accepted[0]
    assert errs[1] < 1e-3


def birth_death(birth: float, limit: int) -> ReactionNetwork:
    """0 -> X at rate `birth`, X -> 0 at rate 1 per molecule, from X = 0."""
    return ReactionNetwork(
        {"X": limit},
        [Reaction({}, {"X": 1}, birth, "birth"), Reaction({"X": 1}, {}, 1.0, "death")],
        {"X": 0},
        t_end=1.0,
        dt=0.02,
    )


def test_tdvp_tracks_the_exact_poisson_solution():
    """Birth-death from Poisson(2): P(t) is Poisson(k + (2 - k) e^-t) exactly (gamma = 1)."""
    k, limit = 10.0, 25
    net = birth_death(k, limit)
    start = Product.poisson([2.0], net.limits)
    cfg = RunConfig(
        optimizer="tdvp", proposal="alpha", alpha=0.5, t_end=0.4, dt=0.02, save_every=0.2,
        batch=500, quiet=True, eval_samples=1000,
    )  # fmt: skip
    out = nncme.run(net, cfg, start=start)
    times = out.result.times
    lam = k + (2.0 - k) * np.exp(-times)
    exact = np.stack([stats.poisson.pmf(np.arange(limit), m) for m in lam])[:, None, :]
    h = hellinger(exact, out.result.marginals)[:, 0]
    assert h.max() < 0.03, h
    hist = out.history[1:]
    assert all(line["accepted"] == 1 and line["iterations"] == 2 for line in hist)  # Heun
    assert all(0 <= line["residual"] < 0.05 for line in hist)
    # a wrong generator (birth rate 13) misses by far more
    wrong = birth_death(13.0, limit)
    bad = nncme.run(wrong, cfg, start=start).result.marginals
    assert hellinger(exact, bad)[:, 0].max() > 0.08


def test_tdvp_leaves_a_point_mass_with_exploration():
    """Birth-death from X = 0: P(t) is Poisson(k (1 - e^-t)). With the least squares weighted
    by q (objective kl), the fit never sees the counts the mass moves into unless the states
    one reaction ahead join it (and R is astronomically large where it first arrives: the cap
    on R keeps the step finite). Weighted as drawn (log_variance, the default with one free
    count), the mixture's uniform draws reach those counts without exploration. Heun named:
    its exact first step reaches counts 0-2 only (the default first step, exp(dt W), reaches
    the bulk)."""
    k, limit = 10.0, 25
    net = birth_death(k, limit)
    common = dict(
        optimizer="tdvp", integrator="heun", proposal="mixture", mixture_eps=0.2, t_end=0.4,
        dt=0.01, save_every=0.2, batch=500, quiet=True,
    )  # fmt: skip
    errors = {}
    for objective, explore in (("kl", 0.2), ("kl", 0.0), ("log_variance", 0.0)):
        try:
            out = nncme.run(net, RunConfig(explore=explore, objective=objective, **common))
        except DivergenceError:  # the watchdog may stop the blind run before it ends
            assert explore == 0.0 and objective == "kl"
            errors[objective, explore] = np.array([math.inf])
            continue
        times = out.result.times
        lam = k * (1 - np.exp(-times))
        exact = np.stack([stats.poisson.pmf(np.arange(limit), m) for m in lam])[:, None, :]
        exact[0, 0, 0] = 1.0
        errors[objective, explore] = hellinger(exact, out.result.marginals)[1:, 0]
    assert errors["kl", 0.2].max() < 0.04, errors
    assert errors["kl", 0.0].max() > 0.2, errors  # far off, or stopped as diverging
    assert errors["log_variance", 0.0].max() < 0.02, errors
