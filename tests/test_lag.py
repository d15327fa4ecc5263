"""The fits' lag: `StepReport.motion_made` is the fraction of the asked-for motion a fit made
(checked against the exact regression over the whole box), and `Fit` doubles the batch while
the fits' running fraction is below `LAG_GROW` by more than its scatter allows, or while most
fits end at their cap at their draws' noise floor (`StepReport.misfit_left`), halves it
above `LAG_SHRINK`, within its bounds, and keeps both in its checkpoint."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from nncme.exact import FSP, FSPSettings
from nncme.models import build_model
from nncme.optim import ImplicitTarget, ImplicitUpdate, KLUpdate, StepProblem, StepReport
from nncme.optim.target import StageTarget, Term
from nncme.sampling import make_proposal
from nncme.steppers import Fit

from .test_saturated_map import two_species


def exact_motion_made(before, after, target, states) -> float:
    """1 + Cov(f, r) / Var(r) under the fitted q, over every state of the box."""
    with torch.no_grad():
        log_q = after.log_prob(states)
        log_p = target(states).log_tq
        r = log_p - before.log_prob(states)
    f, w = log_q - log_p, log_q.exp()
    ok = w > 0
    w, f, r = w[ok] / w[ok].sum(), f[ok], r[ok]
    mf, mr = (w * f).sum(), (w * r).sum()
    return float(1 + (w * (f - mf) * (r - mr)).sum() / (w * (r - mr) ** 2).sum())


@pytest.mark.parametrize(("iterations", "low", "high"), [(3, 0.05, 0.5), (40, 0.9, 1.1)])
def test_motion_made_is_the_share_of_the_asked_for_change_of_log_q(iterations, low, high):
    net = two_species()
    states = torch.as_tensor(FSP(net, FSPSettings(quiet=True)).states)
    compiled = net.compile(torch.device("cpu"), torch.float64)
    model = build_model("nade", net, dtype=torch.float64, seed=1, hidden=8)
    before = copy.deepcopy(model)
    target = StageTarget([Term(before, 0.0, 1.0, 1.0)], compiled, 0.05)  # Euler, dt 0.05
    update = KLUpdate(torch.optim.Adam(model.parameters(), lr=0.01), iterations=iterations,
                      lr_decay=1.0)  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    problem = StepProblem(model, target, make_proposal("vanilla"), 100_000, generator, 0.0, 0.05)
    report = update.run(problem)
    exact = exact_motion_made(before, model, target, states)
    assert low < exact < high  # a fit part of the way, and one that made the step
    assert report.motion_made == pytest.approx(exact, abs=0.03)
    assert report.motion_spread > 0
    assert report.batch == 100_000


@pytest.mark.parametrize(("iterations", "low", "high"), [(3, 0.05, 0.5), (60, 0.85, 1.1)])
def test_an_implicit_fit_reads_its_motion_made_from_its_residuals(iterations, low, high):
    """Against the exact share over the box, with the exact backward-Euler solution q* as the
    target (a dense solve): the residuals' regression measures how far the fit went."""
    net = two_species()
    fsp = FSP(net, FSPSettings(quiet=True))
    states = torch.as_tensor(fsp.states)
    compiled = net.compile(torch.device("cpu"), torch.float64)
    model = build_model("nade", net, dtype=torch.float64, seed=1, hidden=8)
    before = copy.deepcopy(model)
    dt = 0.05
    with torch.no_grad():
        p_old = before.log_prob(states).exp().numpy()
    step = sp.identity(len(p_old), format="csc") - dt * fsp.generator().tocsc()
    p_new = spla.spsolve(step, p_old)  # (I - dt W)^-1 q_old over the whole box
    target = ImplicitTarget(before, compiled, 0.0, dt)
    update = ImplicitUpdate(torch.optim.Adam(model.parameters(), lr=0.01), iterations=iterations,
                            lr_decay=1.0)  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    problem = StepProblem(model, target, make_proposal("vanilla"), 20_000, generator, 0.0, dt)
    report = update.run(problem)
    log_p_new = torch.log(torch.as_tensor(p_new))
    exact = exact_motion_made(before, model, lambda s: SimpleNamespace(log_tq=log_p_new), states)
    assert low < exact < high
    assert report.motion_made == pytest.approx(exact, abs=0.05)
    assert report.motion_spread > 0


