"""Steps that grow where the distribution moves slowly (`Driver(max_dt=...)`,
`StepReport.next_dt`): the grid, the save times and resume stay those of dt."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats

import nncme
from nncme import Reaction, ReactionNetwork
from nncme.config import RunConfig
from nncme.evolve import Driver
from nncme.exact import FSPSettings, solve_fsp
from nncme.metrics import hellinger
from nncme.models import NADE
from nncme.observers import CHECKPOINT
from nncme.optim import StepReport

FAST = dict(quiet=True, eval_samples=2000)


class Asking:
    """A stepper that moves nothing and asks for `factor` times each step it was given."""

    def __init__(self, factor: float) -> None:
        self.factor, self.calls = factor, []

    def step(self, t: float, dt: float) -> StepReport:
        self.calls.append((round(t, 12), round(t + dt, 12)))
        return StepReport(loss=0.0, next_dt=self.factor * dt)

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def _driver(factor: float, max_dt: float | None, save_times=(0.25, 1.0)) -> Driver:
    stepper = Asking(factor)
    model = NADE([3], hidden=2)
    driver = Driver(model, stepper, t_end=1.0, dt=0.01, save_times=list(save_times), max_dt=max_dt)
    driver.run()
    return driver


def test_steps_double_up_to_max_dt_and_stop_at_every_save_time():
    driver = _driver(math.inf, max_dt=0.16)
    lengths = [round(b - a, 9) for a, b in driver.stepper.calls]
    # 1, 2, 4, 8 grid steps, cut at the save time 0.25 (after 0.15: 10 left), then again
    assert lengths[:5] == [0.01, 0.02, 0.04, 0.08, 0.1]
    ends = [b for _, b in driver.stepper.calls]
    assert 0.25 in ends and ends[-1] == 1.0
    assert max(lengths) == pytest.approx(0.16)
    assert driver.index == driver.num_steps == 100
    assert driver.taken == len(driver.stepper.calls) < 20


@pytest.mark.parametrize("factor, max_dt", [(math.nan, 1.0), (math.inf, None), (0.5, 1.0)])
def test_steps_stay_dt_without_room_to_grow(factor, max_dt):
    driver = _driver(factor, max_dt)
    assert len(driver.stepper.calls) == 100  # nan: no opinion; None: growth off; < dt


def test_steps_grow_as_far_as_the_report_allows():
    driver = _driver(1.5, max_dt=1.0)  # asks 1.5 x its step: 1, 1, 1, ... never 2 grid steps
    assert len(driver.stepper.calls) == 100
    driver = _driver(3.0, max_dt=1.0)  # 1, 2, 4, 8, ... at most twice the last
    lengths = [round(b - a, 9) for a, b in driver.stepper.calls]
    assert lengths[:4] == [0.01, 0.02, 0.04, 0.08]


def birth_death_slow() -> ReactionNetwork:
    """Relaxation to a Poisson(8) law with a slow death rate: the motion falls with time."""
    return ReactionNetwork(
        {"X": 40},
        [Reaction({}, {"X": 1}, 4.0, "birth"), Reaction({"X": 1}, {}, 0.5, "death")],
        {"X": 2},
        t_end=4.0,
        dt=0.01,
    )


def test_a_grown_run_tracks_the_exact_solution_in_fewer_steps():
    net = birth_death_slow()
    cfg = RunConfig(t_end=4.0, save_every=1.0, seed=0, **FAST)
    out = nncme.run(net, cfg)
    calls = len(out.history)
    assert calls < 200  # 400 steps of dt
    assert max(h["dt"] for h in out.history) > 0.05
    summary = out.result.summary
    assert summary["steps_taken"] == calls and summary["longest_step"] > 0.05
    exact = solve_fsp(net, out.result.times, FSPSettings(quiet=True))
    h = hellinger(exact.marginals, out.result.marginals)
    assert h.max() < 0.02, h
    means = (out.result.marginals[:, 0] * np.arange(40)).sum(-1)
    exact_means = (exact.marginals[:, 0] * np.arange(40)).sum(-1)
    np.testing.assert_allclose(means[1:], exact_means[1:], rtol=0.02)


def _run(tmp, callbacks=(), resume=False):
    cfg = RunConfig(
        t_end=1.5, dt=0.01, save_every=0.5, batch=200, iterations=5, tolerance=0, seed=0,
        out=str(tmp), resume=resume, **FAST,
    )  # fmt: skip
    return nncme.run(birth_death_slow(), cfg, callbacks=callbacks)


def test_a_grown_run_resumes_to_the_same_answer(tmp_path):
    full = _run(tmp_path / "full")
    lengths = [h["dt"] for h in full.history]
    assert max(lengths) > 0.02  # it grew

    class Killed(Exception):
        pass

    def kill(info):
        if info.t > 1.0 + 1e-9:
            raise Killed

    with pytest.raises(Killed):
        _run(tmp_path / "killed", callbacks=[kill])
    state = torch.load(tmp_path / "killed" / CHECKPOINT, weights_only=True)
    assert state["t"] == pytest.approx(1.0) and state["span"] > 1
    resumed = _run(tmp_path / "killed", resume=True)
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    np.testing.assert_array_equal(full.result.marginals, resumed.result.marginals)


def _fast_birth_death() -> ReactionNetwork:
    return ReactionNetwork(
        {"X": 60},
        [Reaction({}, {"X": 1}, 100.0, "birth"), Reaction({"X": 1}, {}, 5.0, "death")],
        {"X": 0},
        t_end=0.6,
        dt=0.001,
    )


def _poisson_law(times: np.ndarray) -> np.ndarray:
    lam = 20.0 * (1 - np.exp(-5.0 * times))
    exact = np.stack([stats.poisson.pmf(np.arange(60), m) for m in lam])[:, None, :]
    exact[0, 0, 0] = 1.0
    return exact


def test_auto_grows_its_heun_steps_only_as_far_as_they_stay_explicit():
    """Birth-death at rates where the explicit limit (h a_0 <= 0.9 where the mass is, a_0
    about 200 at the mean) binds before the motion does, with drawn fits: the steps grow from
    dt = 0.001 to a few dt, stay Heun steps, and follow the exact Poisson law."""
    net = _fast_birth_death()
    out = nncme.run(net, RunConfig(t_end=0.6, save_every=0.2, seed=0, enumerate_states=0, **FAST))
    lengths = np.array([h["dt"] for h in out.history[1:]])
    schemes = [h["scheme"] for h in out.history[1:]]
    assert len(out.history) < 400 and lengths.max() >= 0.002  # 600 steps of dt
    a0_top = 100.0 + 5.0 * 35  # the total rate 3.5 standard deviations above the mean
    assert lengths.max() * a0_top < 2.0  # no step far past the explicit limit
    assert schemes.count("implicit") <= 0.1 * len(schemes) and schemes[-1] == "heun", schemes
    assert hellinger(_poisson_law(out.result.times), out.result.marginals).max() < 0.02


def test_auto_steps_past_the_explicit_limit_where_the_fits_sum():
    """The same birth-death with the fits summed over its 60 states (the default): the steps
    are exponential (`tests/test_exponential.py`), and grow far past the explicit limit
    (doubling, and cut short at each save time), following the Poisson law."""
    net = _fast_birth_death()
    out = nncme.run(net, RunConfig(t_end=0.6, save_every=0.2, seed=0, **FAST))
    steps = out.history[1:]
    assert {h["scheme"] for h in steps} == {"exponential"}
    assert max(h["dt"] for h in steps) > 0.1  # h a_0 > 20 at the mean
    assert len(steps) < 30  # 600 steps of dt
    assert hellinger(_poisson_law(out.result.times), out.result.marginals).max() < 0.002


def test_plain_heun_steps_grow_only_as_far_as_they_stay_explicit():
    """The same birth-death with natural gradient, whose Heun steps have no implicit fallback:
    a step that puts more than STIFF_SHARE of its draws' weight where h a_0 > 0.9 is followed
    by one of half its length, and none grows on from above a tenth of it, so the steps stay
    near the explicit limit instead of growing by their motion alone (before: up to 9 dt here,
    h a_0 about 2.4 at the mean)."""
    from nncme.optim.target import STIFF_SHARE

    net = _fast_birth_death()
    out = nncme.run(net, RunConfig(optimizer="natgrad", t_end=0.6, save_every=0.2, seed=0, **FAST))
    steps = out.history[1:]
    lengths = np.array([h["dt"] for h in steps])
    assert lengths.max() >= 0.002 and len(out.history) < 400  # it grew
    for before, after in itertools.pairwise(steps):
        if before["stiff_mass"] > STIFF_SHARE:
            assert after["dt"] < before["dt"] or after["dt"] == pytest.approx(0.001), after
        elif before["stiff_mass"] >= STIFF_SHARE / 10:
            assert after["dt"] <= before["dt"] + 1e-12, after
    assert lengths.max() * (100.0 + 5.0 * 35) < 2.0
    assert hellinger(_poisson_law(out.result.times), out.result.marginals).max() < 0.02
