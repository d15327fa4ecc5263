"""The interface every VAN shares, and the masking that makes it exact.

An autoregressive model factorises q(n) = prod_i q(n_i | n_<i) over the L species. Every
conditional is a softmax over the counts 0..Mmax-1 in which counts >= M_i, and counts that leave
a conserved total unreachable by the later species, are masked to probability exactly 0 (the
tables of `nncme.conservation.FeasibilityTables`). So a model is normalised over the box and the
laws by construction, and a state beyond a limit or breaking a law has log_prob exactly -inf.

Subclasses supply the network itself through two paths:
    `_logits(states, context)`: teacher forcing, the raw logits of every species at once.
    `_start / _step_logits / _advance`: species by species, for sampling (with a cache).
The base class does the masking, the log-probabilities, the conditionals and the sampling loop.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
from torch import nn

from ..ops.masks import ConservationMask, allowed_counts, allowed_counts_all

__all__ = [
    "Anchor",
    "AutoregressiveModel",
    "ClosedFormScores",
    "ConditionalTransform",
    "ListedScorer",
    "Tempering",
    "frozen_copy",
    "inverse_cdf",
]


class ConditionalTransform(Protocol):
    """A change of each conditional, turning q into a proposal rho (DESIGN section 2).

    Called at species i with the masked log-conditionals of q, it returns those of rho; log rho
    of a whole sample is then the sum over species, exact and in one pass. Tempering and the
    diffusive kernel of enhanced sampling are such transforms.
    """

    def __call__(self, i: int, log_q: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """log_q, allowed: (B, M) masked log q(. | n_<i) and its mask -> (B, M) log rho, each
        row normalised over the allowed counts and -inf elsewhere."""
        ...


class ClosedFormScores(Protocol):
    """A model's score vectors O(n) = grad_theta log q(n) in closed form.

    Natural gradient and TDVP need O for a batch of states, or only its Gram matrix O O^T when
    they solve in sample space. Any model gets O from torch.func; a model that knows its own
    gradients returns one of these from `AutoregressiveModel.closed_form_scores` and the
    solvers use it instead (faster, and the Gram matrix without the (N, P) matrix O).
    Columns follow `named_parameters()` over the trainable parameters.
    """

    def vectors(self, states: torch.Tensor) -> torch.Tensor:
        """states (N, L) int64 in the box -> O (N, P)."""
        ...

    def gram(self, states: torch.Tensor) -> torch.Tensor:
        """states (N, L) int64 in the box -> O O^T (N, N)."""
        ...


class Tempering:
    """rho(n_i | n_<i) proportional to q(n_i | n_<i)^alpha (alpha < 1 widens the tails).

    The fused NADE sampler implements this transform in its kernel.
    """

    def __init__(self, alpha: float) -> None:
        if not (math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"alpha must be finite and > 0, got {alpha!r}")
        self.alpha = float(alpha)

    def __call__(self, i: int, log_q: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.alpha * log_q, dim=-1)

    def __repr__(self) -> str:
        return f"Tempering(alpha={self.alpha:g})"


def frozen_copy(model: nn.Module, into: nn.Module | None = None) -> nn.Module:
    """A copy of the model's parameters in a model that takes no gradients: `into` (an
    earlier copy, refreshed in place, so a step makes no new model) or a new deep copy."""
    if into is None:
        into = copy.deepcopy(model)
        for p in into.parameters():
            p.requires_grad_(False)
    into.load_state_dict(model.state_dict())
    return into


def inverse_cdf(log_p: torch.Tensor, allowed: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The first count whose cumulative probability exceeds u (as the NADE operator draws).

    Args:
        log_p: (B, M) normalised log-probabilities (-inf where not allowed).
        allowed: (B, M) or (1, M) bool.
        u: (B,) uniforms in [0, 1).

    Returns:
        (B,) int64 counts; a u beyond the rounded total gives the last allowed count.
    """
    M = log_p.shape[-1]
    cdf = torch.cumsum(torch.exp(log_p), dim=-1)
    idx = (cdf <= u.unsqueeze(-1)).sum(dim=-1)
    last = M - 1 - torch.argmax(allowed.flip(-1).to(torch.int8), dim=-1)
    return torch.minimum(idx, last.expand_as(idx))


# Offset profiles per anchor, mixed per sample (the spread around the anchored count changes
# with the context: a wider kernel at faster rates or larger counts).
ANCHOR_PROFILES = 4


