"""The regularised least-squares solve shared by natural gradient and TDVP.

Both solve (S + lambda I) x = b with the centred, weighted Fisher matrix
S = sum_n w_n (O_n - Obar)(O_n - Obar)^T of per-sample gradients O (N, P) and
b = sum_n w_n (O_n - Obar)(v_n - vbar), through `nncme.ops.fisher_solve` (fused where it is
built, the plain-PyTorch reference otherwise): in parameter space (P x P) when P <= N and in
sample space (N x N, Woodbury) when P > N, with no P x P matrix formed.

The shift lambda. Fixed (`adaptive=False`: lambda = shift), or scaled to the spectrum of S
(`adaptive=True`, the default): lambda = shift * tr(S) / min(N - 1, P), the shift relative to
the mean non-zero eigenvalue of S (S has rank at most N - 1 after centring). A fixed shift
means a different regularisation as the model's gradients grow or shrink during a run; the
relative one keeps the conditioning of (S + lambda I) about the same. The value used is
reported (`SolveInfo.shift`) and logged per step.

Fallback. The operator raises the shift x10 when a Cholesky factorisation fails (reported in
`SolveInfo.shift`); when it still fails after `max_raises`, the same Tikhonov solution is
computed from the SVD of the centred gradients, x = V diag(s / (s^2 + lambda)) U^T v_c,
which needs no factorisation (`SolveInfo.fallback` is True).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import ops
from .target import NonFiniteError

__all__ = ["SPACES", "FisherSolver", "SolveInfo"]

SPACES = ("auto", "parameter", "sample")


@dataclass
class SolveInfo:
    """What a solve did.

    Attributes:
        shift: lambda actually used (after any raise).
        requested: lambda before any raise.
        space: "parameter" or "sample".
        fallback: the SVD fallback ran (every Cholesky attempt failed).
    """

    shift: float
    requested: float
    space: str
    fallback: bool = False


class FisherSolver:
    """(S + lambda I) x = O_c^T v_c with centred, importance-weighted O and v.

    Args:
        shift: lambda (absolute, or relative to the mean non-zero eigenvalue when adaptive).
        adaptive: scale the shift to tr(S) / min(N - 1, P) (see the module docstring).
        space: "auto" | "parameter" | "sample".
        impl: operator implementation of `nncme.ops.fisher_solve`.
        max_raises: shift raises the operator may make before the SVD fallback.
        min_shift: floor of an adaptive lambda.
    """

    def __init__(
        self,
        shift: float = 1e-3,
        *,
        adaptive: bool = True,
        space: str = "auto",
        impl: str = "auto",
        max_raises: int = 6,
        min_shift: float = 1e-12,
    ) -> None:
        if not shift >= 0:
            raise ValueError(f"shift must be >= 0, got {shift!r}")
        if space not in SPACES:
            raise ValueError(f"space must be one of {SPACES}, got {space!r}")
        self.shift = float(shift)
        self.adaptive = bool(adaptive)
        self.space = space
        self.impl = impl
        self.max_raises = int(max_raises)
        self.min_shift = float(min_shift)

    def shift_for(self, O: torch.Tensor, w: torch.Tensor) -> float:
        """The lambda this solver uses for gradients O (N, P) with weights w (N,)."""
        if not self.adaptive:
            return self.shift
        N, P = O.shape
        mean = w @ O
        trace = float((w * ((O - mean) ** 2).sum(dim=1)).sum())
        return max(self.min_shift, self.shift * trace / max(1, min(N - 1, P)))

    def solve(
        self, O: torch.Tensor, v: torch.Tensor, w: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, SolveInfo]:
        """Solve for x.

        Args:
            O: (N, P) per-sample gradients of log q.
            v: (N,) per-sample values (natural gradient: the coefficients scaled by 1/w; TDVP:
                the local generator).
            w: (N,) non-negative weights (normalised here); None: 1/N each.

        Returns:
            x (P,) and a SolveInfo.
        """
        N, P = O.shape
        if w is None:
            w = torch.full((N,), 1.0 / N, dtype=O.dtype, device=O.device)
        w = (w / w.sum()).to(O.dtype)
        if not (torch.isfinite(O).all() and torch.isfinite(v).all()):
            raise NonFiniteError("the per-sample gradients or values contain NaN or inf")
        lam = self.shift_for(O, w)
        space = self.space
        if space == "auto":
            space = "parameter" if P <= N else "sample"
        try:
            x, used = ops.fisher_solve(
                O, v, w, lam, space=space, max_raises=self.max_raises, impl=self.impl
            )
            return x, SolveInfo(float(used), lam, space)
        except RuntimeError:
            return _svd_solve(O, v, w, max(lam, self.min_shift)), SolveInfo(lam, lam, space, True)


def _svd_solve(O: torch.Tensor, v: torch.Tensor, w: torch.Tensor, lam: float) -> torch.Tensor:
    """The Tikhonov solution from the SVD of the centred, weighted gradients."""
    sw = w.sqrt()
    Oc = (O - w @ O) * sw.unsqueeze(1)
    vc = (v - w @ v) * sw
    U, s, Vh = torch.linalg.svd(Oc, full_matrices=False)
    return Vh.mT @ ((s / (s * s + lam)) * (U.mT @ vc))
