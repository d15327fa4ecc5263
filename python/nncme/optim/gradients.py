"""Per-sample gradients O_n = grad_theta log q(n) of a VAN, flattened: the rows of the Fisher
matrix and of the TDVP least-squares system; and the flat-parameter helpers the solvers use.

Two ways to get O, equal to rounding (tests compare them):
- "func": torch.func (vmap over grad of log_prob), for any model;
- "analytic": the model's own closed form (`AutoregressiveModel.closed_form_scores`: NADE
  has one), several times faster than torch.func on CPU.

A second-order solve in sample space needs only the Gram matrix O O^T, which a closed form can
give without O; `use_gram` says when the solvers take that path ("gram", or "auto" where it
applies and P > N).

Flattening follows `model.named_parameters()` (trainable parameters only), the order of
`flat_parameters` and `set_flat_parameters`.
"""

from __future__ import annotations

import torch

from ..models.base import AutoregressiveModel
from .target import chunk_rows

__all__ = [
    "GRADIENTS",
    "add_to_parameters",
    "flat_grad",
    "flat_parameters",
    "grad_of_sum",
    "per_sample_grads",
    "set_flat_parameters",
    "use_gram",
]

# How the second-order solvers get the scores: "auto" (the Gram matrix where it applies, else
# the closed form where the model has one, else torch.func), or one of them explicitly.
GRADIENTS = ("auto", "gram", "analytic", "func")


def _trainable(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def num_trainable(model: torch.nn.Module) -> int:
    """P, the number of trainable parameters."""
    return sum(p.numel() for _, p in _trainable(model))


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
        method: "auto" (the model's closed form where it has one, else torch.func),
            "analytic" (the closed form, an error without one) or "func".
        chunk: states per vmap call of the torch.func path (bounds its memory).

    Returns:
        (N, P) in the model's dtype, columns in `named_parameters()` order.
    """
    if method not in ("auto", "analytic", "func"):
        raise ValueError(f"gradients must be one of auto, analytic, func, got {method!r}")
    scores = model.closed_form_scores()
    if method == "analytic" and scores is None:
        raise ValueError(
            f"gradients='analytic' needs a model with closed-form scores (an unconditional "
            f"NADE with every parameter trainable), not {type(model).__name__}"
        )
    if states.shape[0] == 0:  # a rank that drew no state (neither path takes an empty batch)
        dtype = next(model.parameters()).dtype
        return torch.zeros(0, num_trainable(model), dtype=dtype, device=states.device)
    if scores is not None and method != "func":
        return scores.vectors(states)
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


def use_gram(model: AutoregressiveModel, rows: int, method: str, space: str = "auto") -> bool:
    """Whether a second-order solve goes through the model's closed-form Gram matrix.

    method "gram" asks for it (an error where it does not apply); "auto" takes it where it
    applies and the solve is in sample space (P > rows, or space "sample"); "analytic" and
    "func" form the gradients.
    """
    if method not in GRADIENTS:
        raise ValueError(f"gradients must be one of {GRADIENTS}, got {method!r}")
    available = model.closed_form_scores() is not None
    if method == "gram":
        if not available:
            raise ValueError(
                "gradients='gram' needs a model with closed-form scores (an unconditional NADE "
                "with every parameter trainable)"
            )
        if space == "parameter":
            raise ValueError("gradients='gram' solves in sample space; solve_space='parameter'")
        return True
    if method != "auto" or space == "parameter" or not available:
        return False
    return space == "sample" or num_trainable(model) > rows


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


def scores_transposed_times(
    model: AutoregressiveModel, states: torch.Tensor, coef: torch.Tensor
) -> torch.Tensor:
    """O^T coef (P,) by one backward pass of sum_n coef_n log q(n), without forming O.

    The parameters' .grad are cleared before and after (left as None)."""
    params = [p for _, p in _trainable(model)]
    for p in params:
        p.grad = None
    grad_of_sum(model, states, coef)
    x = flat_grad(model)
    for p in params:
        p.grad = None
    return x
