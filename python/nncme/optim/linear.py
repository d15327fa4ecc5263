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

__all__ = ["SPACES", "FisherSolver", "GramSolution", "SolveInfo"]

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


@dataclass
class GramSolution:
    """The solution of a sample-space solve from the Gram matrix K = O O^T (`solve_gram`).

    Attributes:
        coef: (N,) beta with x = sum_n beta_n O_n: the parameter vector is the gradient of
            sum_n beta_n log q(n_n) (one backward pass; no (N, P) matrix).
        fitted: (N,) O_c x, the change of centred log q that x makes at each sample.
        info: the shift used and the rest, as for `solve`.
    """

    coef: torch.Tensor
    fitted: torch.Tensor
    info: SolveInfo


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

    def solve_gram(
        self, K: torch.Tensor, v: torch.Tensor, w: torch.Tensor, num_params: int
    ) -> GramSolution:
        """The same x as `solve`, in sample space, from the Gram matrix K = O O^T (N, N).

        x = O_c^T W^1/2 (W^1/2 K_c W^1/2 + lambda I)^-1 W^1/2 v_c (Woodbury), returned as
        coefficients on the rows of O, with K_c the centred Gram matrix (see
        `nncme.optim.gradients.nade_gram`, which forms K without O). The Cholesky factor comes
        from torch.linalg; the shift is raised x10 when it fails, as `ops.fisher_solve` does,
        then the eigendecomposition gives the same Tikhonov solution.
        """
        N = K.shape[0]
        w = (w / w.sum()).to(K.dtype)
        if not (torch.isfinite(K).all() and torch.isfinite(v).all()):
            raise NonFiniteError("the Gram matrix or the values contain NaN or inf")
        Kw = K @ w
        Kc = K - Kw.unsqueeze(0) - Kw.unsqueeze(1) + w @ Kw
        trace = float((w * Kc.diagonal()).sum())
        lam = self.shift
        if self.adaptive:
            lam = max(self.min_shift, self.shift * trace / max(1, min(N - 1, num_params)))
        sw = w.sqrt()
        A = sw.unsqueeze(1) * Kc * sw.unsqueeze(0)
        b = sw * (v - w @ v)
        eye = torch.eye(N, dtype=K.dtype, device=K.device)
        used, fallback = lam, False
        for _ in range(self.max_raises + 1):
            L, bad = torch.linalg.cholesky_ex(A + used * eye)
            if not bool(bad):
                y = torch.cholesky_solve(b.unsqueeze(1), L).squeeze(1)
                break
            used *= 10.0
        else:
            used, fallback = max(lam, self.min_shift), True
            evals, evecs = torch.linalg.eigh(A)
            y = evecs @ ((evecs.mT @ b) / (evals.clamp(min=0) + used))
        gamma = sw * y  # x = O_c^T gamma = sum_n (gamma_n - w_n sum(gamma)) O_n
        coef = gamma - w * gamma.sum()
        return GramSolution(coef, Kc @ gamma, SolveInfo(float(used), lam, "sample", fallback))


def _svd_solve(O: torch.Tensor, v: torch.Tensor, w: torch.Tensor, lam: float) -> torch.Tensor:
    """The Tikhonov solution from the SVD of the centred, weighted gradients."""
    sw = w.sqrt()
    Oc = (O - w @ O) * sw.unsqueeze(1)
    vc = (v - w @ v) * sw
    U, s, Vh = torch.linalg.svd(Oc, full_matrices=False)
    return Vh.mT @ ((s / (s * s + lam)) * (U.mT @ vc))
