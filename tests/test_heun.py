"""The second-order (Heun, Shu–Osher form) step: its stage target against a dense computation,
and a run that beats explicit Euler at the same dt against the exact solution."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import nncme
from nncme.config import RunConfig
from nncme.exact import FSP, FSPSettings, solve_fsp
from nncme.metrics import hellinger
from nncme.models import Product
from nncme.optim import StageTarget, Term, TransitionTarget
from nncme.steppers import Heun
from nncme.systems import birth_death, birth_death_sinusoidal, toggle_switch


class Table:
    """A distribution given by its values on an enumerated list of states."""

    def __init__(self, states: np.ndarray, p: np.ndarray, limits) -> None:
        self.index = {tuple(s): i for i, s in enumerate(states.tolist())}
        self.log_p = torch.log(torch.as_tensor(p, dtype=torch.float64).clamp_min(0))

    def log_prob(self, states: torch.Tensor, **_) -> torch.Tensor:
        rows = [self.index.get(tuple(s), -1) for s in states.tolist()]
        out = torch.full((len(rows),), -np.inf, dtype=torch.float64)
        found = torch.tensor([r >= 0 for r in rows])
        out[found] = self.log_p[torch.tensor([r for r in rows if r >= 0], dtype=torch.long)]
        return out


def heun_corrector(old, predictor, net, t: float, dt: float, impl: str = "auto") -> StageTarget:
    """The target of Heun's second stage, from the stepper's own tableau."""
    values = [old, predictor]
    terms = [
        Term(values[j], t + Heun.scheme.times[j] * dt, a, b) for j, a, b in Heun.scheme.stages[1]
    ]
    return StageTarget(terms, net, dt, impl=impl)


def _dense(net, t: float):
    fsp = FSP(net, FSPSettings(quiet=True))
    return fsp, fsp.generator(t).toarray()


def test_heun_target_is_half_old_plus_half_moved_predictor():
    net = birth_death_sinusoidal()  # time-dependent: T must take the rates at t + dt
    t, dt = 0.3, 0.005  # dt a_0 < 0.9 on the whole box: the map is Euler's
    fsp, _ = _dense(net, t)
    W1 = fsp.generator(t + dt).toarray()
    old = Product.poisson([5.0], net.limits)
    pred = Product.poisson([6.0], net.limits)
    states = torch.as_tensor(fsp.states)
    p_old = torch.exp(old.log_prob(states)).numpy()
    p_pred = torch.exp(pred.log_prob(states)).numpy()
    want = 0.5 * p_old + 0.5 * (p_pred + dt * W1 @ p_pred)
    compiled = net.compile("cpu", torch.float64)
    got = heun_corrector(old, pred, compiled, t, dt, impl="reference")(states).log_tq
    np.testing.assert_allclose(torch.exp(got).numpy(), want, rtol=1e-10, atol=1e-300)


def test_exact_heun_steps_are_second_order_taylor():
    """With an exact predictor, the Heun target is (I + dt W + dt^2 W^2 / 2) q_old."""
    net = toggle_switch(protein_limit=12)
    dt = 0.002
    fsp, W = _dense(net, 0.0)
    states = torch.as_tensor(fsp.states)
    rng = np.random.default_rng(0)
    p_old = rng.random(len(states))
    p_old /= p_old.sum()
    compiled = net.compile("cpu", torch.float64)
    old = Table(fsp.states, p_old, net.limits)
    p_pred = torch.exp(TransitionTarget(old, compiled, 0.0, dt)(states).log_tq).numpy()
    np.testing.assert_allclose(p_pred, p_old + dt * W @ p_old, rtol=1e-10, atol=1e-14)
    pred = Table(fsp.states, p_pred, net.limits)
    got = torch.exp(heun_corrector(old, pred, compiled, 0.0, dt)(states).log_tq).numpy()
    taylor = p_old + dt * W @ p_old + 0.5 * dt**2 * W @ (W @ p_old)
    np.testing.assert_allclose(got, taylor, rtol=1e-10, atol=1e-14)


@pytest.mark.slow
def test_heun_run_beats_exact_euler_steps():
    """A Heun VAN run ends closer to the exact solution than exact Euler steps of the same dt
    can (the first-order floor), and closer than the Euler VAN run."""
    net = birth_death()
    start = Product.poisson([2.0], net.limits)
    dt, t_end = 0.02, 0.4
    common = dict(
        t_end=t_end, dt=dt, save_every=0.2, batch=1000, quiet=True, explore=0.0, max_motion=0.0
    )  # steps of dt, not sub-steps
    worst = {}
    for scheme in ("euler", "heun"):
        cfg = RunConfig(integrator=scheme, iterations=150, **common)
        out = nncme.run(net, cfg, start=start)
        exact = solve_fsp(net, out.result.times, FSPSettings(quiet=True), p0=start.marginals()[0])
        worst[scheme] = float(hellinger(exact.marginals, out.result.marginals).max())
    _, W = _dense(net, 0.0)
    p = start.marginals()[0].numpy().astype(float)
    for _ in range(round(t_end / dt)):
        p = p + dt * W @ p
    floor = float(hellinger(exact.marginals[-1:, :1], p[None, None, :]).max())
    assert worst["heun"] < floor < worst["euler"] * 1.2, (worst, floor)
