"""Variational autoregressive networks over species counts, and closed-form start distributions.

Every VAN (`NADE`, the default; `Transformer`) is an `AutoregressiveModel`:
    sample(B, generator) -> (states (B, L) int64, log_q (B,))       no gradient
    log_prob(states) -> (B,)                                          differentiable
    conditionals(states) -> (B, L, Mmax)                              log q(m | n_<i)
    scorer(states) -> ListedScorer: log_prob at fixed states, each prefix run once
    sample_proposal(B, transform, generator) -> (states, log_q, log_rho)
with count limits and conservation laws masked exactly, an optional context input, and
per-sample conserved totals. `build_model` makes one for a network by name.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import (
    Anchor,
    AutoregressiveModel,
    ClosedFormScores,
    ConditionalTransform,
    ListedScorer,
    Tempering,
    frozen_copy,
    inverse_cdf,
)
from .nade import NADE, NADEScores
from .simple import Delta, Product
from .transformer import Transformer

__all__ = [
    "MODELS",
    "NADE",
    "Anchor",
    "AutoregressiveModel",
    "ClosedFormScores",
    "ConditionalTransform",
    "Delta",
    "ListedScorer",
    "NADEScores",
    "Product",
    "Tempering",
    "Transformer",
    "build_model",
    "frozen_copy",
    "inverse_cdf",
]

MODELS = {"nade": NADE, "transformer": Transformer}


def build_model(
    name: str,
    network: Any,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    seed: int = 0,
    **options: Any,
) -> AutoregressiveModel:
    """A VAN for a network's limits and conservation laws.

    Args:
        name: "nade" or "transformer".
        network: a ReactionNetwork (its limits and `feasibility` tables are used).
        dtype, device, seed: of the parameters and their initialisation.
        **options: the model's own arguments (hidden, activation, layers, heads, ...).
    """
    if name not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)}, got {name!r}")
    return MODELS[name](
        network.limits,
        conservation=network.feasibility,
        dtype=dtype,
        device=device,
        seed=seed,
        **options,
    )
