"""The VAN models: exact normalisation and masks, sampling against their own log_prob, both
implementations of every path (teacher forcing and species by species, operator and loop), and
the start distributions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from nncme import Reaction, ReactionNetwork, ops
from nncme.models import (
    NADE,
    Anchor,
    AutoregressiveModel,
    Delta,
    Product,
    Tempering,
    Transformer,
    build_model,
)
from nncme.sampling import Transformed, Vanilla, unique_states

DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: 2e-5, torch.float64: 1e-11}


def law_network() -> ReactionNetwork:
    """A <-> B (conserved A + B = 4 within limits 5 and 4), C born and dying independently."""
    return ReactionNetwork(
        {"A": 5, "B": 4, "C": 3},
        [
            Reaction({"A": 1}, {"B": 1}, 1.0),
            Reaction({"B": 1}, {"A": 1}, 2.0),
            Reaction({}, {"C": 1}, 1.0),
            Reaction({"C": 1}, {}, 1.0),
        ],
        {"A": 3, "B": 1},
    )


def fixed_last_network() -> ReactionNetwork:
    """C born and dying, then A <-> B with A + B = 4 conserved: the last species, B, has no
    choice once A is drawn."""
    return ReactionNetwork(
        {"C": 3, "A": 5, "B": 4},
        [
            Reaction({"A": 1}, {"B": 1}, 1.0),
            Reaction({"B": 1}, {"A": 1}, 2.0),
            Reaction({}, {"C": 1}, 1.0),
            Reaction({"C": 1}, {}, 1.0),
        ],
        {"A": 3, "B": 1},
    )


def single_network() -> ReactionNetwork:
    """One species, born and dying: every state shares the empty prefix."""
    return ReactionNetwork({"X": 9}, [Reaction({}, {"X": 1}, 2.0), Reaction({"X": 1}, {}, 1.0)], {})


def free_network() -> ReactionNetwork:
    """Three species with different limits and no conservation law."""
    return ReactionNetwork(
        {"X": 4, "Y": 2, "Z": 5},
        [Reaction({}, {"X": 1}, 1.0), Reaction({"X": 1}, {"Y": 1}, 1.0), Reaction({}, {"Z": 1}, 1)],
        {},
        conservation=[],
    )


def make(kind: str, net: ReactionNetwork, dtype: torch.dtype, device="cpu", **kw):
    """A model with randomised parameters (far from uniform), deterministic per seed."""
    model = build_model(kind, net, dtype=dtype, device=device, seed=3, **kw)
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p) * 0.8)
    return model


def box(net: ReactionNetwork, device="cpu") -> torch.Tensor:
    axes = [torch.arange(int(m), device=device) for m in net.limits]
    return torch.cartesian_prod(*axes).reshape(-1, net.L)


KINDS = ["nade", "transformer"]
NETS = {"law": law_network, "free": free_network}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("which", sorted(NETS))
def test_normalised_over_the_box_and_exact_zeros(kind, dtype, which, device):
    net = NETS[which]()
    model = make(kind, net, dtype, device)
    states = box(net, device)
    lp = model.log_prob(states).detach()
    assert lp.dtype == dtype and lp.shape == (states.shape[0],)
    assert abs(float(torch.logsumexp(lp.double(), 0))) < TOL[dtype] * 10
    keep = torch.ones(states.shape[0], dtype=torch.bool)
    for law in net.conservation_laws:
        keep &= torch.as_tensor(law.holds(states.cpu().numpy()))
    keep = keep.to(device)
    assert torch.isfinite(lp[keep]).all()
    assert torch.isneginf(lp[~keep]).all()  # off a law: probability exactly 0
    assert (~keep).any() == bool(net.conservation_laws)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_beyond_limits_is_minus_inf(kind, dtype, device):
    net = free_network()
    model = make(kind, net, dtype, device)
    bad = torch.tensor(
        [[4, 0, 0], [0, 2, 0], [0, 0, 5], [-1, 0, 0], [0, -3, 1], [100, 1, 1], [3, 1, 4]],
        device=device,
    )
    lp = model.log_prob(bad)
    assert torch.isneginf(lp[:-1]).all()
    assert torch.isfinite(lp[-1])  # the corner of the box is inside


def chi_square_pvalue(samples: torch.Tensor, log_p: torch.Tensor, states: torch.Tensor) -> float:
    """Pearson chi-square of sample counts over the listed states against N p (bins with
    expected count < 5 pooled), and the samples must all lie on listed states."""
    N, S = samples.shape[0], states.shape[0]
    limits = states.max(0).values + 1
    unique, inverse = unique_states(torch.cat([states, samples]), limits)
    assert unique.shape[0] == S, "a sample lies off the allowed states"
    where = torch.empty(S, dtype=torch.int64, device=states.device)
    where[inverse[:S]] = torch.arange(S, device=states.device)
    counts = np.bincount(where[inverse[S:]].cpu().numpy(), minlength=S).astype(float)
    expected = N * torch.exp(log_p.double()).cpu().numpy()
    small = expected < 5
    obs, exp = counts[~small], expected[~small]
    if small.any():
        obs, exp = np.append(obs, counts[small].sum()), np.append(exp, expected[small].sum())
    exp *= obs.sum() / exp.sum()
    return float(stats.chisquare(obs, exp).pvalue)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("which", sorted(NETS))
def test_samples_follow_own_log_prob(kind, dtype, which, device):
    net = NETS[which]()
    model = make(kind, net, dtype, device)
    states = box(net, device)
    lp = model.log_prob(states).detach()
    on = torch.isfinite(lp)
    g = torch.Generator(device).manual_seed(5)
    samples, log_q = model.sample(20000, g)
    assert samples.dtype == torch.int64 and samples.shape == (20000, net.L)
    assert log_q.dtype == dtype and not log_q.requires_grad
    torch.testing.assert_close(log_q, model.log_prob(samples).detach(), rtol=0, atol=TOL[dtype])
    assert chi_square_pvalue(samples, lp[on], states[on]) > 1e-4


@pytest.mark.parametrize("kind", KINDS)
def test_conditionals_and_marginals(kind):
    net = law_network()
    model = make(kind, net, torch.float64)
    states = box(net)
    lp = model.log_prob(states)
    on = torch.isfinite(lp)
    cond = model.conditionals(states[on])
    assert cond.shape == (int(on.sum()), net.L, model.max_count)
    # rows normalised, and log q(n) = sum_i log q(n_i | n_<i)
    torch.testing.assert_close(torch.logsumexp(cond, -1), torch.zeros(cond.shape[:2]).double())
    picked = cond.gather(-1, states[on].unsqueeze(-1)).squeeze(-1).sum(-1)
    torch.testing.assert_close(picked, lp[on])
    # averaged conditionals give the marginals (exact ones from the joint)
    p = torch.exp(lp)
    exact = torch.stack(
        [torch.bincount(states[:, i], p, minlength=model.max_count) for i in range(net.L)]
    )
    est = model.marginals(20000, torch.Generator().manual_seed(1))
    assert (est - exact).abs().max() < 0.015
    torch.testing.assert_close(est[0], exact[0])  # species 0: no prefix, exact
    joint = model.joint(1000)
    torch.testing.assert_close(joint.reshape(-1), p)


def test_nade_operator_paths_agree_with_vectorised_ones():
    net = law_network()
    model = make("nade", net, torch.float64)
    g = torch.Generator().manual_seed(2)
    u = model._uniforms(300, g)
    via_op = model._sample_loop(u, None, None, None)  # ops.nade_sample (fused or reference)
    generic = AutoregressiveModel._sample_loop(model, u, None, None, None)
    assert torch.equal(via_op[0], generic[0])
    torch.testing.assert_close(via_op[1], generic[1])
    states = box(net)
    B = states.shape[0]
    ref = ops.nade_log_prob(
        states,
        model.hidden0(B, None).contiguous(),
        model.embed,
        model.head_w,
        model.head_b,
        model.limits,
        model.cons,
        model._op_totals(None, B),
        model.activation_code,
        impl="reference",
    )
    torch.testing.assert_close(ref, model.log_prob(states).detach(), rtol=0, atol=1e-12)
    with torch.no_grad():  # the no-gradient path (the operator where a kernel exists)
        torch.testing.assert_close(model.log_prob(states), ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_tempered_proposal_samples_follow_rho(kind):
    net = free_network()
    model = make(kind, net, torch.float64)
    states = box(net)
    alpha = 0.5
    cond = model.conditionals(states)
    rho_cond = torch.log_softmax(alpha * cond, dim=-1)
    log_rho = rho_cond.gather(-1, states.unsqueeze(-1)).squeeze(-1).sum(-1).detach()
    g = torch.Generator().manual_seed(9)
    samples, log_q, lr = model.sample_proposal(20000, Tempering(alpha), g)
    torch.testing.assert_close(log_q, model.log_prob(samples).detach())
    idx = unique_states(torch.cat([states, samples]), model.limits)[1][states.shape[0] :]
    torch.testing.assert_close(lr, log_rho[idx])
    assert chi_square_pvalue(samples, log_rho, states) > 1e-4
    draw = Transformed(Tempering(alpha)).draw(model, 500, g)
    torch.testing.assert_close(draw.weights.sum(), torch.tensor(1.0).double())
    torch.testing.assert_close(draw.weights, torch.softmax(draw.log_q - draw.log_rho, 0))
    assert 1 < draw.ess < 500
    assert Vanilla().draw(model, 50, g).ess == pytest.approx(50)


@pytest.mark.parametrize("kind", KINDS)
def test_context_and_per_sample_totals(kind):
    net = law_network()
    model = build_model(kind, net, context_dim=3, seed=1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    states = box(net)
    c1, c2 = torch.tensor([1.0, 0.0, -1.0]).double(), torch.tensor([0.0, 2.0, 1.0]).double()
    lp1 = model.log_prob(states, context=c1).detach()
    lp2 = model.log_prob(states, context=c2.expand(states.shape[0], 3)).detach()
    assert abs(float(torch.logsumexp(lp1, 0))) < 1e-10
    assert abs(float(torch.logsumexp(lp2, 0))) < 1e-10
    assert (lp1 - lp2)[torch.isfinite(lp1)].abs().max() > 1e-3  # the context matters
    with pytest.raises(ValueError, match="context"):
        model.log_prob(states)
    # conserved totals per sample: A + B = 2 for half the batch, 4 for the other half
    totals = torch.tensor([[2]] * 100 + [[4]] * 100)
    s, lq = model.sample(200, torch.Generator().manual_seed(0), context=c1, totals=totals)
    assert torch.equal(s[:, 0] + s[:, 1], totals[:, 0])
    torch.testing.assert_close(lq, model.log_prob(s, context=c1, totals=totals).detach())
    lp3 = model.log_prob(states, context=c1, totals=torch.tensor([2])).detach()
    assert abs(float(torch.logsumexp(lp3, 0))) < 1e-10


@pytest.mark.parametrize("kind", KINDS)
def test_anchors_add_a_term_in_the_offset_from_the_anchored_count(kind):
    """Column 1 of the context holds C's count over 0..2 (code -1, 0, 1); column 2 holds A's
    over 1..4. At the start (zero tables) the model is the one without anchors; with tables
    it stays normalised on the laws, samples as it scores, and a large table entry at offset 0
    makes a point mass at each context's own count (what an amortised run's first fit
    needs from every start at once)."""
    net = law_network()
    anchors = [Anchor(2, 1, 0.0, 2.0), Anchor(0, 2, 1.0, 4.0)]
    model = build_model(kind, net, context_dim=3, seed=1, anchors=anchors)
    plain = build_model(kind, net, context_dim=3, seed=1)
    states = box(net)
    ctx = torch.tensor([0.3, 0.0, 1 / 3]).double()  # C anchored at 1, A at 3
    torch.testing.assert_close(
        model.log_prob(states, context=ctx).detach(), plain.log_prob(states, context=ctx).detach()
    )
    M = model.max_count
    with torch.no_grad():
        model.anchor_logits.normal_(generator=torch.Generator().manual_seed(2))
    lp = model.log_prob(states, context=ctx).detach()
    assert abs(float(torch.logsumexp(lp, 0))) < 1e-10
    assert (lp - plain.log_prob(states, context=ctx).detach())[torch.isfinite(lp)].abs().max() > 0.1
    s, lq = model.sample(300, torch.Generator().manual_seed(0), context=ctx)
    torch.testing.assert_close(lq, model.log_prob(s, context=ctx).detach())
    with torch.no_grad():
        model.anchor_logits.zero_()
        model.anchor_logits[:, 0, M - 1] = 40.0  # profile 0 (gate 1), offset 0
    for c_count, a_count in [(0, 1), (2, 4), (1, 3)]:
        code = torch.tensor([0.0, c_count - 1.0, 2 * (a_count - 1) / 3 - 1]).double()
        s, _ = model.sample(50, torch.Generator().manual_seed(1), context=code)
        assert (s[:, 2] == c_count).all() and (s[:, 0] == a_count).all()
    with pytest.raises(ValueError, match="names no species"):
        build_model(kind, net, context_dim=3, anchors=[Anchor(3, 0, 0.0, 2.0)])


def test_transformer_kv_cache_matches_teacher_forcing():
    net = free_network()
    model = make("transformer", net, torch.float64, layers=3, heads=2, hidden=8)
    u = model._uniforms(64, torch.Generator().manual_seed(4))
    s, lq, _ = model._sample_loop(u, None, None, None)
    torch.testing.assert_close(lq, model.log_prob(s).detach(), rtol=0, atol=1e-12)


@pytest.mark.cuda
def test_transformer_cuda_graph_sampler_matches_eager():
    net = law_network()
    model = make("transformer", net, torch.float32, device="cuda")
    u = model._uniforms(512, torch.Generator("cuda").manual_seed(0))
    with torch.no_grad():
        graphed = model._sample_loop(u, None, None, None)  # captured on first use
        again = model._sample_loop(u, None, None, None)  # replayed
        eager = AutoregressiveModel._sample_loop(model, u, None, None, None)
    assert torch.equal(graphed[0], eager[0]) and torch.equal(again[0], eager[0])
    torch.testing.assert_close(graphed[1], eager[1])


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_are_finite(kind):
    net = law_network()
    model = make(kind, net, torch.float32)
    s, _ = model.sample(64, torch.Generator().manual_seed(0))
    model.log_prob(s).sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("which", [*sorted(NETS), "fixed_last", "single"])
def test_scorer_equals_log_prob_in_value_and_gradient(kind, which):
    """The scorer shares each prefix's conditionals (`AutoregressiveModel.scorer`): the whole
    box (prefixes shared), states beyond the limits and off the laws (-inf), and a list with
    few states per prefix (scored directly) give log_prob's values and gradients."""
    extra = {"fixed_last": fixed_last_network, "single": single_network}
    net = extra[which]() if which in extra else NETS[which]()
    model = make(kind, net, torch.float64)
    g = torch.Generator().manual_seed(5)
    full = box(net)
    scattered = torch.randint(-1, 7, (40, net.L), generator=g)
    for states in (full, torch.cat([full, scattered]), full[torch.randperm(len(full))[:9]]):
        want = model.log_prob(states)
        got = model.scorer(states)()
        assert torch.equal(torch.isneginf(got), torch.isneginf(want))
        finite = torch.isfinite(want)
        torch.testing.assert_close(got[finite], want[finite], rtol=0, atol=1e-12)
        weights = torch.rand(int(finite.sum()), generator=g, dtype=torch.float64)
        grads = []
        for value in (want, got):
            model.zero_grad()
            (weights * value[finite]).sum().backward(retain_graph=True)
            grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
        assert len(grads[0]) == len(grads[1])
        for a, b in zip(*grads, strict=True):
            torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


