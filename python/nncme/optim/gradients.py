"""Per-sample gradients O_n = grad_theta log q(n) of a VAN, flattened: the rows of the Fisher
matrix and of the TDVP least-squares system.

Two ways, equal to rounding (tests compare them):
- "func": torch.func (vmap over grad of log_prob), for any model;
- "analytic": NADE only, the closed form below, several times faster than torch.func on CPU
  (benchmarks/bench_second_order.py measures both).

NADE's closed form. With a_i the pre-activation at species i, h_i = act(a_i), p_i the masked
conditional and g_i = onehot(n_i) - p_i (B, M):

    d log q / d head_b[i]       = g_i
    d log q / d head_w[i, m]    = g_i[m] h_i
    delta_i = act'(a_i) * (head_w[i]^T g_i)                     (B, H)
    d log q / d embed[i, n_i]   = sum_{j > i} delta_j            (zero at every other count)
    d log q / d bias            = sum_j delta_j

Flattening follows `model.named_parameters()` (trainable parameters only), the order of
`flat_parameters` and `set_flat_parameters`.
"""

from __future__ import annotations

import torch

from ..models.base import AutoregressiveModel
from ..models.nade import NADE

__all__ = [
    "GRADIENTS",
    "add_to_parameters",
    "flat_parameters",
    "per_sample_grads",
    "set_flat_parameters",
]

GRADIENTS = ("auto", "analytic", "func")


def _trainable(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def flat_parameters(model: torch.nn.Module) -> torch.Tensor:
    """The trainable parameters as one vector (P,) (a copy)."""
    return torch.cat([p.detach().reshape(-1) for _, p in _trainable(model)])


@torch.no_grad()
def set_flat_parameters(model: torch.nn.Module, theta: torch.Tensor) -> None:
    """Write a vector (P,) into the trainable parameters."""
    offset = 0
    for _, p in _trainable(model):
        p.copy_(theta[offset : offset + p.numel()].view_as(p))
        offset += p.numel()


@torch.no_grad()
def add_to_parameters(model: torch.nn.Module, delta: torch.Tensor, scale: float = 1.0) -> None:
    """theta += scale * delta for a vector delta (P,)."""
    offset = 0
    for _, p in _trainable(model):
        p.add_(delta[offset : offset + p.numel()].view_as(p), alpha=scale)
        offset += p.numel()


def per_sample_grads(
    model: AutoregressiveModel,
    states: torch.Tensor,
    method: str = "auto",
    *,
    chunk: int = 1024,
) -> torch.Tensor:
    """O = grad_theta log q(n) for each state.

    Args:
        model: the VAN (its trainable parameters define P).
        states: (N, L) int64 in the box, with log q > -inf.
        method: "auto" (analytic for an unconditional NADE, else func), "analytic", "func".
        chunk: states per vmap call of the torch.func path (bounds its memory).

    Returns:
        (N, P) in the model's dtype, columns in `named_parameters()` order.
    """
    if method not in GRADIENTS:
        raise ValueError(f"gradients must be one of {GRADIENTS}, got {method!r}")
    analytic_ok = isinstance(model, NADE) and model.context_dim == 0
    if method == "analytic" and not analytic_ok:
        raise ValueError("gradients='analytic' is implemented for unconditional NADE models only")
    if method == "analytic" or (method == "auto" and analytic_ok):
        return _nade_grads(model, states)
    return _func_grads(model, states, chunk)


def _func_grads(model: AutoregressiveModel, states: torch.Tensor, chunk: int) -> torch.Tensor:
    from torch.func import functional_call, grad, vmap

    names = [n for n, _ in _trainable(model)]
    params = {n: p.detach() for n, p in _trainable(model)}
    frozen = {n: b for n, b in model.named_parameters() if not b.requires_grad}

    def log_q(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(model, {**p, **frozen}, (x.unsqueeze(0),))[0]

    grads = vmap(grad(log_q), in_dims=(None, 0), chunk_size=chunk)(params, states)
    return torch.cat([grads[n].reshape(states.shape[0], -1) for n in names], dim=1)


@torch.no_grad()
def _nade_grads(model: NADE, states: torch.Tensor) -> torch.Tensor:
    states = model._check_states(states)
    B, L = states.shape
    M, H = model.max_count, model.hidden
    species = torch.arange(L, device=states.device)
    e = model.embed[species.unsqueeze(0), states]  # (B, L, H)
    h0 = model.hidden0(B, None).unsqueeze(1)
    a = torch.cumsum(torch.cat([h0, e[:, :-1]], dim=1), dim=1)  # (B, L, H) as in _logits
    h = model._act(a)
    masked, _ = model._masked_logits(states, None, None)
    g = -torch.softmax(masked, dim=-1)  # (B, L, M), 0 at masked counts
    g.scatter_add_(2, states.unsqueeze(-1), torch.ones_like(g[..., :1]))
    slope = 1 - h * h if model.activation == "tanh" else h * (1 - h)
    delta = slope * torch.einsum("blm,lmh->blh", g, model.head_w)  # (B, L, H)
    from_here = delta.flip(1).cumsum(1).flip(1)  # sum_{j >= i}
    after = torch.cat([from_here[:, 1:], torch.zeros_like(from_here[:, :1])], dim=1)
    blocks: dict[str, torch.Tensor] = {"bias": from_here[:, 0]}
    embed = torch.zeros(B, L, M, H, dtype=h.dtype, device=h.device)
    embed.scatter_(2, states[:, :, None, None].expand(B, L, 1, H), after.unsqueeze(2))
    blocks["embed"] = embed
    blocks["head_w"] = g.unsqueeze(-1) * h.unsqueeze(2)  # (B, L, M, H)
    blocks["head_b"] = g
    return torch.cat([blocks[n].reshape(B, -1) for n, _ in _trainable(model)], dim=1)