class Lagging(KLUpdate):
    """An update that reports a set motion_made and does nothing else."""

    def __init__(self) -> None:
        self.made, self.spread = 1.0, 1e-4
        self.capped, self.left = False, math.nan  # (nan: a fit that measures no misfit)

    def run(self, problem: StepProblem) -> StepReport:
        return StepReport(loss=0.0, motion_made=self.made, motion_spread=self.spread,
                          batch=problem.batch_size, capped=self.capped,
                          misfit_left=self.left)  # fmt: skip

    def state_dict(self):
        return {"optimizer": {}}

    def load_state_dict(self, state) -> None:
        pass


def lagging_fit(max_batch: int | None) -> tuple[Fit, Lagging]:
    net = two_species()
    model = build_model("nade", net, dtype=torch.float64, seed=1, hidden=4)
    update = Lagging()
    fit = Fit(model, update, None, make_proposal("vanilla"), 100, None, max_batch=max_batch)
    return fit, update


def fits(fit: Fit, n: int) -> list[int]:
    return [fit.fit(None, 0.01).batch for _ in range(n)]


def test_the_batch_doubles_while_the_fits_lag_and_halves_once_they_keep_up():
    fit, update = lagging_fit(max_batch=400)
    update.made = 0.8
    wait = Fit.LAG_FITS
    assert fits(fit, wait) == [100] * wait  # judged after LAG_FITS fits
    assert fit.batch_size == 200
    assert fits(fit, wait) == [200] * wait
    assert fit.batch_size == 400
    with pytest.warns(UserWarning, match="only 80% of each step's motion at the largest batch"):
        reports = [fit.fit(None, 0.01) for _ in range(3 * wait)]
    assert fit.batch_size == 400  # not past max_batch, and warned about once
    assert sum(len(r.warnings) for r in reports) == 1
    update.made = 0.93  # between the thresholds: stays
    fits(fit, 3 * wait)
    assert fit.batch_size == 400
    update.made = 1.0
    fits(fit, Fit.LAG_KEEP * wait - 1)
    assert fit.batch_size == 400  # not before LAG_KEEP x LAG_FITS good fits in a row
    fits(fit, wait)
    assert fit.batch_size == 200
    fits(fit, 3 * Fit.LAG_KEEP * wait)
    assert fit.batch_size == 100  # back down to the run's batch, not below
    # a checkpoint keeps the batch and the running sums
    update.made = 0.5
    fits(fit, wait - 2)
    state = fit.state_dict()
    other, _ = lagging_fit(max_batch=400)
    other.load_state_dict(state)
    assert other.batch_size == fit.batch_size and other._lag == fit._lag
    fits(fit, 2)
    fits(other, 2)
    assert fit.batch_size == other.batch_size == 200
    # a checkpoint from before the batch followed the lag: the run's batch
    other.load_state_dict({"optimizer": {}})
    assert other.batch_size == 100


def test_fits_that_do_not_move_or_are_not_measured_do_not_decide():
    fit, update = lagging_fit(max_batch=800)
    update.made, update.spread = 0.2, 0.0  # no motion asked for: its fraction means nothing
    fits(fit, 3 * Fit.LAG_FITS)
    update.made, update.spread = math.nan, math.nan  # an implicit fit
    fits(fit, 3 * Fit.LAG_FITS)
    assert fit.batch_size == 100
    fixed, update = lagging_fit(max_batch=None)  # max_batch_factor 1: a fixed batch
    update.made = 0.1
    fits(fixed, 3 * Fit.LAG_FITS)
    assert fixed.batch_size == 100


def test_a_lag_within_the_readings_scatter_leaves_the_batch():
    """Readings that average 0.8 but scatter from -1 to 2.6 (small steps against the fits'
    own misfit): no significant lag, the batch stays; steady readings of 0.8, or readings
    of 0.3 +- 0.2, double it."""
    fit, update = lagging_fit(max_batch=400)
    for k in range(5 * Fit.LAG_FITS):
        update.made = -1.0 if k % 2 else 2.6
        fits(fit, 1)
    assert fit.batch_size == 100
    for readings in ([0.8], [0.1, 0.5]):
        fit, update = lagging_fit(max_batch=400)
        for k in range(Fit.LAG_FITS):
            update.made = readings[k % len(readings)]
            fits(fit, 1)
        assert fit.batch_size == 200, readings