def test_delta_and_product_starts():
    limits = [3, 4]
    d = Delta([1, 2], limits)
    s, lq = d.sample(5)
    assert torch.equal(s, torch.tensor([[1, 2]] * 5)) and torch.equal(lq, torch.zeros(5).double())
    lp = d.log_prob(torch.tensor([[1, 2], [0, 2], [1, 3]]))
    assert lp[0] == 0 and torch.isneginf(lp[1:]).all()
    p = Product.poisson([1.5, 0.0], limits)
    states, log_p = p.support(100)
    assert states.shape == (3, 2) and abs(float(torch.logsumexp(log_p, 0))) < 1e-12
    samples, lq = p.sample(20000, torch.Generator().manual_seed(0))
    assert (samples[:, 1] == 0).all()
    freq = torch.bincount(samples[:, 0], minlength=3).double() / 20000
    torch.testing.assert_close(freq, p.marginals()[0, :3], atol=0.015, rtol=0)
    assert p.support(2) is None
    with pytest.raises(ValueError, match="outside"):
        Delta([3, 0], limits)


def test_model_argument_errors():
    with pytest.raises(ValueError, match="activation"):
        NADE([3], activation="relu")
    with pytest.raises(ValueError, match="multiple of heads"):
        Transformer([3], hidden=10, heads=4)
    with pytest.raises(ValueError, match="model must be one of"):
        build_model("rnn", free_network())
    m = NADE([3, 2])
    with pytest.raises(ValueError, match=r"shape \(B, 2\)"):
        m.log_prob(torch.zeros(4, 3, dtype=torch.int64))


def test_unique_states_round_trip():
    rng = np.random.default_rng(0)
    limits = torch.tensor([3, 7, 2])
    s = torch.as_tensor(rng.integers(0, [3, 7, 2], size=(500, 3)))
    u, inv = unique_states(s, limits)
    assert torch.equal(u[inv], s) and u.shape[0] == torch.unique(s, dim=0).shape[0]
    big = torch.tensor([1 << 40] * 3)  # too many states for one int64 key
    u2, inv2 = unique_states(s, big)  # by hashes, in their order
    assert torch.equal(u2[inv2], s) and torch.equal(torch.unique(u2, dim=0), u)
