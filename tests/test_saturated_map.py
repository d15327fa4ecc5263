"""The explicit map past dt a_0 = STIFF_RATE_DT: Euler's own map below, a probability map
above (every column sums to 1, no negative entry) for every dt, checked against the dense
matrix built from the FSP generator; a run whose tails reach fast states no longer stops,
and one whose bulk is stiff is warned about."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import nncme
from nncme import Reaction, ReactionNetwork
from nncme.config import RunConfig
from nncme.exact import FSP, FSPSettings
from nncme.optim import TransitionTarget
from nncme.optim.target import STIFF_RATE_DT, outflow_fraction


class Table:
    """A distribution given by its values on the FSP's enumerated states."""

    def __init__(self, states: np.ndarray, p: np.ndarray) -> None:
        self.index = {tuple(s): i for i, s in enumerate(states.tolist())}
        self.log_p = torch.log(torch.as_tensor(p, dtype=torch.float64))

    def log_prob(self, states: torch.Tensor, **_) -> torch.Tensor:
        return self.log_p[torch.tensor([self.index[tuple(s)] for s in states.tolist()])]


def saturated_matrix(fsp: FSP, t: float, dt: float) -> np.ndarray:
    """T[n, m] = 1 - w(x_m) on the diagonal, dt W[n, m] w(x_m) / x_m off it, x = dt a_0."""
    W = fsp.generator(t).toarray()
    x = -dt * np.diag(W)
    w = outflow_fraction(torch.as_tensor(x)).numpy()
    ratio = np.divide(w, x, out=np.ones_like(x), where=x > 0)
    T = dt * W * ratio[None, :]
    np.fill_diagonal(T, 1 - w)
    return T


def two_species() -> ReactionNetwork:
    """Production, conversion with a bimolecular term, degradation: a_0 grows fast with the
    counts, so one dt is Euler at the small counts and saturated at the large ones."""
    return ReactionNetwork(
        {"A": 12, "B": 9},
        [
            Reaction({}, {"A": 1}, 3.0),
            Reaction({"A": 1}, {"B": 1}, 0.5),
            Reaction({"A": 1, "B": 1}, {"B": 2}, 0.3),
            Reaction({"B": 1}, {}, 1.0),
        ],
        {"A": 2, "B": 1},
    )


def test_outflow_fraction_is_euler_up_to_the_threshold_and_smooth_and_below_one_above():
    x = torch.linspace(0, 50, 50001, dtype=torch.float64)
    w = outflow_fraction(x)
    below = x <= STIFF_RATE_DT
    torch.testing.assert_close(w[below], x[below])
    assert bool((w < 1).all()) and bool((torch.diff(w) > 0).all())
    h = 1e-6  # no kink at the threshold: the slope just above it is Euler's 1
    above = outflow_fraction(torch.tensor([STIFF_RATE_DT, STIFF_RATE_DT + h], dtype=torch.float64))
    assert float(above.diff()) / h == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("dt", [0.01, 0.05, 0.4])
def test_target_is_the_saturated_map_and_a_probability_map(dt):
    net = two_species()
    fsp = FSP(net, FSPSettings(quiet=True))
    T = saturated_matrix(fsp, 0.0, dt)
    assert (T >= 0).all()
    np.testing.assert_allclose(T.sum(axis=0), 1.0, atol=1e-12)
    x = -dt * np.diag(fsp.generator(0.0).toarray())
    stiff = (x > STIFF_RATE_DT).mean()  # 0.01: Euler everywhere (the operator's value stands);
    assert {0.01: stiff == 0, 0.05: 0.2 < stiff < 1, 0.4: stiff == 1}[dt]  # mixed; all saturated
    p = np.random.default_rng(1).dirichlet(np.ones(fsp.num_states))
    target = TransitionTarget(Table(fsp.states, p), net.compile("cpu", torch.float64), 0.0, dt)
    log_tq = target(torch.as_tensor(fsp.states)).log_tq
    np.testing.assert_allclose(log_tq.numpy(), np.log(T @ p), rtol=1e-10, atol=1e-12)


def leaky_birth_death() -> ReactionNetwork:
    """Births at 5, deaths at 1 per copy, in a box of 400 counts: the bulk (n < 20) has
    dt a_0 <= 0.25 at dt = 0.01, the box's top 4."""
    return ReactionNetwork(
        {"X": 400},
        [Reaction({}, {"X": 1}, 5.0, "birth"), Reaction({"X": 1}, {}, 1.0, "death")],
        {"X": 0},
    )


def test_a_run_whose_draws_reach_fast_states_completes_without_stiffness_warnings(tmp_path):
    """The mixture proposal draws uniformly over the box, where dt a_0 reaches 4: the run
    used to stop there (StepSizeError); now it completes, and the bulk stays accurate (drawn
    fits, enumerate_states 0: summed ones draw nothing and step exponentially)."""
    net = leaky_birth_death()
    config = RunConfig(
        t_end=0.3, dt=0.01, save_every=0.1, proposal="mixture", objective="log_variance",
        quiet=True, out=str(tmp_path), enumerate_states=0,
    )  # fmt: skip
    out = nncme.run(net, config)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"].startswith("completed")
    assert not [w for w in summary["first_warnings"] if "dt * a_0" in w]
    log = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert max(x["rate_dt"] for x in log) > 1  # fast states were drawn
    assert max(x["stiff_mass"] for x in log) < 1e-3  # but held no mass
    mean = out.result.means[-1, 0]
    assert mean == pytest.approx(5 * (1 - math.exp(-0.3)), rel=0.02)  # Poisson's mean


def test_a_stiff_bulk_is_warned_about(tmp_path):
    """dt a_0 between 1 and 2 where the mass is: a Heun run completes (the map is a
    probability map) but says, in a warning and in summary.json, that dt is too large (the
    default integrator, auto, takes implicit steps there instead: tests/test_implicit.py)."""
    net = ReactionNetwork(
        {"X": 30}, [Reaction({}, {"X": 1}, 10.0), Reaction({"X": 1}, {}, 1.0)], {"X": 0}
    )
    # steps of dt: cut into sub-steps (tests/test_motion.py) they would not be stiff
    config = RunConfig(
        t_end=0.3, dt=0.1, batch=200, iterations=20, integrator="heun", quiet=True,
        out=str(tmp_path), max_motion=0.0,
    )  # fmt: skip
    with pytest.warns(UserWarning, match=r"dt \* a_0 > 0\.9 on .* of the mass.*implicit"):
        nncme.run(net, config)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert "warnings" in summary["status"]
    assert any("dt * a_0 > 0.9" in w for w in summary["first_warnings"])
