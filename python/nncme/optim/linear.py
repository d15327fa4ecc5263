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

Cross-validated shift (`cv=True`, for TDVP). With fewer samples than parameters the
least-squares fit interpolates v at the samples (residual 0) and nothing constrains x elsewhere;
a small fixed shift then follows the sampling noise, and TDVP drifts away (MAPK at 500 samples
for 12,160 parameters: Hellinger 0.44 at t = 1 against SSA). `cross_validate` picks the
relative shift from `CV_GRID` whose solution predicts v best at held-out states: the caller
deals its distinct states into folds (TDVP: two, at random; a state drawn often then sits in
one fold only, so each fit is scored at states it has not seen, where an interpolating fit goes
wrong; folds of samples, which put such a state in both, scored MAPK at 0.065 instead of
0.030), each fold's fit is scored on the others, and the shift with the least mean held-out
relative misfit is used for the solve on all samples. A held-out misfit >= 1 at every shift
says the fit predicts nothing beyond its own samples; the largest shift then moves x only a
little, along O_c^T v_c.

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

__all__ = ["CV_GRID", "SPACES", "CrossValidation", "FisherSolver", "GramSolution", "SolveInfo"]

SPACES = ("auto", "parameter", "sample")
# relative shifts tried by cross-validation (see the module docstring)
CV_GRID = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


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


@dataclass
class CrossValidation:
    """The outcome of `FisherSolver.cross_validate`.

    Attributes:
        shift: the relative shift chosen (an entry of the grid).
        errors: (G,) mean held-out relative misfit sum w (O_c x - v_c)^2 / sum w v_c^2 per
            grid entry (1: no better than x = 0).
    """

    shift: float
    errors: torch.Tensor

    @property
    def error(self) -> float:
        return float(self.errors.min())