@pytest.mark.parametrize(("iterations", "capped"), [(3, True), (400, False)])
def test_misfit_left_is_the_stopping_rules_share_of_the_first_residual(iterations, capped):
    net = two_species()
    compiled = net.compile(torch.device("cpu"), torch.float64)
    model = build_model("nade", net, dtype=torch.float64, seed=1, hidden=8)
    target = StageTarget([Term(copy.deepcopy(model), 0.0, 1.0, 1.0)], compiled, 0.05)
    update = KLUpdate(torch.optim.Adam(model.parameters(), lr=0.01), iterations=iterations,
                      relative_tolerance=0.01)  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    problem = StepProblem(model, target, make_proposal("vanilla"), 4000, generator, 0.0, 0.05)
    report = update.run(problem)
    first, last = report.residuals[0], report.residuals[-update.window :]
    assert report.capped is capped
    assert report.misfit_left == pytest.approx(sum(last) / len(last) / first)
    assert (report.misfit_left > 0.01) is capped  # the relative tolerance, met or not


def test_the_batch_doubles_while_most_fits_end_at_their_noise_floor():
    fit, update = lagging_fit(max_batch=400)
    window = Fit.LAG_WINDOW
    update.capped, update.left = True, 0.5  # capped with half the misfit left
    assert fits(fit, window) == [100] * window  # judged once per window
    assert fit.batch_size == 200
    other, same = lagging_fit(max_batch=400)
    same.capped, same.left = True, 0.5
    fits(fit, window // 2)
    other.load_state_dict(fit.state_dict())  # a checkpoint keeps the count
    fits(fit, window // 2)
    fits(other, window // 2)
    assert fit.batch_size == other.batch_size == 400
    with pytest.warns(UserWarning, match="misfit left at the largest batch"):
        reports = [fit.fit(None, 0.01) for _ in range(3 * window)]
    assert fit.batch_size == 400 and sum(len(r.warnings) for r in reports) == 1
    # the alpha readings keep up (1.0), but the noise holds the batch
    fits(fit, 3 * Fit.LAG_KEEP * Fit.LAG_FITS)
    assert fit.batch_size == 400
    update.left = 0.05  # capped near the relative tolerance: not noise
    fits(fit, Fit.LAG_KEEP * Fit.LAG_FITS + window)
    assert fit.batch_size == 200


@pytest.mark.parametrize(("capped", "left"), [(True, 0.05), (False, 0.5), (True, math.nan)])
def test_fits_that_converge_or_stop_near_their_tolerance_leave_the_batch(capped, left):
    fit, update = lagging_fit(max_batch=400)
    update.capped, update.left = capped, left
    fits(fit, 5 * Fit.LAG_WINDOW)
    assert fit.batch_size == 100


def test_half_the_fits_at_their_noise_floor_leave_the_batch():
    """Heun's second fit, whose motion is the small correction, may end at the noise floor
    of the first one's misfit; a majority of a window is needed."""
    fit, update = lagging_fit(max_batch=400)
    for k in range(5 * Fit.LAG_WINDOW):
        update.capped, update.left = True, (0.5 if k % 2 else 0.02)
        fits(fit, 1)
    assert fit.batch_size == 100


def test_a_steps_motion_made_weighs_its_fits_by_their_motion():
    """The step's report reads as the batch rule weighs its fits: the last fit's tiny
    correction does not stand for the step."""
    fit, _ = lagging_fit(max_batch=400)
    stages = [
        StepReport(loss=0.0, motion_made=0.98, motion_spread=1e-3, misfit_left=0.04),
        StepReport(loss=0.0, motion_made=-3.0, motion_spread=1e-6, misfit_left=1.3),
    ]
    step = fit.merge(stages)
    assert step.motion_made == pytest.approx((0.98e-3 - 3e-6) / (1e-3 + 1e-6))
    assert step.motion_spread == pytest.approx(1e-3 + 1e-6)
    assert step.misfit_left == 1.3  # the largest
