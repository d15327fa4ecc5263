"""Proposals: log rho exact (normalised over an enumerated box, equal to the sampling pass, and
matching empirical frequencies by chi-square), importance weights, and Pareto smoothing on a
heavy-tailed case with a known tail index."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from nncme import Reaction, ReactionNetwork
from nncme.models import NADE, build_model
from nncme.sampling import (
    Alpha,
    Diffusive,
    Mixture,
    PrefixMixture,
    UniformKernel,
    Vanilla,
    make_proposal,
    pareto_smooth,
)


def two_species(conserved: bool) -> ReactionNetwork:
    """A small box (6 x 7); with `conserved`, A + B = 6 holds (7 feasible states)."""
    reactions = [Reaction({"A": 1}, {"B": 1}, 2.0), Reaction({"B": 1}, {"A": 1}, 1.0)]
    if not conserved:
        reactions.append(Reaction({}, {"A": 1}, 1.0))
    return ReactionNetwork(
        {"A": 7, "B": 6} if conserved else {"A": 6, "B": 7},
        reactions,
        {"A": 6} if conserved else {"A": 2},
        conservation=None if conserved else [],
    )


def box(limits) -> torch.Tensor:
    axes = [torch.arange(int(m)) for m in limits]
    return torch.cartesian_prod(*axes).reshape(-1, len(axes))


def model_for(net: ReactionNetwork, seed: int = 1) -> NADE:
    model = build_model("nade", net, hidden=8, seed=seed)
    with torch.no_grad():  # a peaked, uneven q, so the proposals differ visibly from it
        for p in model.parameters():
            p.mul_(4.0)
    return model


PROPOSALS = [
    Vanilla(),
    Mixture(0.3),
    PrefixMixture(0.3),
    PrefixMixture(1.0),
    Diffusive(1),
    Diffusive(3),
    Alpha(0.5),
    Alpha(1.7),
]


@pytest.mark.parametrize("conserved", [False, True])
@pytest.mark.parametrize("proposal", PROPOSALS, ids=repr)
def test_log_rho_is_normalised_and_matches_the_draws(proposal, conserved):
    net = two_species(conserved)
    model = model_for(net)
    states = box(net.limits)
    log_rho = proposal.log_prob(model, states)
    assert float(torch.logsumexp(log_rho, 0).exp()) == pytest.approx(1.0, abs=1e-12)
    gen = torch.Generator().manual_seed(3)
    B = 20000
    draw = proposal.draw(model, B, gen)
    # log rho and log q of the sampling pass equal the exact ones
    torch.testing.assert_close(
        draw.log_rho, proposal.log_prob(model, draw.states), rtol=0, atol=1e-10
    )
    torch.testing.assert_close(draw.log_q, model.log_prob(draw.states), rtol=0, atol=1e-10)
    if type(proposal) is Mixture and conserved:  # its uniform part draws on the law only
        assert draw.states.shape[0] == B and bool(torch.isfinite(draw.log_q).all())
    # empirical frequencies follow rho (chi-square over states with expected count >= 5)
    keys = draw.states[:, 0] * int(net.limits[1]) + draw.states[:, 1]
    counts = np.bincount(keys.numpy(), minlength=states.shape[0]).astype(float)
    rho = torch.exp(log_rho).numpy()
    if isinstance(proposal, PrefixMixture) and conserved:  # states off the law were dropped
        feasible = torch.isfinite(model.log_prob(states)).numpy()
        n_kept = counts.sum()
        assert n_kept < B and counts[~feasible].sum() == 0
        rho = np.where(feasible, rho, 0.0)
        rho /= rho.sum()
        B = int(n_kept)
    expected = B * rho
    big = expected >= 5
    chi2 = (((counts[big] - expected[big]) ** 2) / expected[big]).sum()
    chi2 += (counts[~big].sum() - expected[~big].sum()) ** 2 / max(expected[~big].sum(), 1.0)
    p_value = stats.chi2.sf(chi2, df=int(big.sum()))
    assert p_value > 1e-4, (chi2, int(big.sum()))


def test_a_wrong_log_rho_fails_the_checks():
    """The normalisation check catches a kernel that forgets the boundary renormalisation."""

    class Unnormalised(UniformKernel):
        def __call__(self, i, log_q, allowed):
            r = self._window_sum(torch.exp(log_q)) / (2 * self.width + 1)
            return torch.where(allowed, torch.log(r), torch.full_like(r, -math.inf))

    net = two_species(False)
    model = model_for(net)
    wrong = Diffusive(2)
    wrong.transform = Unnormalised(2)
    total = float(torch.logsumexp(wrong.log_prob(model, box(net.limits)), 0).exp())
    assert abs(total - 1) > 1e-3


def test_weighted_estimates_are_unbiased():
    """Self-normalised weights reproduce E_q[n] from every proposal."""
    net = two_species(False)
    model = model_for(net, seed=5)
    states = box(net.limits)
    q = torch.exp(model.log_prob(states)).detach()
    exact = (q.unsqueeze(1) * states.double()).sum(0)
    gen = torch.Generator().manual_seed(0)
    for proposal in PROPOSALS:
        draw = proposal.draw(model, 40000, gen)
        assert float(draw.weights.sum()) == pytest.approx(1.0)
        est = (draw.weights.unsqueeze(1) * draw.states.double()).sum(0)
        assert torch.allclose(est, exact, atol=0.03 * 5), (proposal, est, exact)
        assert 0 < draw.ess <= draw.states.shape[0] + 1e-6


def test_make_proposal_names():
    assert isinstance(make_proposal("mixture", eps=0.2), Mixture)
    assert make_proposal("prefix_mixture", eps=0.2).eps == 0.2
    assert make_proposal("diffusive", width=4).transform.width == 4
    assert make_proposal("alpha", alpha=0.3).transform.alpha == 0.3
    with pytest.raises(ValueError, match="proposal must be one of"):
        make_proposal("uniform")
    with pytest.raises(ValueError, match="eps"):
        Mixture(1.5)


def normal_ratio_log_weights(rng: np.random.Generator, n: int, sigma_p: float) -> np.ndarray:
    """Draws x ~ N(0, 1) and log [N(x; 0, sigma_p^2) / N(x; 0, 1)]: the weights' tail is
    Pareto with shape k = 1 - 1/sigma_p^2 (P(w > t) ~ t^(-1/k))."""
    x = rng.standard_normal(n)
    return x, stats.norm.logpdf(x, scale=sigma_p) - stats.norm.logpdf(x), x


def test_pareto_smoothing_estimates_the_tail_and_cuts_the_error():
    rng = np.random.default_rng(0)
    sigma_p = 1.5  # k = 1 - 1/2.25 = 0.556: finite mean, infinite variance of the weights
    k_true = 1 - 1 / sigma_p**2
    ks, raw_err, smooth_err = [], [], []
    for _ in range(200):
        x, log_w, _ = normal_ratio_log_weights(rng, 1000, sigma_p)
        lw = torch.as_tensor(log_w)
        smoothed, k = pareto_smooth(lw)
        ks.append(k)
        target = sigma_p**2  # E_p[x^2]
        raw_err.append(float((torch.softmax(lw, 0).numpy() * x**2).sum()) - target)
        smooth_err.append(float((torch.exp(smoothed).numpy() * x**2).sum()) - target)
        assert float(torch.logsumexp(smoothed, 0)) == pytest.approx(0.0, abs=1e-12)
        # the tail is capped at the largest raw weight, the rest kept: the spread cannot grow
        spread = lambda v: float(v.max() - v.min())  # noqa: E731
        assert spread(smoothed) <= spread(lw) + 1e-9
    assert abs(np.median(ks) - k_true) < 0.12, np.median(ks)
    rmse = lambda e: float(np.sqrt(np.mean(np.square(e))))  # noqa: E731
    assert rmse(smooth_err) < 0.9 * rmse(raw_err), (rmse(smooth_err), rmse(raw_err))


def test_pareto_smoothing_leaves_light_tails_alone():
    rng = np.random.default_rng(1)
    log_w = torch.as_tensor(rng.uniform(-1, 0, 2000))  # bounded weights: k < 0
    smoothed, k = pareto_smooth(log_w)
    assert k < 0.2
    torch.testing.assert_close(torch.exp(smoothed), torch.softmax(log_w, 0), rtol=0.1, atol=0)
    draw = Mixture(0.2, psis=True).draw(model_for(two_species(False)), 500)
    assert math.isfinite(draw.pareto_k) and float(draw.weights.sum()) == pytest.approx(1.0)


def test_prefix_mixture_on_three_species():
    """Every prefix length k = 0..3 is a component: log rho normalised, draws follow it."""
    net = ReactionNetwork(
        {"A": 4, "B": 3, "C": 5},
        [Reaction({}, {"A": 1}, 1.0), Reaction({"A": 1}, {"B": 1}, 1.0),
         Reaction({"B": 1}, {"C": 1}, 1.0), Reaction({"C": 1}, {}, 1.0)],
        {"A": 1},
    )  # fmt: skip
    model = model_for(net, seed=2)
    proposal = PrefixMixture(0.6)
    states = box(net.limits)
    log_rho = proposal.log_prob(model, states)
    assert float(torch.logsumexp(log_rho, 0).exp()) == pytest.approx(1.0, abs=1e-12)
    q = torch.exp(model.log_prob(states)).detach()
    prefix = [torch.ones_like(q)]  # q(n_<k) by summing q over the later species
    for k in (1, 2):
        joint = q.reshape(*[int(m) for m in net.limits])
        marg = joint.sum(dim=tuple(range(k, 3)))
        prefix.append(marg[tuple(states[:, i] for i in range(k))])
    limits = [int(m) for m in net.limits]
    uniform = [1 / (limits[0] * limits[1] * limits[2]), 1 / (limits[1] * limits[2]), 1 / limits[2]]
    want = 0.4 * q + sum(0.2 * prefix[k] * uniform[k] for k in range(3))
    torch.testing.assert_close(torch.exp(log_rho), want, rtol=1e-10, atol=1e-14)
    draw = proposal.draw(model, 30000, torch.Generator().manual_seed(4))
    torch.testing.assert_close(draw.log_rho, proposal.log_prob(model, draw.states))
    keys = (draw.states[:, 0] * limits[1] + draw.states[:, 1]) * limits[2] + draw.states[:, 2]
    counts = np.bincount(keys.numpy(), minlength=states.shape[0]).astype(float)
    expected = 30000 * want.numpy()
    big = expected >= 5
    chi2 = (((counts[big] - expected[big]) ** 2) / expected[big]).sum()
    assert stats.chi2.sf(chi2, df=int(big.sum())) > 1e-4
