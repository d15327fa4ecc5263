"""Named time-dependent rate forms (piecewise constant, exponential, table) against exact
answers: birth-death with such a birth rate keeps a Poisson law whose mean solves
d lambda/dt = c(t) - gamma lambda in closed form, and FSP and SSA are both held to it; the
bounds used by thinning are the exact suprema; the forms round-trip through files."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad
from scipy.stats import poisson

from nncme import (
    Exponential,
    NetworkError,
    PiecewiseConstant,
    Reaction,
    ReactionNetwork,
    Sinusoidal,
    Table,
)
from nncme.exact import FSP, FSPSettings
from nncme.io import network_from_dict, network_to_dict
from nncme.ssa import simulate

from .test_ssa import assert_matches, settings

GAMMA = 1.0
FORMS = {
    "piecewise_constant": PiecewiseConstant(breakpoints=[0.7, 1.6], values=[12.0, 3.0, 20.0]),
    "exponential": Exponential(c0=20.0, tau=0.8, c_inf=4.0),
    "table": Table(times=[0.0, 1.0, 1.5, 2.5], values=[2.0, 18.0, 18.0, 6.0]),
}


def _linear_pieces(form) -> list[tuple[float, float, float]]:
    """The rate as pieces (start, value at start, slope), from t = 0 on."""
    if isinstance(form, PiecewiseConstant):
        starts = [0.0, *form.breakpoints]
        return [(s, v, 0.0) for s, v in zip(starts, form.values)]
    times, values = form.times, form.values
    pieces = [(0.0, values[0], 0.0)]  # constant before the first time (here: from 0)
    for j in range(len(times) - 1):
        slope = (values[j + 1] - values[j]) / (times[j + 1] - times[j])
        pieces.append((times[j], values[j], slope))
    pieces.append((times[-1], values[-1], 0.0))
    return [p for p in pieces if p[0] >= 0.0]


def poisson_mean(form, t: float, gamma: float = GAMMA) -> float:
    """lambda(t) with lambda(0) = 0, d lambda/dt = c(t) - gamma lambda, in closed form."""
    if isinstance(form, Exponential):
        c0, c_inf, r = form.c0, form.c_inf, 1.0 / form.tau
        return c_inf / gamma * (1 - math.exp(-gamma * t)) + (c0 - c_inf) / (gamma - r) * (
            math.exp(-r * t) - math.exp(-gamma * t)
        )
    lam = 0.0
    pieces = _linear_pieces(form)
    for j, (s0, a, b) in enumerate(pieces):
        s1 = pieces[j + 1][0] if j + 1 < len(pieces) else math.inf
        if t <= s0:
            break
        h = min(t, s1) - s0  # c = a + b s on the piece: lambda = alpha + beta s + C e^(-gamma s)
        beta, alpha = b / gamma, a / gamma - b / gamma**2
        lam = alpha + beta * h + (lam - alpha) * math.exp(-gamma * h)
    return lam


def birth_death(rate, limit: int = 60) -> ReactionNetwork:
    return ReactionNetwork(
        {"X": limit},
        [Reaction({}, {"X": 1}, rate, "birth"), Reaction({"X": 1}, {}, GAMMA, "death")],
        {"X": 0},
        t_end=3.0,
        conservation=[],
    )


def test_the_reference_means_solve_their_ode():
    """The closed forms above against lambda(t) = int_0^t c(s) exp(-gamma (t - s)) ds by
    quadrature split at the forms' edges (an independent check of the oracle)."""
    for form in FORMS.values():
        for t in (0.5, 1.3, 3.0):
            edges = [b for b in form.discontinuities() if 0 < b < t]
            value, _ = quad(
                lambda s, c=form, t=t: c(s) * math.exp(-GAMMA * (t - s)),
                0.0,
                t,
                points=edges or None,
                epsabs=1e-13,
                epsrel=1e-13,
            )
            assert poisson_mean(form, t) == pytest.approx(value, rel=1e-11)


