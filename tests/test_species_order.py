"""The order a run's model samples species in (`RunConfig.species_order`): each conservation
law fixes its reservoir, not a small count; results come back in the file's order."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import nncme
from nncme import Reaction, ReactionNetwork
from nncme.exact import solve_fsp
from nncme.metrics import compare


def enzyme(substrate: int = 15, enzymes: int = 5, t_end: float = 0.3) -> ReactionNetwork:
    """Michaelis-Menten as a user lists it: substrate first, product last."""
    return ReactionNetwork(
        {"S": substrate + 1, "E": enzymes + 1, "SE": enzymes + 1, "P": substrate + 1},
        [
            Reaction({"S": 1, "E": 1}, {"SE": 1}, 0.05, name="bind"),
            Reaction({"SE": 1}, {"S": 1, "E": 1}, 0.1, name="unbind"),
            Reaction({"SE": 1}, {"P": 1, "E": 1}, 1.0, name="catalyse"),
        ],
        {"S": substrate, "E": enzymes},
        name="enzyme",
        conservation=[{"E": 1, "SE": 1}, {"S": 1, "SE": 1, "P": 1}],
        t_end=t_end,
        dt=0.01,
    )


def test_laws_fix_the_reservoirs_and_leave_other_species_in_place():
    assert enzyme().sampling_order() == ["SE", "P", "E", "S"]
    # a species outside every law keeps its position; the law's two swap (initial 9 > 0)
    net = ReactionNetwork(
        {"A": 10, "X": 5, "B": 10},
        [Reaction({"A": 1}, {"B": 1}, 1.0), Reaction({}, {"X": 1}, 1.0)],
        {"A": 9},
    )
    assert net.sampling_order() == ["B", "X", "A"]
    # no laws, or a custom propensity (it reads states by position): the file's order
    free = ReactionNetwork({"A": 10}, [Reaction({}, {"A": 1}, 1.0)])
    assert free.sampling_order() == ["A"]
    custom = ReactionNetwork(
        {"A": 10, "B": 10},
        [Reaction({"A": 1}, {"B": 1}, 1.0, propensity=lambda n, t: n[:, 0])],
        {"A": 9},
    )
    assert custom.sampling_order() == ["A", "B"]


def test_a_reordered_network_is_the_same_network():
    net = enzyme()
    other = net.reordered(net.sampling_order())
    assert other.species_names == ["SE", "P", "E", "S"]
    assert other.free_dimensions == net.free_dimensions
    assert sorted(law.name for law in other.conservation_laws) == ["SE + E", "SE + P + S"]
    times = [0.1, 0.3]
    a, b = solve_fsp(net, times), solve_fsp(other, times)
    assert b.species == other.species_names
    back = b.in_species_order(a.species)
    np.testing.assert_allclose(back.marginals, a.marginals, atol=1e-12)
    np.testing.assert_allclose(back.covariances, a.covariances, atol=1e-12)
    assert compare(a, b)["hellinger"].max() < 1e-12
    with pytest.raises(nncme.NetworkError, match="is not an order"):
        net.reordered(["S", "E", "SE"])


def test_result_in_species_order_round_trips():
    net = enzyme()
    result = solve_fsp(net, [0.2])
    order = ["P", "S", "SE", "E"]
    moved = result.in_species_order(order)
    assert moved.species == order
    assert moved.limits.tolist() == [16, 16, 6, 6]
    np.testing.assert_array_equal(moved.means[:, 0], result.means[:, 3])
    if moved.joint is not None:  # rows sorted in the new order, probabilities kept with them
        assert (np.diff(moved.joint_states[:, 0]) >= 0).all()
        np.testing.assert_allclose(np.sort(moved.joint, axis=1), np.sort(result.joint, axis=1))
    again = moved.in_species_order(result.species)
    np.testing.assert_allclose(again.marginals, result.marginals)
    np.testing.assert_allclose(again.covariances, result.covariances)
    if result.joint is not None:
        np.testing.assert_array_equal(again.joint_states, result.joint_states)
        np.testing.assert_allclose(again.joint, result.joint)


def test_a_run_samples_reservoirs_last_and_reports_in_the_file_order():
    """At the defaults, the product's marginal (a small count the substrate law would fix if
    the model sampled in the file's order) is within 0.01 of FSP at every save time, its
    standard deviation within 5 %; the run continues from its own model in the same order."""
    net = enzyme()
    out = nncme.run(net, quiet=True, seed=0)
    result = out.result
    assert result.species == ["S", "E", "SE", "P"]
    assert result.summary["sampling_order"] == ["SE", "P", "E", "S"]
    assert out.model.species_order == ["SE", "P", "E", "S"]
    exact = solve_fsp(net, result.times)
    d = compare(exact, result)
    assert d["hellinger"].max() < 0.01, d["hellinger"].max(axis=0)
    np.testing.assert_allclose(result.stds[1:, 3], exact.stds[1:, 3], rtol=0.05)
    np.testing.assert_allclose(result.means[1:], exact.means[1:], rtol=0.02, atol=0.01)
    # states drawn from the model list its own order: P (second) never exceeds the substrate
    states, _ = out.model.sample(500, torch.Generator().manual_seed(1))
    assert (states[:, 0] + states[:, 1] + states[:, 3] == 15).all()
    # a run from it starts where it ended: its t = 0 is this run's last save, species by name
    again = nncme.run(net, t_end=0.02, quiet=True, start=out.model)
    assert again.result.summary["sampling_order"] == ["SE", "P", "E", "S"]
    np.testing.assert_allclose(again.result.marginals[0], result.marginals[-1], atol=1e-10)


def test_species_order_file_keeps_the_file_order():
    out = nncme.run(enzyme(t_end=0.02), quiet=True, species_order="file")
    assert out.result.summary["sampling_order"] == ["S", "E", "SE", "P"]
    assert out.model.species_order == ["S", "E", "SE", "P"]


@pytest.mark.parametrize("species_order", ["auto", "file"])
def test_the_support_is_listed_once_in_the_models_order(species_order, monkeypatch):
    """Whether the fits sum over a listed support depends on the order (an evaluation runs
    one row per distinct prefix): the objective and the steps' tolerance must follow the
    proposal the run draws with, not a listing in another order."""
    from nncme import api, config
    from nncme.models import ListedScorer
    from nncme.sampling import Enumerated

    net = enzyme()
    order = net.sampling_order() if species_order == "auto" else net.species_names
    rows = {
        tuple(names): ListedScorer.rows_for(
            api._listed_support(config.RunConfig(), net.reordered(names))
        )
        for names in (net.sampling_order(), net.species_names)
    }
    assert len(set(rows.values())) == 2  # the two orders run different numbers of rows
    monkeypatch.setattr(Enumerated, "MAX_ROWS", min(rows.values()))  # the fewer fit
    listings = []
    listed = api.enumerate_states
    monkeypatch.setattr(
        api, "enumerate_states", lambda *a, **k: listings.append(1) or listed(*a, **k)
    )

    driver = api.build_driver(net, config.RunConfig(species_order=species_order, quiet=True))
    summary = driver.observer(nncme.observers.Recorder).summary
    summed = rows[tuple(order)] == min(rows.values())
    assert (summary["enumerated_states"] is not None) == summed
    settings = summary["settings"]
    tempered = net.free_dimensions >= 3  # drawn fits of three free counts: alpha draws
    assert settings["objective"] == ("log_variance" if summed or tempered else "kl")
    tolerance = config.SUMMED_DT_TOLERANCE if summed else config.DRAWN_DT_TOLERANCE
    assert settings["dt_tolerance"] == tolerance
    assert len(listings) == 1
