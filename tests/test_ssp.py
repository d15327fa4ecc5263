"""SSPRK(s, 2) (`integrator ssp`): second order, and positive while dt a_0 < s - 1, so it
crosses s - 1 times the explicit limit in s fits where Heun crosses it in 2."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
from scipy import stats

import nncme
from nncme import Reaction, ReactionNetwork
from nncme.config import ConfigError, RunConfig
from nncme.metrics import hellinger
from nncme.steppers import Euler, Heun, ssp_scheme


def stage_values(stages: int, W: np.ndarray, q: np.ndarray, h: float) -> list[np.ndarray]:
    """Every stage value of one step of the tableau with a constant generator W, no fits."""
    values = [q]
    for stage in ssp_scheme(stages).stages:
        values.append(sum(a * values[j] + b * h * W @ values[j] for j, a, b in stage))
    return values


def apply_exactly(stages: int, W: np.ndarray, q: np.ndarray, h: float) -> np.ndarray:
    return stage_values(stages, W, q, h)[-1]


def birth_death_generator(birth: float, death: float, limit: int) -> np.ndarray:
    """The CME generator of 0 -> X (birth), X -> 0 (death X) on 0..limit - 1, truncated."""
    W = np.zeros((limit, limit))
    for n in range(limit):
        if n + 1 < limit:
            W[n + 1, n] += birth
            W[n, n] -= birth
        W[n - 1, n] += death * n
        W[n, n] -= death * n
    return W


def test_two_stages_are_heun():
    assert ssp_scheme(2) == Heun.scheme


def test_each_fit_moves_a_stage_share_of_the_step():
    """max_motion bounds each fit's motion: Heun's stages move q by the whole step, SSPRK(s, 2)'s
    by 1/(s - 1) of it, so its steps are cut into fewer sub-steps and grow further."""
    assert Heun.scheme.fit_motion == 1.0 and Euler.scheme.fit_motion == 1.0
    assert ssp_scheme(4).fit_motion == pytest.approx(1 / 3)


def test_fewer_than_two_stages_is_an_error():
    with pytest.raises(ValueError, match="at least 2 stages"):
        ssp_scheme(1)


@pytest.mark.parametrize("stages", [2, 3, 4, 7])
def test_the_scheme_is_second_order_and_fittable(stages):
    scheme = ssp_scheme(stages)
    assert scheme.fittable and len(scheme.stages) == stages and scheme.times[-1] == 1.0
    W = birth_death_generator(3.0, 1.0, 12)
    q = np.zeros(12)
    q[2] = 1.0
    errors = [
        np.abs(apply_exactly(stages, W, q, h) - scipy.linalg.expm(h * W) @ q).max()
        for h in (0.02, 0.01)
    ]
    assert errors[0] / errors[1] == pytest.approx(8.0, rel=0.1)  # local error O(h^3)


@pytest.mark.parametrize("stages", [3, 4, 6])
def test_every_stage_is_a_distribution_up_to_s_minus_1_times_the_euler_limit(stages):
    """What a fit needs: each stage value, not only the step's result, is a probability
    distribution (it is the target of a fit). Beyond the limit the first stage out of the
    fastest state is not."""
    W = birth_death_generator(50.0, 5.0, 30)
    a0, fastest = -np.diag(W).min(), int(np.argmin(np.diag(W)))  # the largest exit rate
    rng = np.random.default_rng(stages)
    for q in [rng.dirichlet(np.ones(30)), np.eye(30)[fastest], np.eye(30)[0]]:
        inside = stage_values(stages, W, q, 0.99 * (stages - 1) / a0)
        assert min(v.min() for v in inside) >= 0.0
        assert all(v.sum() == pytest.approx(1.0) for v in inside)
    beyond = stage_values(stages, W, np.eye(30)[fastest], 1.05 * (stages - 1) / a0)
    assert beyond[1].min() < 0.0


def test_ssp_steps_follow_the_exact_law_where_heun_would_be_stiff():
    """Birth-death with a_0 about 200 at the mean: at dt = 0.009, dt a_0 is 1.5 to 2.5 where
    the mass is, past Heun's limit (its fits saturate: 0.024 from the exact law to t = 0.36,
    means 1.6 % low), inside SSPRK(4, 2)'s (3)."""
    net = ReactionNetwork(
        {"X": 60},
        [Reaction({}, {"X": 1}, 100.0, "birth"), Reaction({"X": 1}, {}, 5.0, "death")],
        {"X": 0},
        t_end=0.27,
        dt=0.009,
    )
    fast = dict(quiet=True, eval_samples=2000, seed=0, max_dt=0.0)
    out = nncme.run(net, RunConfig(t_end=0.27, save_every=0.09, integrator="ssp", **fast))
    later = out.history[1:]  # after the first (exact) step
    assert {h["scheme"] for h in later} == {"ssp"}
    assert max(h["stiff_mass"] for h in later) < 1e-4
    lam = 20.0 * (1 - np.exp(-5.0 * out.result.times))
    assert 0.009 * (100.0 + 5.0 * lam[-1]) > 1.5  # Heun's fits would saturate at the mean
    exact = np.stack([stats.poisson.pmf(np.arange(60), m) for m in lam])[:, None, :]
    exact[0, 0, 0] = 1.0
    assert hellinger(exact, out.result.marginals).max() < 0.02
    means = out.result.means[1:, 0]
    np.testing.assert_allclose(means, lam[1:], rtol=0.01)


def test_ssp_stages_are_checked():
    with pytest.raises(ConfigError, match="ssp_stages"):
        RunConfig(integrator="ssp", ssp_stages=1)


def test_the_stages_default_per_integrator():
    """ssp takes 4 stages unless told; auto's explicit steps stay Heun's (2) unless told."""
    assert RunConfig(integrator="ssp").explicit_stages == 4
    assert RunConfig().explicit_stages == 2
    assert RunConfig(ssp_stages=5).explicit_stages == 5
    assert RunConfig(integrator="ssp", ssp_stages=3).explicit_stages == 3


def test_auto_takes_ssp_explicit_steps_when_asked():
    net = ReactionNetwork(
        {"X": 30}, [Reaction({}, {"X": 1}, 5.0), Reaction({"X": 1}, {}, 0.5)], {"X": 0}
    )
    config = dict(t_end=0.03, dt=0.01, quiet=True, eval_samples=500, seed=0, max_dt=0.0)
    config["enumerate_states"] = 0  # drawn fits: summed ones take exponential steps
    out = nncme.run(net, RunConfig(ssp_stages=4, **config))
    assert [h["scheme"] for h in out.history[1:]] == ["ssp", "ssp"]
    out = nncme.run(net, RunConfig(**config))
    assert [h["scheme"] for h in out.history[1:]] == ["heun", "heun"]