@pytest.mark.parametrize("name", list(FORMS))
def test_fsp_is_the_exact_poisson_law(name):
    form = FORMS[name]
    fsp = FSP(birth_death(form), FSPSettings(quiet=True))
    times = np.linspace(0, 3, 13)
    P = fsp.solve(times)
    exact = np.stack([poisson.pmf(fsp.states[:, 0], poisson_mean(form, t)) for t in times])
    assert np.abs(P - exact).max() < 1e-8
    assert fsp.ode_stats["pieces"] == 1 + len([b for b in form.discontinuities() if 0 < b < 3])


@pytest.mark.parametrize("name", list(FORMS))
def test_ssa_is_the_exact_poisson_law(name):
    """20 000 trajectories by thinning: chi-square p > 1e-4 and means within 5 standard errors
    at every record time."""
    form = FORMS[name]
    times = np.linspace(0, 3, 13)
    states, info = simulate(birth_death(form), times, settings(20_000))
    assert info["rejected"] > 0  # thinning was at work
    means = np.array([poisson_mean(form, t) for t in times])
    pmfs = np.stack([poisson.pmf(np.arange(60), m) for m in means])
    assert_matches(states[:, :, 0].numpy(), pmfs, means, np.sqrt(means))


def test_fsp_does_not_step_over_a_short_pulse():
    """A pulse of births 20 ms long: the integrator restarts at both edges, so the Poisson law
    after it is exact (its mean is 300 * 0.02 decayed by exp(-(t - 1.02)))."""
    pulse = PiecewiseConstant(breakpoints=[1.0, 1.02], values=[0.0, 300.0, 0.0])
    fsp = FSP(birth_death(pulse, limit=40), FSPSettings(quiet=True))
    P = fsp.solve([0.5, 2.0, 3.0])
    for t, p in zip([0.5, 2.0, 3.0], P):
        assert np.abs(p - poisson.pmf(fsp.states[:, 0], poisson_mean(pulse, t))).max() < 1e-8
    assert fsp.ode_stats["pieces"] == 3


@pytest.mark.parametrize("name", list(FORMS))
def test_bounds_are_exact_suprema(name):
    form = FORMS[name]
    rng = np.random.default_rng(0)
    edges = [0.0, 0.7, 1.0, 1.5, 1.6, 2.5]
    intervals = [(0.0, 3.0), (0.7, 0.7), (0.2, 0.7), (0.7, 1.6), (1.2, 1.4), (2.6, 9.0)]
    intervals += [tuple(sorted(rng.uniform(0, 3, 2))) for _ in range(20)]
    for t0, t1 in intervals:
        grid = np.concatenate([np.linspace(t0, t1, 2001), [e for e in edges if t0 <= e <= t1]])
        values = np.array([form(t) for t in grid])
        assert form.max_on(t0, t1) == pytest.approx(values.max(), rel=1e-12, abs=1e-12)
    t = torch.as_tensor(np.concatenate([np.linspace(-1, 4, 501), edges]))
    vectorised = form.at(t).numpy()
    np.testing.assert_allclose(vectorised, [form(x) for x in t.tolist()], rtol=1e-13, atol=1e-13)


def test_forms_at_their_edges():
    pc = FORMS["piecewise_constant"]
    assert (pc(0.0), pc(0.7 - 1e-12), pc(0.7), pc(1.6), pc(9.0)) == (12, 12, 3, 20, 20)
    assert pc.max_on(0.0, 0.7) == 12 and pc.max_on(0.7, 1.6) == 20  # the value at 1.6 counts
    table = FORMS["table"]
    assert (table(-5.0), table(0.5), table(2.0), table(7.0)) == (2.0, 10.0, 12.0, 6.0)
    assert Table([1.0], [4.0])(0.0) == 4.0 and Table([1.0], [4.0]).max_on(0, 3) == 4.0
    decay = Exponential(c0=5.0, tau=2.0)
    assert decay(2.0) == pytest.approx(5 * math.exp(-1)) and decay.max_on(1, 3) == decay(1.0)
    assert decay.describe() == "5*exp(-t/2)"
    assert FORMS["exponential"].describe() == "4 + (20 - 4)*exp(-t/0.8)"
    assert pc.describe() == "piecewise 12, 3 from t=0.7, 20 from t=1.6"
    assert table.describe() == "table (0, 2), (1, 18), (1.5, 18), (2.5, 6)"


