"""Proposals for the training samples, their importance weights, and state bookkeeping.

The trainer draws its states from a proposal rho and reweights every term of the loss and of the
gradient by self-normalised weights w_b proportional to q(n_b) / rho(n_b) (DESIGN section 2).
`Vanilla` draws from q itself (w = 1/B). `Transformed` draws from any conditional-by-conditional
transform of q (tempering, a diffusive kernel, ...), for which log rho is exact in one pass; the
enhanced-sampling proposals of a later issue are such transforms or subclasses of `Proposal`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .models.base import AutoregressiveModel, ConditionalTransform

__all__ = [
    "PROPOSALS",
    "Draw",
    "Proposal",
    "Transformed",
    "Vanilla",
    "make_proposal",
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
        weights: (B,) self-normalised importance weights q/rho (they sum to 1).
    """

    states: torch.Tensor
    log_q: torch.Tensor
    log_rho: torch.Tensor
    weights: torch.Tensor

    @property
    def ess(self) -> float:
        """Effective sample size 1 / sum w^2 (B for vanilla sampling)."""
        return float(1.0 / (self.weights**2).sum())


class Proposal:
    """Where training states come from. Subclasses implement `draw`."""

    name = "proposal"

    def draw(
        self,
        model: AutoregressiveModel,
        batch_size: int,
        generator: torch.Generator | None = None,
    ) -> Draw:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Vanilla(Proposal):
    """rho = q: plain samples of the model, uniform weights."""

    name = "vanilla"

    def draw(
        self,
        model: AutoregressiveModel,
        batch_size: int,
        generator: torch.Generator | None = None,
    ) -> Draw:
        states, log_q = model.sample(batch_size, generator)
        weights = torch.full_like(log_q, 1.0 / batch_size)
        return Draw(states, log_q, log_q, weights)


class Transformed(Proposal):
    """rho from a per-species transform of q's conditionals (e.g. `Tempering(alpha)`).

    Weights w proportional to exp(log q - log rho), normalised over the batch.
    """

    name = "transformed"

    def __init__(self, transform: ConditionalTransform) -> None:
        self.transform = transform

    def draw(
        self,
        model: AutoregressiveModel,
        batch_size: int,
        generator: torch.Generator | None = None,
    ) -> Draw:
        states, log_q, log_rho = model.sample_proposal(batch_size, self.transform, generator)
        weights = torch.softmax(log_q - log_rho, dim=0)
        return Draw(states, log_q, log_rho, weights)

    def __repr__(self) -> str:
        return f"Transformed({self.transform!r})"


PROPOSALS: dict[str, type[Proposal]] = {"vanilla": Vanilla}


def make_proposal(name: str) -> Proposal:
    """A proposal by name (`PROPOSALS`)."""
    if name not in PROPOSALS:
        raise ValueError(f"proposal must be one of {sorted(PROPOSALS)}, got {name!r}")
    return PROPOSALS[name]()


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


def unique_states(
    states: torch.Tensor, limits: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct rows of a batch of in-box states, and where each row went.

    Training batches repeat states many times (a distribution concentrated on few states draws
    them again and again), so scoring each distinct state once saves most of the work. When
    the box has fewer than 2^62 states each state is packed into one int64 key, which makes
    this a 1-D sort (rows come out in key order); otherwise rows are compared directly.

    Args:
        states: (N, L) int64 with 0 <= n_i < limits_i.
        limits: (L,) int64.

    Returns:
        unique (U, L) int64 and inverse (N,) int64 with unique[inverse] == states.
    """
    if states.shape[0] == 0:
        return states, torch.zeros(0, dtype=torch.int64, device=states.device)
    keys = state_keys(states, limits)
    if keys is None:
        return torch.unique(states, dim=0, return_inverse=True)
    first = torch.zeros_like(keys)
    ukeys, inverse = torch.unique(keys, return_inverse=True)
    first.scatter_(0, inverse, torch.arange(keys.shape[0], device=keys.device))
    return states[first[: ukeys.shape[0]]], inverse
