"""Closed-form start distributions: a point mass, and independent (product) marginals.

They share the models' sampling and scoring calls (`sample`, `log_prob`) so the trainer can
start from any of them, and add `support()`: the states of non-zero probability when there are
few enough to list, which lets the first time step be fitted exactly (see `nncme.evolve`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy import stats

__all__ = ["Delta", "Product"]


class Delta:
    """The point mass at one state: log_prob 0 there and -inf everywhere else.

    Args:
        state: (L,) counts.
        limits: (L,) count limits (the state must lie inside them).
        dtype, device: of the returned log-probabilities and states.
    """

    def __init__(
        self,
        state: Sequence[int] | np.ndarray,
        limits: Sequence[int] | np.ndarray,
        *,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> None:
        state_np = np.asarray(state, dtype=np.int64).reshape(-1)
        limits_np = np.asarray(limits, dtype=np.int64).reshape(-1)
        if state_np.shape != limits_np.shape:
            raise ValueError(f"state has {state_np.size} species, limits {limits_np.size}")
        if np.any(state_np < 0) or np.any(state_np >= limits_np):
            raise ValueError(f"state {state_np.tolist()} lies outside the limits")
        self.device = torch.device(device or "cpu")
        self.dtype = dtype
        self.state = torch.as_tensor(state_np, device=self.device)
        self.limits = torch.as_tensor(limits_np, device=self.device)
        self.num_species = int(state_np.size)

    def sample(
        self, batch_size: int, generator: torch.Generator | None = None, **_: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) copies of the state and log q = 0 (B,)."""
        states = self.state.unsqueeze(0).expand(batch_size, -1).clone()
        return states, torch.zeros(batch_size, dtype=self.dtype, device=self.device)

    def log_prob(self, states: torch.Tensor, **_: object) -> torch.Tensor:
        """(B, L) -> (B,): 0 at the state, -inf elsewhere."""
        hit = (states.to(self.device) == self.state).all(dim=-1)
        zero = torch.zeros(hit.shape, dtype=self.dtype, device=self.device)
        return zero.masked_fill(~hit, -math.inf)

    def support(self, max_states: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """The single state (1, L) and its log-probability (1,)."""
        return self.state.unsqueeze(0), torch.zeros(1, dtype=self.dtype, device=self.device)

    def marginals(self) -> torch.Tensor:
        """(L, Mmax) exact marginals (one-hot)."""
        M = int(self.limits.max())
        out = torch.zeros(self.num_species, M, dtype=self.dtype, device=self.device)
        out[torch.arange(self.num_species, device=self.device), self.state] = 1.0
        return out


class Product:
    """Independent species: q(n) = prod_i p_i(n_i), from per-species log-marginals.

    Args:
        log_marginals: (L, Mmax) log p_i(m), -inf beyond each species' support; each row must
            be normalised.
    """

    def __init__(self, log_marginals: torch.Tensor) -> None:
        lm = torch.as_tensor(log_marginals)
        if lm.dim() != 2 or not lm.is_floating_point():
            raise ValueError("log_marginals must be a floating (L, Mmax) tensor")
        total = torch.logsumexp(lm, dim=1)
        if not torch.allclose(total, torch.zeros_like(total), atol=1e-6):
            raise ValueError("each row of log_marginals must be normalised (logsumexp 0)")
        self.log_marginals = lm - total.unsqueeze(1)
        self.num_species, self.max_count = lm.shape
        self.dtype, self.device = lm.dtype, lm.device

    @staticmethod
    def poisson(
        means: Sequence[float] | np.ndarray,
        limits: Sequence[int] | np.ndarray,
        *,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> Product:
        """Independent Poisson marginals with the given means, truncated to the box and
        renormalised (a mean of 0 is the point mass at 0)."""
        means_np = np.asarray(means, dtype=np.float64).reshape(-1)
        limits_np = np.asarray(limits, dtype=np.int64).reshape(-1)
        if means_np.shape != limits_np.shape or np.any(means_np < 0):
            raise ValueError("means must be one non-negative value per species")
        M = int(limits_np.max())
        counts = np.arange(M)
        lm = np.full((means_np.size, M), -np.inf)
        for i, (mu, lim) in enumerate(zip(means_np, limits_np)):
            if mu == 0:
                lm[i, 0] = 0.0
                continue
            row = stats.poisson.logpmf(counts[:lim], mu)
            lm[i, :lim] = row - np.logaddexp.reduce(row)
        return Product(torch.as_tensor(lm, dtype=dtype, device=device))

    def sample(
        self, batch_size: int, generator: torch.Generator | None = None, **_: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) independent draws (inverse CDF of uniforms from `generator`) and log q (B,)."""
        u = torch.rand(
            batch_size, self.num_species, generator=generator, dtype=self.dtype, device=self.device
        )
        cdf = torch.cumsum(torch.exp(self.log_marginals), dim=1)  # (L, M)
        idx = (cdf.unsqueeze(0) <= u.unsqueeze(-1)).sum(dim=-1)  # (B, L)
        allowed = torch.isfinite(self.log_marginals)
        last = self.max_count - 1 - torch.argmax(allowed.flip(1).to(torch.int8), dim=1)
        states = torch.minimum(idx, last.unsqueeze(0))
        return states, self.log_prob(states)

    def log_prob(self, states: torch.Tensor, **_: object) -> torch.Tensor:
        """(B, L) -> (B,); -inf outside every species' support."""
        states = states.to(device=self.device, dtype=torch.int64)
        inside = (states >= 0) & (states < self.max_count)
        idx = states.clamp(0, self.max_count - 1)
        lp = self._gather(idx)
        return lp.masked_fill(~inside, -math.inf).sum(dim=1)

    def _gather(self, idx: torch.Tensor) -> torch.Tensor:
        species = torch.arange(self.num_species, device=self.device).unsqueeze(0)
        return self.log_marginals[species, idx]

    def support(self, max_states: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """All states of non-zero probability (N, L) and their log-probabilities (N,), or None
        when there are more than max_states."""
        finite = [torch.nonzero(torch.isfinite(row)).squeeze(1) for row in self.log_marginals]
        if math.prod(len(f) for f in finite) > max_states:
            return None
        states = torch.cartesian_prod(*finite) if len(finite) > 1 else finite[0].unsqueeze(1)
        states = states.reshape(-1, self.num_species)
        return states, self.log_prob(states)

    def marginals(self) -> torch.Tensor:
        """(L, Mmax) exact marginals."""
        return torch.exp(self.log_marginals)
