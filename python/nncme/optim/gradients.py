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

A second-order solve in sample space needs only their Gram matrix O O^T, and for a NADE
`nade_gram` forms it from the closed form's factors without O (see there); `use_gram` says
when the solvers take that path ("gram", or "auto" where P > N).

Flattening follows `model.named_parameters()` (trainable parameters only), the order of
`flat_parameters` and `set_flat_parameters`.
"""

from __future__ import annotations

import torch

from ..models.base import AutoregressiveModel
from ..models.nade import NADE
from .target import chunk_rows

__all__ = [
    "GRADIENTS",
    "add_to_parameters",
    "flat_grad",
    "flat_parameters",
    "grad_of_sum",
    "gram_supported",
    "nade_gram",
    "per_sample_grads",
    "set_flat_parameters",
    "use_gram",
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
def _nade_factors(
    model: NADE, states: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """h (B, L, H), g (B, L, M), from_here (B, L, H) and after (B, L, H) of the closed form."""
    states = model._check_states(states)
    B, L = states.shape
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
    return h, g, from_here, after


@torch.no_grad()
def _nade_grads(model: NADE, states: torch.Tensor) -> torch.Tensor:
    h, g, from_here, after = _nade_factors(model, states)
    B, L, M = g.shape
    H = h.shape[-1]
    blocks: dict[str, torch.Tensor] = {"bias": from_here[:, 0]}
    embed = torch.zeros(B, L, M, H, dtype=h.dtype, device=h.device)
    embed.scatter_(2, states[:, :, None, None].expand(B, L, 1, H), after.unsqueeze(2))
    blocks["embed"] = embed
    blocks["head_w"] = g.unsqueeze(-1) * h.unsqueeze(2)  # (B, L, M, H)
    blocks["head_b"] = g
    return torch.cat([blocks[n].reshape(B, -1) for n, _ in _trainable(model)], dim=1)


def use_gram(model: AutoregressiveModel, rows: int, method: str, space: str = "auto") -> bool:
    """Whether a second-order solve should go through `nade_gram` (no per-sample gradients).

    method "gram" asks for it (an error where it does not apply); "auto" takes it where it
    applies and the solve is in sample space (P > rows, or space "sample"); "analytic" and
    "func" form the gradients.
    """
    if method not in (*GRADIENTS, "gram"):
        raise ValueError(f"gradients must be one of {(*GRADIENTS, 'gram')}, got {method!r}")
    if method == "gram":
        if not gram_supported(model):
            raise ValueError("gradients='gram' is implemented for unconditional NADE models only")
        if space == "parameter":
            raise ValueError("gradients='gram' solves in sample space; solve_space='parameter'")
        return True
    if method != "auto" or space == "parameter" or not gram_supported(model):
        return False
    params = sum(p.numel() for _, p in _trainable(model))
    return space == "sample" or params > rows


def grad_of_sum(model: AutoregressiveModel, states: torch.Tensor, coef: torch.Tensor) -> None:
    """Accumulate grad_theta sum_n coef_n log q(n) = O^T coef into the parameters' .grad.

    In chunks of states that bound the memory of one log_prob call.
    """
    rows = chunk_rows(model)
    for chunk, c in zip(states.split(rows), coef.split(rows)):
        (c.detach() * model.log_prob(chunk)).sum().backward()


def flat_grad(model: torch.nn.Module) -> torch.Tensor:
    """The trainable parameters' .grad as one vector (P,) (zeros where None)."""
    return torch.cat(
        [
            (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
            for _, p in _trainable(model)
        ]
    )


def gram_supported(model: AutoregressiveModel) -> bool:
    """Whether `nade_gram` applies: an unconditional NADE with every parameter trainable."""
    return (
        isinstance(model, NADE)
        and model.context_dim == 0
        and [n for n, _ in _trainable(model)] == ["bias", "embed", "head_w", "head_b"]
    )


@torch.no_grad()
def nade_gram(model: NADE, states: torch.Tensor) -> torch.Tensor:
    """K = O O^T (N, N), the Gram matrix of a NADE's per-sample gradients, without forming O.

    From the closed form (module docstring), block by block, for states n and m:

        bias:    from_here_0(n) . from_here_0(m)
        embed:   sum_i [n_i = m_i] after_i(n) . after_i(m)    (one embedding row per count)
        head_w:  sum_i (g_i(n) . g_i(m)) (h_i(n) . h_i(m))
        head_b:  sum_i  g_i(n) . g_i(m)

    which costs N^2 L (2H + M) instead of the N^2 P (P about 2 L M H) of O O^T: 16x to 30x
    less for the catalogue's NADEs, and no (N, P) matrix in memory.
    """
    if not gram_supported(model):
        raise ValueError("nade_gram needs an unconditional NADE with all parameters trainable")
    states = model._check_states(states)
    h, g, from_here, after = _nade_factors(model, states)
    K = from_here[:, 0] @ from_here[:, 0].T
    # two (N, N) buffers reused for every species: fresh N^2 temporaries cost more in page
    # faults than the products themselves
    gg, other = torch.empty_like(K), torch.empty_like(K)
    for i in range(states.shape[1]):
        torch.mm(g[:, i], g[:, i].T, out=gg)
        torch.mm(h[:, i], h[:, i].T, out=other)
        K.addcmul_(gg, other.add_(1.0))
        torch.mm(after[:, i], after[:, i].T, out=other)
        K.add_(other.masked_fill_(states[:, i].unsqueeze(1) != states[:, i].unsqueeze(0), 0.0))
    return K