def centred_gram(K: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """K_c = (O - w^T O)(O - w^T O)^T from K = O O^T (N, N) and normalised weights w (N,)."""
    Kw = K @ w
    return K - Kw.unsqueeze(0) - Kw.unsqueeze(1) + w @ Kw


class FisherSolver:
    """(S + lambda I) x = O_c^T v_c with centred, importance-weighted O and v.

    Args:
        shift: lambda (absolute, or relative to the mean non-zero eigenvalue when adaptive).
        adaptive: scale the shift to tr(S) / min(N - 1, P) (see the module docstring).
        space: "auto" | "parameter" | "sample".
        impl: operator implementation of `nncme.ops.fisher_solve`.
        max_raises: shift raises the operator may make before the SVD fallback.
        min_shift: floor of an adaptive lambda.
        cv: choose the relative shift by cross-validation (`cross_validate`; the caller
            passes the folds); `shift` is then used only where no folds are given.
        grid: the relative shifts cross-validation tries.
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
        cv: bool = False,
        grid: tuple[float, ...] = CV_GRID,
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
        self.cv = bool(cv)
        if cv and not (grid and all(g > 0 for g in grid)):
            raise ValueError(f"grid must hold positive shifts, got {grid!r}")
        self.grid = tuple(float(g) for g in grid)

    def shift_for(self, O: torch.Tensor, w: torch.Tensor, shift: float | None = None) -> float:
        """The lambda this solver uses for gradients O (N, P) with weights w (N,)."""
        shift = self.shift if shift is None else shift
        if not self.adaptive:
            return shift
        N, P = O.shape
        mean = w @ O
        trace = float((w * ((O - mean) ** 2).sum(dim=1)).sum())
        return self._absolute(shift, trace, N, P)

    def _absolute(self, shift: float, trace: float, N: int, P: int) -> float:
        """lambda from a relative shift: shift * tr(S) / min(N - 1, P), floored."""
        return max(self.min_shift, shift * _mean_eigenvalue(trace, N, P))

    def solve(
        self,
        O: torch.Tensor,
        v: torch.Tensor,
        w: torch.Tensor | None = None,
        shift: float | None = None,
    ) -> tuple[torch.Tensor, SolveInfo]:
        """Solve for x.

        Args:
            O: (N, P) per-sample gradients of log q.
            v: (N,) per-sample values (natural gradient: the coefficients scaled by 1/w; TDVP:
                the local generator).
            w: (N,) non-negative weights (normalised here); None: 1/N each.
            shift: the shift to use instead of this solver's (relative where adaptive).

        Returns:
            x (P,) and a SolveInfo.
        """
        N, P = O.shape
        if w is None:
            w = torch.full((N,), 1.0 / N, dtype=O.dtype, device=O.device)
        w = (w / w.sum()).to(O.dtype)
        if not (torch.isfinite(O).all() and torch.isfinite(v).all()):
            raise NonFiniteError("the per-sample gradients or values contain NaN or inf")
        lam = self.shift_for(O, w, shift)
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
        self,
        K: torch.Tensor,
        v: torch.Tensor,
        w: torch.Tensor,
        num_params: int,
        shift: float | None = None,
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
        Kc = centred_gram(K, w)
        trace = float((w * Kc.diagonal()).sum())
        lam = self.shift if shift is None else shift
        if self.adaptive:
            lam = self._absolute(lam, trace, N, num_params)
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

    def cross_validate(
        self, K: torch.Tensor, v: torch.Tensor, folds: torch.Tensor, num_params: int
    ) -> CrossValidation:
        """The relative shift of `grid` whose fits predict v best at held-out samples.

        Args:
            K: (N, N) Gram matrix O O^T of the N distinct states.
            v: (N,) values at the states.
            folds: (F, N) non-negative weights of each fold's samples on the states (F >= 2;
                a state no sample of a fold holds has weight 0 there).
            num_params: P (for the relative shift's scale).

        Each fold f is fitted by the sample-space Tikhonov solution at every grid shift (one
        eigendecomposition of its weighted, centred Gram matrix), and scored on the other
        folds' samples: sum w' (O_c x - v_c)^2 / sum w' v_c^2, centred under w'.
        """
        if folds.shape[0] < 2:
            raise ValueError(f"cross-validation needs at least 2 folds, got {folds.shape[0]}")
        grid = torch.tensor(self.grid, dtype=K.dtype, device=K.device)
        errors = torch.zeros_like(grid)
        folds = folds.to(K.dtype)
        for f in range(folds.shape[0]):
            train, held = folds[f], folds.sum(0) - folds[f]
            errors += self._held_out_misfit(K, v, train, held, grid, num_params)
        errors /= folds.shape[0]
        return CrossValidation(self.grid[int(torch.argmin(errors))], errors)

    def _held_out_misfit(
        self,
        K: torch.Tensor,
        v: torch.Tensor,
        train: torch.Tensor,
        held: torch.Tensor,
        grid: torch.Tensor,
        num_params: int,
    ) -> torch.Tensor:
        """(G,) held-out relative misfit of the fit on `train`'s weights at each shift."""
        rows = (train > 0).nonzero().squeeze(1)
        cols = (held > 0).nonzero().squeeze(1)
        if rows.numel() < 2 or cols.numel() < 1:
            return torch.ones_like(grid)
        w = train[rows] / train[rows].sum()
        Kc = centred_gram(K[rows][:, rows], w)
        trace = float((w * Kc.diagonal()).sum())
        scale = _mean_eigenvalue(trace, rows.numel(), num_params) if self.adaptive else 1.0
        sw = w.sqrt()
        evals, evecs = torch.linalg.eigh(sw.unsqueeze(1) * Kc * sw.unsqueeze(0))
        proj = evecs.mT @ (sw * (v[rows] - w @ v[rows]))  # (M,)
        # gamma for every shift at once: (M, G)
        lam = (scale * grid).clamp(min=self.min_shift)
        y = evecs @ (proj.unsqueeze(1) / (evals.clamp(min=0).unsqueeze(1) + lam))
        gamma = sw.unsqueeze(1) * y
        coef = gamma - w.unsqueeze(1) * gamma.sum(0, keepdim=True)
        wh = held[cols] / held[cols].sum()
        fitted = K[cols][:, rows] @ coef  # (H, G): O x at the held-out states
        fitted = fitted - wh @ fitted
        vh = v[cols] - wh @ v[cols]
        norm = float((wh * vh * vh).sum())
        if norm <= 0:
            return torch.zeros_like(grid)
        return (wh.unsqueeze(1) * (fitted - vh.unsqueeze(1)) ** 2).sum(0) / norm


def _mean_eigenvalue(trace: float, N: int, P: int) -> float:
    """tr(S) / min(N - 1, P): the mean non-zero eigenvalue of a centred S of N samples."""
    return trace / max(1, min(N - 1, P))


def _svd_solve(O: torch.Tensor, v: torch.Tensor, w: torch.Tensor, lam: float) -> torch.Tensor:
    """The Tikhonov solution from the SVD of the centred, weighted gradients."""
    sw = w.sqrt()
    Oc = (O - w @ O) * sw.unsqueeze(1)
    vc = (v - w @ v) * sw
    U, s, Vh = torch.linalg.svd(Oc, full_matrices=False)
    return Vh.mT @ ((s / (s * s + lam)) * (U.mT @ vc))
