"""Proposals for the training samples, their importance weights, and state bookkeeping.

The trainer draws its states from a proposal rho and reweights every term of the loss, of the
gradient and of the Fisher / TDVP Gram matrices by self-normalised weights w_b proportional to
q(n_b) / rho(n_b) (DESIGN section 2). Every proposal computes log rho(n) exactly:

- `Vanilla`: rho = q, w = 1/B.
- `Mixture(eps)`: rho = (1 - eps) q + eps U with U uniform over the box (prod M_i states):
  rare states far from q's bulk are drawn at a floor rate eps / |box|.
  log rho = logaddexp(log(1 - eps) + log q, log eps - log |box|).
- `PrefixMixture(eps)`: rho = (1 - eps) q + eps/L sum_{k<L} q(n_<k) U(n_>=k): with probability
  eps a sample keeps q's counts of a prefix of the species (k of them, k uniform in 0..L-1) and
  draws the rest uniformly, so the later species' tails are drawn next to typical values of
  the earlier ones, not only at uniform corners of a huge box. q(n_<k) is q's own marginal of
  the prefix (autoregressive order), so log rho is exact from one pass of the conditionals.
- `Diffusive(width)`: each conditional convolved with a uniform kernel of half-width d,
  rho(m | n_<i) = sum_k q(k | n_<i) K_k(m), K_k uniform over the allowed counts within d of k:
  a sample of q displaced species by species, so still autoregressive, and log rho is the sum
  of the convolved conditionals along the sample (one pass).
- `Alpha(alpha)`: tempered conditionals rho(m | n_<i) proportional to q(m | n_<i)^alpha
  (alpha < 1 lifts the tails); the fused NADE sampler draws it in its kernel.

- `Enumerated(inner, support)`: not a draw but every state of a small support once, with the
  exact weights q(n) and rho(n) of `inner` (`Draw.counts`): the fits' sums become the
  objective's own expectations (the run uses it where the support holds at most
  `RunConfig.enumerate_states` states with at most `Enumerated.MAX_ROWS` distinct prefixes).

Weights. `Draw.weights` are softmax(log q - log rho) over the batch; `Draw.ess` = 1 / sum w^2
is logged. With `psis=True` the largest raw weights are Pareto-smoothed (Vehtari, Simpson,
Gelman, Yao & Gabry, "Pareto smoothed importance sampling", JMLR 25 (2024)): a generalised
Pareto distribution is fitted to the M = min(B/5, 3 sqrt(B)) largest weights and they are
replaced by its expected order statistics (capped at the largest raw weight), which trades a
little bias for much less variance when the weights are heavy-tailed; its shape estimate
k_hat (`Draw.pareto_k`) says how heavy: k_hat < 0.7 is reliable, larger means the proposal
and q differ too much for importance sampling to be trusted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from . import parallel
from .models.base import AutoregressiveModel, ConditionalTransform, ListedScorer, Tempering
from .ops.masks import allowed_counts_all

__all__ = [
    "PROPOSALS",
    "Alpha",
    "Diffusive",
    "Draw",
    "Enumerated",
    "Mixture",
    "PrefixMixture",
    "Proposal",
    "Transformed",
    "UniformKernel",
    "Vanilla",
    "distinct_over_ranks",
    "gather_distinct",
    "make_proposal",
    "member_rows",
    "pareto_smooth",
    "pool",
    "state_hash",
    "state_keys",
    "unique_states",
]


@dataclass
class Draw:
    """Training states drawn from a proposal.

    Attributes:
        states: (B, L) int64.
        log_q: (B,) log q(n) under the model (no gradient).
        log_rho: (B,) log rho(n) under the proposal.
        weights: (B,) self-normalised importance weights q/rho (they sum to 1 over this
            draw; over all ranks' draws once `pool`ed in a run of many processes).
        pareto_k: PSIS shape estimate of the weights' tail (nan without smoothing).
        log_mass: log sum exp(log q - log rho) over this draw, before normalisation.
        drawn: the number of states over all ranks once pooled (-1: this draw's own, B).
        counts: (B,) how often each state counts as drawn, summing to B: None (each once) for
            a random draw; rho(n) B for an `Enumerated` one, which lists every state once, so
            a sum over the draw "as drawn" (the log-variance objective's) is rho's exact
            expectation.
    """

    states: torch.Tensor
    log_q: torch.Tensor
    log_rho: torch.Tensor
    weights: torch.Tensor
    pareto_k: float = math.nan
    log_mass: float = 0.0
    drawn: int = -1
    counts: torch.Tensor | None = None

    @property
    def exhaustive(self) -> bool:
        """The draw lists the model's whole support (`Enumerated`): nothing lies beyond it."""
        return self.counts is not None

    def as_drawn(self) -> torch.Tensor:
        """(B,) each state's share of the draw as drawn, over all ranks' draws (1 / total
        each for a random draw, rho(n) for an exhaustive one)."""
        if self.counts is None:
            return torch.full_like(self.weights, 1.0 / self.total)
        return self.counts / self.total

    @property
    def total(self) -> int:
        """States drawn over all ranks once pooled, else this draw's B."""
        return self.states.shape[0] if self.drawn < 0 else self.drawn

    @property
    def ess(self) -> float:
        """Effective sample size 1 / sum w^2 of this draw (B for vanilla sampling)."""
        return float(1.0 / (self.weights**2).sum())


def pool(
    draw: Draw, weighted: Sequence[float] = (), plain: Sequence[float] = ()
) -> tuple[Draw, list[float], list[float]]:
    """A draw's weights normalised over all ranks' draws, and per-rank sums totalled, in one
    collective (`nncme.parallel`); with one process, all as given.

    Each rank's weights are its share exp(log_mass_r) / sum_r' exp(log_mass_r') of the
    whole, spread as its own normalised weights spread it.

    Args:
        weighted: sums of this rank's normalised weights times anything; they come back as
            the same sums under the pooled weights, over all ranks.
        plain: other sums, totalled over ranks.
    """
    if not parallel.active():
        return draw, list(weighted), list(plain)
    table = parallel.gather_table([draw.log_mass, draw.states.shape[0], *weighted, *plain])
    share = torch.exp(table[:, 0] - torch.logsumexp(table[:, 0], 0))  # (ranks,)
    drawn = round(float(table[:, 1].sum()))
    pooled = replace(draw, weights=draw.weights * float(share[parallel.rank()]), drawn=drawn)
    a = 2 + len(weighted)
    return pooled, (share[:, None] * table[:, 2:a]).sum(0).tolist(), table[:, a:].sum(0).tolist()


def gather_distinct(
    states: torch.Tensor, sums: torch.Tensor, limits: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rank's states merged into one distinct list on every rank, their columns summed.

    Args:
        states: (N, L) this rank's states.
        sums: (N, k) additive values per state (weights, weight times a value: a state that
            two ranks drew counts once, with its values added).
        limits: (L,) the box (for `unique_states`).

    Returns:
        (U, L) the distinct states of all ranks in `unique_states` order (the order one
        process would have) and (U, k) their summed columns; with one process, as given.
    """
    if not parallel.active():
        return states, sums
    states, sums = parallel.gather_rows(states, sums)
    unique, inverse = unique_states(states, limits)
    merged = sums.new_zeros(unique.shape[0], sums.shape[1]).index_add_(0, inverse, sums)
    return unique, merged


def distinct_over_ranks(states: torch.Tensor, limits: torch.Tensor) -> int:
    """How many distinct states all ranks' distinct `states` (N, L) make together (a state
    two ranks drew counts once): one int64 key per state travels, not the states; with one
    process, N."""
    if not parallel.active():
        return states.shape[0]
    keys = state_keys(states, limits)
    keys = state_hash(states) if keys is None else keys
    return int(torch.unique(torch.cat(parallel.gather_objects(keys.cpu()))).numel())


class Proposal:
    """Where training states come from. Subclasses implement `_draw` and `log_prob`.

    Args:
        psis: Pareto-smooth the largest importance weights (see the module docstring).
    """

    name = "proposal"

    def __init__(self, *, psis: bool = False) -> None:
        self.psis = bool(psis)

    def draw(
        self,
        model: AutoregressiveModel,
        batch_size: int,
        generator: torch.Generator | None = None,
    ) -> Draw:
        """B states from rho with log q, log rho and their weights."""
        states, log_q, log_rho = self._draw(model, batch_size, generator)
        return self._weigh(states, log_q, log_rho)

    def _draw(
        self, model: AutoregressiveModel, batch_size: int, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def log_prob(self, model: AutoregressiveModel, states: torch.Tensor) -> torch.Tensor:
        """log rho(n) of given states (B, L) -> (B,), exact."""
        raise NotImplementedError

    def _weigh(self, states: torch.Tensor, log_q: torch.Tensor, log_rho: torch.Tensor) -> Draw:
        # states q cannot hold (off a law, log q = -inf) have weight 0: drop them; a NaN stays,
        # for the update to report (a model gone non-finite)
        keep = ~torch.isneginf(log_q)
        if not keep.all():
            states, log_q, log_rho = states[keep], log_q[keep], log_rho[keep]
        log_w = log_q - log_rho
        k = math.nan
        if self.psis:
            log_w, k = pareto_smooth(log_w)
        mass = float(torch.logsumexp(log_w, 0))  # for `pool`
        return Draw(states, log_q, log_rho, torch.softmax(log_w, dim=0), k, mass)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(psis={self.psis})"


class Vanilla(Proposal):
    """rho = q: plain samples of the model, uniform weights."""

    name = "vanilla"

    def _draw(self, model, batch_size, generator):
        states, log_q = model.sample(batch_size, generator)
        return states, log_q, log_q

    @torch.no_grad()
    def log_prob(self, model: AutoregressiveModel, states: torch.Tensor) -> torch.Tensor:
        return model.log_prob(states)

    def _weigh(self, states, log_q, log_rho):
        B = log_q.shape[0]
        w = torch.full_like(log_q, 1.0 / B)
        return Draw(states, log_q, log_rho, w, log_mass=math.log(B) if B else -math.inf)


class Transformed(Proposal):
    """rho from a per-species transform of q's conditionals (e.g. `Tempering(alpha)`).

    log rho(n) = sum_i log transform(q(. | n_<i))[n_i], exact, computed in the sampling pass.
    """

    name = "transformed"

    def __init__(self, transform: ConditionalTransform, *, psis: bool = False) -> None:
        super().__init__(psis=psis)
        self.transform = transform

    def _draw(self, model, batch_size, generator):
        return model.sample_proposal(batch_size, self.transform, generator)

    @torch.no_grad()
    def log_prob(self, model: AutoregressiveModel, states: torch.Tensor) -> torch.Tensor:
        states = states.to(device=model.device, dtype=torch.int64)
        cond = model.conditionals(states)  # (B, L, M)
        total = torch.zeros(states.shape[0], dtype=cond.dtype, device=cond.device)
        for i in range(states.shape[1]):
            log_q = cond[:, i]
            allowed = log_q > -math.inf
            dead = ~allowed.any(dim=1)  # the prefix already broke a law: rho = 0 as q = 0
            log_r = self.transform(i, log_q.masked_fill(dead.unsqueeze(1), 0.0), allowed)
            picked = log_r.gather(1, states[:, i : i + 1]).squeeze(1)
            total += picked.masked_fill(dead, -math.inf)
        return total

    def __repr__(self) -> str:
        return f"Transformed({self.transform!r}, psis={self.psis})"


class Alpha(Transformed):
    """rho(m | n_<i) proportional to q(m | n_<i)^alpha: alpha < 1 widens every conditional."""

    name = "alpha"

    def __init__(self, alpha: float = 0.8, *, psis: bool = False) -> None:
        super().__init__(Tempering(alpha), psis=psis)


class UniformKernel:
    """The diffusive transform: q(. | n_<i) convolved with a uniform kernel of half-width d.

    rho(m) = allowed(m) * sum_{|m - k| <= d} q(k) / Z_k, with Z_k the number of allowed counts
    within d of k, so each count k of q spreads its mass evenly over the allowed counts near it
    and rho sums to 1. Sums of positive terms (a convolution, not differences of cumulative
    sums), so tail values keep their relative precision.
    """

    def __init__(self, width: int) -> None:
        if isinstance(width, bool) or not isinstance(width, int) or width < 0:
            raise ValueError(f"width must be an integer >= 0, got {width!r}")
        self.width = width

    def _window_sum(self, x: torch.Tensor) -> torch.Tensor:
        d = self.width
        kernel = torch.ones(1, 1, 2 * d + 1, dtype=x.dtype, device=x.device)
        return torch.nn.functional.conv1d(x.unsqueeze(1), kernel, padding=d).squeeze(1)

    def __call__(self, i: int, log_q: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        if self.width == 0:
            return log_q
        allowed = allowed.expand_as(log_q)
        a = allowed.to(log_q.dtype)
        z = self._window_sum(a).clamp(min=1.0)
        r = self._window_sum(torch.exp(log_q) / z)
        return torch.where(allowed & (r > 0), torch.log(r), torch.full_like(r, -math.inf))

    def __repr__(self) -> str:
        return f"UniformKernel(width={self.width})"


class Diffusive(Transformed):
    """Each conditional of q convolved with a uniform kernel of half-width `width` counts."""

    name = "diffusive"

    def __init__(self, width: int = 2, *, psis: bool = False) -> None:
        super().__init__(UniformKernel(width), psis=psis)


class UniformAllowed:
    """The transform of a conditional into the uniform law over its allowed counts (those the
    limits and conservation laws leave given the earlier counts)."""

    def __call__(self, i: int, log_q: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        allowed = allowed.expand_as(log_q)
        n = allowed.sum(dim=-1, keepdim=True).clamp(min=1).to(log_q.dtype)
        return torch.where(allowed, -torch.log(n), torch.full_like(log_q, -math.inf))

    def __repr__(self) -> str:
        return "UniformAllowed()"


class Mixture(Proposal):
    """rho = (1 - eps) q + eps U, U uniform over the box.

    Each of the B states comes from U with probability eps (independently), else from q.
    On a network with conservation laws U draws each count uniformly among those the laws
    leave given the earlier ones (`UniformAllowed`): the box's uniform draws would almost all
    fall off the laws, where q = 0 (dimerisation's 302 x 151 box holds 151 states on its
    law), and the tails would see none.
    """

    name = "mixture"

    def __init__(self, eps: float = 0.1, *, psis: bool = False) -> None:
        super().__init__(psis=psis)
        if not (math.isfinite(eps) and 0 <= eps <= 1):
            raise ValueError(f"eps must be in [0, 1], got {eps!r}")
        self.eps = float(eps)

    def _log_box(self, model: AutoregressiveModel) -> float:
        return float(torch.log(model.limits.double()).sum())

    @torch.no_grad()
    def _draw(self, model, batch_size, generator):
        device = model.device
        u = torch.rand(batch_size, generator=generator, device=device, dtype=model.dtype)
        m = int((u < self.eps).sum())  # how many of the B come from U
        parts, log_qs = [], []
        if m < batch_size:
            states, log_q = model.sample(batch_size - m, generator)
            parts.append(states)
            log_qs.append(log_q)
        if m and model.num_laws:
            uniform, log_q, _ = model.sample_proposal(m, UniformAllowed(), generator)
            parts.append(uniform)
            log_qs.append(log_q)
        elif m:
            uniform = self._uniform_box(model, m, generator)
            parts.append(uniform)
            log_qs.append(model.log_prob(uniform))
        states, log_q = torch.cat(parts), torch.cat(log_qs)
        return states, log_q, self._log_rho(model, log_q, states)

    @staticmethod
    def _uniform_box(
        model: AutoregressiveModel, m: int, generator: torch.Generator | None
    ) -> torch.Tensor:
        """(m, L) states drawn uniformly over the box."""
        r = torch.rand(m, model.num_species, generator=generator, device=model.device)
        return torch.minimum((r * model.limits).long(), model.limits - 1)

    def _log_uniform(self, model: AutoregressiveModel, states: torch.Tensor) -> torch.Tensor:
        """log U(n) (B,): -log |box|, or with conservation laws -sum_i log (counts allowed to
        species i given n_<i), -inf off the laws."""
        B = states.shape[0]
        if not model.num_laws:
            return torch.full((B,), -self._log_box(model), dtype=model.dtype, device=model.device)
        states = states.to(device=model.device, dtype=torch.int64)
        inside = ((states >= 0) & (states < model.limits)).all(dim=1)
        # each distinct state once: a draw repeats its states many times
        idx, inverse = unique_states(torch.where(inside.unsqueeze(1), states, 0), model.limits)
        totals = model.cons_totals.unsqueeze(0).expand(idx.shape[0], -1)
        allowed = allowed_counts_all(idx, model.max_count, model.limits, totals, model.cons)
        on_law = allowed.gather(2, idx.unsqueeze(2)).squeeze(2).all(dim=1)
        log_u = -torch.log(allowed.sum(dim=-1).clamp(min=1).to(model.dtype)).sum(dim=-1)
        return log_u.masked_fill(~on_law, -math.inf)[inverse].masked_fill(~inside, -math.inf)

    def _log_rho(
        self, model: AutoregressiveModel, log_q: torch.Tensor, states: torch.Tensor
    ) -> torch.Tensor:
        if self.eps == 0:
            return log_q
        uniform = math.log(self.eps) + self._log_uniform(model, states).to(log_q.dtype)
        if self.eps == 1:
            return uniform
        return torch.logaddexp(log_q + math.log1p(-self.eps), uniform)

    @torch.no_grad()
    def log_prob(self, model: AutoregressiveModel, states: torch.Tensor) -> torch.Tensor:
        return self._log_rho(model, model.log_prob(states), states)

    def __repr__(self) -> str:
        return f"Mixture(eps={self.eps:g}, psis={self.psis})"


class PrefixMixture(Mixture):
    """rho = (1 - eps) q + (eps / L) sum_{k=0}^{L-1} q(n_<k) U(n_>=k).

    Component k keeps q's counts of the first k species (in the model's order) and draws the
    others uniformly over their limits; k = 0 is the uniform box of `Mixture`. A tail of a late
    species conditional on typical earlier ones, which the uniform box reaches only at rate
    eps / |box|, is drawn at about eps / (L M_i) per count. Exact: q(n_<k) is the product of
    q's first k conditionals. States off a conservation law have q = 0 and are dropped.
    """

    name = "prefix_mixture"

    @torch.no_grad()
    def _draw(self, model, batch_size, generator):
        device, L = model.device, model.num_species
        states, log_q = model.sample(batch_size, generator)
        u = torch.rand(batch_size, generator=generator, device=device, dtype=model.dtype)
        mixed = u < self.eps
        if mixed.any():  # component k, uniform in 0..L-1: species k.. drawn uniformly
            m = int(mixed.sum())
            k = torch.randint(L, (m,), generator=generator, device=device)
            uniform = self._uniform_box(model, m, generator)
            later = torch.arange(L, device=device) >= k.unsqueeze(1)
            states[mixed] = torch.where(later, uniform, states[mixed])
            log_q = log_q.clone()
            log_q[mixed] = model.log_prob(states[mixed])
        return states, log_q, self.log_prob(model, states)

    @torch.no_grad()
    def log_prob(self, model: AutoregressiveModel, states: torch.Tensor) -> torch.Tensor:
        states = states.to(device=model.device, dtype=torch.int64)
        L = states.shape[1]
        cond = model.conditionals(states)  # (B, L, M)
        picked = cond.gather(2, states.clamp(0, cond.shape[2] - 1).unsqueeze(2)).squeeze(2)
        log_u = -torch.log(model.limits.to(cond.dtype))  # (L,) log 1/M_i
        zero = torch.zeros_like(picked[:, :1])
        # prefix[:, k] = log q(n_<k), suffix[k] = sum_{i>=k} log 1/M_i, for k = 0..L
        prefix = torch.cat([zero, torch.cumsum(picked, dim=1)], dim=1)
        suffix = torch.flip(torch.cumsum(torch.flip(log_u, [0]), 0), [0])
        suffix = torch.cat([suffix, suffix.new_zeros(1)])
        log_pi = torch.full((L + 1,), math.log(self.eps / L) if self.eps > 0 else -math.inf,
                            dtype=cond.dtype, device=cond.device)  # fmt: skip
        log_pi[L] = math.log1p(-self.eps) if self.eps < 1 else -math.inf
        out = torch.logsumexp(log_pi + prefix + suffix, dim=1)
        outside = ((states < 0) | (states >= model.limits)).any(dim=1)
        return out.masked_fill(outside, -math.inf)

    def __repr__(self) -> str:
        return f"PrefixMixture(eps={self.eps:g}, psis={self.psis})"


class Enumerated(Proposal):
    """Every state of the model's support, each once: a proposal's exact expectation.

    Where the model's support can be listed (a box, or the states on its conservation laws,
    of at most `enumerate_states` states whose distinct prefixes are few: MAX_ROWS), a fit
    need not sample it: an evaluation over every state costs one pass of the network per
    prefix (`ListedScorer`), less than a batch of draws.
    The draw lists the whole support with the importance weights q(n) (the reverse KL and
    its gradient become exact sums) and, as `Draw.counts`, rho(n) B of the proposal it
    stands for (so the log-variance objective's sum "as drawn" is its exact expectation under
    rho, the uniform share of a mixture included). No sampling noise: a fit's loss and
    gradient are those of the objective itself, its stopping rule reads the true residual,
    and the tails are fitted wherever the objective weighs them, not only where a draw
    happened to land.

    Args:
        inner: the proposal whose expectation the draw is (its `log_prob` gives rho).
        support: (N, L) the model's support, every state where q can be > 0 (the caller
            checks it: `covers`).
    """

    name = "enumerated"
    # A run sums over a support whose evaluation runs at most this many rows through the
    # network (`ListedScorer.rows`: one per distinct prefix; 1 for one species, 320 for the
    # toggle switch's box of 25,600 states, 2,304 for the repressilator's 110,592); supports
    # that share few prefixes (a last species with few counts: cascade10's 12,870 of 24,310)
    # cost about a row per state, hundreds of ms an evaluation, and are drawn
    MAX_ROWS = 4096

    def __init__(self, inner: Proposal, support: torch.Tensor) -> None:
        super().__init__(psis=False)  # exact weights: nothing to smooth
        self.inner, self.support = inner, support
        self._scorer: tuple[tuple, ListedScorer] | None = None

    def draw(
        self,
        model: AutoregressiveModel,
        batch_size: int,
        generator: torch.Generator | None = None,
    ) -> Draw:
        with torch.no_grad():
            states = self.support.to(model.device)
            log_q = model.log_prob(states)
            keep = ~torch.isneginf(log_q)  # a model that masks more states than listed
            if not keep.all():
                states, log_q = states[keep], log_q[keep]
            log_rho = self.inner.log_prob(model, states).to(log_q.dtype)
        B = states.shape[0]
        counts = torch.softmax(log_rho, dim=0) * B
        return Draw(
            states, log_q, log_rho, torch.softmax(log_q, dim=0),
            log_mass=float(torch.logsumexp(log_q, 0)), counts=counts,
        )  # fmt: skip

    @torch.no_grad()
    def log_prob(self, model: AutoregressiveModel, states: torch.Tensor) -> torch.Tensor:
        return self.inner.log_prob(model, states)

    def scorer(self, model: AutoregressiveModel, states: torch.Tensor) -> ListedScorer:
        """`model.scorer(states)` for a draw's states, kept while the model and the states
        are the same (every fit of a run sums over the same support, and finding its
        prefixes reads every state's masks)."""
        key = (id(model), states.data_ptr(), tuple(states.shape), states.device)
        if self._scorer is None or self._scorer[0] != key:
            self._scorer = (key, model.scorer(states))
        return self._scorer[1]

    @torch.no_grad()
    def covers(self, model: AutoregressiveModel, tolerance: float = 1e-9) -> bool:
        """Whether the listed states hold all of q's mass (to `tolerance`): the support is
        the model's whole support, not part of it."""
        log_q = model.log_prob(self.support.to(model.device))
        return abs(float(torch.exp(log_q.double()).sum()) - 1.0) <= tolerance

    def __repr__(self) -> str:
        return f"Enumerated({self.inner!r}, states={self.support.shape[0]})"


PROPOSALS: dict[str, type[Proposal]] = {
    "vanilla": Vanilla,
    "mixture": Mixture,
    "prefix_mixture": PrefixMixture,
    "diffusive": Diffusive,
    "alpha": Alpha,
}


def make_proposal(
    name: str,
    *,
    eps: float = 0.1,
    width: int = 2,
    alpha: float = 0.8,
    psis: bool = False,
) -> Proposal:
    """A proposal by name (`PROPOSALS`) with its one parameter.

    Args:
        name: "vanilla" | "mixture" | "prefix_mixture" | "diffusive" | "alpha".
        eps: the (prefix) mixture's uniform fraction.  width: the diffusive kernel's half-width.
        alpha: the tempering exponent.  psis: Pareto-smooth the weights.
    """
    if name == "vanilla":
        return Vanilla(psis=psis)
    if name == "mixture":
        return Mixture(eps, psis=psis)
    if name == "prefix_mixture":
        return PrefixMixture(eps, psis=psis)
    if name == "diffusive":
        return Diffusive(width, psis=psis)
    if name == "alpha":
        return Alpha(alpha, psis=psis)
    raise ValueError(f"proposal must be one of {sorted(PROPOSALS)}, got {name!r}")


# ---------------------------------------------------------------------- Pareto smoothing
def pareto_smooth(log_w: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Pareto-smoothed log importance weights (PSIS, Vehtari et al. 2024).

    Args:
        log_w: (B,) unnormalised log weights (finite).

    Returns:
        smoothed log weights (B,), normalised (logsumexp 0), and k_hat, the fitted shape of the
        tail (nan when the tail has 5 or fewer weights: nothing is smoothed then).
    """
    x = log_w.detach().cpu().double().numpy().copy()
    n = x.size
    x -= x.max()
    tail = math.ceil(min(0.2 * n, 3 * math.sqrt(n)))
    k = math.nan
    if n > 5 and tail > 4:
        order = np.argsort(x)
        cutoff = max(x[order[-tail - 1]], math.log(np.finfo(float).tiny))
        idx = np.nonzero(x > cutoff)[0]
        if idx.size > 4:
            tail_x = x[idx]
            sort = np.argsort(tail_x)
            excess = np.exp(tail_x[sort]) - math.exp(cutoff)
            k, sigma = _gpd_fit(excess)
            if math.isfinite(k) and sigma > 0:
                probs = (np.arange(idx.size) + 0.5) / idx.size
                smooth = _gpd_quantile(probs, k, sigma) + math.exp(cutoff)
                new = np.empty_like(tail_x)
                new[sort] = np.log(smooth)
                x[idx] = np.minimum(new, 0.0)  # never above the largest raw weight
    x -= np.logaddexp.reduce(x)
    return torch.as_tensor(x, dtype=log_w.dtype, device=log_w.device), float(k)


def _gpd_fit(x: np.ndarray) -> tuple[float, float]:
    """Generalised Pareto fit to sorted exceedances (Zhang & Stephens 2009, with the weakly
    informative prior on k of Vehtari et al.); returns (k, sigma)."""
    n = x.size
    m = 30 + int(math.sqrt(n))
    b = 1 - np.sqrt(m / (np.arange(1, m + 1) - 0.5))
    b /= 3 * x[int(n / 4 + 0.5) - 1]
    b += 1 / x[-1]
    k = np.log1p(-b[:, None] * x).mean(axis=1)
    profile = n * (np.log(-(b / k)) - k - 1)
    weights = 1 / np.exp(profile - profile[:, None]).sum(axis=1)
    real = weights >= 10 * np.finfo(float).eps
    weights, b = weights[real], b[real]
    weights /= weights.sum()
    b_post = float((b * weights).sum())
    k_post = float(np.log1p(-b_post * x).mean())
    sigma = -k_post / b_post
    k_post = (n * k_post + 10 * 0.5) / (n + 10)
    return k_post, sigma


def _gpd_quantile(p: np.ndarray, k: float, sigma: float) -> np.ndarray:
    if abs(k) < np.finfo(float).eps:
        return -sigma * np.log1p(-p)
    return sigma * np.expm1(-k * np.log1p(-p)) / k


def state_keys(states: torch.Tensor, limits: torch.Tensor) -> torch.Tensor | None:
    """One int64 key per in-box state (mixed radix, last species fastest), or None when the
    box has 2^62 states or more."""
    sizes = limits.tolist()
    if sum(math.log2(max(m, 1)) for m in sizes) >= 62:
        return None
    strides = [1] * len(sizes)
    for i in range(len(sizes) - 2, -1, -1):
        strides[i] = strides[i + 1] * sizes[i + 1]
    return (states * torch.tensor(strides, dtype=torch.int64, device=states.device)).sum(dim=1)


# Two polynomial hashes modulo this prime make a 62-bit key of a state in a box too large for
# `state_keys` (a lattice of many sites): a pair of distinct states share both with probability
# about 2^-62, and `unique_states` checks every row against its representative anyway.
_HASH_PRIME = 2**31 - 1
_HASH_SEEDS = (0x5EED_0001, 0x5EED_0002, 0x5EED_0003, 0x5EED_0004)
_multipliers: dict[tuple[int, int, str], torch.Tensor] = {}


def _hash(states: torch.Tensor, seed: int) -> torch.Tensor:
    """sum_i (n_i c_i mod p) mod p with fixed random c_i in [1, p): (N, L) -> (N,) int64."""
    key = (seed, states.shape[1], str(states.device))
    if key not in _multipliers:
        g = torch.Generator().manual_seed(seed + states.shape[1])
        c = torch.randint(1, _HASH_PRIME, (states.shape[1],), generator=g, dtype=torch.int64)
        _multipliers[key] = c.to(states.device)
    c = _multipliers[key]
    top = int(states.max()) + 1 if states.numel() else 1  # (an empty draw: one rank's)
    if states.shape[1] * top >= 2**31:  # reduce each term: no overflow
        return (states * c).remainder_(_HASH_PRIME).sum(dim=1) % _HASH_PRIME
    # the sum stays below 2^62; an int64 matrix-vector product where the device has one
    return (states @ c if states.device.type == "cpu" else (states * c).sum(dim=1)) % _HASH_PRIME


def state_hash(states: torch.Tensor, *, second: bool = False) -> torch.Tensor:
    """A 62-bit int64 hash of each state (N, L) -> (N,); `second` gives an independent one
    (two hashes agree on distinct states with probability about 2^-124)."""
    a, b = _HASH_SEEDS[2:] if second else _HASH_SEEDS[:2]
    return _hash(states, a) * _HASH_PRIME + _hash(states, b)


def member_rows(rows: torch.Tensor, table: torch.Tensor, limits: torch.Tensor) -> torch.Tensor:
    """Whether each of rows (N, L) is one of table's (M, L) rows (in-box states) -> (N,) bool."""
    distinct, inverse = unique_states(torch.cat([rows, table]), limits)
    present = torch.zeros(distinct.shape[0], dtype=torch.bool, device=inverse.device)
    present[inverse[rows.shape[0] :]] = True
    return present[inverse[: rows.shape[0]]]


def unique_states(states: torch.Tensor, limits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct rows of a batch of in-box states, and where each row went.

    Training batches repeat states many times (a distribution concentrated on few states draws
    them again and again), so scoring each distinct state once saves most of the work. When
    the box has fewer than 2^62 states each state is packed into one int64 key, which makes
    this a 1-D sort (rows come out in key order); otherwise by a 62-bit hash of each row
    (`state_hash`, also a 1-D sort, in hash order), every row then checked against the row
    its key picked by a second, independent hash, and rows compared directly where two
    states shared a key.

    Args:
        states: (N, L) int64 with 0 <= n_i < limits_i.
        limits: (L,) int64.

    Returns:
        unique (U, L) int64 and inverse (N,) int64 with unique[inverse] == states.
    """
    if states.shape[0] == 0:
        return states, torch.zeros(0, dtype=torch.int64, device=states.device)
    keys = state_keys(states, limits)
    hashed = keys is None
    if hashed:
        keys = state_hash(states)
    first = torch.zeros_like(keys)
    ukeys, inverse = torch.unique(keys, return_inverse=True)
    first.scatter_(0, inverse, torch.arange(keys.shape[0], device=keys.device))
    picked = first[: ukeys.shape[0]]
    if hashed:  # every row against the row its key picked, by a second, independent hash
        check = state_hash(states, second=True)
        if not torch.equal(check[picked][inverse], check):  # two states shared a hash
            return torch.unique(states, dim=0, return_inverse=True)
    return states[picked], inverse
