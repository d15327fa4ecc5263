"""Distances and comparisons of results."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import entropy

from nncme import metrics
from nncme.results import Result, ResultBuilder


def test_distances_against_definitions():
    rng = np.random.default_rng(0)
    p = rng.random((5, 7))
    q = rng.random((5, 7))
    p /= p.sum(axis=1, keepdims=True)
    q /= q.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(
        metrics.hellinger(p, q), np.sqrt(1 - np.sum(np.sqrt(p * q), axis=1)), rtol=1e-12
    )
    np.testing.assert_allclose(metrics.total_variation(p, q), 0.5 * np.abs(p - q).sum(1))
    np.testing.assert_allclose(metrics.kl_divergence(p, q), entropy(p, q, axis=1), rtol=1e-12)
    assert metrics.hellinger(p[0], p[0]) == 0.0
    assert metrics.hellinger([1, 0], [0, 1]) == pytest.approx(1.0)
    assert metrics.total_variation([1, 0], [0, 1]) == pytest.approx(1.0)
    assert metrics.kl_divergence([0.5, 0.5], [1.0, 0.0]) == np.inf
    assert metrics.kl_divergence([1.0, 0.0], [0.5, 0.5]) == pytest.approx(np.log(2))
    # different supports are padded with zeros; round-off negatives are clipped
    assert metrics.hellinger([0.5, 0.5], [0.5, 0.5, 0.0]) == 0.0
    assert metrics.hellinger([0.5, 0.5, -1e-17], [0.5, 0.5, 0.0]) == 0.0


def test_relative_error_and_tails():
    rel = metrics.relative_error([2.0, 0.0, 0.0], [3.0, 0.0, 1.0])
    np.testing.assert_array_equal(rel, [0.5, 0.0, np.inf])
    p = np.array([0.5, 0.3, 0.15, 0.05])
    np.testing.assert_allclose(metrics.tail_probabilities(p), [1.0, 0.5, 0.2, 0.05])
    t = metrics.tail_errors(p, np.array([0.5, 0.3, 0.1, 0.1]), levels=(0.25, 0.1, 1e-3))
    np.testing.assert_array_equal(t["count"], [2, 3, -1])
    np.testing.assert_allclose(t["reference"][:2], [0.2, 0.05])
    np.testing.assert_allclose(t["other"][:2], [0.2, 0.1])
    np.testing.assert_allclose(t["log10_ratio"][:2], [0.0, np.log10(2)])
    assert np.isnan(t["reference"][2])


def test_sampling_noise_predicts_empirical_hellinger():
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(30))
    n = 20_000
    draws = [metrics.hellinger(p, rng.multinomial(n, p) / n) for _ in range(200)]
    predicted = float(metrics.sampling_noise_hellinger(p, n))
    assert np.sqrt(np.mean(np.square(draws))) == pytest.approx(predicted, rel=0.05)


def result_from(samples, species=("A", "B"), limits=(5, 6), times=(0.0, 1.0), method="ssa"):
    b = ResultBuilder(method, list(species), limits, times)
    for j, s in enumerate(samples):
        b.add(j, s)
    r = b.build(normalize=True)
    r.summary["samples"] = samples[0].shape[0]
    return r


def test_compare_aligns_species_and_times():
    rng = np.random.default_rng(2)
    x = [rng.integers(0, (5, 6), size=(400, 2)) for _ in range(3)]
    a = result_from(x, times=(0.0, 1.0, 2.0))
    # B: species in the other order, only two of the times, one extra time
    b = result_from(
        [x[1][:, ::-1], x[2][:, ::-1], x[0][:, ::-1]],
        species=("B", "A"),
        limits=(6, 5),
        times=(1.0, 2.0, 3.0),
    )
    d = metrics.compare(a, b)
    np.testing.assert_array_equal(d["times"], [1.0, 2.0])
    assert d["max_hellinger"] == 0.0 and np.all(d["mean_rel_error"] == 0)
    assert d["joint"]["hellinger"].max() < 1e-12  # joints aligned by state, not by row
    assert d["noise_hellinger"].shape == (2, 2)
    c = metrics.compare(a, result_from([x[0], x[2]], times=(0.0, 1.0)))
    assert c["hellinger"][0].max() == 0.0 and c["hellinger"][1].max() > 0.0
    assert c["worst"]["time"] == 1.0
    with pytest.raises(ValueError, match="only in B: C"):
        metrics.compare(a, result_from(x[:2], species=("A", "C")))
    with pytest.raises(ValueError, match="share no time"):
        metrics.compare(a, result_from(x[:2], times=(5.0, 6.0)))


def test_compare_exact_results(tmp_path):
    """FSP-style result (no samples) against a perturbed copy."""
    times = np.array([0.0, 1.0])
    marg = np.zeros((2, 1, 4))
    marg[0, 0, 0] = 1.0
    marg[1, 0] = [0.1, 0.2, 0.3, 0.4]
    a = Result("fsp", ["X"], [4], times, marg, np.zeros((2, 1)), np.zeros((2, 1)))
    marg_b = marg.copy()
    marg_b[1, 0] = [0.1, 0.2, 0.4, 0.3]
    b = Result("van", ["X"], [4], times, marg_b, np.zeros((2, 1)), np.zeros((2, 1)))
    d = metrics.compare(a, b)
    assert d["noise_hellinger"] is None
    assert d["total_variation"][1, 0] == pytest.approx(0.1)
    assert d["hellinger"][0, 0] == 0.0
