"""The Recorder's statistics: exact sums over the states of a network's conservation laws where
its box is too large to list, sampled ones only where neither can be listed."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import nncme
from nncme import Reaction, ReactionNetwork
from nncme.exact import enumerate_states
from nncme.models import build_model
from nncme.models.nade import NADE
from nncme.observers import states_on_laws, summarize


def sir(population: int = 30) -> ReactionNetwork:
    """SIR in a closed population: the law S + I + R = N leaves 496 of 29,791 box states."""
    return ReactionNetwork(
        {"S": population + 1, "I": population + 1, "R": population + 1},
        [
            Reaction({"S": 1, "I": 1}, {"I": 2}, 2.0 / population, name="infect"),
            Reaction({"I": 1}, {"R": 1}, 1.0, name="recover"),
        ],
        {"S": population - 3, "I": 3},
        conservation=[{"S": 1, "I": 1, "R": 1, "total": population}],
    )


def trained_like(net: ReactionNetwork, **options) -> torch.nn.Module:
    """A NADE whose conditionals are far from uniform (random, larger weights)."""
    model = build_model("nade", net, hidden=8, seed=5, **options)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    return model


def test_the_laws_states_are_listed_only_where_the_box_is_too_large():
    net = sir()
    box = math.prod(net.limits)
    on_laws = states_on_laws(net, joint_max_states=1000)
    assert on_laws.shape == (496, 3)
    assert (on_laws.sum(1) == 30).all()
    np.testing.assert_array_equal(on_laws.numpy(), enumerate_states(net))
    assert states_on_laws(net, joint_max_states=box) is None  # the box itself is listed
    assert states_on_laws(net, joint_max_states=400) is None  # too many on the laws too
    free = ReactionNetwork({"X": 50}, [Reaction({}, {"X": 1}, 1.0)])
    assert states_on_laws(free, joint_max_states=10) is None


def test_marginals_over_the_laws_states_are_the_joints():
    net = sir()
    model = trained_like(net)
    g = torch.Generator().manual_seed(0)
    whole = summarize(model, net, eval_samples=100, joint_max_states=10**6, generator=g)
    on_laws = states_on_laws(net, joint_max_states=1000)
    laws = summarize(model, net, eval_samples=100, joint_max_states=1000, generator=g,
                     on_laws=on_laws)  # fmt: skip
    sampled = summarize(model, net, eval_samples=100, joint_max_states=1000, generator=g)
    assert bool(laws["exact"]) and bool(whole["exact"]) and not bool(sampled["exact"])
    for key in ("marginals", "means", "stds", "covariances"):
        torch.testing.assert_close(laws[key], whole[key], rtol=1e-10, atol=1e-12)
    # 100 samples are far from the joint's marginals: the exact path was taken, not these
    assert (laws["marginals"] - sampled["marginals"]).abs().max() > 1e-3


def test_a_model_with_mass_off_the_laws_is_sampled():
    net = sir()
    own = NADE(net.limits, hidden=8, seed=5, dtype=torch.float64)  # built without the laws
    g = torch.Generator().manual_seed(0)
    out = summarize(own, net, eval_samples=500, joint_max_states=1000, generator=g,
                    on_laws=states_on_laws(net, joint_max_states=1000))  # fmt: skip
    assert not bool(out["exact"])
    assert torch.isclose(out["marginals"].sum(1), torch.ones(3, dtype=out["marginals"].dtype)).all()


@pytest.mark.parametrize("joint_max_states, source", [(1000, "conservation-law states"),
                                                      (100, "averaged conditionals")])  # fmt: skip
def test_a_run_says_how_its_marginals_were_formed(joint_max_states, source):
    result = nncme.run(sir(), t_end=0.02, dt=0.01, batch=200, iterations=5, hidden=4, quiet=True,
                       eval_samples=300, joint_max_states=joint_max_states).result  # fmt: skip
    assert result.summary["marginals_from"] == source
    np.testing.assert_allclose(result.marginals.sum(-1), 1.0, atol=1e-9)
