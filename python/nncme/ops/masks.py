"""Which counts an autoregressive conditional may take: count limits and conservation laws.

Shared by the reference sampler, the models' log-probabilities and the tests. The layout of the
conservation tables is documented in `nncme.conservation.FeasibilityTables`; `ConservationMask`
holds it as tensors on one device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["ConservationMask", "allowed_counts", "allowed_counts_all"]


@dataclass(frozen=True)
class ConservationMask:
    """Conservation-law tables on a device (see FeasibilityTables for the layout).

    Attributes:
        weights: (C, L) int64.  law_meta: (C, 4) int64.  group_meta: (G, 2) int64.
        table: (T,) bool.
    """

    weights: torch.Tensor
    law_meta: torch.Tensor
    group_meta: torch.Tensor
    table: torch.Tensor

    @property
    def num_laws(self) -> int:
        return self.weights.shape[0]

    @staticmethod
    def from_compiled(net: object) -> ConservationMask:
        return ConservationMask(
            net.cons_weights,
            net.cons_law_meta,
            net.cons_group_meta,
            net.cons_table,  # type: ignore[attr-defined]
        )


def allowed_counts(
    i: int,
    max_count: int,
    limit: torch.Tensor,
    remainders: torch.Tensor | None,
    cons: ConservationMask | None,
) -> torch.Tensor:
    """Counts that species i may take given the remainders before it.

    Args:
        i: species position.
        max_count: width of the categorical (Mmax).
        limit: () int64 count limit M_i.
        remainders: (B, C) int64 remaining totals of each law before species i.
        cons: the laws (None or zero laws: limits only).

    Returns:
        (B, Mmax) bool, or (1, Mmax) when there are no laws.
    """
    counts = torch.arange(max_count, device=limit.device)
    ok = (counts < limit).unsqueeze(0)
    if cons is None or cons.num_laws == 0 or remainders is None:
        return ok
    # (B, C, M) remainders after choosing each count
    after = remainders.unsqueeze(-1) - cons.weights[:, i].view(1, -1, 1) * counts.view(1, 1, -1)
    return ok & _feasible(after, i + 1, cons)


def allowed_counts_all(
    states: torch.Tensor,
    max_count: int,
    limits: torch.Tensor,
    totals: torch.Tensor | None,
    cons: ConservationMask | None,
) -> torch.Tensor:
    """The masks of all positions at once, for log-probabilities of given states.

    Args:
        states: (B, L) int64 counts.
        max_count: Mmax.
        limits: (L,) int64.
        totals: (B, C) or (C,) int64 conserved totals.
        cons: the laws.

    Returns:
        (B, L, Mmax) bool: allowed[b, i, m] for species i given the states' earlier counts.
    """
    B, L = states.shape
    counts = torch.arange(max_count, device=states.device)
    ok = (counts.view(1, -1) < limits.view(-1, 1)).unsqueeze(0)  # (1, L, M)
    if cons is None or cons.num_laws == 0 or totals is None:
        return ok.expand(B, L, max_count)
    w = cons.weights  # (C, L)
    used = states.unsqueeze(1) * w.unsqueeze(0)  # (B, C, L)
    before = torch.cumsum(used, dim=-1) - used  # exclusive prefix sums
    rem = totals.view(-1, w.shape[0], 1) - before  # (B, C, L)
    after = rem.unsqueeze(-1) - w.view(1, -1, L, 1) * counts.view(1, 1, 1, -1)  # (B, C, L, M)
    pos = torch.arange(1, L + 1, device=states.device).view(1, L, 1)
    return ok & _feasible(after, pos, cons)


def _feasible(
    after: torch.Tensor, position: int | torch.Tensor, cons: ConservationMask
) -> torch.Tensor:
    """after: (B, C, *rest) remainders; position: table row (int or broadcastable to rest).

    Returns (B, *rest) bool: every group's table holds the remainders at that position.
    """
    group, stride, lo, extent = cons.law_meta.unbind(1)  # (C,) each
    shape = (1, -1) + (1,) * (after.dim() - 2)
    offset = after - lo.view(shape)
    in_range = ((offset >= 0) & (offset < extent.view(shape))).all(dim=1)
    idx_part = offset.clamp(min=0) * stride.view(shape)
    ok = in_range
    base, size = cons.group_meta.unbind(1)
    for g in range(cons.group_meta.shape[0]):
        # a product with the member mask, not a boolean index: no data-dependent shape, so
        # no host sync, which a CUDA graph capture (the Transformer's sampler) refuses
        members = (group == g).view(shape)
        idx = (idx_part * members).sum(dim=1) + base[g] + position * size[g]
        idx = idx.clamp(max=cons.table.shape[0] - 1)
        ok = ok & cons.table[idx]
    return ok
