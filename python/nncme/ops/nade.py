"""Python wrappers of the NADE operators: the fused kernel where built, else the reference.

The meaning of both operators is `nncme.ops.reference.nade_sample` / `nade_log_prob`; these
wrappers take the conservation tables as one `ConservationMask` and route the call through
`resolve_impl`, so a model never changes when a kernel lands.
"""

from __future__ import annotations

import torch

from . import reference
from .masks import ConservationMask

__all__ = ["nade_log_prob", "nade_sample"]


def _resolve(op: str, device: torch.device, impl: str) -> str:
    from . import resolve_impl  # the package imports this module: resolve lazily

    return resolve_impl(op, device, impl)


def nade_sample(
    uniforms: torch.Tensor,
    hidden0: torch.Tensor,
    embed: torch.Tensor,
    head_w: torch.Tensor,
    head_b: torch.Tensor,
    limits: torch.Tensor,
    cons: ConservationMask,
    cons_start: torch.Tensor,
    alpha: float = 1.0,
    activation: int = 0,
    *,
    impl: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw B states from a NADE by inverse CDF of the given uniforms.

    Args:
        uniforms: (B, L) in [0, 1), from the caller's torch.Generator (a seed reproduces a draw,
            and fused and reference samplers agree draw for draw).
        hidden0: (B, H); embed, head_w: (L, M, H); head_b: (L, M); limits: (L,) int64.
        cons: the conservation tables; cons_start: (B, C) int64 totals (C = 0 for none).
        alpha: tempering of each conditional (1: sample q).
        activation: 0 sigmoid, 1 tanh.

    Returns:
        samples (B, L) int64, log q (B,) and log rho (B,) in hidden0.dtype.
    """
    args = (
        uniforms,
        hidden0,
        embed,
        head_w,
        head_b,
        limits,
        cons.weights,
        cons_start,
        cons.law_meta,
        cons.group_meta,
        cons.table,
        float(alpha),
        int(activation),
    )
    if _resolve("nade_sample", uniforms.device, impl) == "fused":
        return torch.ops.nncme.nade_sample(*args)
    return reference.nade_sample(*args)


def nade_log_prob(
    states: torch.Tensor,
    hidden0: torch.Tensor,
    embed: torch.Tensor,
    head_w: torch.Tensor,
    head_b: torch.Tensor,
    limits: torch.Tensor,
    cons: ConservationMask,
    cons_start: torch.Tensor,
    activation: int = 0,
    *,
    impl: str = "auto",
) -> torch.Tensor:
    """log q(n) (B,) of given states (B, L) int64 under a NADE; no gradient.

    -inf for states beyond a limit or off a conservation law. Arguments as in `nade_sample`.
    """
    args = (
        states.to(torch.int64),
        hidden0,
        embed,
        head_w,
        head_b,
        limits,
        cons.weights,
        cons_start,
        cons.law_meta,
        cons.group_meta,
        cons.table,
        int(activation),
    )
    if _resolve("nade_log_prob", states.device, impl) == "fused":
        return torch.ops.nncme.nade_log_prob(*args)
    return reference.nade_log_prob(*args)
