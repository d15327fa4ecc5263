"""Observables: their values against numpy on counts and exact sums, the score-function
gradient against exact gradients of a small model summed over its box, references from
snapshot data, and the CSV format."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nncme import Reaction, ReactionNetwork
from nncme.models import build_model
from nncme.observables import (
    Observable,
    evaluate,
    from_snapshots,
    read_observables,
    score_gradient,
    write_observables,
)
from nncme.observers import box_states

SPECIES = ["A", "B"]


def all_kinds(t: float = 1.0) -> list[Observable]:
    return [
        Observable("mean", ("A",), t, 0.0, 1.0),
        Observable("variance", ("B",), t, 0.0, 1.0),
        Observable("fano", ("A",), t, 0.0, 1.0),
        Observable("covariance", ("A", "B"), t, 0.0, 1.0),
        Observable("histogram", ("B",), t, 0.0, 1.0, lo=1, hi=2),
        Observable("histogram", ("A",), t, 0.0, 1.0, lo=3, width=0.7),
        Observable("tail", ("A",), t, 0.0, 1.0, lo=4),
        Observable("callable", (), t, 0.0, 1.0, fn=lambda n: (n[:, 0] * n[:, 1] ** 2).double()),
    ]


def numpy_values(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    from scipy.stats import norm

    w = w / w.sum()
    a, b = x[:, 0].astype(float), x[:, 1].astype(float)
    mean = lambda v: float(w @ v)  # noqa: E731
    var = lambda v: mean(v**2) - mean(v) ** 2  # noqa: E731
    smooth = norm.cdf((3.5 - a) / 0.7) - norm.cdf((2.5 - a) / 0.7)
    return np.array(
        [
            mean(a),
            var(b),
            var(a) / mean(a),
            mean(a * b) - mean(a) * mean(b),
            mean(((b >= 1) & (b <= 2)).astype(float)),
            mean(smooth),
            mean((a >= 4).astype(float)),
            mean(a * b**2),
        ]
    )


def test_values_match_numpy_with_and_without_weights(rng):
    x = rng.integers(0, 7, size=(500, 2))
    w = rng.random(500)
    states = torch.as_tensor(x)
    got = evaluate(all_kinds(), states, SPECIES).numpy()
    np.testing.assert_allclose(got, numpy_values(x, np.ones(500)), rtol=1e-12, atol=1e-12)
    got = evaluate(all_kinds(), states, SPECIES, torch.as_tensor(w)).numpy()
    np.testing.assert_allclose(got, numpy_values(x, w), rtol=1e-12, atol=1e-12)


def test_bad_observables_say_what_is_wrong():
    with pytest.raises(ValueError, match="kind must be one of"):
        Observable("median", ("A",), 1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="reads 2 species"):
        Observable("covariance", ("A",), 1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="sigma must be"):
        Observable("mean", ("A",), 1.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="needs lo"):
        Observable("tail", ("A",), 1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="needs fn"):
        Observable("callable", (), 1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="lacks"):
        Observable("mean", ("C",), 1.0, 0.0, 1.0).features(
            torch.zeros(3, 2, dtype=torch.long), SPECIES
        )


def small_model(seed: int, context: int = 0) -> torch.nn.Module:
    net = ReactionNetwork(
        {"A": 7, "B": 5},
        [
            Reaction({}, {"A": 1}, 2.0),
            Reaction({"A": 1}, {"B": 1}, 1.0),
            Reaction({"B": 1}, {}, 1.0),
        ],
        {},
    )
    model = build_model("nade", net, seed=seed, hidden=8, context_dim=context)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # away from the uniform start, so every gradient is far from zero
        for p in model.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def exact_gradient(model, observables, context=None) -> tuple[torch.Tensor, torch.Tensor]:
    grid = box_states([7, 5], "cpu")
    params = [p for p in model.parameters() if p.requires_grad]
    ctx = None if context is None else context.expand(grid.shape[0], -1)
    p = model.log_prob(grid, context=ctx).exp()
    values = evaluate(observables, grid, SPECIES, p)
    rows = []
    for v in values:
        g = torch.autograd.grad(v, params, retain_graph=True, allow_unused=True)
        rows.append(
            torch.cat(
                [(torch.zeros_like(q) if x is None else x).reshape(-1) for x, q in zip(g, params)]
            )
        )
    return values.detach(), torch.stack(rows)


@pytest.mark.parametrize("conditional", [False, True])
def test_score_gradient_is_the_exact_gradient_within_its_error(conditional):
    model = small_model(3, context=2 if conditional else 0)
    context = torch.tensor([[0.3, -0.7]], dtype=torch.float64) if conditional else None
    obs = all_kinds()
    values, exact = exact_gradient(model, obs, context)
    gen = torch.Generator().manual_seed(11)
    est = score_gradient(
        model, obs, SPECIES, samples=40000, replicas=20, generator=gen, context=context
    )
    np.testing.assert_allclose(est.values, values, rtol=0.05, atol=0.01)
    z = (est.gradient - exact) / est.stderr.clamp_min(1e-12)
    big = exact.abs() > 1e-3
    # unbiased: the errors are standard normal over thousands of components (|z| of 5 or more
    # would happen once in 1.7 million); the leave-one-out baseline removes the O(1/n) bias
    # of a plug-in mean, the nonlinear observables keep one of O(1/n) relative to their size
    assert (z[big].abs() < 5.5).float().mean() > 0.999, z[big].abs().max()
    assert z[big].mean().abs() < 0.15 and 0.7 < z[big].std() < 1.3
    cos = torch.nn.functional.cosine_similarity(est.gradient, exact, dim=1)
    assert (cos > 0.98).all(), cos


def test_clipping_trades_variance_for_bias():
    model = small_model(5)
    obs = [Observable("callable", (), 1.0, 0.0, 1.0, fn=lambda n: n[:, 0].double() ** 4)]
    _, exact = exact_gradient(model, obs)
    runs = {}
    for clip in (None, 1.0):
        gen = torch.Generator().manual_seed(2)
        runs[clip] = score_gradient(
            model, obs, SPECIES, samples=8000, replicas=16, clip=clip, generator=gen
        )
    spread = {c: float(r.replicas.std(dim=0).norm()) for c, r in runs.items()}
    bias = {c: float((r.gradient - exact).norm() / exact.norm()) for c, r in runs.items()}
    assert spread[1.0] < 0.7 * spread[None], spread
    assert bias[None] < 0.15 < bias[1.0], bias  # clipping a heavy tail at 1 sd biases


def test_score_gradient_rejects_too_few_samples():
    with pytest.raises(ValueError, match="two samples per replica"):
        score_gradient(small_model(0), all_kinds(), SPECIES, samples=10, replicas=8)


def test_references_from_snapshots_have_bootstrap_errors(rng):
    n = 2000
    counts = np.stack([rng.poisson(4.0, n), rng.poisson(1.5, n)], axis=1)
    obs = from_snapshots(
        counts, 2.0, SPECIES, kinds=("mean", "variance", "fano"), bins={"A": [0, 2, 4, 6]}
    )
    by = {o.name: o for o in obs}
    a = counts[:, 0]
    assert by["mean(A) @ t=2"].value == pytest.approx(a.mean())
    assert by["mean(A) @ t=2"].sigma == pytest.approx(a.std() / np.sqrt(n), rel=0.15)
    assert by["variance(B) @ t=2"].value == pytest.approx(counts[:, 1].var())
    # the Fano factor of a Poisson law is 1, with standard error about sqrt(2 / n)
    assert by["fano(A) @ t=2"].sigma == pytest.approx(np.sqrt(2.0 / n), rel=0.25)
    assert by["P(A = 2..3) @ t=2"].value == pytest.approx(np.mean((a >= 2) & (a <= 3)))
    assert len([o for o in obs if o.kind == "histogram"]) == 3
    assert all(o.t == 2.0 for o in obs)


def test_csv_round_trip_and_errors(tmp_path):
    obs = [o for o in all_kinds(0.5) if o.kind != "callable"]
    obs = [Observable(o.kind, o.species, o.t, 1.5, 0.1, 2.0, o.lo, o.hi, o.width) for o in obs]
    path = write_observables(obs, tmp_path / "obs.csv")
    assert read_observables(path) == obs
    (tmp_path / "bad.csv").write_text("kind,species,t,value\nmean,A,1,2\n")
    with pytest.raises(ValueError, match="lacks"):
        read_observables(tmp_path / "bad.csv")
    (tmp_path / "bad.csv").write_text("kind,species,t,value,sigma\nmean,A,1,2,-1\n")
    with pytest.raises(ValueError, match=r"line 2.*sigma"):
        read_observables(tmp_path / "bad.csv")