@pytest.mark.parametrize("name", list(FORMS))
def test_forms_round_trip_through_files(name, tmp_path):
    from nncme.io import load_network, save_network

    net = birth_death(FORMS[name])
    doc = network_to_dict(net)
    assert doc["reactions"][0]["rate"]["form"] == name
    assert network_from_dict(doc).reactions[0].rate == FORMS[name]
    for suffix in (".toml", ".json"):
        back = load_network(save_network(net, tmp_path / f"net{suffix}"))
        assert back.reactions[0].rate == FORMS[name]
        assert back.reactions[0].describe() == net.reactions[0].describe()


@pytest.mark.parametrize(
    "rate,message",
    [
        (
            {"form": "piecewise_constant", "breakpoints": [1.0, 0.5], "values": [1, 2, 3]},
            "reactions[0].rate.breakpoints: must be strictly increasing, got 1.0 then 0.5",
        ),
        (
            {"form": "piecewise_constant", "breakpoints": [1.0], "values": [1]},
            "reactions[0].rate.values: needs one more value than breakpoints (1 breakpoints, "
            "so 2 values), got 1",
        ),
        (
            {"form": "piecewise_constant", "breakpoints": [-1.0], "values": [1, 2]},
            "reactions[0].rate.breakpoints[0]: must be >= 0, got -1.0",
        ),
        (
            {"form": "piecewise_constant", "breakpoints": 1.0, "values": [1, 2]},
            "reactions[0].rate.breakpoints: expected a list of numbers, got 1.0",
        ),
        (
            {"form": "piecewise_constant", "breakpoints": [1.0], "values": [1, "x"]},
            "reactions[0].rate.values[1]: must be a number, got 'x'",
        ),
        (
            {"form": "exponential", "c0": 1.0, "tau": 0.0},
            "reactions[0].rate.tau: must be finite and > 0, got 0.0",
        ),
        (
            {"form": "exponential", "c0": 1.0, "tau": 1.0, "c_inf": -2},
            "reactions[0].rate.c_inf: must be finite and >= 0, got -2.0",
        ),
        (
            {"form": "exponential", "tau": 1.0},
            "reactions[0].rate.c0: missing (a exponential rate needs c0, tau)",
        ),
        (
            {"form": "table", "times": [0, 1], "values": [1, 2, 3]},
            "reactions[0].rate.values: needs one value per time (2), got 3",
        ),
        (
            {"form": "table", "times": [0, 1, 1], "values": [1, 2, 3]},
            "reactions[0].rate.times: must be strictly increasing, got 1.0 then 1.0",
        ),
        (
            {"form": "table", "times": [0, 1], "values": [1, -2]},
            "reactions[0].rate.values[1]: must be finite and >= 0, got -2.0",
        ),
        ({"form": "table", "times": [], "values": []}, "reactions[0].rate.times: give at least"),
        (
            {"form": "table", "times": [0, 1], "values": [1, 2], "kind": "linear"},
            "reactions[0].rate: unknown key 'kind'; expected one of form, times, values",
        ),
    ],
)
def test_bad_forms_name_the_field(rate, message):
    doc = network_to_dict(birth_death(2.0))
    doc["reactions"][0]["rate"] = rate
    with pytest.raises(NetworkError) as info:
        network_from_dict(doc)
    assert str(info.value).startswith(message), str(info.value)


def test_bad_forms_in_python_name_the_reaction():
    def error(rate) -> str:
        with pytest.raises(NetworkError) as info:
            birth_death(rate)
        return str(info.value)

    where = "reaction 'birth' (reactions[0]): rate"
    assert error(PiecewiseConstant([2.0, 1.0], [1, 2, 3])).startswith(
        f"{where}.breakpoints: must be strictly increasing"
    )
    assert error(Exponential(c0=math.nan, tau=1.0)).startswith(f"{where}.c0: must be finite")
    assert error(Table([0.0, 1.0], [1.0])).startswith(f"{where}.values: needs one value per time")
    assert error(Table(3.0, [1.0])).startswith(f"{where}.times: must be a list of numbers")
    assert error(Sinusoidal(1.0, 2.0, 1.0)).startswith(f"{where}.a: the amplitude")
