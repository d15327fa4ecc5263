"""NADE: the default VAN (neural autoregressive distribution estimator over species counts).

Parametrisation (exactly that of the `nade_sample` / `nade_log_prob` operators, so the fused
kernels plug in behind the same calls):

    a_0 = hidden0 = bias (+ context_w @ context)          (B, H)
    h_i = act(a_i),  logits_i = head_w[i] h_i + head_b[i]  (B, M)  masked, softmax -> q(n_i | n_<i)
    a_{i+1} = a_i + embed[i, n_i]

One embedding per species and count, one output head per species: L*M*H*2 + L*M + H parameters.
The teacher-forced pass is vectorised over species (gathered embeddings, a cumulative sum,
batched heads); sampling goes species by species through `nncme.ops.nade_sample` (the fused
kernel where one is built, else its reference).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import ops
from .base import (
    Anchor,
    AutoregressiveModel,
    ClosedFormScores,
    ConditionalTransform,
    Tempering,
)

__all__ = ["NADE", "NADEScores"]

ACTIVATIONS = {"sigmoid": 0, "tanh": 1}


class NADE(AutoregressiveModel):
    """Neural autoregressive distribution estimator over species counts.

    Args:
        limits: (L,) count limits M_i.
        hidden: width H of the hidden state.
        activation: "sigmoid" or "tanh".
        conservation: `network.feasibility`, or None.
        context_dim: width D of an optional context (0: none); it enters hidden0 linearly.
        anchors: context columns holding species' counts (`AutoregressiveModel`); a model
            with anchors scores and samples through the generic passes (the fused operators
            take no per-sample logit terms).
        dtype: float32 or float64.
        device: where the parameters live.
        seed: seed of the parameter initialisation (a private generator: the global RNG is
            left alone, so runs are reproducible).
        impl: "auto" | "fused" | "reference": which NADE operators sample (and score under
            no_grad); see `nncme.ops.resolve_impl`.
    """

    def __init__(
        self,
        limits: Sequence[int] | np.ndarray | torch.Tensor,
        *,
        hidden: int = 16,
        activation: str = "tanh",
        conservation: Any | None = None,
        context_dim: int = 0,
        anchors: Sequence[Anchor] = (),
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
        seed: int = 0,
        impl: str = "auto",
    ) -> None:
        super().__init__(
            limits, conservation=conservation, context_dim=context_dim, anchors=anchors
        )
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        if hidden < 1:
            raise ValueError(f"hidden must be >= 1, got {hidden}")
        if impl not in ops.IMPLS:
            raise ValueError(f"impl must be one of {ops.IMPLS}, got {impl!r}")
        self.hidden = int(hidden)
        self.activation = activation
        self.impl = impl
        L, M, H = self.num_species, self.max_count, self.hidden
        g = torch.Generator().manual_seed(int(seed))

        def init(*shape: int, scale: float) -> nn.Parameter:
            return nn.Parameter(torch.randn(*shape, generator=g, dtype=torch.float64) * scale)

        self.bias = nn.Parameter(torch.zeros(H, dtype=torch.float64))
        self.embed = init(L, M, H, scale=1.0 / math.sqrt(H))
        # Small heads: the untrained model is close to uniform over the allowed counts.
        self.head_w = init(L, M, H, scale=0.1 / math.sqrt(H))
        self.head_b = nn.Parameter(torch.zeros(L, M, dtype=torch.float64))
        if context_dim:
            self.context_w = init(H, context_dim, scale=1.0 / math.sqrt(context_dim))
        self.to(device=device, dtype=dtype)

    @property
    def activation_code(self) -> int:
        return ACTIVATIONS[self.activation]

    def _act(self, a: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(a) if self.activation == "sigmoid" else torch.tanh(a)

    def hidden0(self, batch_size: int, context: torch.Tensor | None) -> torch.Tensor:
        """(B, H) initial pre-activation: the bias plus the linear map of the context."""
        h0 = self.bias.unsqueeze(0).expand(batch_size, -1)
        if context is not None:
            h0 = h0 + context @ self.context_w.T
        return h0

    # ------------------------------------------------------------------ teacher forcing
    def _pre_activations(self, states: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        """a_i = hidden0 + sum_{j<i} embed[j, n_j] of every species (B, L, H), summed in the
        order the sampler adds them."""
        B, L = states.shape
        e = self.embed[torch.arange(L, device=states.device).unsqueeze(0), states]  # (B, L, H)
        h0 = self.hidden0(B, context).unsqueeze(1)
        return torch.cumsum(torch.cat([h0, e[:, :-1]], dim=1), dim=1)

    def _logits(self, states: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        h = self._act(self._pre_activations(states, context)).transpose(0, 1)  # (L, B, H)
        logits = torch.baddbmm(self.head_b.unsqueeze(1), h, self.head_w.transpose(1, 2))
        return logits.transpose(0, 1)  # (B, L, M)

    def log_prob(
        self,
        states: torch.Tensor,
        *,
        context: torch.Tensor | None = None,
        totals: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """log q(n) (B,); see `AutoregressiveModel.log_prob`.

        Without a gradient to track (torch.no_grad, or frozen parameters) and with a compiled
        `nade_log_prob` kernel for the device, the fused operator scores the states; otherwise
        the vectorised teacher-forced pass does (faster than the operator's per-species
        reference loop, and equal to it).
        """
        needs_grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())
        fused = ops.resolve_impl("nade_log_prob", self.device, self.impl) == "fused"
        if not needs_grad and fused and not self.num_anchors:
            states = self._check_states(states)
            B = states.shape[0]
            return ops.nade_log_prob(
                states,
                self.hidden0(B, self._context(context, B)).contiguous(),
                self.embed,
                self.head_w,
                self.head_b,
                self.limits,
                self.cons,
                self._op_totals(totals, B),
                self.activation_code,
                impl="fused",
            )
        return super().log_prob(states, context=context, totals=totals)

    # ------------------------------------------------------------------ neighbours
    @torch.no_grad()
    def score_neighbours(
        self,
        states: torch.Tensor,
        sites: torch.Tensor,
        steps: torch.Tensor,
        valid: torch.Tensor,
        *,
        elements: int = 1 << 23,
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """log q(n) (B,) and log q(n') (B, K) at neighbours n' that differ from n at a few
        species, reusing what they share with n (None for a model with a context, anchors
        or conservation laws: score the neighbours as states).

        With j the first species where n' differs from n, the conditionals of species < j
        are n's, and species j's is n's conditional read at n'_j; only species > j are
        scored anew, by the NADE operator started from the neighbour's own pre-activation
        a_{j+1}(n') = a_j(n) + embed[j, n'_j]: about half the work of scoring n' alone (for
        changes spread evenly over the species), and no (B, K, L) neighbour tensor.

        Args:
            states: (B, L) in-box counts.
            sites: (K, W) the species neighbour k changes, ascending, padded with L.
            steps: (K, W) n'_c - n_c at those species (0 at the padding).
            valid: (B, K) whether n' is in the box (the others come out -inf).
            elements: the most (rows x species) one pass holds.
        """
        if self.context_dim or self.num_anchors or self.num_laws:
            return None
        states = self._check_states(states)
        L = states.shape[1]
        table = torch.log_softmax(self._masked_logits(states, None, None)[0], dim=-1)  # (B,L,M)
        a = self._pre_activations(states, None)  # (B, L, H)
        return self._neighbour_scores(
            states, table, sites, steps, valid,
            lambda j: max(1, elements // max(1, L - j)),
            lambda b, tail, j: self._rest(a, b, tail, j),
        )  # fmt: skip

    def _rest(self, a: torch.Tensor, b: torch.Tensor, tail: torch.Tensor, j: int) -> torch.Tensor:
        """log q of species j+1.. of neighbours (rows b, counts from species j on: tail) by
        the NADE operator from the neighbour's own pre-activation a_j(n) + embed[j, n'_j]."""
        S = tail.shape[1] - 1
        hidden = a[b, j] + self.embed[j, tail[:, 0]]  # a_{j+1} = a_j + embed[j, n'_j]
        none = ops.ConservationMask(
            torch.zeros(0, S, dtype=torch.int64, device=a.device),
            torch.zeros(0, 4, dtype=torch.int64, device=a.device),
            torch.zeros(0, 2, dtype=torch.int64, device=a.device),
            torch.zeros(0, dtype=torch.bool, device=a.device),
        )
        return ops.nade_log_prob(
            tail[:, 1:].contiguous(), hidden.contiguous(), self.embed[j + 1 :],
            self.head_w[j + 1 :], self.head_b[j + 1 :], self.limits[j + 1 :], none,
            torch.zeros(b.shape[0], 0, dtype=torch.int64, device=a.device),
            self.activation_code, impl=self.impl,
        )  # fmt: skip

    # ------------------------------------------------------------------ sampling
    def _start(self, batch_size: int, context: torch.Tensor | None) -> torch.Tensor:
        return self.hidden0(batch_size, context)

    def _step_logits(self, state: torch.Tensor, i: int) -> torch.Tensor:
        return torch.addmm(self.head_b[i], self._act(state), self.head_w[i].T)

    def _advance(self, state: torch.Tensor, i: int, counts: torch.Tensor) -> torch.Tensor:
        return state + self.embed[i][counts]

    def _op_totals(self, totals: torch.Tensor | None, batch_size: int) -> torch.Tensor:
        t = self._totals(totals, batch_size)
        if t is None:
            return torch.zeros(batch_size, 0, dtype=torch.int64, device=self.device)
        return t.contiguous()

    def _sample_loop(
        self,
        uniforms: torch.Tensor,
        transform: ConditionalTransform | None,
        context: torch.Tensor | None,
        totals: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # q itself and tempered proposals go through the NADE operator (fused where built);
        # any other transform through the generic loop.
        if self.num_anchors or (transform is not None and not isinstance(transform, Tempering)):
            return super()._sample_loop(uniforms, transform, context, totals)
        B = uniforms.shape[0]
        alpha = 1.0 if transform is None else transform.alpha
        return ops.nade_sample(
            uniforms,
            self.hidden0(B, self._context(context, B)).contiguous(),
            self.embed,
            self.head_w,
            self.head_b,
            self.limits,
            self.cons,
            self._op_totals(totals, B),
            alpha,
            self.activation_code,
            impl=self.impl,
        )

    # ------------------------------------------------------------------ closed-form scores
    def closed_form_scores(self) -> ClosedFormScores | None:
        """NADE's score vectors in closed form (see `NADEScores`); None for a conditional
        NADE or one with frozen parameters, whose columns the closed form does not cover."""
        trainable = [n for n, p in self.named_parameters() if p.requires_grad]
        if self.context_dim or trainable != ["bias", "embed", "head_w", "head_b"]:
            return None
        return NADEScores(self)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, hidden={self.hidden}, activation={self.activation}"


class NADEScores:
    """O(n) = grad_theta log q(n) of an unconditional NADE, and O O^T, in closed form.

    With a_i the pre-activation at species i, h_i = act(a_i), p_i the masked conditional and
    g_i = onehot(n_i) - p_i (B, M):

        d log q / d head_b[i]       = g_i
        d log q / d head_w[i, m]    = g_i[m] h_i
        delta_i = act'(a_i) * (head_w[i]^T g_i)                     (B, H)
        d log q / d embed[i, n_i]   = sum_{j > i} delta_j            (zero at every other count)
        d log q / d bias            = sum_j delta_j

    The Gram matrix of states n and m follows block by block without forming O:

        bias:    from_here_0(n) . from_here_0(m)
        embed:   sum_i [n_i = m_i] after_i(n) . after_i(m)    (one embedding row per count)
        head_w:  sum_i (g_i(n) . g_i(m)) (h_i(n) . h_i(m))
        head_b:  sum_i  g_i(n) . g_i(m)

    which costs N^2 L (2H + M) instead of the N^2 P (P about 2 L M H) of O O^T, and holds no
    (N, P) matrix.
    """

    def __init__(self, model: NADE) -> None:
        self.model = model

    @torch.no_grad()
    def _factors(
        self, states: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """h (B, L, H), g (B, L, M), from_here (B, L, H) and after (B, L, H)."""
        model = self.model
        h = model._act(model._pre_activations(states, None))  # (B, L, H)
        masked, _ = model._masked_logits(states, None, None)
        g = -torch.softmax(masked, dim=-1)  # (B, L, M), 0 at masked counts
        g.scatter_add_(2, states.unsqueeze(-1), torch.ones_like(g[..., :1]))
        slope = 1 - h * h if model.activation == "tanh" else h * (1 - h)
        delta = slope * torch.einsum("blm,lmh->blh", g, model.head_w)  # (B, L, H)
        from_here = delta.flip(1).cumsum(1).flip(1)  # sum_{j >= i}
        after = torch.cat([from_here[:, 1:], torch.zeros_like(from_here[:, :1])], dim=1)
        return h, g, from_here, after

    @torch.no_grad()
    def vectors(self, states: torch.Tensor) -> torch.Tensor:
        """(N, L) states -> O (N, P), columns in `named_parameters()` order."""
        states = self.model._check_states(states)
        h, g, from_here, after = self._factors(states)
        B, L, M = g.shape
        H = h.shape[-1]
        embed = torch.zeros(B, L, M, H, dtype=h.dtype, device=h.device)
        embed.scatter_(2, states[:, :, None, None].expand(B, L, 1, H), after.unsqueeze(2))
        blocks = {
            "bias": from_here[:, 0],
            "embed": embed,
            "head_w": g.unsqueeze(-1) * h.unsqueeze(2),  # (B, L, M, H)
            "head_b": g,
        }
        return torch.cat([blocks[n].reshape(B, -1) for n, _ in self.model.named_parameters()], 1)

    @torch.no_grad()
    def gram(self, states: torch.Tensor) -> torch.Tensor:
        """(N, L) states -> K = O O^T (N, N), block by block (class docstring)."""
        states = self.model._check_states(states)
        h, g, from_here, after = self._factors(states)
        K = from_here[:, 0] @ from_here[:, 0].T
        # two (N, N) buffers reused for every species: fresh N^2 temporaries cost more in page
        # faults than the products themselves
        gg, other = torch.empty_like(K), torch.empty_like(K)
        for i in range(states.shape[1]):
            torch.mm(g[:, i], g[:, i].T, out=gg)
            torch.mm(h[:, i], h[:, i].T, out=other)
            K.addcmul_(gg, other.add_(1.0))
            torch.mm(after[:, i], after[:, i].T, out=other)
            same = states[:, i].unsqueeze(1) == states[:, i].unsqueeze(0)
            K.add_(other.masked_fill_(~same, 0.0))
        return K
