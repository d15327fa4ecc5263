"""Motion-limited sub-steps of the explicit fitted steps: `step_motion` is the RMS relative
change of one explicit step (checked against the dense generator), a step is cut into the
fewest equal sub-steps that keep it below `max_motion` (at most `MAX_MOTION_SUBSTEPS`), and a
run out of a point mass cuts its first steps, not its slow later ones, and follows FSP where
uncut steps lag."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import nncme
from nncme import Reaction, ReactionNetwork
from nncme.config import RunConfig
from nncme.exact import FSP, FSPSettings, solve_fsp
from nncme.metrics import hellinger
from nncme.models import build_model
from nncme.optim import step_motion
from nncme.steppers import MAX_MOTION_SUBSTEPS, Heun, Motion

from .test_saturated_map import two_species


def test_step_motion_is_the_rms_relative_change_of_the_explicit_step():
    net = two_species()  # a_0 grows fast with the counts
    fsp = FSP(net, FSPSettings(quiet=True))
    model = build_model("nade", net, dtype=torch.float64, seed=3, hidden=8)
    states = torch.as_tensor(fsp.states)
    with torch.no_grad():
        q = model.log_prob(states).exp().numpy()
    assert q.sum() == pytest.approx(1.0, abs=1e-12)  # the FSP states are the whole box
    dt = 0.01
    change = dt * (fsp.generator(0.0) @ q) / q
    exact = float(np.sqrt((q * change**2).sum()))
    compiled = net.compile(torch.device("cpu"), torch.float64)
    generator = torch.Generator().manual_seed(0)
    sampled = step_motion(model, compiled, 0.0, dt, samples=200_000, generator=generator)
    assert sampled == pytest.approx(exact, rel=0.02)
    # linear in the step length
    again = step_motion(model, compiled, 0.0, 2 * dt, samples=200_000, generator=generator)
    assert again == pytest.approx(2 * exact, rel=0.02)


class Moving(Motion):
    """A motion whose step moves the distribution by a set amount per unit step length."""

    def __init__(self, rate: float | None) -> None:
        self.rate, self.asked = rate, 0

    def motion(self, t: float, h: float) -> float | None:
        self.asked += 1
        return None if self.rate is None else self.rate * h


@pytest.mark.parametrize(
    ("rate", "pieces"),
    [(0.01, 1), (0.05, 1), (0.051, 2), (0.12, 3), (0.5, 10), (10.0, MAX_MOTION_SUBSTEPS),
     (None, 1), (float("nan"), 1)],
)  # fmt: skip
def test_a_step_is_cut_into_the_fewest_equal_pieces_that_keep_it_below_max_motion(rate, pieces):
    motion = Moving(rate)
    heun = Heun(motion, max_motion=0.05)
    assert heun._pieces(heun._moved(0.0, 1.0)) == pieces
    off = Heun(motion)
    assert off._pieces(off._moved(0.0, 1.0)) == 1  # off: the motion is not even asked
    assert motion.asked == 1
    # the next step asked for moves q by half of max_motion: rate x h = 0.025
    expected = 0.025 / rate if rate and math.isfinite(rate) else math.nan
    np.testing.assert_allclose(heun._next_dt(1.0, heun._moved(0.0, 1.0)), expected)
    with pytest.raises(ValueError, match="max_motion"):
        Heun(motion, max_motion=0.0)


def fast_dimerisation() -> ReactionNetwork:
    """2 P <-> P2 from 40 monomers (binomial), conserved P + 2 P2 = 40: leaving the point
    mass, the dimer count grows by about 0.4 per step of 0.01, on a law a few counts wide."""
    return ReactionNetwork(
        {"P": 41, "P2": 21},
        [Reaction({"P": 2}, {"P2": 1}, 0.05), Reaction({"P2": 1}, {"P": 2}, 1.0)],
        {"P": 40, "P2": 0},
        convention="binomial",
        t_end=0.3,
        dt=0.01,
    )


def test_a_run_from_a_point_mass_cuts_its_first_steps_and_follows_fsp():
    """Heun's motion cut (named: `auto` steps exponentially where the fits sum over the
    support, `tests/test_exponential.py`)."""
    net = fast_dimerisation()
    heun = dict(quiet=True, seed=1, integrator="heun")
    cut = nncme.run(net, RunConfig(t_end=0.2, save_every=0.05, **heun))
    exact = solve_fsp(net, cut.result.times)
    pieces = [line["accepted"] for line in cut.history[1:]]
    assert pieces[0] >= 3 * pieces[-1], pieces  # fast start, slower end
    h_cut = hellinger(exact.marginals, cut.result.marginals).max()
    whole = nncme.run(net, RunConfig(t_end=0.05, max_motion=0.0, **heun))
    assert {line["accepted"] for line in whole.history[1:]} == {1}
    h_whole = hellinger(exact.marginals[1], whole.result.marginals[-1]).max()
    assert h_cut < 0.005 < h_whole, (h_cut, h_whole)