class Anchor(NamedTuple):
    """A context column that holds the count of a species: column `column` of the model's
    context is 2 (a - lo) / (hi - lo) - 1 for the count a (`ContextSpace.encode`)."""

    species: int
    column: int
    lo: float
    hi: float


class AutoregressiveModel(nn.Module):
    """Base class of nncme's variational autoregressive networks.

    Args:
        limits: (L,) count limits M_i (counts 0..M_i-1).
        conservation: the network's feasibility tables (`network.feasibility`), or None.
        context_dim: width of an optional context vector (rates, initial counts, time) that
            conditions the model; 0 for none.
        anchors: context columns that hold a species' count (an amortised run's varying
            initial counts), as `Anchor`s. Each gives its species' logits a learned term in
            the offset n_i - a_i from the anchored count a_i: `ANCHOR_PROFILES` profiles over
            the offsets (`anchor_logits`, zero at the start), the first at weight 1, the
            others weighted per sample by gates linear in the context and in log max(a_i, 1)
            (`anchor_gate_w`, `anchor_gate_b`). A point mass at a_i, and the spread a short
            time moves it by, are then tables shared by every context, where the hidden
            layers would have to learn a sharp peak at each count as a function of the
            context.

    Attributes:
        num_species: L.  max_count: Mmax = max_i M_i, the width of every categorical.
        context_dim: D (0: unconditional).  num_anchors: A.
    """

    def __init__(
        self,
        limits: Sequence[int] | np.ndarray | torch.Tensor,
        *,
        conservation: Any | None = None,
        context_dim: int = 0,
        anchors: Sequence[Anchor] = (),
    ) -> None:
        super().__init__()
        limits_t = torch.as_tensor(np.asarray(limits, dtype=np.int64))
        if limits_t.dim() != 1 or limits_t.numel() == 0 or bool((limits_t < 1).any()):
            raise ValueError(f"limits must be a non-empty list of counts >= 1, got {limits!r}")
        if context_dim < 0:
            raise ValueError(f"context_dim must be >= 0, got {context_dim}")
        self.num_species = int(limits_t.numel())
        self.max_count = int(limits_t.max())
        self.context_dim = int(context_dim)
        self.register_buffer("limits", limits_t, persistent=False)
        L = self.num_species
        if conservation is not None and len(conservation.weights):
            tables = {
                "cons_weights": conservation.weights,
                "cons_totals": conservation.totals,
                "cons_law_meta": conservation.law_meta,
                "cons_group_meta": conservation.group_meta,
            }
            for name, value in tables.items():
                self.register_buffer(name, torch.as_tensor(np.asarray(value, np.int64)), False)
            table = torch.as_tensor(np.asarray(conservation.table, dtype=bool))
            self.register_buffer("cons_table", table, persistent=False)
            if self.cons_weights.shape[1] != L:
                raise ValueError("conservation tables do not match the number of species")
        else:
            self.register_buffer("cons_weights", torch.zeros(0, L, dtype=torch.int64), False)
            self.register_buffer("cons_totals", torch.zeros(0, dtype=torch.int64), False)
            self.register_buffer("cons_law_meta", torch.zeros(0, 4, dtype=torch.int64), False)
            self.register_buffer("cons_group_meta", torch.zeros(0, 2, dtype=torch.int64), False)
            self.register_buffer("cons_table", torch.zeros(0, dtype=torch.bool), False)
        self._init_anchors(anchors)

    def _init_anchors(self, anchors: Sequence[Anchor]) -> None:
        anchors = [Anchor(*a) for a in anchors]
        for a in anchors:
            if not (0 <= a.species < self.num_species and 0 <= a.column < self.context_dim):
                raise ValueError(f"{a} names no species or no context column of this model")
        self.num_anchors = len(anchors)
        self.anchored = [
            [k for k, a in enumerate(anchors) if a.species == i] for i in range(self.num_species)
        ]
        as_long = [[a.species for a in anchors], [a.column for a in anchors]]
        self.register_buffer("anchor_species", torch.tensor(as_long[0], dtype=torch.int64), False)
        self.register_buffer("anchor_column", torch.tensor(as_long[1], dtype=torch.int64), False)
        bounds = torch.tensor([[a.lo, a.hi] for a in anchors], dtype=torch.float64).reshape(-1, 2)
        self.register_buffer("anchor_bounds", bounds, False)
        if anchors:
            A, R, D = len(anchors), ANCHOR_PROFILES, self.context_dim
            offsets = 2 * self.max_count - 1  # n_i - a_i in -(Mmax-1) .. Mmax-1
            # R profiles over the offsets (zero: the model starts as the one without
            # anchors): profile 0 at weight 1 in every context, the others mixed in by gates
            # linear in the context, from small random weights (so that each gets a gradient)
            self.anchor_logits = nn.Parameter(torch.zeros(A, R, offsets))
            g = torch.Generator().manual_seed(A * 1000 + D)
            gate_w = torch.randn(A, R - 1, D + 1, generator=g, dtype=torch.float64) * 0.1
            self.anchor_gate_w = nn.Parameter(gate_w)
            self.anchor_gate_b = nn.Parameter(torch.zeros(A, R - 1, dtype=torch.float64))

    # ------------------------------------------------------------------ subclass hooks
    def _logits(self, states: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        """(B, L) int64 states -> (B, L, Mmax) raw logits of every species given its prefix."""
        raise NotImplementedError

    def _start(self, batch_size: int, context: torch.Tensor | None) -> Any:
        """The sampler's state before species 0 (e.g. NADE's running pre-activation)."""
        raise NotImplementedError

    def _step_logits(self, state: Any, i: int) -> torch.Tensor:
        """(B, Mmax) raw logits of species i from the sampler's state."""
        raise NotImplementedError

    def _advance(self, state: Any, i: int, counts: torch.Tensor) -> Any:
        """The sampler's state after species i took `counts` (B,) int64."""
        raise NotImplementedError

    # ------------------------------------------------------------------ properties
    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def num_laws(self) -> int:
        return int(self.cons_weights.shape[0])

    @property
    def cons(self) -> ConservationMask:
        return ConservationMask(
            self.cons_weights, self.cons_law_meta, self.cons_group_meta, self.cons_table
        )

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def closed_form_scores(self) -> ClosedFormScores | None:
        """The model's closed-form score vectors, or None (the solvers then use torch.func)."""
        return None

    # ------------------------------------------------------------------ inputs
    def _context(self, context: torch.Tensor | None, batch_size: int) -> torch.Tensor | None:
        """(B, D) context in the model's dtype, from (D,) or (B, D); None if unconditional."""
        if self.context_dim == 0:
            if context is not None:
                raise ValueError("this model takes no context (context_dim=0)")
            return None
        if context is None:
            raise ValueError(f"this model needs a context of width {self.context_dim}")
        context = torch.as_tensor(context, dtype=self.dtype, device=self.device)
        if context.dim() == 1:
            context = context.unsqueeze(0).expand(batch_size, -1)
        if context.shape != (batch_size, self.context_dim):
            raise ValueError(
                f"context must have shape ({self.context_dim},) or ({batch_size}, "
                f"{self.context_dim}), got {tuple(context.shape)}"
            )
        return context

    def _totals(self, totals: torch.Tensor | None, batch_size: int) -> torch.Tensor | None:
        """(B, C) int64 conserved totals (the network's unless overridden per sample)."""
        if self.num_laws == 0:
            return None
        if totals is None:
            return self.cons_totals.unsqueeze(0).expand(batch_size, -1)
        totals = torch.as_tensor(totals, dtype=torch.int64, device=self.device)
        if totals.dim() == 1:
            totals = totals.unsqueeze(0)
        return totals.expand(batch_size, self.num_laws)

    def _neighbour_scores(
        self,
        states: torch.Tensor,
        table: torch.Tensor,
        sites: torch.Tensor,
        steps: torch.Tensor,
        valid: torch.Tensor,
        rows_per_pass: Callable[[int], int],
        rest: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """What every model's `score_neighbours` shares: log q(n) (B,) and log q(n') (B, K).

        With j the first species where n' differs from n, species < j's conditionals are
        n's and species j's is n's read at n'_j (both from n's `table` (B, L, M) of log
        conditionals); `rest(b, tail, j)` scores species j+1.. of the neighbours of rows b
        whose counts from species j on are tail (R, L - j), the model's own way, in passes
        of at most `rows_per_pass(j)` rows. Neighbours outside the box (not `valid`) are -inf.
        """
        L = states.shape[1]
        own = table.gather(2, states.unsqueeze(-1)).squeeze(-1)  # (B, L)
        before = torch.cumsum(own, dim=1) - own  # sum over species < j
        out = torch.full(valid.shape, -math.inf, dtype=table.dtype, device=states.device)
        first = sites[:, 0]
        for j in torch.unique(first[first < L]).tolist():
            ks = torch.nonzero(first == j).squeeze(1)
            b, k = torch.nonzero(valid[:, ks], as_tuple=True)
            k = ks[k]
            rows = rows_per_pass(j)
            for lo in range(0, b.shape[0], rows):
                bb, kk = b[lo : lo + rows], k[lo : lo + rows]
                tail = _changed_tail(states, bb, sites[kk], steps[kk], j)
                value = before[bb, j] + table[bb, j, tail[:, 0]]
                out[bb, kk] = value if j == L - 1 else value + rest(bb, tail, j)
        return own.sum(dim=1), out

    def _within_limits(self, logits: torch.Tensor, first: int = 0) -> torch.Tensor:
        """Logits (B, T, M) of species first.. with the counts beyond each one's limit -inf."""
        counts = torch.arange(self.max_count, device=logits.device)
        beyond = counts >= self.limits[first : first + logits.shape[1]].unsqueeze(1)
        return logits.masked_fill(beyond, -math.inf)

    def _check_states(self, states: torch.Tensor) -> torch.Tensor:
        if states.dim() != 2 or states.shape[1] != self.num_species:
            raise ValueError(
                f"states must have shape (B, {self.num_species}), got {tuple(states.shape)}"
            )
        return states.to(device=self.device, dtype=torch.int64)

    def _anchor_terms(self, context: torch.Tensor | None) -> torch.Tensor | None:
        """(B, A, Mmax) the anchors' logit terms at every count m: sum_r gate_r(context)
        anchor_logits[a, r, m - a_count + Mmax - 1], from a (B, D) context (None for a model
        without anchors)."""
        if not self.num_anchors or context is None:
            return None
        M = self.max_count
        lo, hi = self.anchor_bounds.to(context.dtype).unbind(1)
        code = context.detach()[:, self.anchor_column]  # (B, A): 2 (a - lo) / (hi - lo) - 1
        count = torch.round(lo + (code + 1) / 2 * (hi - lo)).long().clamp(0, M - 1)
        m = torch.arange(M, device=context.device)
        offset = m.view(1, 1, M) - count.unsqueeze(-1) + (M - 1)  # (B, A, M)
        # the gates read the context and log max(a, 1): first-order propensities are
        # proportional to the count, so the log-probability of each offset moves with log a
        w = self.anchor_gate_w
        log_count = torch.log(count.clamp(min=1).to(context.dtype))  # (B, A)
        gate = torch.einsum("ard,bd->bar", w[..., :-1], context) + self.anchor_gate_b
        gate = gate + w[..., -1].unsqueeze(0) * log_count.unsqueeze(-1)
        gate = torch.cat([torch.ones_like(gate[..., :1]), gate], dim=-1)  # (B, A, R)
        table = torch.einsum("bar,aro->bao", gate, self.anchor_logits)  # (B, A, offsets)
        return table.gather(2, offset)

    # ------------------------------------------------------------------ teacher forcing
    def _masked_logits(
        self, states: torch.Tensor, context: torch.Tensor | None, totals: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked logits (B, L, M) (-inf where not allowed, 0 on dead rows) and dead (B, L)."""
        B = states.shape[0]
        context = self._context(context, B)
        logits = self._logits(states, context)
        anchor = self._anchor_terms(context)
        if anchor is not None:
            logits = logits.index_add(1, self.anchor_species, anchor)
        if not self.num_laws:  # limits only: one (L, M) mask broadcast over the batch
            dead = torch.zeros(states.shape, dtype=torch.bool, device=states.device)
            return self._within_limits(logits), dead
        allowed = allowed_counts_all(
            states, self.max_count, self.limits, self._totals(totals, B), self.cons
        )
        masked = logits.masked_fill(~allowed, -math.inf)
        dead = ~allowed.any(dim=-1)
        # a prefix that already broke a law leaves no count: keep its row NaN-free
        masked = masked.masked_fill(dead.unsqueeze(-1), 0.0)
        return masked, dead

    def conditionals(
        self,
        states: torch.Tensor,
        *,
        context: torch.Tensor | None = None,
        totals: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """log q(m | n_<i) of every count m of every species, given each state's prefix.

        Args:
            states: (B, L) int64; only the prefix n_<i matters for species i.
            context: (D,) or (B, D) for conditional models.
            totals: (C,) or (B, C) int64 conserved totals overriding the network's.

        Returns:
            (B, L, Mmax) log-probabilities, -inf at masked counts (whole rows -inf after a
            prefix that breaks a law).
        """
        states = self._check_states(states)
        masked, dead = self._masked_logits(states.clamp(min=0), context, totals)
        out = torch.log_softmax(masked, dim=-1)
        if self.num_laws:
            out = out.masked_fill(dead.unsqueeze(-1), -math.inf)
        return out

    def log_prob(
        self,
        states: torch.Tensor,
        *,
        context: torch.Tensor | None = None,
        totals: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """log q(n), differentiable in the parameters.

        Args:
            states: (B, L) integer counts (any, also outside the box).
            context, totals: as in `conditionals`.

        Returns:
            (B,) in the model's dtype; exactly -inf beyond a limit or off a conservation law.
        """
        states = self._check_states(states)
        M = self.max_count
        in_range = (states >= 0) & (states < M)
        idx = states.clamp(0, M - 1)
        masked, _ = self._masked_logits(idx, context, totals)
        picked = masked.gather(-1, idx.unsqueeze(-1)).squeeze(-1)  # (B, L), -inf if masked
        per_species = picked - torch.logsumexp(masked, dim=-1)
        per_species = per_species.masked_fill(~in_range, -math.inf)
        return per_species.sum(dim=-1)

    def scorer(self, states: torch.Tensor) -> ListedScorer:
        """log q at fixed states as a function of the current parameters, each distinct
        prefix run through the network once (`ListedScorer`): for states scored many times
        over (a fit summed over a listed support, `nncme.sampling.Enumerated`)."""
        return ListedScorer(self, states)

    @torch.no_grad()
    def _mask_choices(
        self, idx: torch.Tensor, chunk: int = 4096
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) how many counts each species' mask allows after each state's prefix, and
        (B, L) whether the state's own count is one of them (the masks of `_masked_logits`,
        in chunks of rows: a (B, L, Mmax) mask of a large support would not fit)."""
        counts = torch.arange(self.max_count, device=idx.device)
        choices, allowed = [], []
        for part in idx.split(chunk):
            if self.num_laws:
                totals = self._totals(None, part.shape[0])
                mask = allowed_counts_all(part, self.max_count, self.limits, totals, self.cons)
            else:
                mask = (counts < self.limits.unsqueeze(1)).expand(part.shape[0], -1, -1)
            choices.append(mask.sum(dim=-1))
            allowed.append(mask.gather(-1, part.unsqueeze(-1)).squeeze(-1))
        return torch.cat(choices), torch.cat(allowed)

    def forward(self, states: torch.Tensor, **kw: Any) -> torch.Tensor:
        """log_prob (so torch.func.functional_call can take per-sample gradients)."""
        return self.log_prob(states, **kw)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        *,
        context: torch.Tensor | None = None,
        totals: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw independent samples n ~ q.

        Args:
            batch_size: B.
            generator: a torch.Generator on the model's device (reproducible runs).
            context, totals: as in `conditionals`.

        Returns:
            states (B, L) int64 and log q(states) (B,), without gradient.
        """
        states, log_q, _ = self.sample_proposal(
            batch_size, None, generator, context=context, totals=totals
        )
        return states, log_q

    @torch.no_grad()
    def sample_proposal(
        self,
        batch_size: int,
        transform: ConditionalTransform | None = None,
        generator: torch.Generator | None = None,
        *,
        context: torch.Tensor | None = None,
        totals: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Draw from the proposal rho that `transform` makes of each conditional of q.

        Uniforms are drawn (B, L) from `generator` up front and each count is the inverse CDF
        of its conditional, the same rule as the fused NADE operator, so a seed reproduces a
        draw whichever implementation runs.

        Returns:
            states (B, L) int64, log q (B,) and log rho (B,) (equal to log q without transform).
        """
        uniforms = self._uniforms(batch_size, generator)
        return self._sample_loop(uniforms, transform, context, totals)

    def _uniforms(self, batch_size: int, generator: torch.Generator | None) -> torch.Tensor:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        return torch.rand(
            batch_size, self.num_species, generator=generator, dtype=self.dtype, device=self.device
        )

    def _sample_loop(
        self,
        uniforms: torch.Tensor,
        transform: ConditionalTransform | None,
        context: torch.Tensor | None,
        totals: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Species-by-species sampling through the subclass's incremental path."""
        B, L = uniforms.shape
        M = self.max_count
        remainders = self._totals(totals, B)
        cons = self.cons
        context = self._context(context, B)
        anchor = self._anchor_terms(context)
        state = self._start(B, context)
        samples = torch.zeros(B, L, dtype=torch.int64, device=self.device)
        log_q = torch.zeros(B, dtype=self.dtype, device=self.device)
        log_rho = torch.zeros_like(log_q)
        for i in range(L):
            logits = self._step_logits(state, i)
            for k in self.anchored[i]:
                logits = logits + anchor[:, k]
            allowed = allowed_counts(i, M, self.limits[i], remainders, cons).expand(B, M)
            logp = torch.log_softmax(logits.masked_fill(~allowed, -math.inf), dim=-1)
            logr = logp if transform is None else transform(i, logp, allowed)
            idx = inverse_cdf(logr, allowed, uniforms[:, i])
            lp = logp.gather(1, idx.unsqueeze(1)).squeeze(1)
            lr = logr.gather(1, idx.unsqueeze(1)).squeeze(1)
            if remainders is not None:
                # A dead end (no count allowed) happens only with inexact (split) law tables;
                # as in the NADE operator it gets count 0 and probability 0.
                dead = ~allowed.any(dim=1)
                idx = idx.masked_fill(dead, 0)
                lp = lp.masked_fill(dead, -math.inf)
                lr = lr.masked_fill(dead, -math.inf)
            samples[:, i] = idx
            log_q += lp
            log_rho += lr
            state = self._advance(state, i, idx)
            if remainders is not None:
                remainders = remainders - self.cons_weights[:, i].unsqueeze(0) * idx.unsqueeze(1)
        if transform is None:
            log_rho = log_q
        return samples, log_q, log_rho

    # ------------------------------------------------------------------ summaries
    @torch.no_grad()
    def marginals(
        self,
        num_samples: int,
        generator: torch.Generator | None = None,
        *,
        batch_size: int = 8192,
        context: torch.Tensor | None = None,
        totals: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Marginal distribution of every species, (L, Mmax).

        The marginal of species i is E_{n ~ q}[q(. | n_<i)], the mean over samples of the
        conditional (not a histogram of the samples): unbiased, exact for species 0, and of
        far lower variance than counting, most of all in the tails.
        """
        acc = torch.zeros(self.num_species, self.max_count, dtype=self.dtype, device=self.device)
        left = int(num_samples)
        while left > 0:
            b = min(batch_size, left)
            states, _ = self.sample(b, generator, context=context, totals=totals)
            acc += torch.exp(self.conditionals(states, context=context, totals=totals)).sum(0)
            left -= b
        return acc / int(num_samples)

    @torch.no_grad()
    def joint(self, max_states: int, *, batch_size: int = 65536) -> torch.Tensor | None:
        """The whole distribution over the box, (M_1, ..., M_L), or None if the box holds more
        than max_states states."""
        limits = self.limits.tolist()
        if math.prod(limits) > max_states:
            return None
        axes = [torch.arange(m, device=self.device) for m in limits]
        grid = torch.cartesian_prod(*axes) if len(axes) > 1 else axes[0].unsqueeze(1)
        grid = grid.reshape(-1, self.num_species)
        p = torch.cat([torch.exp(self.log_prob(c)) for c in grid.split(batch_size)])
        return p.reshape(limits)

    def extra_repr(self) -> str:
        return (
            f"species={self.num_species}, max_count={self.max_count}, laws={self.num_laws}, "
            f"context_dim={self.context_dim}, anchors={self.num_anchors}"
        )


class ListedScorer:
    """log q(n) at fixed states (B, L), as a function of the model's current parameters,
    for states scored many times over (a fit summed over a listed support).

    Species i's conditional depends only on the prefix n_<i, and a listed support holds
    every count of its later species after each prefix: a box's last species (often the
    widest) has its whole range after each of its prefixes, so running each distinct prefix
    through the network once and gathering its table of conditionals (`conditionals`) at the
    states that share it costs one row per prefix instead of one per state (the toggle
    switch's 25,600 states have 320 prefixes). Species after the last one with a choice
    (those a conservation law fixes, where the masks allow one count: log q(n_i | n_<i) is
    exactly 0 or -inf, whatever the parameters) end the prefixes. Where the prefixes are
    nearly as many as the states, the states are scored directly (`log_prob`). Equal to
    `model.log_prob(states)` in value and gradient.

    Attributes:
        rows: the rows one evaluation runs through the network (prefixes, or states).
    """

    def __init__(self, model: AutoregressiveModel, states: torch.Tensor) -> None:
        self.model = model
        self.states = states = model._check_states(states)
        M = model.max_count
        idx = states.clamp(0, M - 1)
        choices, allowed = model._mask_choices(idx)
        free = torch.nonzero((choices > 1).any(dim=0)).flatten()
        k = int(free[-1]) + 1 if free.numel() else 0  # species 0..k-1 have a choice
        # species k.. are fixed by their prefix: 0 where the count is the one allowed, -inf
        # where it is not (or beyond the box), the same at every parameter value
        off = ~allowed[:, k:].all(dim=1) | ((states < 0) | (states >= M)).any(dim=1)
        fixed = torch.zeros(states.shape[0], dtype=model.dtype, device=states.device)
        self.fixed = fixed.masked_fill(off, -math.inf)
        prefixes, self.inverse = self._prefixes(idx, k)
        self.shared = self._shares(prefixes.shape[0], k, states.shape[0])
        self.rows = prefixes.shape[0] if self.shared else states.shape[0]
        pad = idx.new_zeros(prefixes.shape[0], model.num_species - prefixes.shape[1])
        self.prefix_rows = torch.cat([prefixes, pad], dim=1)  # each row's later counts unused
        self.chosen = idx[:, :k]
        self.species = torch.arange(k, device=states.device)

    @staticmethod
    def _prefixes(idx: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The distinct prefixes n_<k-1 (U, k-1) of the states, and each state's (B,)."""
        if k <= 1:  # one table for every state: species 0 has no prefix
            return idx.new_zeros(1, 0), idx.new_zeros(idx.shape[0])
        return torch.unique(idx[:, : k - 1], dim=0, return_inverse=True)

    @classmethod
    def rows_for(cls, support: torch.Tensor) -> int:
        """The rows an evaluation over a model's whole support would run, from the support
        alone (before any model): species that take one count after each of their prefixes
        in it are the ones its conservation laws fix."""
        k = 0
        for i in range(1, support.shape[1] + 1):
            if cls._prefixes(support, i + 1)[0].shape[0] > cls._prefixes(support, i)[0].shape[0]:
                k = i  # species i - 1 takes more than one count after some prefix
        prefixes = cls._prefixes(support, k)[0].shape[0]
        return prefixes if cls._shares(prefixes, k, support.shape[0]) else support.shape[0]

    @staticmethod
    def _shares(prefixes: int, k: int, states: int) -> bool:
        """Whether an evaluation runs one row per prefix (species 0..k-1 have a choice, k > 0,
        and the prefixes are at most half the states) rather than one per state."""
        return k > 0 and 2 * prefixes <= states

    def __call__(self) -> torch.Tensor:
        """(B,) log q(states) at the model's current parameters, differentiable."""
        if not self.shared:
            return self.model.log_prob(self.states)
        k = self.chosen.shape[1]
        table = self.model.conditionals(self.prefix_rows)[:, :k]  # (U, k, Mmax)
        picked = table[self.inverse.unsqueeze(1), self.species.unsqueeze(0), self.chosen]
        return picked.sum(dim=1) + self.fixed


def _changed_tail(
    states: torch.Tensor, b: torch.Tensor, sites: torch.Tensor, steps: torch.Tensor, j: int
) -> torch.Tensor:
    """(R, L - j) the counts from species j on of the neighbours of rows b of states, each
    changed at its sites (R, W; ascending, first j, padded with L) by steps (R, W)."""
    L = states.shape[1]
    column = sites.clamp(max=L - 1)
    counts = states[b.unsqueeze(1), column] + steps  # (R, W) the neighbour's counts there
    tail = states[b, j:].clone()
    for w in range(sites.shape[1]):
        at = torch.nonzero(sites[:, w] < L, as_tuple=True)[0]
        tail[at, column[at, w] - j] = counts[at, w]
    return tail
